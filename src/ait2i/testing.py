"""Tiny random Stable Diffusion components built from configs, for tests and the overhead benchmark.

The components follow the diffusers ``get_dummy_components`` recipe (``block_out_channels=(32, 64)``), with the
real CLIP vocabulary shipped in ``ait2i/data/clip-tokenizer`` so that token indices, word pieces and padding to
77 behave as in Stable Diffusion. Nothing here touches the network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .shapes.model import clip_tokenizer, clip_tokenizer_dir  # the world's tokenizer loader, for tests


def make_scheduler(name: str = "ddim"):
    """A supported scheduler by short name (``ait2i.hosts.schedulers.SCHEDULER_NAMES``), SD 1.x settings."""
    from diffusers import DDIMScheduler

    from .hosts.schedulers import scheduler_from_name

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    ddim = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return ddim if name == "ddim" else scheduler_from_name(name, ddim.config)


def tiny_unet(seed: int = 0, cross_attention_dim: int = 32, in_channels: int = 4, attention_type: str = "default"):
    """A random tiny ``UNet2DConditionModel`` (32x32 latents, cross-attention at 16x16; ``"gated"``: GLIGEN's)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        attention_type=attention_type,
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=2,
    )


def tiny_controlnet(seed: int = 0, cross_attention_dim: int = 32):
    """A random tiny ``ControlNetModel`` matching :func:`tiny_unet` (control images 64x64)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=cross_attention_dim,
        conditioning_embedding_out_channels=(16, 32),
        norm_num_groups=2,
    )
    with torch.no_grad():  # a fresh ControlNet's zero convolutions ignore the control image: make them count
        zero = [net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
        for p in (p for m in zero for p in m.parameters()):
            p.normal_(0, 0.5)
    return net


def tiny_sd_components(scheduler: str = "ddim", seed: int = 0, cross_attention_dim: int = 32) -> dict:
    """Random tiny components of a ``StableDiffusionPipeline`` (64x64 images, 32x32 latents).

    Cross-attention runs at 16x16 (down block 1, mid block, up block 0), as 16x16 is read at 512 px in SD 1.x.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = tiny_unet(seed, cross_attention_dim)
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
    return sd_components(unet, vae, text_encoder, scheduler)


def sd_components(unet, vae, text_encoder, scheduler: str = "ddim") -> dict:
    """The ``StableDiffusionPipeline`` components around a UNet, autoencoder and text encoder: the SD 1.x CLIP
    tokenizer, the named scheduler, no safety checker."""
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


#: Tiny pipeline kinds of :func:`tiny_sd_pipeline` -> diffusers class.
PIPELINES = {
    "text2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "inpaint9": "StableDiffusionInpaintPipeline",
    "controlnet": "StableDiffusionControlNetPipeline",
    "gligen": "StableDiffusionGLIGENPipeline",
}


def tiny_sd_pipeline(scheduler: str = "ddim", seed: int = 0, kind: str = "text2img"):
    """A Stable Diffusion pipeline of ``kind`` (:data:`PIPELINES`) on tiny random components, CPU, no progress bar.

    ``"inpaint9"`` has the 9-channel UNet of inpainting checkpoints, ``"inpaint"`` a plain 4-channel one.
    """
    import diffusers

    comps = tiny_sd_components(scheduler, seed)
    if kind == "inpaint9":
        comps["unet"] = tiny_unet(seed, in_channels=9)
    if kind == "controlnet":
        comps["controlnet"] = tiny_controlnet(seed)
    if kind == "gligen":
        comps["unet"] = tiny_unet(seed, attention_type="gated")
        comps.pop("image_encoder")
    if kind not in PIPELINES:
        raise ValueError(f"unknown pipeline kind {kind!r}; expected one of {sorted(PIPELINES)}")
    pipe = getattr(diffusers, PIPELINES[kind])(**comps, requires_safety_checker=False)
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


