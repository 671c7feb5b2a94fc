"""Cost of attention guidance: vanilla sampling, diffusers' Attend-and-Excite pipeline, our A&E, our AI-T2I.

All variants run in ONE process on the same components, prompt, seeds and step count, repeated and interleaved
(the order rotates every repetition, after one untimed warm-up call each), so that they share the machine's state.
Reported: the median seconds per image, the ratios to vanilla and to diffusers' A&E, and the peak memory of each
variant measured alone in a fresh subprocess (peak RSS from ``resource.getrusage`` on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU). Both the wall-clock and the process's CPU time are recorded; on the
CPU the ratios use CPU time (with one thread it is what the variant costs, whatever else the machine runs), on a GPU
wall time (``--clock`` overrides).

``--family`` picks the pipeline family: ``sd15`` (``StableDiffusionPipeline``, the default), ``sdxl``
(``StableDiffusionXLPipeline``), ``sd3`` (``StableDiffusion3Pipeline``), ``pixart`` (``PixArtSigmaPipeline``) or
``flux`` (``FluxPipeline``).
diffusers' ``StableDiffusionAttendAndExcitePipeline`` exists for SD 1.x only, so the "diffusers A&E" variant and
column are SD 1.5's only; the other families compare vanilla, our A&E and our AI-T2I.

Targets: our A&E <= 0.8x diffusers' A&E pipeline; AI-T2I <= 1.0x diffusers' A&E; AI-T2I <= 1.5x vanilla (every
family).

Usage::

    python benchmarks/overhead.py --repeats 3                       # tiny random SD 1.x pipeline, CPU
    python benchmarks/overhead.py --family sdxl --steps 10 --repeats 2   # tiny random SDXL pipeline, CPU
    python benchmarks/overhead.py --full-size --device cuda --dtype float16 --out results.md
    python benchmarks/overhead.py --family sd3 --full-size --device cuda --dtype float16 --height 1024 --width 1024
    python benchmarks/overhead.py --family flux --full-size --device cuda --dtype bfloat16 --steps 28 --seeds 0
    python benchmarks/overhead.py --model path/or/hub-id --device cuda
    python benchmarks/overhead.py --full-size --height 256 --width 256 --steps 4 --variants vanilla ours-ait2i \
        --methods ait2i-fast --output-type latent --no-memory     # a preset timed beside the default

``--methods`` adds any registered method or preset file (box-free) as a further variant, timed and reported like
``ours-ait2i`` (the subjects of ``--subjects``).

``--full-size`` builds randomly initialised components with the architecture of the published configs (no
download): the speed of a real checkpoint without its weights.

- ``sd15``: Stable Diffusion 1.5 (UNet 320/640/1280/1280, CLIP ViT-L/14, the SD autoencoder; 512x512 images,
  16x16 attention).
- ``sdxl``: SDXL base 1.0 (UNet 320/640/1280 with 1/2/10 transformer layers and head dims 5/10/20, cross-attention
  dim 2048, ``text_time`` added conditions 256/2816; CLIP ViT-L and OpenCLIP bigG text encoders; the SDXL
  autoencoder; 1024x1024 images).
- ``sd3``: SD3-medium (MM-DiT of 24 blocks, 24 heads of 64, joint attention dim 4096, caption projection 1536,
  pooled projection 2048, patch 2, 16 latent channels, ``pos_embed_max_size`` 192; CLIP-L and CLIP-G with
  projections; ``text_encoder_3=None``, i.e. without T5, whose 4096-wide slots are then zeros; the 16-channel SD3
  autoencoder; 1024x1024 images).
- ``pixart``: PixArt-Sigma XL-2 1024 (28 blocks, 16 heads of 72, cross-attention dim 1152, caption channels 4096,
  patch 2; the SDXL autoencoder; 1024x1024 images) with a T5 encoder of T5-XXL's width (d_model 4096, 64 heads of
  64, gated-GELU d_ff 10240) but only ``PIXART_T5_LAYERS`` layers (T5-XXL has 24) and the tiny test tokenizer's
  vocabulary: the text encoder runs once per call, outside the guided loop, the same for every variant.
- ``flux``: FLUX.1-dev (19 double-stream and 38 single-stream blocks, 24 heads of 128, joint attention dim 4096,
  pooled projection 768, guidance embedding, rotary axes 16/56/56, 64 packed channels; CLIP-L; the 16-channel Flux
  autoencoder; dynamic-shift flow matching; 1024x1024 images) with the same shallow T5-XXL-wide stand-in as
  ``pixart``. About 12 B transformer parameters: building it takes ~48 GB of host memory (float32 before the cast)
  and ~24 GB of GPU memory in bfloat16 (Flux overflows in float16).

On the CPU pass a reduced ``--height/--width/--steps``; the real sizes need a GPU (``--device cuda --dtype
float16``). Random weights never meet the A&E refinement thresholds, so the A&E variants run every refinement
iteration (20 at steps 0, 10 and 20): the worst case, the same work for both.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ait2i.hosts.schedulers import SCHEDULER_NAMES

VARIANTS = ("vanilla", "diffusers-ae", "ours-ae", "ours-ait2i")
FAMILIES = ("sd15", "sdxl", "sd3", "pixart", "flux")
#: Scheduler of each family when ``--scheduler`` is not given (``"default"``: the pipeline's own).
DEFAULT_SCHEDULER = {"sd15": "ddim", "sdxl": "euler", "sd3": "default", "pixart": "dpm", "flux": "default"}
#: Families that sample with their own flow-matching scheduler only.
FLOW_FAMILIES = ("sd3", "flux")
FAMILY_NAMES = {
    "sd15": "SD 1.5",
    "sdxl": "SDXL base",
    "sd3": "SD3-medium (no T5)",
    "pixart": "PixArt-Sigma",
    "flux": "FLUX.1-dev",
}
#: Encoder layers of the full-size PixArt's T5 stand-in (T5-XXL's width, not its 24 layers).
PIXART_T5_LAYERS = 2
LABELS = {
    "vanilla": "vanilla pipeline",
    "diffusers-ae": "diffusers StableDiffusionAttendAndExcitePipeline",
    "ours-ae": 'ait2i method="attend-and-excite"',
    "ours-ait2i": 'ait2i method="ait2i"',
}
#: Prefix of the variants ``--methods`` adds: ``method:<registered name or preset file>``.
METHOD_PREFIX = "method:"


def label(variant: str) -> str:
    if variant.startswith(METHOD_PREFIX):
        return f'ait2i method="{variant[len(METHOD_PREFIX) :]}"'
    return LABELS[variant]


# -- components ---------------------------------------------------------------------------------------------------
def sd15_components(scheduler: str = "ddim", seed: int = 0) -> dict:
    """Randomly initialised components with the architecture of Stable Diffusion 1.5 (published configs)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ait2i.testing import sd_components

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    return sd_components(unet, vae, text_encoder, scheduler)


