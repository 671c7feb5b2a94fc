"""The host interface and the host registry (docs/method.md, "Hosts and methods").

A host adapter knows, for its pipelines,

- the **text side**: the tokenizer the subjects resolve on, the prompt as the text encoder sees it, its end token;
- **where it reads**: which attention layers the guided pass records for a method's config (:meth:`Host.reads`);
- and how to **run** the pipeline so that the engine updates the latents before every guided step.

:class:`Host` is that interface (what ``generate`` calls). Most families do not implement :meth:`Host.run`
themselves: they subclass :class:`~ait2i.hosts.driver.DrivenHost`, which runs the user's pipeline unmodified and
asks the family only where it differs (the denoising side: embeddings, start latents, the guided pass, the capture).

``host_for(pipe)`` returns the adapter class registered (:func:`register_host`) for the pipeline's class; an
unsupported pipeline is a `TypeError` naming the supported ones, before anything runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..capture.store import Reads
from ..subjects import end_token_index

#: ``make_engine(attend, num_steps) -> GuidanceEngine``: the host builds the engine once it knows the loop.
EngineFactory = Callable[[Callable, int], Any]


@dataclass(frozen=True)
class ReadyAfter:
    """The pipeline method after whose first call the guided pass has everything it needs: step 0 is updated then.

    Args:
        method (`str`): the name of a method of the pipeline (wrapped on the instance for the call).
    """

    method: str


#: Right after the start latents (``prepare_latents``): the default.
START_LATENTS = ReadyAfter("prepare_latents")
#: When the denoising loop opens its progress bar: the timesteps and every per-call condition are set by then.
LOOP_START = ReadyAfter("progress_bar")


class Host:
    """Adapter interface of one pipeline family.

    Class attributes:
        pipelines (`tuple[str, ...]`): names of the pipeline classes this adapter drives (subclasses of them too).
        refused (`dict[str, str]`): call arguments that cannot be guided right, with the reason (refused up front).
    """

    pipelines: ClassVar[tuple[str, ...]] = ()
    refused: ClassVar[dict[str, str]] = {}
    #: The pipeline component whose tokenizer the subjects resolve on (its subfolder in a diffusers folder).
    tokenizer_component: ClassVar[str] = "tokenizer"
    #: The config's read options this host interprets (:meth:`reads`); any other read option left off its
    #: method's default is refused (:meth:`check_config`) instead of being ignored.
    read_options: ClassVar[tuple[str, ...]] = ("attn_res",)
    #: ``generate(..., regional_adapters=...)`` works with this host's pipelines (:mod:`ait2i.regional`: a UNet and
    #: one CLIP text encoder whose LoRA updates the hooks can place); refused elsewhere.
    regional_adapters: ClassVar[bool] = False
    #: Every read option a config carries.
    ALL_READ_OPTIONS: ClassVar[tuple[str, ...]] = ("attn_res", "from_where")

    def check_config(self, cfg) -> None:
        """Refuse, before the run, a read option the host would ignore (e.g. ``from_where``, the UNet parts to read,
        on a transformer): left at its method's default it is fine; changed, it would be a silent no-op."""
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
        for name in self.ALL_READ_OPTIONS:
            if name in self.read_options or name not in defaults:
                continue
            value, default = getattr(cfg, name), defaults[name]
            if value != default:
                raise ValueError(
                    f"{name}={value!r} does not apply to {type(self.pipe).__name__} ({type(self).__name__} reads "
                    f"{', '.join(self.read_options)} only); leave {name} at {cfg.name}'s default {default!r}"
                )

    @classmethod
    def subject_tokenizer(cls, pipe):
        """The tokenizer of ``pipe`` the subjects resolve on, before any call (e.g. for a token table)."""
        return getattr(pipe, cls.tokenizer_component)

    def __init__(self, pipe, prompt: str, kwargs: dict):
        self.pipe = pipe
        self.prompt = prompt
        self.kwargs = dict(kwargs)
        self.notes: list[str] = []
        self.check()

    def check(self) -> None:
        """Refuse, before anything runs, what this host cannot guide right (raise `ValueError`/`TypeError`).

        A subclass extends it and calls ``super().check()`` first: every check of every parent runs.
        """
        for key, why in self.refused.items():
            if self.kwargs.get(key) is not None:
                raise ValueError(f"{type(self.pipe).__name__}: `{key}` is not supported with guidance ({why})")

    # -- text side --------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer whose token indices the subjects and the attention maps use."""
        raise NotImplementedError

    @property
    def text(self) -> str:
        """The prompt as the text encoder sees it."""
        return self.prompt

    @property
    def eot_index(self) -> int:
        """Index of the prompt's end token in the encoder's sequence."""
        return end_token_index(self.tokenizer, self.text)

    # -- where it reads ---------------------------------------------------------------------------------------
    def reads(self, cfg, z) -> Reads:
        """Where the guided pass reads the maps for method config ``cfg`` and start latents ``z``.

        The host interprets the config's read options (``attn_res``, and ``from_where`` on a UNet) for its denoiser
        and this image size, and refuses those it cannot honour.

        Raises:
            ValueError: read options this denoiser has no layers for, naming the ones it has.
        """
        raise NotImplementedError

    # -- running ----------------------------------------------------------------------------------------------
    def run(self, cfg, make_engine: EngineFactory):
        """Run the pipeline with guidance by method ``cfg``; return ``(pipeline output, engine)``."""
        raise NotImplementedError


# -- the registry -----------------------------------------------------------------------------------------------
_HOSTS: list[type[Host]] = []


def register_host(host: type[Host]) -> type[Host]:
    """Register a host adapter class (usable as a decorator); later registrations are tried first."""
    if not (isinstance(host, type) and issubclass(host, Host)) or not host.pipelines:
        raise TypeError(f"{host!r} is not a Host subclass naming its pipelines")
    _HOSTS.insert(0, host)
    return host


def supported_pipelines() -> list[str]:
    """Names of every pipeline class some registered host drives."""
    return sorted({name for h in _HOSTS for name in h.pipelines})


def regional_pipelines() -> list[str]:
    """Names of the pipeline classes whose host places regional adapters (``Host.regional_adapters``)."""
    return sorted({name for h in _HOSTS if h.regional_adapters for name in h.pipelines})


def host_for(pipe) -> type[Host]:
    """The adapter class that drives ``pipe``.

    Raises:
        TypeError: no registered adapter drives this pipeline class; the message lists the supported ones.
    """
    cls = type(pipe)
    # The most specific class first: a host of a subclass wins over a host of its base class.
    for klass in cls.__mro__:
        for host in _HOSTS:
            if klass.__name__ in host.pipelines:
                if any("__call__" in vars(k) for k in cls.__mro__[: cls.__mro__.index(klass)]):
                    raise TypeError(
                        f"{cls.__name__} subclasses {klass.__name__} but overrides __call__, so its denoising loop "
                        f"may differ from the one {host.__name__} drives; not supported. Supported pipelines: "
                        f"{', '.join(supported_pipelines())}"
                    )
                return host
    raise TypeError(f"{cls.__name__} is not supported; supported pipelines: {', '.join(supported_pipelines())}")


def host_named(pipeline_class: str) -> type[Host] | None:
    """The adapter class of the pipeline class named ``pipeline_class`` (e.g. a folder's ``_class_name``), if any."""
    return next((h for h in _HOSTS if pipeline_class in h.pipelines), None)
