"""The driver: runs a user's diffusers pipeline unmodified, with the latent update injected into its loop.

:class:`DrivenHost` implements :meth:`Host.run <ait2i.hosts.base.Host.run>` for every family. For the duration of
the call only, it

1. wraps the pipeline's own ``encode_prompt`` and ``prepare_latents`` (and family-specific preparation methods) on
   the instance, to keep what they return: the conditional embeddings exactly as the denoiser gets them (LoRA
   scale, ``clip_skip``, textual inversion included), the loop's timesteps, and the start latents, to which it
   applies the step-0 update once the guided pass has all it needs (:meth:`DrivenHost.ready_after`);
2. installs attention capture where the family reads (:meth:`Host.reads <ait2i.hosts.base.Host.reads>`,
   :meth:`DrivenHost.capture`);
3. updates the latents of step ``i + 1`` at the end of step ``i`` (:meth:`DrivenHost.after_step`), from where its
   **injector** puts the call (:mod:`ait2i.hosts.injectors`: ``callback_on_step_end`` or the scheduler's ``step``).

The update is taken in the model-input space (``scale_model_input``; sigma-scaled schedulers), and second-order
samplers are updated before the first evaluation of each step only (:mod:`ait2i.hosts.schedulers`). Everything is
restored when the call ends, also by an exception.

The two axes are separate: *how the update is injected* is the ``injector`` a family composes; *what the denoiser
is* is the family's subclass (:class:`~ait2i.hosts.sd.UNetHost` for UNets; the transformer families subclass
:class:`DrivenHost` directly). A family names its pipeline classes and overrides the hooks where it differs:
:meth:`~DrivenHost.cond_from_encode`, :meth:`~DrivenHost.start_latents` / :meth:`~DrivenHost.with_start_latents`,
:meth:`~DrivenHost.preparations`, :meth:`~DrivenHost.ready_after`, :meth:`~Host.reads`, :meth:`~DrivenHost.capture`
and :meth:`~DrivenHost.denoise`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import ClassVar

import torch

from ..capture.store import Reads, StopForward
from .base import START_LATENTS, EngineFactory, Host, ReadyAfter
from .checks import check_call, check_components
from .injectors import CALLBACK, Injector, intercept, keeper
from .schedulers import (
    FLOW_SCHEDULERS,
    SUPPORTED_SCHEDULERS,
    check_scheduler,
    evaluations_per_step,
    input_scale,
    starts_step,
)


class DrivenHost(Host):
    """A host that runs the pipeline's own ``__call__`` and injects the update into its loop.

    Class attributes:
        injector (`Injector`): where the update runs (:data:`~ait2i.hosts.injectors.CALLBACK` by default).
        components (`tuple[str, ...]`): attributes the pipeline must have (refused up front otherwise).
        schedulers (`tuple[str, ...]`): scheduler classes this family's pipelines run under guidance.
        cfg_scale (`str`): the call argument whose value > 1 turns classifier-free guidance on.
    """

    pipelines = ()  # abstract: the family modules name their pipelines
    injector: ClassVar[Injector] = CALLBACK
    components: ClassVar[tuple[str, ...]] = ("scheduler", "encode_prompt", "prepare_latents")
    #: What the refusal of a pipeline without :attr:`components` says after the missing names (default: this host
    #: cannot drive it).
    components_note: ClassVar[str | None] = None
    #: Schedulers this family's pipelines can run (``schedulers.SUPPORTED_SCHEDULERS`` less flow matching, which
    #: only the flow-matching families use); others are refused before the run.
    schedulers: ClassVar[tuple[str, ...]] = tuple(n for n in SUPPORTED_SCHEDULERS if n not in FLOW_SCHEDULERS)
    refused = {
        "ip_adapter_image": "IP-Adapter image conditioning is not passed to the guided pass yet",
        "ip_adapter_image_embeds": "IP-Adapter image conditioning is not passed to the guided pass yet",
        "prompt_embeds": "subjects are words of the prompt: give the prompt as text",
    }
    #: The call argument whose value > 1 turns classifier-free guidance on (and the negative prompt with it).
    cfg_scale: ClassVar[str] = "guidance_scale"

    # -- checks -----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """:meth:`Host.check`, then :meth:`check_pipeline`, then :meth:`check_call_arguments`."""
        super().check()
        self.check_pipeline()
        self.check_call_arguments()

    def check_pipeline(self) -> None:
        """The pipeline's components (:attr:`components`) and what the injector needs; a family extends it with what
        its denoiser needs."""
        note = self.components_note or f"{type(self).__name__} cannot drive it"
        check_components(self.pipe, self.components, note)
        self.injector.check(self)

    def check_call_arguments(self) -> None:
        """What every family checks alike (:func:`~ait2i.hosts.checks.check_call`); a family extends it."""
        check_call(self)

    def latents_shape(self) -> tuple[int, ...] | None:
        """The shape ``latents`` must have for this call (``None``: not checked)."""
        return None

    # -- text side (one CLIP tokenizer; families with another override) ---------------------------------------
    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def text(self) -> str:
        convert = getattr(self.pipe, "maybe_convert_prompt", None)  # multi-vector textual-inversion placeholders
        return convert(self.prompt, self.pipe.tokenizer) if convert is not None else self.prompt

    # -- family hooks -----------------------------------------------------------------------------------------
    def cond_from_encode(self, result) -> torch.Tensor:
        """The conditional embeddings from ``encode_prompt``'s result (before classifier-free concatenation)."""
        return result[0]

    def start_latents(self, result) -> torch.Tensor:
        """The start latents from ``prepare_latents``'s result."""
        return result

    def with_start_latents(self, result, latents: torch.Tensor):
        """``prepare_latents``'s result with the start latents replaced."""
        return latents

    def preparations(self) -> dict[str, Callable]:
        """More pipeline methods to wrap: ``{name: handler(result)}``, each handler keeps what it needs.

        ``get_timesteps`` (image-to-image pipelines: the loop's timesteps after ``strength``) is kept by default.
        """
        return {"get_timesteps": self._keep_timesteps}

    def ready_after(self) -> ReadyAfter:
        """The pipeline method after which the guided pass has all it needs (step 0 is updated then)."""
        return START_LATENTS

    def _keep_timesteps(self, result) -> None:
        self._loop_timesteps = result[0]

    def capture(self, reads: Reads):
        """Context manager installing attention capture on what :meth:`reads` returned; yields the store.

        The store is started and stopped around :meth:`denoise` and returns ``(b, h, w, L)`` maps.
        """
        raise NotImplementedError

    def denoise(self, u: torch.Tensor, t, step: int, rows: torch.Tensor | None, cond: torch.Tensor) -> None:
        """The guided conditional forward pass on the model input ``u`` (rows ``rows`` of the batch)."""
        raise NotImplementedError

    def loop_timesteps(self) -> list:
        """The timesteps the pipeline's loop will run (after ``strength``; a family may cut them further)."""
        loop = self._loop_timesteps if self._loop_timesteps is not None else self.pipe.scheduler.timesteps
        return list(loop)

    def cond_rows(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The conditional half of a tensor the pipeline prepared for its (possibly doubled) batch, rows ``rows``.

        Under classifier-free guidance the pipeline's batch is ``[unconditional ; conditional]``: the last ``B``.
        """
        x = x[-self.cond.shape[0] :]
        return x if rows is None else x[rows]

    def on_callback_outputs(self, outputs: dict) -> None:
        """Follow what the user's callback changed (e.g. ``prompt_embeds``) so the guided pass sees it too."""
        emb = outputs.get("prompt_embeds")
        if isinstance(emb, torch.Tensor) and self.cond is not None:
            b = self.cond.shape[0]
            if emb.shape[0] == 2 * b:
                self.cond = emb[b:]
            elif emb.shape[0] == b:
                self.cond = emb

    def reset(self) -> None:
        """Per-call state of a family (called at the start of :meth:`run`)."""

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self, cfg, make_engine: EngineFactory):
        pipe, kw = self.pipe, dict(self.kwargs)
        self.check_config(cfg)  # a read option this host would ignore, refused before anything runs
        self.notes += [n for n in [check_scheduler(pipe.scheduler, self.schedulers)] if n]  # before anything runs
        self.reset()
        self._cfg = cfg
        self._loop_timesteps = None
        self.cond: torch.Tensor | None = None
        self.engine = None
        self._stack = ExitStack()
        with self._stack:
            self._wrap_preparations(make_engine)
            out = self.injector.call(self, kw)
        if self.engine is None:
            raise RuntimeError(f"{type(pipe).__name__} never prepared its latents through prepare_latents")
        return out, self.engine

    def _wrap_preparations(self, make_engine: EngineFactory) -> None:
        """Wrap ``encode_prompt``, ``prepare_latents`` and :meth:`preparations` on the pipeline for the call."""
        pipe = self.pipe
        ready = self.ready_after()

        def on_encode(original, *a, **k):
            result = original(*a, **k)
            self.cond = self.cond_from_encode(result).detach()
            if not torch.isfinite(self.cond).all():
                raise ValueError(
                    f"{type(pipe).__name__}: the text encoder's embeddings of the prompt hold NaN or inf (a loaded "
                    "textual-inversion embedding, LoRA or text-encoder weight with NaN?), so the denoiser would "
                    "produce a NaN image and no update could be computed; check the loaded concepts and weights"
                )
            return result

        def on_prepare_latents(original, *a, **k):
            result = original(*a, **k)
            z = self.start_latents(result)
            if ready == START_LATENTS:
                self._begin(make_engine, z)
                return self.with_start_latents(result, self._update(0, z))
            # The guided pass needs something the pipeline prepares later: own the start latents now and update
            # them in place once it is there (the pipeline's loop holds this very tensor).
            self._z0 = z.clone()
            return self.with_start_latents(result, self._z0)

        def when_ready(original, *a, **k):
            result = original(*a, **k)
            if self.engine is None:  # the first call only (a method may be called again during the loop)
                self._begin(make_engine, self._z0)
                self._z0.copy_(self._update(0, self._z0))
            return result

        self._stack.enter_context(intercept(pipe, "encode_prompt", on_encode))
        self._stack.enter_context(intercept(pipe, "prepare_latents", on_prepare_latents))
        for name, keep in self.preparations().items():
            if hasattr(pipe, name):
                self._stack.enter_context(intercept(pipe, name, keeper(keep)))
        if ready != START_LATENTS:
            self._stack.enter_context(intercept(pipe, ready.method, when_ready))

    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        """The latents the loop continues with after loop index ``i``: updated for ``i + 1`` (none after the last)."""
        return self._update(i + 1, latents) if i + 1 < len(self.loop) else latents

    def _begin(self, make_engine: EngineFactory, z: torch.Tensor) -> None:
        """Before the loop: the loop's timesteps, the attention layers at this size, the engine."""
        pipe = self.pipe
        if self.cond is None:
            raise RuntimeError(f"{type(pipe).__name__} prepared latents before encoding the prompt")
        self.loop = self.loop_timesteps()
        self.per_step = evaluations_per_step(pipe.scheduler)
        # Loop index -> engine step (second-order samplers: only first evaluations start a step).
        self.steps = {j: j // self.per_step for j in range(0, len(self.loop), self.per_step)}
        self._store = self._stack.enter_context(self.capture(self.reads(self._cfg, z)))
        self.engine = make_engine(self._attend, len(self.steps))
        self.engine.diagnostics.notes.extend(self.notes)

    def _attend(self, u: torch.Tensor, t, rows: torch.Tensor | None) -> torch.Tensor:
        cond = self.cond if rows is None else self.cond[rows]
        self._store.start()
        try:
            self.denoise(u, t, self._loop_index, rows, cond)
        except StopForward:
            pass
        finally:
            self._store.stop()
        return self._store.maps()

    def _update(self, j: int, z: torch.Tensor) -> torch.Tensor:
        """Latents for loop index ``j``: updated in the model-input space if ``j`` starts a guided step."""
        if (j in self.steps) != starts_step(self.pipe.scheduler):
            raise RuntimeError(f"{type(self.pipe.scheduler).__name__}: loop index {j} is out of step")
        if j not in self.steps:  # a second evaluation of a second-order step: the step started earlier
            return z
        k = self.steps[j]
        if not self.engine.needs_step(k):
            return z
        t = self.loop[j]
        self._loop_index = j
        c = input_scale(self.pipe.scheduler, t, z)
        if c == 1.0:
            return self.engine.step(k, t, z)
        u = (z.float() * c).to(z.dtype)
        delta = self.engine.step(k, t, u).float() - u.float()  # exactly 0 where nothing moved (recording, skips)
        return (z.float() + delta / c).to(z.dtype) if bool(delta.any()) else z
