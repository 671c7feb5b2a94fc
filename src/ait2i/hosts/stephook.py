"""Guidance for pipelines without ``callback_on_step_end``: the update runs inside the scheduler's ``step``.

:class:`StepHookHost` is :class:`~ait2i.hosts.base.CallbackHost` with one thing changed: where the latents of step
``i + 1`` are updated. ``CallbackHost`` does it from ``callback_on_step_end`` at the end of step ``i``; a pipeline
without that argument (PixArt-α / PixArt-Σ in diffusers 0.42) gets, for the duration of the call only, its
scheduler instance's ``step`` wrapped (the owner-thread-aware :func:`~ait2i.hosts.base.intercept`, the original's
signature kept, since pipelines inspect it for ``eta`` and ``generator``): the ``prev_sample`` that step ``i``
returns is updated for step ``i + 1`` before the pipeline's loop continues. Both paths share one function,
:meth:`StepHookHost.after_step`. Everything else is ``CallbackHost``'s own machinery, reused: the wrapped
``encode_prompt`` / ``prepare_latents`` / preparations (the step-0 update on ``prepare_latents``' result),
``_begin`` (loop timesteps, capture, engine, notes), ``_update`` (the update in the model-input space), ``_attend``.

The scheduler's result is updated in the form it has: the tuple of ``return_dict=False`` (its first element) or
the output object (its ``prev_sample``; a copy, the scheduler's object is not changed). Loop index ``j`` is the
number of ``step`` calls made so far (one per loop iteration, also for second-order samplers), as the callback's
``i``. The pipeline's legacy ``callback(step, t, latents)`` runs after ``scheduler.step`` returned, so it sees the
**updated** latents (those the next step denoises); it is therefore allowed (in-place changes it makes to them
reach the loop, but not the guided pass already run on them).
"""

from __future__ import annotations

import dataclasses
import inspect
from contextlib import ExitStack

import torch

from .base import CallbackHost, EngineFactory, Host, _keeper, intercept
from .schedulers import check_scheduler


class StepHookHost(CallbackHost):
    """A host for pipelines whose loop is ``scheduler.step`` without ``callback_on_step_end``.

    A family subclass names its pipelines and overrides, as for ``CallbackHost``, :meth:`denoise`,
    :meth:`capture` and what it keeps (:meth:`_cond_from_encode`, :meth:`preparations`, ...).
    """

    pipelines = ()  # abstract
    #: ``callback`` / ``callback_steps`` are the pipeline's only callback here, and see the updated latents.
    refused = {k: v for k, v in CallbackHost.refused.items() if k not in ("callback", "callback_steps")}

    def check(self) -> None:
        Host.check(self)  # CallbackHost.check asks for a UNet and callback_on_step_end
        pipe = self.pipe
        missing = [a for a in ("scheduler", "encode_prompt", "prepare_latents") if not hasattr(pipe, a)]
        if missing:
            raise TypeError(f"{type(pipe).__name__} has no {', '.join(missing)}; {type(self).__name__} cannot drive it")
        if not callable(getattr(pipe.scheduler, "step", None)):
            raise TypeError(f"{type(pipe.scheduler).__name__} has no step method")
        n = self.kwargs.get("num_images_per_prompt", 1) or 1
        gen = self.kwargs.get("generator")
        if isinstance(gen, list) and len(gen) != n:
            raise ValueError(f"{len(gen)} generators for num_images_per_prompt={n}; give one per image")
        latents = self.kwargs.get("latents")
        if latents is not None and not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or inf")

    # -- the one function both paths share ----------------------------------------------------------------------
    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        """The latents the loop continues with after loop index ``i``: updated for ``i + 1`` (none after the last)."""
        return self._update(i + 1, latents) if i + 1 < len(self.loop) else latents

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self, cfg, make_engine: EngineFactory):
        pipe, kw = self.pipe, dict(self.kwargs)
        self.notes += [n for n in [check_scheduler(pipe.scheduler)] if n]  # before anything runs
        self.reset()
        self._cfg = cfg
        self._loop_timesteps = None
        self.cond: torch.Tensor | None = None
        self.engine = None
        self._steps_done = 0
        self._stack = ExitStack()
        with self._stack:
            self._wrap_preparations(make_engine)
            step = pipe.scheduler.step
            self._stack.enter_context(intercept(pipe.scheduler, "step", self._on_step))
            _keep_signature(pipe.scheduler.__dict__["step"], step)
            out = pipe(self.prompt, **kw)
        if self.engine is None:
            raise RuntimeError(f"{type(pipe).__name__} never prepared its latents through prepare_latents")
        return out, self.engine

    def _wrap_preparations(self, make_engine: EngineFactory) -> None:
        """Wrap ``encode_prompt``, ``prepare_latents`` and :meth:`preparations` on the pipeline (as CallbackHost)."""
        pipe = self.pipe

        def on_encode(original, *a, **k):
            result = original(*a, **k)
            self.cond = self._cond_from_encode(result).detach()
            return result

        def on_prepare_latents(original, *a, **k):
            result = original(*a, **k)
            z = self._start_latents(result)
            if self.ready_after() == "prepare_latents":
                self._begin(make_engine, z)
                return self._with_start_latents(result, self._update(0, z))
            self._z0 = z.clone()  # updated in place once the guided pass has what it needs
            return self._with_start_latents(result, self._z0)

        def when_ready(original, *a, **k):
            result = original(*a, **k)
            self._begin(make_engine, self._z0)
            self._z0.copy_(self._update(0, self._z0))
            return result

        self._stack.enter_context(intercept(pipe, "encode_prompt", on_encode))
        self._stack.enter_context(intercept(pipe, "prepare_latents", on_prepare_latents))
        for name, keep in self.preparations().items():
            if hasattr(pipe, name):
                self._stack.enter_context(intercept(pipe, name, _keeper(keep)))
        if self.ready_after() != "prepare_latents":
            self._stack.enter_context(intercept(pipe, self.ready_after(), when_ready))

    def _on_step(self, original, *a, **k):
        out = original(*a, **k)
        i, self._steps_done = self._steps_done, self._steps_done + 1
        if self.engine is None:  # a step before the loop's latents were prepared: not the denoising loop
            return out
        if isinstance(out, tuple):
            new = self.after_step(i, out[0])
            return out if new is out[0] else (new, *out[1:])
        new = self.after_step(i, out.prev_sample)
        return out if new is out.prev_sample else dataclasses.replace(out, prev_sample=new)


def _keep_signature(wrapper, original) -> None:
    """Give ``wrapper`` (the installed shadow of a method) the original's signature, which pipelines inspect."""
    try:
        wrapper.__signature__ = inspect.signature(original)
    except (TypeError, ValueError):
        pass
