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

import math
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


def clip_text_config(width: int, layers: int, heads: int, **extra):
    """A ``CLIPTextConfig`` with SD's vocabulary, 77 positions and special tokens, MLP 4x wide, quick-GELU."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **extra,
    )


def build_text_encoder():
    """A randomly initialised ``CLIPTextModel`` (2 layers, width 128, 4 heads, SD's vocabulary and 77 positions)."""
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_text_config(TEXT_WIDTH, TEXT_LAYERS, TEXT_HEADS))


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


def pretrained_mmdit_dir() -> Path:
    """The shipped diffusers-format folder of the ShapesWorld MM-DiT (package data)."""
    return Path(str(resources.files("ait2i") / "shapes" / "pretrained_mmdit"))


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


# --------------------------------------------------------------------------------------------------------------
# The second ShapesWorld model, of the SD3 family: an MM-DiT (``SD3Transformer2DModel``) conditioned by two small
# CLIP text encoders (no T5), flow matching (rectified flow), the same pixel-space autoencoder. Loadable by
# ``StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)``.
#
# Conditioning as ``StableDiffusion3Pipeline.encode_prompt`` builds it: the penultimate hidden states of the two
# CLIP encoders concatenated on the feature axis (48 + 48 = ``MMDIT_JOINT_DIM``, so no padding), followed by
# ``T5_PAD_TOKENS`` all-zero "T5" tokens (the pipeline's stand-in when there is no third encoder; 256 by default);
# the pooled (projected) outputs concatenated (48 + 48 = ``pooled_projection_dim``).
# --------------------------------------------------------------------------------------------------------------
SD3_TEXT_WIDTH = 48  # each CLIP encoder (hidden size = projection size)
SD3_TEXT_LAYERS = 3  # the pipeline reads hidden_states[-2]: 2 layers feed the context, all 3 the pooled output
SD3_TEXT_HEADS = 4  # head dim 12
MMDIT_JOINT_DIM = 2 * SD3_TEXT_WIDTH
MMDIT_POOLED_DIM = 2 * SD3_TEXT_WIDTH
MMDIT_WIDTH = 192  # heads x head_dim
MMDIT_HEAD_DIM = 32
MMDIT_LAYERS = 4
MMDIT_PATCH = 2  # 32x32 latents (= pixels) -> 16x16 = 256 image tokens
T5_PAD_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length
FLOW_SHIFT = 1.0  # FlowMatchEulerDiscreteScheduler shift (SD3 uses 3.0 at 4096 tokens; 256 tokens here)


def build_sd3_text_encoders(width: int = SD3_TEXT_WIDTH, layers: int = SD3_TEXT_LAYERS, heads: int = SD3_TEXT_HEADS):
    """Two randomly initialised ``CLIPTextModelWithProjection`` (SD's vocabulary and 77 positions) for SD3's
    ``text_encoder`` and ``text_encoder_2``; both read the ids of the shipped CLIP tokenizer."""
    from transformers import CLIPTextModelWithProjection

    def one():
        return CLIPTextModelWithProjection(clip_text_config(width, layers, heads, projection_dim=width))

    return one(), one()


def build_mmdit(
    width: int = MMDIT_WIDTH,
    layers: int = MMDIT_LAYERS,
    head_dim: int = MMDIT_HEAD_DIM,
    text_width: int = SD3_TEXT_WIDTH,
    init: bool = True,
):
    """A randomly initialised ``SD3Transformer2DModel`` on 32x32 3-channel latents (the pixels), patch size 2.

    With ``init`` (default) it is initialised as DiT: Xavier-uniform linear layers with zero biases, and the
    adaLN modulations and the output projection zeroed, so that every block starts as the identity and the model
    predicts 0 (learns fast on small data).
    """
    from diffusers import SD3Transformer2DModel

    if width % head_dim:
        raise ValueError(f"width {width} is not a multiple of head_dim {head_dim}")
    model = SD3Transformer2DModel(
        sample_size=32,
        patch_size=MMDIT_PATCH,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=width // head_dim,
        joint_attention_dim=2 * text_width,
        caption_projection_dim=width,
        pooled_projection_dim=2 * text_width,
        pos_embed_max_size=32 // MMDIT_PATCH,
        qk_norm="rms_norm",
    )
    if init:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        m.bias.zero_()
            for name, m in model.named_modules():  # adaLN modulation (norm1, norm1_context, norm_out) and output
                if (
                    name.endswith(("norm1", "norm1_context", "norm_out")) and hasattr(m, "linear")
                ) or name == "proj_out":
                    lin = m if name == "proj_out" else m.linear
                    lin.weight.zero_()
                    lin.bias.zero_()
    return model


