"""The diffusers adapter: drive an unmodified ``StableDiffusionPipeline`` with the guidance engine (DESIGN §6).

The pipeline runs its own loop (classifier-free guidance, scheduler, VAE decoding, output types). The adapter

1. prepares the initial noise exactly as the pipeline would (same generator draws) and applies step 0's update to
   it before the loop, so that the guided steps are those of the reference implementations;
2. updates the latents for step ``i + 1`` from the pipeline's ``callback_on_step_end`` at the end of step ``i``;
3. captures cross-attention with processors installed for the call only, restored afterwards (also on error).
"""

from __future__ import annotations

import inspect
import math

import torch

from .attention import StopForward, capture_attention, select_layers
from .config import GuidanceConfig, NoGuidanceConfig, get_config
from .engine import Diagnostics, GuidanceEngine
from .subjects import end_token_index, resolve_subjects

SUPPORTED = "StableDiffusionPipeline and pipelines with its interface (Stable Diffusion 1.x/2.x)"


def _check_pipeline(pipe) -> None:
    needed = ("unet", "tokenizer", "scheduler", "encode_prompt", "prepare_latents")
    missing = [a for a in needed if not hasattr(pipe, a)]
    if missing:
        raise TypeError(f"{type(pipe).__name__} is not supported (no {', '.join(missing)}); supported: {SUPPORTED}")
    if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
        raise TypeError(
            f"{type(pipe).__name__}.__call__ has no `callback_on_step_end`, which ait2i drives the denoising loop "
            f"through; supported: {SUPPORTED}. Upgrade diffusers or use a pipeline that exposes it."
        )


def _attn_res(cfg: GuidanceConfig, height: int, width: int) -> tuple[int, int]:
    if cfg.attn_res is None:
        return math.ceil(height / 32), math.ceil(width / 32)
    return cfg.attn_res, cfg.attn_res