def _clip_text_config(kind: str):
    """Published CLIP text-encoder configs: ``"L"`` (ViT-L/14, SD 1.x/SDXL/SD3) and ``"G"`` (OpenCLIP bigG/14)."""
    from transformers import CLIPTextConfig

    ids = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    if kind == "L":
        return CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              hidden_act="quick_gelu", projection_dim=768, **ids)  # fmt: skip
    return CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                          hidden_act="gelu", projection_dim=1280, **ids)  # fmt: skip


def _sdxl_vae(latent_channels: int = 4, **extra):
    """The SD/SDXL autoencoder architecture (128/256/512/512, 2 layers per block; scale factor 8)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=latent_channels, sample_size=1024, **extra,
    )  # fmt: skip


def sdxl_components(scheduler: str = "euler", seed: int = 0) -> dict:
    """Randomly initialised components with the architecture of SDXL base 1.0 (published configs)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ait2i.testing import clip_bang_tokenizer, clip_tokenizer, make_scheduler

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True, norm_num_groups=32,
        addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )  # fmt: skip
    return {
        "unet": unet,
        "vae": _sdxl_vae(scaling_factor=0.13025, force_upcast=True),
        "text_encoder": CLIPTextModel(_clip_text_config("L")),
        "text_encoder_2": CLIPTextModelWithProjection(_clip_text_config("G")),
        "tokenizer": clip_tokenizer(),
        "tokenizer_2": clip_bang_tokenizer(),
        "scheduler": make_scheduler(scheduler),
        "image_encoder": None,
        "feature_extractor": None,
    }


