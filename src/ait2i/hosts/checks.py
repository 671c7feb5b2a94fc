"""Refusals shared by the host families: what a guided call cannot get right is refused before anything runs.

Each check raises `ValueError` (an argument or a state to change) or `TypeError` (a pipeline or component that is not
supported) with a message that names what is supported and how to fix it. The hosts call them from their ``check``
(:class:`~ait2i.hosts.driver.DrivenHost.check_call_arguments` runs the ones every family shares).
"""

from __future__ import annotations

import inspect
import math
import numbers

import torch

from ..subjects import format_tokens


def check_components(pipe, names, what: str) -> None:
    """Refuse a pipeline without the attributes ``names`` (components and methods the host uses).

    Raises:
        TypeError: ``"<pipeline> has no <missing>; <what>"``.
    """
    missing = [a for a in names if not hasattr(pipe, a)]
    if missing:
        raise TypeError(f"{type(pipe).__name__} has no {', '.join(missing)}; {what}")


def check_tokenizers_agree(pipe, prompt: str, first: str = "tokenizer", second: str = "tokenizer_2") -> None:
    """Refuse a prompt that two CLIP tokenizers split differently.

    SDXL and SD3 join the two CLIP encoders' hidden states position by position; subjects index the first
    tokenizer's tokens, so the second must put the same words at the same positions (a "!"-padding tokenizer splits
    "!!" in two, for one).

    Raises:
        ValueError: naming the first differing token and both token lists.
    """
    tok1, tok2 = getattr(pipe, first, None), getattr(pipe, second, None)
    if tok1 is None or tok2 is None:
        return  # one text encoder only: nothing to align
    convert = getattr(pipe, "maybe_convert_prompt", None)
    p1, p2 = ((convert(prompt, t) if convert is not None else prompt) for t in (tok1, tok2))

    def pieces(tokenizer, text: str) -> list[str]:
        ids = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length).input_ids
        return [piece.removesuffix("</w>") for piece in tokenizer.convert_ids_to_tokens(ids)]

    a, b = pieces(tok1, p1), pieces(tok2, p2)
    if a == b:
        return
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    raise ValueError(
        f"{type(pipe).__name__}: the two tokenizers split the prompt differently from token {k} on ({first}: "
        f"{a[k] if k < len(a) else '(end)'!r}, {second}: {b[k] if k < len(b) else '(end)'!r}), so a token index "
        f"would name different words in the two text encoders. {first}: {format_tokens(tok1, p1)}; {second}: "
        f"{format_tokens(tok2, p2)}. Rephrase that part of the prompt (or load a textual inversion into both)."
    )


def check_sequence_length(tokenizer, text: str, limit: int) -> None:
    """Refuse a prompt longer than the ``limit`` T5 tokens a pipeline keeps (it would truncate the end silently).

    Raises:
        ValueError: naming the length and the fixes.
    """
    n = len(tokenizer(text).input_ids)
    if n > limit:
        raise ValueError(
            f"the prompt is {n} T5 tokens (with </s>), over max_sequence_length={limit}: the pipeline truncates "
            "it, so its end and any subject there are not encoded; shorten it or raise max_sequence_length"
        )


#: Call arguments that hold a negative prompt (as text).
NEGATIVE_PROMPTS = ("negative_prompt", "negative_prompt_2", "negative_prompt_3")
#: Call arguments that are guidance scales (classifier-free, true CFG, distilled guidance, rescale).
SCALES = ("guidance_scale", "true_cfg_scale", "guidance_rescale")


def call_default(pipe, key: str):
    """The default of ``pipe.__call__``'s argument ``key`` (``None`` if it has none)."""
    p = inspect.signature(pipe.__call__).parameters.get(key)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def check_scales(pipe, kwargs: dict) -> None:
    """Refuse a guidance scale that is not a finite number (``nan`` turns classifier-free guidance off silently).

    Raises:
        ValueError: naming the argument and its value.
    """
    for key in SCALES:
        v = kwargs.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{type(pipe).__name__}: {key} must be a finite number, got {v!r}")


def check_negative_prompt(pipe, kwargs: dict, scale: str = "guidance_scale") -> None:
    """Refuse a negative prompt that the pipeline would ignore: it is used only with ``scale > 1``.

    Args:
        pipe: the pipeline (its ``__call__`` gives the default of ``scale``).
        kwargs (`dict`): the call's arguments.
        scale (`str`, *optional*, defaults to `"guidance_scale"`): the argument that turns classifier-free
            guidance on above 1 (``"true_cfg_scale"`` for Flux).

    Raises:
        ValueError: naming the negative prompt argument, the scale and the fixes.
    """
    given = [k for k in NEGATIVE_PROMPTS if kwargs.get(k)]
    if not given:
        return
    value = kwargs.get(scale)
    value = call_default(pipe, scale) if value is None else value
    if value is not None and value <= 1:
        raise ValueError(
            f"{type(pipe).__name__} uses a negative prompt only with {scale} > 1 (got {value}): {given[0]} would be "
            f"ignored by the pipeline while recorded as used; pass {scale} > 1 (e.g. 4.0) or drop {given[0]}"
        )


def latents_shape_for(kwargs: dict, default_size: int, channels: int, scale: int) -> tuple[int, int, int, int]:
    """``(images, channels, height // scale, width // scale)`` for a call's ``height``/``width`` (or the default)."""
    n = kwargs.get("num_images_per_prompt", 1) or 1
    h = kwargs.get("height") or default_size
    w = kwargs.get("width") or default_size
    return (n, channels, int(h) // scale, int(w) // scale)


#: Substrings of ``diffusers.hooks`` hook names that reuse activations across steps (first-block cache, pyramid
#: attention broadcast, FasterCache, TaylorSeer, MagCache, text KV cache, ...): the guided pass would read stale
#: activations.
CACHE_HOOK_MARKERS = ("cache", "broadcast", "fbc_")


def check_denoiser(pipe) -> None:
    """Refuse a denoiser (``pipe.unet`` or ``pipe.transformer``) whose state the guided pass cannot work with.

    - gradient checkpointing: the guided pass ends at the last read layer, so a checkpointed block would be
      recomputed in the backward pass from a forward pass that never finished;
    - a cache (``enable_cache`` or a ``diffusers.hooks`` cache hook on any submodule): the guided pass would get
      activations cached from other inputs, and the cache would see calls it does not expect.

    Raises:
        ValueError: naming what to switch off.
    """
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is None:
        return
    kind = "unet" if getattr(pipe, "unet", None) is denoiser else "transformer"
    name = type(pipe).__name__
    if getattr(denoiser, "is_gradient_checkpointing", False):
        raise ValueError(
            f"{name}: the {kind} has gradient checkpointing on, which the guided pass (a forward pass that stops at "
            f"the last read layer, then a backward pass) cannot use; call pipe.{kind}.disable_gradient_checkpointing()"
        )
    hooks = []
    for module in denoiser.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hooks += [h for h in getattr(registry, "hooks", {}) if any(m in str(h).lower() for m in CACHE_HOOK_MARKERS)]
    if getattr(denoiser, "is_cache_enabled", False) or hooks:
        what = f"cache hooks {sorted(set(hooks))}" if hooks else "a cache (enable_cache)"
        raise ValueError(
            f"{name}: the {kind} has {what}, which would give the guided pass activations cached from other "
            f"inputs; call pipe.{kind}.disable_cache() (or remove the hooks) first"
        )


def check_call(host) -> None:
    """What every family checks alike on a call: the denoiser's state (:func:`check_denoiser`), one generator per
    image, finite guidance scales, a negative prompt only where the pipeline uses it (:func:`check_negative_prompt`,
    by the host's ``cfg_scale``), start latents of the right shape (the host's ``latents_shape()``) and finite."""
    check_denoiser(host.pipe)
    n = host.kwargs.get("num_images_per_prompt", 1) or 1
    gen = host.kwargs.get("generator")
    if isinstance(gen, list) and len(gen) != n:
        raise ValueError(f"{len(gen)} generators for num_images_per_prompt={n}; give one per image")
    check_scales(host.pipe, host.kwargs)
    check_negative_prompt(host.pipe, host.kwargs, host.cfg_scale)
    latents = host.kwargs.get("latents")
    if latents is not None:
        if not isinstance(latents, torch.Tensor):
            raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
        expected = host.latents_shape()
        if expected is not None and tuple(latents.shape) != expected:
            raise ValueError(
                f"latents have shape {tuple(latents.shape)}; this call expects {expected} (images, channels, "
                "height / vae_scale_factor, width / vae_scale_factor for its height, width and "
                "num_images_per_prompt)"
            )
        if not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or inf")


def check_strength(host) -> None:
    """Refuse a ``strength`` that is not a number in [0, 1], or one that leaves no denoising step.

    The pipeline runs ``int(num_inference_steps * strength)`` steps; below 1 its loop is empty and the guided run
    would fail late ("loop index 0 is out of step"), so say what to raise up front.

    Raises:
        ValueError: naming strength, num_inference_steps and the fix.
    """
    kw, pipe = host.kwargs, host.pipe
    strength = kw.get("strength", call_default(pipe, "strength"))
    if strength is None:
        return
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(f"{type(pipe).__name__}: strength must be a finite number in [0, 1], got {strength!r}")
    if kw.get("timesteps") is not None or kw.get("sigmas") is not None:
        return  # the schedule is the caller's: the pipeline counts its steps from it
    steps = kw.get("num_inference_steps") or call_default(pipe, "num_inference_steps")
    if isinstance(steps, numbers.Integral) and math.floor(steps * strength) < 1:
        raise ValueError(
            f"{type(pipe).__name__}: strength={strength} x num_inference_steps={steps} leaves no denoising step (the "
            f"pipeline runs int({steps} x {strength}) = {int(steps * strength)} steps); raise strength or "
            "num_inference_steps so that their product is at least 1"
        )