def generate(pipe, prompt: str, subjects=None, method="ait2i", *, record_maps=(), **pipeline_kwargs):
    """Generate with AI-T2I (or Attend-and-Excite, or nothing) steering an unmodified diffusers pipeline.

    Args:
        pipe (`StableDiffusionPipeline`): the host pipeline; left as it was after the call.
        prompt (`str`): one prompt (use ``num_images_per_prompt`` and a list of generators for several seeds).
        subjects (`list`): phrases of the prompt (``["red car", "bench"]``), token-index lists, or
            :class:`~ait2i.subjects.Subject` objects. Required unless ``method="none"``.
        method (`str` or `GuidanceConfig`, *optional*, defaults to `"ait2i"`): ``"ait2i"``, ``"ait2i-paper"``,
            ``"attend-and-excite"``, ``"none"`` or a config object.
        record_maps (`Sequence[int]`, *optional*): steps whose subject attention maps are kept in
            ``output.diagnostics.maps`` (for pictures).
        **pipeline_kwargs: passed to the pipeline (``generator``, ``num_inference_steps``, ``guidance_scale``,
            ``height``, ``width``, ``negative_prompt``, ``latents``, ``output_type``, ...).

    Returns:
        The pipeline's output, with ``.diagnostics`` (:class:`~ait2i.engine.Diagnostics`) added.
    """
    cfg = get_config(method)
    _check_pipeline(pipe)
    if not isinstance(prompt, str):
        raise ValueError(
            "prompt must be one string; pass several seeds with num_images_per_prompt and a list of generators"
        )
    for k in ("prompt", "prompt_embeds", "callback", "callback_steps"):
        if k in pipeline_kwargs:
            raise ValueError(f"`{k}` cannot be passed through ait2i.generate; give the prompt as text")
    record_maps = tuple(int(s) for s in record_maps)
    unguided = isinstance(cfg, NoGuidanceConfig)
    if unguided and not record_maps:
        resolved = resolve_subjects(pipe.tokenizer, _expand(pipe, prompt), subjects) if subjects else []
        out = pipe(prompt, **pipeline_kwargs)
        out.diagnostics = Diagnostics(cfg.name, cfg, resolved)
        return out
    text = _expand(pipe, prompt)
    resolved = resolve_subjects(pipe.tokenizer, text, subjects)
    eot = end_token_index(pipe.tokenizer, text)

    kw = dict(pipeline_kwargs)
    unet, device = pipe.unet, pipe._execution_device
    height = kw.get("height") or unet.config.sample_size * pipe.vae_scale_factor
    width = kw.get("width") or unet.config.sample_size * pipe.vae_scale_factor
    if height % pipe.vae_scale_factor or width % pipe.vae_scale_factor:
        raise ValueError(f"height and width must be multiples of {pipe.vae_scale_factor}, got {height}x{width}")
    latent_hw = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    res = _attn_res(cfg, height, width)
    layers = select_layers(unet, latent_hw, res, cfg.from_where)

    n_per = kw.get("num_images_per_prompt", 1) or 1
    steps = kw.get("num_inference_steps", 50)
    generator = kw.get("generator")
    if isinstance(generator, list) and len(generator) != n_per:
        raise ValueError(f"{len(generator)} generators for num_images_per_prompt={n_per}; give one per image")

    # Conditional text embeddings for the guided forward pass, encoded as the pipeline encodes them.
    cond, _ = pipe.encode_prompt(prompt, device, n_per, False, None, lora_scale=None, clip_skip=kw.get("clip_skip"))
    # Timesteps as the pipeline will set them (the schedule length sets the step sizes; PNDM has N + 1).
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, device, kw.get("timesteps"), kw.get("sigmas"))
    timesteps = list(timesteps)
    # The pipeline's own initial noise: the same generator draws as its prepare_latents, before sigma scaling.
    noise = kw.get("latents")
    if noise is None:
        noise = pipe.prepare_latents(n_per, unet.config.in_channels, height, width, cond.dtype, device, generator)
        noise = noise / pipe.scheduler.init_noise_sigma
    else:
        if not torch.isfinite(noise).all():
            raise ValueError("latents contain NaN or inf")
        noise = noise.to(device=device, dtype=cond.dtype)
    sigma0 = pipe.scheduler.init_noise_sigma

    extra = {}
    if kw.get("cross_attention_kwargs"):
        extra["cross_attention_kwargs"] = kw["cross_attention_kwargs"]

    with capture_attention(unet, layers, res) as store:

        def attend(z, t, rows):
            emb = cond if rows is None else cond[rows]
            store.start()
            try:
                unet(pipe.scheduler.scale_model_input(z, t), t, encoder_hidden_states=emb, **extra)
            except StopForward:
                pass
            finally:
                store.stop()
            return store.maps()

        engine = GuidanceEngine(cfg, resolved, attend, eot, len(timesteps), record_maps)
        z0 = engine.step(0, timesteps[0], noise * sigma0)
        start = z0 / sigma0 if engine.needs_step(0) else noise

        user_cb = kw.pop("callback_on_step_end", None)
        inputs = list(kw.pop("callback_on_step_end_tensor_inputs", None) or ["latents"])
        if "latents" not in inputs:
            inputs.append("latents")

        def on_step_end(p, i, t, callback_kwargs):
            if i + 1 < len(timesteps):
                callback_kwargs["latents"] = engine.step(i + 1, timesteps[i + 1], callback_kwargs["latents"])
            out = {"latents": callback_kwargs["latents"]}
            if user_cb is not None:
                out.update(user_cb(p, i, t, callback_kwargs) or {})
            return out

        kw["latents"] = start
        out = pipe(prompt, callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=inputs, **kw)
    out.diagnostics = engine.diagnostics
    return out


def _expand(pipe, prompt: str) -> str:
    """The prompt as the text encoder sees it (multi-vector textual-inversion placeholders expanded)."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    return convert(prompt, pipe.tokenizer) if convert is not None else prompt
