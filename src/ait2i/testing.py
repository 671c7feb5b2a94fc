"""Tiny random Stable Diffusion components built from configs, for tests and the overhead benchmark.

The components follow the diffusers ``get_dummy_components`` recipe (``block_out_channels=(32, 64)``), with the
real CLIP vocabulary shipped in ``ait2i/data/clip-tokenizer`` so that token indices, word pieces and padding to
77 behave as in Stable Diffusion. Nothing here touches the network.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch


def clip_tokenizer_dir() -> Path:
    """Folder holding ``vocab.json`` and ``merges.txt`` of the SD 1.x CLIP tokenizer (package data)."""
    return Path(str(resources.files("ait2i") / "data" / "clip-tokenizer"))


def clip_tokenizer(model_max_length: int = 77):
    """The SD 1.x CLIP tokenizer, built offline from the package's vocabulary files."""
    from transformers import CLIPTokenizer

    d = clip_tokenizer_dir()
    return CLIPTokenizer(
        str(d / "vocab.json"), str(d / "merges.txt"), pad_token="<|endoftext|>", model_max_length=model_max_length
    )


def make_scheduler(name: str = "ddim"):
    """DDIM or PNDM with Stable Diffusion 1.x's scheduler settings."""
    from diffusers import DDIMScheduler, PNDMScheduler

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if name == "pndm":
        return PNDMScheduler(**common, skip_prk_steps=True, steps_offset=1)
    raise ValueError(f"unknown scheduler {name!r}; expected 'ddim' or 'pndm'")


def tiny_sd_components(scheduler: str = "ddim", seed: int = 0, cross_attention_dim: int = 32) -> dict:
    """Random tiny components of a ``StableDiffusionPipeline`` (64x64 images, 32x32 latents).

    Cross-attention runs at 16x16 (down block 1, mid block, up block 0), as 16x16 is read at 512 px in SD 1.x.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=2,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            hidden_size=cross_attention_dim,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            pad_token_id=49407,
            vocab_size=49408,
        )
    )
    return {
        "unet": unet,
        "scheduler": make_scheduler(scheduler),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sd_pipeline(scheduler: str = "ddim", seed: int = 0):
    """A ``StableDiffusionPipeline`` on :func:`tiny_sd_components`, on the CPU, progress bar off."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(scheduler, seed), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_clip_model(seed: int = 0):
    """A random ``CLIPModel`` (width 32, 2 layers, 32x32 images, patch 8), SD 1.x vocabulary, for metric tests."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    text = {**layers, "vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {**layers, "image_size": 32, "patch_size": 8}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