# -- tiny pipelines of the other host families (the overhead benchmark's --family; copies of the tests' builders) --
def clip_bang_tokenizer(model_max_length: int = 77):
    """The shipped CLIP vocabulary padding with ``"!"`` (id 0), as SDXL's and SD3's second tokenizer does."""
    from transformers import CLIPTokenizer

    d = clip_tokenizer_dir()
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), pad_token="!", model_max_length=model_max_length)


_SDXL_ADDED = dict(addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
_SDXL_BLOCKS = dict(attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2))


def tiny_sdxl_pipeline(kind: str = "text2img", scheduler: str = "euler", seed: int = 0, tokenizer_2=None):
    """A random tiny ``StableDiffusionXLPipeline`` (``kind="controlnet"``: ``StableDiffusionXLControlNetPipeline``).

    diffusers' SDXL ``get_dummy_components`` recipe: a ``text_time`` UNet (two transformer layers in its
    cross-attention block, cross-attention dim 64 = the two 32-wide CLIP encoders concatenated), 64 px images, 32x32
    latents, cross-attention at 16x16.
    """
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, norm_num_groups=1, **_SDXL_BLOCKS, **_SDXL_ADDED,
    )  # fmt: skip
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=128,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=2,
    )  # fmt: skip
    text = dict(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408, hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=5, hidden_act="gelu", projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    te1 = CLIPTextModel(CLIPTextConfig(**text))
    torch.manual_seed(seed + 1)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**text))
    comps = dict(
        unet=unet, vae=vae, scheduler=make_scheduler(scheduler), text_encoder=te1, text_encoder_2=te2,
        tokenizer=clip_tokenizer(), tokenizer_2=tokenizer_2 or clip_tokenizer(),
    )  # fmt: skip
    if kind == "controlnet":
        torch.manual_seed(seed)
        net = diffusers.ControlNetModel(
            block_out_channels=(32, 64), layers_per_block=2, in_channels=4, cross_attention_dim=64,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), conditioning_embedding_out_channels=(16, 32),
            norm_num_groups=1, **_SDXL_BLOCKS, **_SDXL_ADDED,
        )  # fmt: skip
        with torch.no_grad():  # a fresh ControlNet's zero convolutions ignore the control image: make them count
            zero = [net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
            for p in (p for m in zero for p in m.parameters()):
                p.normal_(0, 0.5)
        pipe = diffusers.StableDiffusionXLControlNetPipeline(**comps, controlnet=net)
    else:
        pipe = diffusers.StableDiffusionXLPipeline(**comps, image_encoder=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(seed: int = 0, with_t5: bool = False):
    """A random tiny ``StableDiffusion3Pipeline``: two CLIP encoders (width 16), a 2-block MM-DiT on 32x32 latents
    (patch 2: a 16x16 token grid), a 1-block ``AutoencoderKL`` (scale factor 2) with ``shift_factor``; optionally a
    tiny T5 encoder (with the CLIP tokenizer standing in for T5's)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)

    def clip():
        cfg = CLIPTextConfig(
            vocab_size=49408, hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407,
        )  # fmt: skip
        return CLIPTextModelWithProjection(cfg)

    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=16, qk_norm="rms_norm",
    )  # fmt: skip
    _perturb(transformer)  # diffusers' init zeroes nothing here, but be sure
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=1.5, shift_factor=0.1,
    )  # fmt: skip
    t5 = t5_tok = None
    if with_t5:
        from transformers import T5Config, T5EncoderModel

        t5 = T5EncoderModel(T5Config(vocab_size=49408, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()
        t5_tok = clip_tokenizer(model_max_length=512)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(), tokenizer=clip_tokenizer(), text_encoder_2=clip(), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5, tokenizer_3=t5_tok,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def t5_tokenizer_dir() -> Path:
    """``tests/data/t5-tokenizer`` of a source checkout: a tiny SentencePiece-style T5 tokenizer (200 pieces)."""
    return Path(__file__).resolve().parents[2] / "tests" / "data" / "t5-tokenizer"


def t5_tokenizer():
    """The tiny SentencePiece-style T5 tokenizer of :func:`t5_tokenizer_dir` (a source checkout's test data)."""
    from transformers import AutoTokenizer

    d = t5_tokenizer_dir()
    if not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no T5 tokenizer at {d} (a source checkout's tests/data); pass tokenizer=")
    return AutoTokenizer.from_pretrained(d)


def _perturb(transformer) -> None:
    """Add small noise to every weight, so that zero-initialised modulations and outputs are non-trivial."""
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.02)


def tiny_pixart_pipeline(
    kind: str = "alpha",
    scheduler: str = "dpm",
    seed: int = 0,
    tokenizer=None,
    num_layers: int = 4,
    sample_size: int = 32,
):
    """A random tiny PixArt pipeline (``kind`` ``"alpha"`` or ``"sigma"``).

    A ``PixArtTransformer2DModel`` (width 24, ``num_layers`` blocks, patch 2), a 4-block ``AutoencoderKL`` (scale
    factor 8: 256 px -> 32x32 latents -> a 16x16 token grid), a 1-layer T5 encoder. ``tokenizer``: a T5-style
    tokenizer (default: :func:`t5_tokenizer_dir`, present in a source checkout only). Pass ``clean_caption=False``.
    """
    import diffusers
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = tokenizer if tokenizer is not None else t5_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=num_layers,
        cross_attention_dim=24, caption_channels=32, sample_size=sample_size, patch_size=2, norm_num_groups=1,
    )  # fmt: skip
    _perturb(transformer)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8,) * 4, layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=64,
    )  # fmt: skip
    encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    )
    if kind not in ("alpha", "sigma"):
        raise ValueError(f"unknown PixArt kind {kind!r}; expected 'alpha' or 'sigma'")
    cls = diffusers.PixArtAlphaPipeline if kind == "alpha" else diffusers.PixArtSigmaPipeline
    pipe = cls(
        tokenizer=tokenizer, text_encoder=encoder.eval(), vae=vae, transformer=transformer,
        scheduler=make_scheduler(scheduler),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(seed: int = 0, tokenizer=None, num_layers: int = 4, guidance_embeds: bool = True):
    """A random tiny ``FluxPipeline``: a CLIP encoder (width 16, pooled output only, as Flux uses it), a 1-layer T5
    encoder with a SentencePiece-style T5 tokenizer (default: :func:`t5_tokenizer_dir`, a source checkout's), a
    ``FluxTransformer2DModel`` with ``num_layers`` double-stream and 2 single-stream blocks (width 32, rotary axes
    4/6/6), a 1-block ``AutoencoderKL`` (scale factor 1, 4 latent channels, packed 2x2 into 16-channel tokens: a
    32x32 image is a 16x16 token grid). Pass ``height=32, width=32``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = tokenizer if tokenizer is not None else t5_tokenizer()
    torch.manual_seed(seed)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
    )  # fmt: skip
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    _perturb(transformer)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
        scaling_factor=1.5, shift_factor=0.1, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    pipe = FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip.eval(),
        tokenizer=clip_tokenizer(), text_encoder_2=t5.eval(), tokenizer_2=tokenizer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unmoved(cfg):
    """A copy of ``cfg`` (any registered method's config) whose step sizes are all 0.

    It computes the method's loss along the unguided trajectory and never moves the latents: the baseline of
    tests and measurements that compare a guided run with the same method's losses unguided (``scale_factor=0``
    itself is refused, since its images would be unguided sampling labelled with the method).
    """
    import dataclasses

    cls = type(cfg)
    sub = type(f"Unmoved{cls.__name__}", (cls,), {"step_sizes": lambda self, n: [0.0] * n})
    return sub(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init})