def sd3_components(seed: int = 0) -> dict:
    """Random components with the architecture of SD3-medium (published configs), without T5 (``text_encoder_3``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    from ait2i.testing import clip_bang_tokenizer, clip_tokenizer

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        pos_embed_max_size=192,
    )  # fmt: skip
    vae = _sdxl_vae(16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        "text_encoder": CLIPTextModelWithProjection(_clip_text_config("L")),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": CLIPTextModelWithProjection(_clip_text_config("G")),
        "tokenizer_2": clip_bang_tokenizer(),
        "text_encoder_3": None,
        "tokenizer_3": None,
    }


def pixart_components(scheduler: str = "dpm", seed: int = 0) -> dict:
    """Random components with the architecture of PixArt-Sigma XL-2 1024 and a shallow T5-XXL-wide encoder.

    The tokenizer is the tiny SentencePiece test tokenizer (``tests/data/t5-tokenizer``, 200 pieces), so the T5
    embedding table is small; its width (4096), heads and feed-forward are T5-XXL's, its depth ``PIXART_T5_LAYERS``.
    """
    from diffusers import DDPMScheduler, PixArtTransformer2DModel

    from ait2i.hosts.schedulers import scheduler_from_name
    from ait2i.testing import t5_tokenizer

    tok = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        cross_attention_dim=1152, caption_channels=4096, sample_size=128, patch_size=2, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000, attention_bias=True,
        activation_fn="gelu-approximate", interpolation_scale=2, use_additional_conditions=False,
    )  # fmt: skip
    betas = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000).config
    return {
        "transformer": transformer,
        "vae": _sdxl_vae(scaling_factor=0.13025),
        "text_encoder": _t5_stand_in(tok),
        "tokenizer": tok,
        "scheduler": scheduler_from_name(scheduler, betas),
    }


def _t5_stand_in(tok):
    """A T5 encoder of T5-XXL's width, heads and gated-GELU feed-forward, ``PIXART_T5_LAYERS`` layers deep."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(vocab_size=len(tok), d_model=4096, d_kv=64, d_ff=10240, num_layers=PIXART_T5_LAYERS, num_heads=64,
                 feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
    ).eval()  # fmt: skip


def flux_components(seed: int = 0) -> dict:
    """Random components with the architecture of FLUX.1-dev (published configs) and the shallow T5 stand-in."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from ait2i.testing import clip_tokenizer, t5_tokenizer

    tok = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    return {
        "transformer": transformer,
        "vae": _sdxl_vae(
            16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False
        ),
        "scheduler": scheduler,
        "text_encoder": CLIPTextModel(_clip_text_config("L")),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": _t5_stand_in(tok),
        "tokenizer_2": tok,
    }


def build_pipeline(args):
    """The pipeline of ``args.family`` (tiny random, ``--full-size`` random or ``--model``), moved and cast."""
    import diffusers

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    fam = args.family
    if args.model:
        from ait2i.models import load_model

        pipe = load_model(args.model, args.dtype, args.scheduler)
    elif args.full_size:
        if fam == "sd15":
            pipe = diffusers.StableDiffusionPipeline(**sd15_components(args.scheduler), requires_safety_checker=False)
        elif fam == "sdxl":
            pipe = diffusers.StableDiffusionXLPipeline(**sdxl_components(args.scheduler))
        elif fam == "sd3":
            pipe = diffusers.StableDiffusion3Pipeline(**sd3_components())
        elif fam == "flux":
            pipe = diffusers.FluxPipeline(**flux_components())
        else:
            pipe = diffusers.PixArtSigmaPipeline(**pixart_components(args.scheduler))
    else:
        from ait2i import testing

        if fam == "sd15":
            pipe = testing.tiny_sd_pipeline(args.scheduler)
        elif fam == "sdxl":
            pipe = testing.tiny_sdxl_pipeline(args.scheduler)
        elif fam == "sd3":
            pipe = testing.tiny_sd3_pipeline()
        elif fam == "flux":
            pipe = testing.tiny_flux_pipeline()
        else:
            pipe = testing.tiny_pixart_pipeline("sigma", args.scheduler)
    pipe = pipe.to(args.device) if dtype == torch.float32 else pipe.to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipelines(args):
    """The host pipeline and (SD 1.x only) diffusers' A&E pipeline sharing its components (same weights, memory)."""
    pipe = build_pipeline(args)
    if "diffusers-ae" not in args.variants:
        return pipe, None
    from diffusers import StableDiffusionAttendAndExcitePipeline

    keep = ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor")
    ae = StableDiffusionAttendAndExcitePipeline(
        **{k: v for k, v in pipe.components.items() if k in keep}, requires_safety_checker=False
    )
    ae.set_progress_bar_config(disable=True)
    return pipe, ae


