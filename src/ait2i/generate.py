"""``ait2i.generate``: steer an unmodified diffusers pipeline with a registered method.

It picks the host adapter for the pipeline (refusing unsupported pipelines, schedulers and arguments before
anything runs), resolves the subjects on the host's tokenizer, builds the engine once the host knows the loop,
runs the pipeline, and returns the pipeline's output extended with the diagnostics (a declared dataclass, see
:func:`guided_output_class`). One pipeline object runs one guided call at a time (a lock per pipeline).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers
import threading
import weakref
from contextlib import nullcontext

from .boxes import box_notes
from .engine import Diagnostics, GuidanceEngine
from .hosts import host_for, regional_pipelines
from .methods import box_methods, get_method
from .regional import RegionalAdapters, RegionalHooks, regional_note
from .subjects import resolve_subjects, subject_list


class _Guard:
    """A lock that knows its holder: a second call from the holding thread is an error, not a deadlock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner: int | None = None


_GUARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GUARDS_LOCK = threading.Lock()


def _guarded_objects(pipe) -> list:
    """What a guided call changes: the pipeline's methods, its denoiser's processors (shared across pipelines
    built from the same components) and its ControlNet."""
    objs = [pipe, *(getattr(pipe, a, None) for a in ("unet", "transformer", "controlnet"))]
    return sorted({id(o): o for o in objs if o is not None}.values(), key=id)  # one global order: no deadlock


@contextlib.contextmanager
def pipeline_lock(pipe):
    """Serialise guided calls that share a pipeline or its denoiser; re-entry from the same thread raises."""
    me = threading.get_ident()
    guards = []
    with _GUARDS_LOCK:
        for obj in _guarded_objects(pipe):
            guard = _GUARDS.get(obj)
            if guard is None:
                guard = _GUARDS[obj] = _Guard()
            if guard.owner == me:
                raise RuntimeError(
                    f"ait2i.generate is already running on this {type(obj).__name__} in this thread (called from "
                    "a callback?); a guided call cannot start inside another on the same model"
                )
            guards.append(guard)
    taken = []
    try:
        for guard in guards:
            guard.lock.acquire()
            guard.owner = me
            taken.append(guard)
        yield
    finally:
        for guard in reversed(taken):
            guard.owner = None
            guard.lock.release()


def _rebuild(output_class: type, values: dict):
    return guided_output_class(output_class)(**values)