def build_flow_scheduler():
    """SD3's ``FlowMatchEulerDiscreteScheduler`` (1000 training timesteps, shift :data:`FLOW_SHIFT`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT)


def load_shipped_vae():
    """The shipped ShapesWorld autoencoder (pixel-space near-identity) with SD3's ``shift_factor`` set (0.0)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(pretrained_dir() / "vae"), torch_dtype=torch.float32)
    vae.register_to_config(shift_factor=0.0)
    return vae


class PadTokenJointAttnProcessor:
    """``JointAttnProcessor2_0`` for training with ONE all-zero context token standing for ``n_pad`` of them.

    ``StableDiffusion3Pipeline`` without T5 appends ``n_pad`` identical zero tokens to the context. The context
    stream has no positional embedding and every operation but attention is per-token, so identical tokens stay
    identical through every block; in attention, ``n_pad`` identical keys/values equal one key with ``log(n_pad)``
    added to its logit. Training on ``77 + 1`` context tokens with this bias on the last key is therefore exactly
    the model the pipeline runs on ``77 + n_pad`` tokens, at a fraction of the cost.
    """

    def __init__(self, n_pad: int = T5_PAD_TOKENS):
        self.log_n = math.log(n_pad)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        import torch.nn.functional as F

        b, n_img = hidden_states.shape[:2]
        heads = attn.heads

        def split(x):
            return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        cq = split(attn.add_q_proj(encoder_hidden_states))
        ck = split(attn.add_k_proj(encoder_hidden_states))
        cv = split(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq = attn.norm_added_q(cq)
        if attn.norm_added_k is not None:
            ck = attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        bias = torch.zeros(k.shape[2], dtype=q.dtype, device=q.device)
        bias[-1] = self.log_n
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(1, 1, 1, -1), dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, heads * q.shape[-1]).to(q.dtype)
        out, ctx = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        out = attn.to_out[1](attn.to_out[0](out))
        return out, ctx


def sd3_condition(text_encoder, text_encoder_2, ids: torch.Tensor, n_pad: int = 1):
    """``StableDiffusion3Pipeline.encode_prompt`` without T5, from token ids (B, 77) of both encoders' tokenizer.

    Returns ``(context, pooled)``: context (B, 77 + n_pad, joint dim) with ``n_pad`` zero tokens at the end
    (``n_pad=T5_PAD_TOKENS`` is exactly the pipeline's; 1 with :class:`PadTokenJointAttnProcessor`), and pooled
    (B, pooled dim).
    """
    o1 = text_encoder(ids, output_hidden_states=True)
    o2 = text_encoder_2(ids, output_hidden_states=True)
    ctx = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
    ctx = torch.cat([ctx, ctx.new_zeros(ctx.shape[0], n_pad, ctx.shape[-1])], dim=1)
    return ctx, torch.cat([o1.text_embeds, o2.text_embeds], dim=-1)


def load_sd3_pipeline(path: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """Loads an MM-DiT ShapesWorld folder (written by ``python -m ait2i.shapes.train --arch mmdit``; unset: the
    shipped one, :func:`pretrained_mmdit_dir`) as a ``StableDiffusion3Pipeline`` (no T5), offline, progress bar
    off."""
    from diffusers import StableDiffusion3Pipeline

    folder = model_folder(path if path is not None else pretrained_mmdit_dir())
    pipe = StableDiffusion3Pipeline.from_pretrained(
        str(folder), text_encoder_3=None, tokenizer_3=None, torch_dtype=dtype, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