def resolve_guidance_scale(args, pipe) -> None:
    """``--guidance-scale`` unset: the pipeline's own default (7.5 SD 1.5, 5.0 SDXL, 7.0 SD3, 4.5 PixArt, 3.5 Flux)."""
    if args.guidance_scale is None:
        args.guidance_scale = inspect.signature(pipe.__call__).parameters["guidance_scale"].default


# -- one generation per variant ------------------------------------------------------------------------------------
def make_runner(args, pipe, ae):
    """``run(variant, seed, steps) -> np.ndarray`` image(s); subjects resolved once with the pipeline's tokenizer."""
    import ait2i
    from ait2i.hosts import host_for
    from ait2i.subjects import resolve_subjects

    subjects = resolve_subjects(host_for(pipe).subject_tokenizer(pipe), args.prompt, args.subjects)
    # A&E guides one token per subject (the noun's last piece, as in the A&E benchmark's indices).
    indices = [s.tokens[-1] for s in subjects]
    resolve_guidance_scale(args, pipe)
    common = {"guidance_scale": args.guidance_scale, "output_type": args.output_type}
    if args.height:
        common.update(height=args.height, width=args.width or args.height)
    if args.family == "pixart":
        common["clean_caption"] = False  # needs bs4 and ftfy; the same text for every variant anyway
        if args.height:
            common["use_resolution_binning"] = False  # else the size snaps to the model's native bins

    def run(variant: str, seed: int, steps: int):
        g = torch.Generator("cpu").manual_seed(seed)
        kw = dict(common, generator=g, num_inference_steps=steps)
        if variant == "vanilla":
            out = pipe(args.prompt, **kw)
        elif variant == "diffusers-ae":
            out = ae(args.prompt, token_indices=indices, **kw)
        elif variant == "ours-ae":
            out = ait2i.generate(pipe, args.prompt, subjects=[[i] for i in indices], method="attend-and-excite", **kw)
        elif variant == "ours-ait2i":
            out = ait2i.generate(pipe, args.prompt, subjects=args.subjects, method="ait2i", **kw)
        elif variant.startswith(METHOD_PREFIX):
            method = variant[len(METHOD_PREFIX) :]
            out = ait2i.generate(pipe, args.prompt, subjects=args.subjects, method=method, **kw)
        else:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        _sync(args.device)
        images = out.images
        return images.float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)

    return run, indices


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- memory: one variant alone, in this (child) process ---------------------------------------------------------------
def measure_memory(args) -> dict:
    """Peak memory of one call of ``args.memory_variant`` (after the pipelines are built and warmed up).

    GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the process's peak RSS
    (``VmHWM``) after resetting it through ``/proc/self/clear_refs`` (Linux >= 4.0), so that building the model
    does not mask the call's own peak; where that reset is impossible, ``resource.getrusage`` ``ru_maxrss`` (the
    lifetime peak, which includes loading).
    """
    import resource

    pipe, ae = build_pipelines(args)
    run, _ = make_runner(args, pipe, ae)
    run(args.memory_variant, args.seeds[0], min(args.steps, 2))  # warm-up, as in the timed run
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _status_kib("VmRSS") * 1024
        reset = _reset_peak_rss()
    run(args.memory_variant, args.seeds[0], args.steps)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        return {"kind": "cuda max_memory_allocated", "peak_mb": peak / 2**20, "base_mb": base / 2**20}
    if reset:
        return {"kind": "peak RSS", "peak_mb": _status_kib("VmHWM") / 1024, "base_mb": base / 2**20}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; lifetime peak
    return {"kind": "peak RSS (lifetime)", "peak_mb": peak_kb / 1024, "base_mb": base / 2**20}


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (``VmHWM``); False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


def memory_in_subprocesses(argv: list[str], variants) -> dict[str, dict]:
    out = {}
    for v in variants:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--memory-variant", v]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("MEMORY ")]
        if res.returncode != 0 or not lines:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            print(f"memory measurement of {v} failed: {' | '.join(tail)}", file=sys.stderr)
            out[v] = {}
        else:
            out[v] = json.loads(lines[-1][len("MEMORY ") :])
        print(f"  memory {v}: {out[v]}", flush=True)
    return out


