"""The ShapesWorld text-to-image model: a small Stable Diffusion (1.x layout) trained on ShapesWorld scenes.

Components, as in SD 1.x, so that ``StableDiffusionPipeline.from_pretrained`` loads the shipped folder and every
ait2i code path runs on it unchanged:

- tokenizer: the real SD 1.x CLIP tokenizer (same ids, word pieces, start/end tokens, padding to 77);
- text encoder: a 2-layer ``CLIPTextModel`` of width 128 (full 49,408-token vocabulary), trained from scratch;
- UNet: ``UNet2DConditionModel`` on 32x32 with ``block_out_channels=(32, 64, 64)``; cross-attention at 16x16
  (where guidance reads the maps, as at 16x16 in SD at 512 px) and at 8x8;
- autoencoder: an ``AutoencoderKL`` with one block and no downsampling (``vae_scale_factor`` 1, scaling factor 1,
  3 latent channels), trained so that its latents *are* the pixels in [-1, 1]: the encoder maps an image to itself,
  the decoder maps (slightly noisy) pixels to the clean image. Diffusion therefore runs in pixel space;
- scheduler: DDIM (or PNDM) with a cosine (``squaredcos_cap_v2``) beta schedule and v-prediction, both better
  suited than SD's latent-tuned ``scaled_linear`` betas to a 32x32 pixel-space model.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

# One place for the architecture; train.py builds from these and the shipped configs record them.
TEXT_WIDTH = 128  # CLIP hidden size = UNet cross_attention_dim
TEXT_LAYERS = 2
TEXT_HEADS = 4
UNET_CHANNELS = (32, 64, 64)  # 32x32, 16x16 (cross-attn), 8x8 (cross-attn)
LATENT_CHANNELS = 3  # the latents are RGB pixels
VAE_CHANNELS = 32
SCHEDULER_KWARGS = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def build_text_encoder():
    """A randomly initialised ``CLIPTextModel`` (2 layers, width 128, 4 heads, SD's vocabulary and 77 positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_HEADS,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(cfg)


def build_unet():
    """A randomly initialised 32x32 ``UNet2DConditionModel`` with cross-attention at 16x16 and 8x8."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,  # diffusers' legacy name: 4 heads
        norm_num_groups=8,
    )


def build_vae():
    """A randomly initialised single-block ``AutoencoderKL`` (no downsampling, 3 latent channels, scale 1)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(VAE_CHANNELS,),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.0,
        mid_block_add_attention=False,
    )


def build_scheduler(name: str = "ddim"):
    """The model's sampling scheduler: ``"ddim"`` or ``"pndm"``, both with the training noise schedule."""
    from diffusers import DDIMScheduler, PNDMScheduler

    if name == "ddim":
        return DDIMScheduler(**SCHEDULER_KWARGS)
    if name == "pndm":
        kw = {k: v for k, v in SCHEDULER_KWARGS.items() if k not in ("clip_sample",)}
        return PNDMScheduler(**kw, skip_prk_steps=True)
    raise ValueError(f"unknown scheduler {name!r}; expected 'ddim' or 'pndm'")


def pretrained_dir() -> Path:
    """The shipped diffusers-format folder of the ShapesWorld model (package data)."""
    return Path(str(resources.files("ait2i") / "shapes" / "pretrained"))


def model_folder(path: str | Path | None = None) -> Path:
    """The diffusers folder ``path`` (the shipped model when unset), checked to hold a ``model_index.json``."""
    folder = Path(path) if path is not None else pretrained_dir()
    if not (folder / "model_index.json").is_file():
        raise ValueError(
            f"{folder} is not a diffusers folder (no model_index.json); pass the folder written by "
            "`python -m ait2i.shapes.train` (its `pipeline/` subfolder) or leave path unset for the shipped model"
        )
    return folder


def load_pipeline(path: str | Path | None = None, scheduler: str = "ddim", dtype: torch.dtype = torch.float32):
    """Loads the ShapesWorld model as a ``StableDiffusionPipeline``, offline.

    Args:
        path (`str` or `Path`, *optional*): a diffusers folder; defaults to :func:`pretrained_dir`.
        scheduler (`str`, *optional*, defaults to `"ddim"`): `"ddim"` or `"pndm"`.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): weights are stored in float16 and
            loaded in this dtype (float32 runs on any CPU).

    Returns:
        `StableDiffusionPipeline` with no safety checker and the progress bar off.
    """
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

    if scheduler not in ("ddim", "pndm"):
        raise ValueError(f"unknown scheduler {scheduler!r}; expected 'ddim' or 'pndm'")
    folder = model_folder(path)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder),
        torch_dtype=dtype,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    if scheduler == "ddim" and not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    elif scheduler == "pndm" and not isinstance(pipe.scheduler, PNDMScheduler):
        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe
