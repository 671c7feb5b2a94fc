"""Host adapters, one module per pipeline family, and the registry that picks one for a pipeline.

``host_for(pipe)`` returns the adapter class that drives ``pipe``; an unsupported pipeline is a `TypeError` naming
the supported ones, before anything runs. A family module defines its adapter classes and registers them with
``@register_host``; every module of this package is imported here, so a new family is a new file.

- :mod:`~ait2i.hosts.base`: the :class:`Host` interface and the registry;
- :mod:`~ait2i.hosts.driver`: :class:`DrivenHost`, which runs a pipeline unmodified (harvest, step 0, second-order
  steps, the update in the model-input space), composed with an injector (:mod:`~ait2i.hosts.injectors`:
  ``callback_on_step_end`` or the scheduler's ``step``);
- :mod:`~ait2i.hosts.checks`: the refusals the families share; :mod:`~ait2i.hosts.schedulers`: the schedulers;
- the families: ``sd`` (:class:`~ait2i.hosts.sd.UNetHost` and Stable Diffusion), ``sdxl``, ``controlnet``,
  ``gligen``, ``sd3``, ``flux``, ``pixart``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (  # noqa: F401 - _HOSTS for tests
    _HOSTS,
    LOOP_START,
    START_LATENTS,
    Host,
    ReadyAfter,
    host_for,
    host_named,
    regional_pipelines,
    register_host,
    supported_pipelines,
)
from .driver import DrivenHost
from .injectors import CALLBACK, SCHEDULER_STEP, Injector, intercept
from .schedulers import SUPPORTED_SCHEDULERS, check_scheduler

_INFRASTRUCTURE = {"base", "checks", "driver", "injectors", "schedulers"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "CALLBACK",
    "LOOP_START",
    "SCHEDULER_STEP",
    "START_LATENTS",
    "SUPPORTED_SCHEDULERS",
    "DrivenHost",
    "Host",
    "Injector",
    "ReadyAfter",
    "check_scheduler",
    "host_for",
    "host_named",
    "intercept",
    "register_host",
    "supported_pipelines",
]

from .sd import UNetHost  # noqa: E402 - after the family modules registered, in their order

__all__ += ["UNetHost"]