# -- the timed run ------------------------------------------------------------------------------------------------
def time_variants(args, pipe, ae) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Seconds per image of each variant and repetition, by wall clock and by this process's CPU time."""
    run, _ = make_runner(args, pipe, ae)
    for v in args.variants:  # warm-up: lazy initialisation, allocator, kernels; not timed
        run(v, args.seeds[0], min(args.steps, 3))
    times = {v: {"wall": [], "cpu": []} for v in args.variants}
    first: dict[str, np.ndarray] = {}
    for rep in range(args.repeats):
        k = rep % len(args.variants)
        for v in [*args.variants[k:], *args.variants[:k]]:  # the order rotates every repetition
            w0, c0 = time.perf_counter(), time.process_time()
            imgs = [run(v, s, args.steps) for s in args.seeds]
            wall = (time.perf_counter() - w0) / len(args.seeds)
            cpu = (time.process_time() - c0) / len(args.seeds)
            times[v]["wall"].append(wall)
            times[v]["cpu"].append(cpu)
            first.setdefault(v, np.concatenate(imgs))
            print(f"  repeat {rep + 1}/{args.repeats} {v:<13} {wall:8.3f} s/image wall, {cpu:8.3f} CPU", flush=True)
    diffs = {}
    if "diffusers-ae" in first and "ours-ae" in first:
        diffs["ours-ae"] = float(np.abs(first["ours-ae"].astype(np.float64) - first["diffusers-ae"]).max())
    return times, diffs


def ratio_clock(args) -> str:
    """Which clock the ratios use: CPU time on the CPU (robust on a shared machine), wall time on a GPU."""
    if args.clock != "auto":
        return args.clock
    return "wall" if args.device.startswith("cuda") else "cpu"


