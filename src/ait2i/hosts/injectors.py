"""Guidance for pipelines without ``callback_on_step_end``: the update runs inside the scheduler's ``step``.

:class:`StepHookHost` is :class:`~ait2i.hosts.base.CallbackHost` with one thing changed: where the latents of step
``i + 1`` are updated. ``CallbackHost`` does it from ``callback_on_step_end`` at the end of step ``i``; a pipeline
without that argument (PixArt-α / PixArt-Σ in diffusers 0.42) gets, for the duration of the call only, its
scheduler instance's ``step`` wrapped (the owner-thread-aware :func:`~ait2i.hosts.base.intercept`, the original's
signature kept, since pipelines inspect it for ``eta`` and ``generator``): the ``prev_sample`` that step ``i``
returns is updated for step ``i + 1`` before the pipeline's loop continues. Both paths share one function,
:meth:`StepHookHost.after_step`. Everything else is ``CallbackHost``'s own machinery, reused: the wrapped
``encode_prompt`` / ``prepare_latents`` / preparations (the step-0 update on ``prepare_latents``' result),
``_begin`` (loop timesteps, capture, engine, notes), ``_update`` (the update in the model-input space), ``_attend``;
only :meth:`StepHookHost.call` differs.

The scheduler's result is updated in the form it has: the tuple of ``return_dict=False`` (its first element) or
the output object (its ``prev_sample``; a copy, the scheduler's object is not changed). Loop index ``j`` is the
number of ``step`` calls made so far (one per loop iteration, also for second-order samplers), as the callback's
``i``. The pipeline's legacy ``callback(step, t, latents)`` runs after ``scheduler.step`` returned, so it sees the
**updated** latents (those the next step denoises); it is therefore allowed (in-place changes it makes to them
reach the loop, but not the guided pass already run on them).
"""

from __future__ import annotations

import dataclasses

from .base import CallbackHost, Host, intercept


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
        self.check_call_arguments()

    def call(self, kw: dict):
        """Run the pipeline with its scheduler's ``step`` wrapped: :meth:`after_step` updates what it returns."""
        self._steps_done = 0
        with intercept(self.pipe.scheduler, "step", self._on_step):
            return self.pipe(self.prompt, **kw)

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
