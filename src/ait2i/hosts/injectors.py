"""How the latent update gets into a pipeline's loop: wrapping pipeline methods for a call, and the two injectors.

The update of step ``i + 1`` is computed at the end of step ``i`` by the host's
:meth:`~ait2i.hosts.driver.DrivenHost.after_step`; an injector is where that call sits:

- :data:`CALLBACK` (:class:`CallbackInjector`): from ``callback_on_step_end`` (every pipeline that has it), after
  the user's own callback, if any, so the update is computed on the latents the denoiser will see;
- :data:`SCHEDULER_STEP` (:class:`SchedulerStepInjector`): for a pipeline without that argument (PixArt-α / PixArt-Σ,
  GLIGEN), its scheduler instance's ``step`` is wrapped for the duration of the call only (the owner-thread-aware
  :func:`intercept`, the original's signature kept, since pipelines inspect it for ``eta`` and ``generator``): the
  ``prev_sample`` that step ``i`` returns is updated for step ``i + 1`` before the loop continues. The scheduler's
  result is updated in the form it has: the tuple of ``return_dict=False`` (its first element) or the output object
  (its ``prev_sample``; a copy, the scheduler's object is not changed). Loop index ``j`` is the number of ``step``
  calls made so far (one per loop iteration, also for second-order samplers), as the callback's ``i``. The
  pipeline's legacy ``callback(step, t, latents)`` runs after ``scheduler.step`` returned, so it sees the
  **updated** latents (those the next step denoises); it is therefore allowed (in-place changes it makes to them
  reach the loop, but not the guided pass already run on them).

The injector is independent of what the denoiser is: a host composes one (its ``injector`` class attribute).
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar


@contextmanager
def intercept(obj, name: str, wrapper: Callable) -> Iterator[None]:
    """Shadow the method ``obj.name`` on the instance by ``wrapper(original, *args, **kwargs)``; always restore.

    Only calls from the thread that installed it go through ``wrapper``; any other thread gets the original.
    """
    had = name in obj.__dict__
    previous = obj.__dict__.get(name)
    original = getattr(obj, name)
    owner = threading.get_ident()

    def call(*a, **k):
        if threading.get_ident() != owner:
            return original(*a, **k)
        return wrapper(original, *a, **k)

    try:  # pipelines inspect some methods' signatures (scheduler.step: eta, generator)
        call.__signature__ = inspect.signature(original)
    except (TypeError, ValueError):
        pass
    obj.__dict__[name] = call
    try:
        yield
    finally:
        if had:
            obj.__dict__[name] = previous
        else:
            obj.__dict__.pop(name, None)


def keeper(keep: Callable) -> Callable:
    """An :func:`intercept` wrapper that hands the method's result to ``keep(result)`` and returns it unchanged."""

    def wrapper(original, *a, **k):
        result = original(*a, **k)
        keep(result)
        return result

    return wrapper


def callback_inputs(user_cb, user_inputs) -> list[str]:
    """The tensor inputs the pipeline must hand our callback: the user's (or their callback object's) + latents."""
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback  # diffusers classes, at call time

    if isinstance(user_cb, (PipelineCallback, MultiPipelineCallbacks)):
        user_inputs = user_cb.tensor_inputs  # what the pipeline itself would use for such an object
    return list(dict.fromkeys([*(user_inputs or ["latents"]), "latents"]))


class Injector:
    """Where a host's update of the latents sits in the pipeline's loop.

    Class attributes:
        refused (`dict[str, str]`): call arguments this injector cannot work with, with the reason.
    """

    refused: ClassVar[dict[str, str]] = {}

    def check(self, host) -> None:
        """Refuse, before anything runs, a pipeline or call arguments this injector cannot drive."""
        for key, why in self.refused.items():
            if host.kwargs.get(key) is not None:
                raise ValueError(f"{type(host.pipe).__name__}: `{key}` is not supported with guidance ({why})")

    def call(self, host, kw: dict):
        """Run ``host.pipe`` on ``host.prompt`` with ``kw``; ``host.after_step(i, latents)`` updates the loop."""
        raise NotImplementedError


class CallbackInjector(Injector):
    """The update runs in ``callback_on_step_end`` (after the user's callback, whose outputs the host follows)."""

    refused = {
        "callback": "deprecated by diffusers; use callback_on_step_end",
        "callback_steps": "deprecated by diffusers; use callback_on_step_end",
    }

    def check(self, host) -> None:
        super().check(host)
        pipe = host.pipe
        if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
            raise TypeError(
                f"{type(pipe).__name__}.__call__ has no `callback_on_step_end`, which ait2i drives the denoising "
                "loop through; upgrade diffusers (>= 0.30)"
            )

    def call(self, host, kw: dict):
        user_cb = kw.pop("callback_on_step_end", None)
        inputs = callback_inputs(user_cb, kw.pop("callback_on_step_end_tensor_inputs", None))

        def on_step_end(p, i, t, callback_kwargs):
            out = {}
            if user_cb is not None:
                out = dict(user_cb(p, i, t, callback_kwargs) or {})
                host.on_callback_outputs(out)
            out["latents"] = host.after_step(i, out.get("latents", callback_kwargs["latents"]))
            return out

        return host.pipe(host.prompt, callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=inputs, **kw)


class SchedulerStepInjector(Injector):
    """The update runs inside the scheduler's ``step`` (pipelines without ``callback_on_step_end``)."""

    def check(self, host) -> None:
        super().check(host)
        if not callable(getattr(host.pipe.scheduler, "step", None)):
            raise TypeError(f"{type(host.pipe.scheduler).__name__} has no step method")

    def call(self, host, kw: dict):
        steps_done = 0

        def on_step(original, *a, **k):
            nonlocal steps_done
            out = original(*a, **k)
            i, steps_done = steps_done, steps_done + 1
            if host.engine is None:  # a step before the loop's latents were prepared: not the denoising loop
                return out
            if isinstance(out, tuple):
                new = host.after_step(i, out[0])
                return out if new is out[0] else (new, *out[1:])
            new = host.after_step(i, out.prev_sample)
            return out if new is out.prev_sample else dataclasses.replace(out, prev_sample=new)

        with intercept(host.pipe.scheduler, "step", on_step):
            return host.pipe(host.prompt, **kw)


#: The injector of pipelines with ``callback_on_step_end``.
CALLBACK = CallbackInjector()
#: The injector of pipelines whose loop calls ``scheduler.step`` without ``callback_on_step_end``.
SCHEDULER_STEP = SchedulerStepInjector()