def table(args, times, memory, diffs) -> str:
    """The markdown table of medians, ratios and peak memory, and the target lines."""
    clock = ratio_clock(args)
    med = {v: {c: statistics.median(ts[c]) for c in ts} for v, ts in times.items()}
    ref = {v: med[v][clock] for v in med}
    van, ae = ref.get("vanilla"), ref.get("diffusers-ae")
    mem_kind = next((m["kind"] for m in memory.values() if m), "peak memory")
    head = ["variant", "median wall s/image (min–max)", "median CPU s/image", f"× vanilla ({clock})",
            f"× diffusers A&E ({clock})", f"{mem_kind} (MiB)", "before the call (MiB)"]  # fmt: skip
    if "diffusers-ae" not in med:  # diffusers' A&E pipeline exists for SD 1.x only
        del head[4]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for v in args.variants:
        m = memory.get(v) or {}
        w = times[v]["wall"]
        cells = [
            label(v),
            f"{med[v]['wall']:.3f} ({min(w):.3f}–{max(w):.3f})",
            f"{med[v]['cpu']:.3f}",
            f"{ref[v] / van:.2f}" if van else "-",
            *([f"{ref[v] / ae:.2f}" if ae else "-"] if "diffusers-ae" in med else []),
            f"{m['peak_mb']:.0f}" if m else "-",
            f"{m['base_mb']:.0f}" if m else "-",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    lines = [*rows, ""]
    for v, name, target in (("ours-ae", "our A&E", 0.8), ("ours-ait2i", "AI-T2I", 1.0)):
        if ae and v in ref:
            r = ref[v] / ae
            verdict = "met" if r <= target else "NOT met"
            lines.append(f"- {name} / diffusers' A&E = **{r:.2f}** ({clock} time; target ≤ {target}: {verdict})")
    if van and "ours-ait2i" in ref:
        r = ref["ours-ait2i"] / van
        verdict = "met" if r <= 1.5 else "NOT met"
        lines.append(f"- AI-T2I / vanilla = **{r:.2f}** ({clock} time; target ≤ 1.5: {verdict})")
    for v in args.variants:
        if van and v.startswith(METHOD_PREFIX):
            lines.append(f"- {label(v)} / vanilla = **{ref[v] / van:.2f}** ({clock} time)")
    if "ours-ae" in diffs:
        lines.append(
            f"- max |our A&E image − diffusers' A&E image| (first repeat, output_type {args.output_type!r}): "
            f"{diffs['ours-ae']:.2e}"
        )
    return "\n".join(lines)


def describe(args, pipe) -> str:
    import diffusers

    name = FAMILY_NAMES[args.family]
    if args.full_size and args.family == "pixart":
        name += f" (T5 stand-in: d_model 4096, {PIXART_T5_LAYERS} layers)"
    model = args.model or (f"{name}-sized random components" if args.full_size else f"tiny random {name} pipeline")
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    kind = "UNet" if hasattr(pipe, "unet") else "transformer"
    size = getattr(pipe, "default_sample_size", None) or denoiser.config.sample_size
    size = size * pipe.vae_scale_factor
    h = args.height or size
    params = sum(p.numel() for p in denoiser.parameters()) / 1e6
    params_s = f"{params:.1f}" if params >= 1 else f"{params:.3f}"
    return (
        f"model: {model} ({type(pipe).__name__}, {kind} {params_s} M parameters, {h}x{args.width or h} px), "
        f"scheduler {type(pipe.scheduler).__name__}, {args.steps} steps, guidance scale {args.guidance_scale}, "
        f"prompt {args.prompt!r}, subjects {args.subjects}, seeds {args.seeds}, {args.repeats} repeats, "
        f"output_type {args.output_type!r}; device {args.device} ({args.dtype}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), diffusers {diffusers.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=None, help="hub id or local diffusers folder of the --family (default: tiny random pipeline)"
    )
    p.add_argument("--family", default="sd15", choices=FAMILIES, help="pipeline family (default sd15)")
    p.add_argument(
        "--full-size", action="store_true", help="random components of the family's published size (use a GPU)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument(
        "--scheduler",
        default=None,
        choices=("default", *SCHEDULER_NAMES),
        help="default: ddim (sd15), euler (sdxl), dpm (pixart), the pipeline's flow matching (sd3, flux)",
    )
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds, each one image per call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt", default="a red cat and a blue frog")
    p.add_argument("--subjects", nargs="+", default=["red cat", "blue frog"])
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's own")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--output-type", default="np", choices=("np", "latent"))
    p.add_argument(
        "--variants", nargs="+", default=None, choices=VARIANTS, help="default: all (diffusers-ae: sd15 only)"
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated registered methods or preset files timed as extra variants (subjects as for ours-ait2i),"
        " e.g. ait2i-fast,ait2i-paper",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--clock",
        default="auto",
        choices=("auto", "wall", "cpu"),
        help="clock of the ratios (auto: CPU time of this process on the CPU, wall time on a GPU)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--memory-variant", default=None, help=argparse.SUPPRESS)  # child mode
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    if args.repeats < 1 or args.steps < 1 or not args.seeds:
        p.error("--repeats and --steps must be >= 1 and --seeds non-empty")
    if args.dtype != "float32" and not args.device.startswith("cuda"):
        p.error(f"--dtype {args.dtype} needs --device cuda")
    if args.variants is None:
        args.variants = [v for v in VARIANTS if v != "diffusers-ae" or args.family == "sd15"]
    elif "diffusers-ae" in args.variants and args.family != "sd15":
        p.error("diffusers' StableDiffusionAttendAndExcitePipeline exists for SD 1.x only (--family sd15)")
    for name in [m.strip() for m in (args.methods or "").split(",") if m.strip()]:
        import ait2i

        try:
            cfg = ait2i.get_method(name)
        except (KeyError, ValueError, OSError) as e:
            p.error(f"--methods {name!r}: {e}")
        if cfg.uses_boxes:
            p.error(f"--methods {name!r} reads per-subject boxes; this benchmark times box-free methods only")
        args.variants.append(METHOD_PREFIX + name)
    if args.scheduler is None or (args.scheduler == "default" and not args.model and args.family not in FLOW_FAMILIES):
        args.scheduler = DEFAULT_SCHEDULER[args.family]
    if args.family in FLOW_FAMILIES and args.scheduler != "default" and not args.model:
        p.error(f"--family {args.family} samples with its own flow-matching scheduler (--scheduler default)")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_variant:
        print("MEMORY " + json.dumps(measure_memory(args)), flush=True)
        return 0

    pipe, ae = build_pipelines(args)
    resolve_guidance_scale(args, pipe)
    header = describe(args, pipe)
    print(header, flush=True)
    times, diffs = time_variants(args, pipe, ae)
    del pipe, ae
    memory = {}
    if not args.no_memory:
        child = [a for a in argv if a != "--no-memory"]
        if "--out" in child:
            i = child.index("--out")
            del child[i : i + 2]
        memory = memory_in_subprocesses(child, args.variants)
    command = "python benchmarks/overhead.py " + " ".join(argv)
    md = f"`{command}`\n\n{header}\n\n{table(args, times, memory, diffs)}\n"
    print("\n" + md)
    if args.out:
        from ait2i.io import atomic_path

        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text(md)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
