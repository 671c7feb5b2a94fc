"""Host adapters, one module per pipeline family, and the registry that picks one for a pipeline.

``host_for(pipe)`` returns the adapter class that drives ``pipe``; an unsupported pipeline is a `TypeError` naming
the supported ones, before anything runs. A family module defines its adapter classes and registers them with
``@register_host``; every module of this package is imported here, so a new family is a new file.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import CallbackHost, Host, intercept
from .registry import _HOSTS, host_for, host_named, register_host, supported_pipelines  # noqa: F401 - _HOSTS for tests
from .schedulers import SUPPORTED_SCHEDULERS, check_scheduler

_INFRASTRUCTURE = {"base", "registry", "schedulers"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "SUPPORTED_SCHEDULERS",
    "CallbackHost",
    "Host",
    "check_scheduler",
    "host_for",
    "host_named",
    "intercept",
    "register_host",
    "supported_pipelines",
]