@functools.cache
def guided_output_class(output_class: type) -> type:
    """The pipeline's output dataclass extended with a ``diagnostics`` field (declared, cached per class).

    ``GuidedStableDiffusionPipelineOutput(images=..., nsfw_content_detected=..., diagnostics=...)`` is a
    ``StableDiffusionPipelineOutput``: everything that reads the pipeline's output keeps working.
    """

    def __reduce__(self):  # picklable (torch.save, multiprocessing) although the class is made at run time
        return _rebuild, (output_class, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    cls = dataclasses.make_dataclass(
        f"Guided{output_class.__name__}",
        [("diagnostics", Diagnostics | None, dataclasses.field(default=None))],
        bases=(output_class,),
        namespace={
            "__doc__": f"{output_class.__name__} with the guidance ``diagnostics`` of the call.",
            "__reduce__": __reduce__,
        },
    )
    cls.__module__ = __name__
    return cls


def _with_diagnostics(out, diagnostics: Diagnostics, return_dict: bool):
    if not return_dict:  # the pipeline's tuple, then the diagnostics
        return (*out, diagnostics)
    if not dataclasses.is_dataclass(out):
        raise TypeError(f"the pipeline returned {type(out).__name__}, not a dataclass output")
    values = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return guided_output_class(type(out))(**values, diagnostics=diagnostics)


def generate(
    pipe, prompt: str, subjects=None, method="ait2i", *, record_maps=(), regional_adapters=None, **pipeline_kwargs
):
    """Generate with AI-T2I (or any registered method) steering an unmodified diffusers pipeline.

    Args:
        pipe: a supported diffusers pipeline (``ait2i.hosts.supported_pipelines()``); left as it was.
        prompt (`str`): one prompt (use ``num_images_per_prompt`` and a list of generators for several seeds).
        subjects (`list`): phrases of the prompt (``["red car", "bench"]``), token indices (``[2, 5]``: one token
            per subject, as Attend-and-Excite's ``token_indices``; ``[[2, 3], [5]]``: grouped), dicts or
            :class:`~ait2i.subjects.Subject` objects (which may carry a box). Required unless ``method="none"``.
        method (`str` or `GuidanceConfig`, *optional*, defaults to `"ait2i"`): a registered method name
            (``ait2i.available_methods()``) or a config object.
        record_maps (`Sequence[int]`, *optional*): steps whose subject attention maps are kept in
            ``output.diagnostics.maps`` (for pictures).
        regional_adapters (`Mapping[str, str | int]` or :class:`~ait2i.regional.RegionalAdapters`, *optional*):
            LoRA adapter name -> its subject (phrase or index in ``subjects``): each named adapter acts only where
            its subject is and on its subject's tokens (:mod:`ait2i.regional`; ``StableDiffusionPipeline`` only).
        **pipeline_kwargs: passed to the pipeline (``generator``, ``num_inference_steps``, ``guidance_scale``,
            ``height``, ``width``, ``negative_prompt``, ``cross_attention_kwargs``, ``callback_on_step_end``
            (functions and diffusers' ``PipelineCallback`` objects), ``return_dict``, ...).

    Returns:
        With ``return_dict=True`` (default): the pipeline's output class extended with ``diagnostics``
        (:class:`~ait2i.engine.Diagnostics`). With ``return_dict=False``: the pipeline's tuple followed by the
        diagnostics, e.g. ``(images, nsfw_content_detected, diagnostics)``.

    Raises:
        TypeError: an unsupported pipeline, scheduler or UNet (the message lists what is supported).
        ValueError: bad subjects, an argument that cannot be guided, a box for a method that reads no boxes.
    """
    cfg = get_method(method)
    if not isinstance(prompt, str):
        raise ValueError(
            "prompt must be one string; pass several seeds with num_images_per_prompt and a list of generators"
        )
    if "prompt" in pipeline_kwargs:
        raise ValueError("give the prompt as generate's second argument, not as a keyword")
    host = host_for(pipe)(pipe, prompt, pipeline_kwargs)  # refuses what it cannot guide, before anything runs
    record_maps = tuple(record_maps)
    bad = [s for s in record_maps if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0]
    if bad:
        raise ValueError(f"record_maps must be int step indices >= 0, got {bad}")
    record_maps = tuple(int(s) for s in record_maps)
    text = host.text
    subjects = subject_list(subjects)  # a tensor, array or generator: the list it holds, read once
    resolved = resolve_subjects(host.tokenizer, text, subjects) if (subjects or cfg.guides) else []
    boxed = [s.label for s in resolved if s.box is not None]
    if boxed and not cfg.uses_boxes:
        raise ValueError(
            f"subjects {boxed} have boxes, but method {cfg.name!r} does not read boxes; methods that do: "
            f"{box_methods() or 'none registered'}"
        )
    notes = box_notes(resolved) if boxed else []
    regional = _regional_hooks(host, pipe, prompt, subjects, resolved, regional_adapters, pipeline_kwargs)
    if regional is not None:
        notes.append(regional_note(regional, resolved))
    return_dict = pipeline_kwargs.get("return_dict", True)
    if not cfg.guides and not record_maps:  # nothing to do during the loop: the pipeline as it is
        with pipeline_lock(pipe), regional or nullcontext():  # not inside another thread's guided call
            out = pipe(prompt, **pipeline_kwargs)
        return _with_diagnostics(out, Diagnostics(cfg.name, cfg, resolved, notes=host.notes + notes), return_dict)
    eot = host.eot_index

    def make_engine(attend, num_steps: int) -> GuidanceEngine:
        beyond = [s for s in record_maps if not 0 <= s < num_steps]
        if beyond:
            raise ValueError(f"record_maps {beyond}: this run has {num_steps} steps (0..{num_steps - 1})")
        return GuidanceEngine(cfg, resolved, attend, eot, num_steps, record_maps)

    with pipeline_lock(pipe), regional or nullcontext():
        out, engine = host.run(cfg, make_engine)
    engine.diagnostics.notes.extend(notes)
    engine.finish(stacklevel=2)  # skipped updates: one note each and one warning, to generate's caller
    return _with_diagnostics(out, engine.diagnostics, return_dict)


def _regional_hooks(host, pipe, prompt, given, resolved, spec, pipeline_kwargs):
    """The call's :class:`~ait2i.regional.RegionalHooks`, or ``None``; refuses, before anything runs, a host that
    cannot place adapters and a mapping that does not fit the pipeline's adapters or the subjects."""
    spec = RegionalAdapters.parse(spec)
    if spec is None:
        return None
    if not type(host).regional_adapters:
        raise TypeError(
            f"regional_adapters is not supported for {type(pipe).__name__}; supported: {regional_pipelines()}"
        )
    if not resolved:
        raise ValueError("regional_adapters needs subjects: each adapter names the subject it belongs to")
    for key in ("prompt_embeds", "negative_prompt_embeds"):
        if pipeline_kwargs.get(key) is not None:
            raise ValueError(f"regional_adapters needs the prompt encoded by the pipeline; {key} is not supported")
    images = pipeline_kwargs.get("num_images_per_prompt") or 1
    return RegionalHooks(pipe, spec, resolved, list(given), prompt, images)
