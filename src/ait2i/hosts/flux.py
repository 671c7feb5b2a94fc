"""Flux host (``FluxPipeline``: MM-DiT with rotary positions, packed latents, T5 text, flow matching).

**Text.** Flux reads the prompt twice: CLIP gives only the pooled vector, and the sequence the transformer attends
to is T5's (``tokenizer_2`` / ``text_encoder_2``, padded to ``max_sequence_length``, 512 by default, with no
attention mask: the padding keys are attended). The subjects therefore resolve on the **T5 tokenizer**
(SentencePiece: words start with ``"▁"``, no start token, ``</s>`` after the prompt, padding after it, attended;
see :class:`~ait2i.subjects.TokenLayout`), and the maps have one column per T5 position.

**What the maps are.** A double-stream block's attention is one softmax over the joint sequence ``[text ; image]``
(text first, unlike SD3), with rotary position embeddings applied to queries and keys of both streams (the text
positions are all zero, so their rotation is the identity; the image queries are rotated by their row and column).
A subject's map is the image-query x text-key block of that attention **within the joint softmax** (the choice
measured for SD3's MM-DiT, :mod:`ait2i.hosts.sd3`): the capture recomputes the block's projections, RMS norms and
rotations exactly as ``FluxAttnProcessor`` does and returns ``softmax_joint(q_img k^T / sqrt(d))`` at the text
keys, averaged over the read blocks and their heads, on the token grid (``latent side / 2``: Flux packs 2x2 latent
patches into one token), average-pooled to ``attn_res``. ``"text"`` (softmax over the text keys only, no
``N_img x N_img`` logits) is the cheaper alternative (:attr:`FluxHost.normalise`).

**Which blocks.** The double-stream blocks only, by default the one at a quarter of their depth
(:func:`~ait2i.hosts.sd3.quarter_depth`: block 4 of FLUX.1's 19); the guided pass stops there, so it costs a
fraction of one forward pass. The single-stream blocks (one self-attention over the concatenated streams) are not
read. Which block gives the best maps on FLUX.1 is not measured here (no weights can be downloaded); the default
follows the measurement on the ShapesWorld MM-DiT.

**Guided pass.** The conditional pass as the pipeline makes it: packed latents, ``timestep / 1000``, the distilled
guidance embedding (``guidance_scale``) when the transformer has one, the pooled CLIP vector, T5 embeddings, the
text and image position ids, ``joint_attention_kwargs`` (LoRA ``scale``). With ``true_cfg_scale > 1`` and a
negative prompt the pipeline encodes twice; the guided pass uses the prompt's encoding (the first).

**Refused.** ``prompt_2`` other than the prompt (T5 would encode other words than those the subjects index),
``prompt_embeds`` / ``pooled_prompt_embeds`` and their negatives given as tensors, IP-Adapter images, a prompt
longer than ``max_sequence_length`` T5 tokens, an ``attention_mask`` in ``joint_attention_kwargs`` (the maps would
read the keys it masks), a negative prompt without ``true_cfg_scale > 1`` and the reverse (the pipeline would ignore
them silently), fused QKV projections, gradient checkpointing and transformer caches (:func:`~ait2i.hosts.base.
check_denoiser`). ``FlowMatchEulerDiscreteScheduler`` only.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch

from ..attention import WrappingProcessor
from ..subjects import EndToken, end_token_index, token_layout
from .base import CallbackHost, Host, check_sequence_length
from .registry import register_host
from .sd3 import FLOW_SCHEDULERS, capture_blocks, quarter_depth

#: How the image-query x text-key probabilities are normalised: within the joint softmax, or over the text keys.
FLUX_NORMALISATIONS = ("joint", "text")

#: Positional parameters of ``FluxAttention.forward``'s call to its processor, after ``attn`` and ``hidden_states``.
_PROCESSOR_ARGS = ("encoder_hidden_states", "attention_mask", "image_rotary_emb")


def flux_text_probabilities(attn, hidden_states, context, rotary, normalise: str = "joint") -> torch.Tensor:
    """Image-query x text-key probabilities of one Flux double-stream attention call, ``(B * heads, N_img, N_txt)``.

    Args:
        attn (`FluxAttention`): the block's attention (``to_q``/``to_k`` on the image stream, ``add_q_proj``/
            ``add_k_proj`` on the text stream, RMS norms per head).
        hidden_states (`torch.Tensor` of shape `(B, N_img, C)`): the image tokens.
        context (`torch.Tensor` of shape `(B, N_txt, C)`): the text tokens.
        rotary (`tuple[torch.Tensor, torch.Tensor]` or `None`): the ``(cos, sin)`` rotary embedding of the joint
            sequence ``[text ; image]``, as the transformer passes it.
        normalise (`str`, *optional*, defaults to `"joint"`): ``"joint"``: the softmax over all keys (text and
            image); ``"text"``: the softmax over the text keys.
    """
    from diffusers.models.embeddings import apply_rotary_emb

    if normalise not in FLUX_NORMALISATIONS:
        raise ValueError(f"normalise must be one of {FLUX_NORMALISATIONS}, got {normalise!r}")
    d = attn.head_dim

    def heads(x, norm):
        return norm(x.unflatten(-1, (-1, d)))  # (B, N, heads, d)

    n_txt = context.shape[1]
    query = heads(attn.to_q(hidden_states), attn.norm_q)  # the image queries only (the text ones are not read)
    key = torch.cat(
        [heads(attn.add_k_proj(context), attn.norm_added_k), heads(attn.to_k(hidden_states), attn.norm_k)], 1
    )
    if rotary is not None:  # (cos, sin) of the joint sequence [text ; image]
        query = apply_rotary_emb(query, tuple(r[n_txt:] for r in rotary), sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    q = query.transpose(1, 2).float()  # (B, heads, N_img, d)
    k = (key if normalise == "joint" else key[:, :n_txt]).transpose(1, 2).float()
    probs = (q @ k.transpose(-1, -2) * d**-0.5).softmax(-1)[..., :n_txt]  # scaled_dot_product_attention's scale
    b, h, n_img, _ = probs.shape
    return probs.reshape(b * h, n_img, n_txt)


class FluxCaptureProcessor(WrappingProcessor):
    """Records one double-stream block's image-to-text probabilities while its store records (see
    :class:`~ait2i.hosts.sd3.JointCaptureProcessor`: same arguments to ``original``, same signature)."""

    def __init__(self, store, name: str, original, normalise: str):
        super().__init__(store, name, original)
        self.normalise = normalise

    def _call(self, attn, hidden_states, *args, **kwargs):
        given = {**dict(zip(_PROCESSOR_ARGS, args)), **kwargs}
        context = given.get("encoder_hidden_states")
        if self.store.recording and context is not None:
            probs = flux_text_probabilities(attn, hidden_states, context, given.get("image_rotary_emb"), self.normalise)
            self.store.add(self.name, probs, attn.heads)  # may end the forward pass (StopForward)
        return self.original(attn, hidden_states, *args, **kwargs)


def capture_flux_attention(transformer, blocks, grid, res, normalise: str = "joint"):
    """Install :class:`FluxCaptureProcessor` on the double-stream ``blocks``; yield the store; always restore."""
    layers = [f"transformer_blocks.{i}.attn.processor" for i in blocks]

    def make(store, name, original):
        return FluxCaptureProcessor(store, name, original, normalise)

    return capture_blocks(transformer, layers, grid, res, make, "double-stream attention")


def packed_grid(image_ids: torch.Tensor) -> tuple[int, int]:
    """The token grid ``(rows, cols)`` of Flux's packed latents from their position ids ``(N, 3)`` (0, row, col)."""
    return int(image_ids[:, 1].max()) + 1, int(image_ids[:, 2].max()) + 1


@register_host
class FluxHost(CallbackHost):
    """``FluxPipeline`` (FLUX.1 [dev] / [schnell] and fine-tunes with the same transformer)."""

    pipelines = ("FluxPipeline",)
    refused = {
        **CallbackHost.refused,
        "pooled_prompt_embeds": "subjects are words of the prompt: give the prompt as text",
        "negative_prompt_embeds": "give the negative prompt as text",
        "negative_pooled_prompt_embeds": "give the negative prompt as text",
        "negative_ip_adapter_image": "IP-Adapter image conditioning is not passed to the guided pass yet",
        "negative_ip_adapter_image_embeds": "IP-Adapter image conditioning is not passed to the guided pass yet",
    }
    #: ``read_blocks(num_double_stream_blocks) -> block indices`` whose attention is averaged into the maps.
    read_blocks: ClassVar = staticmethod(quarter_depth)
    schedulers = FLOW_SCHEDULERS
    #: One of :data:`FLUX_NORMALISATIONS`.
    normalise: ClassVar[str] = "joint"
    #: Default ``max_sequence_length`` of the pipeline's ``__call__``.
    max_sequence_length: ClassVar[int] = 512
    tokenizer_component = "tokenizer_2"  # T5's
    #: Flux's ``guidance_scale`` is the distilled guidance embedding; true classifier-free guidance is this one.
    cfg_scale = "true_cfg_scale"

    def check(self) -> None:
        Host.check(self)  # CallbackHost.check looks for a UNet
        pipe = self.pipe
        need = ("transformer", "tokenizer_2", "text_encoder_2", "scheduler", "encode_prompt", "prepare_latents")
        missing = [a for a in need if getattr(pipe, a, None) is None]
        if missing:
            raise TypeError(
                f"{type(pipe).__name__} has no {', '.join(missing)}; guidance on Flux needs the T5 encoder and its "
                "tokenizer (the transformer attends to T5's tokens)"
            )
        if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
            raise TypeError(f"{type(pipe).__name__}.__call__ has no `callback_on_step_end`; upgrade diffusers")
        tr = pipe.transformer
        if any(getattr(b.attn, "fused_projections", False) for b in tr.transformer_blocks):
            raise ValueError(
                f"{type(pipe).__name__}: fused QKV projections are not supported (the capture reads to_q/to_k); "
                "call pipe.transformer.unfuse_qkv_projections() first"
            )
        self.check_call_arguments()  # gradient checkpointing and caches included
        if "attention_mask" in (self.kwargs.get("joint_attention_kwargs") or {}):
            raise ValueError(
                f"{type(pipe).__name__}: an `attention_mask` in joint_attention_kwargs is not supported with guidance "
                "(the maps would still put probability on the keys it masks out); leave it out"
            )
        # a negative prompt without true_cfg_scale > 1: refused by check_call_arguments (cfg_scale); and the reverse
        negative = self.kwargs.get("negative_prompt") or self.kwargs.get("negative_prompt_2")
        true_cfg = self.kwargs.get("true_cfg_scale", 1.0) or 1.0
        if true_cfg > 1 and not negative:
            raise ValueError(
                f"{type(pipe).__name__}: true_cfg_scale={true_cfg} has no effect without a negative prompt (the "
                "pipeline silently skips true classifier-free guidance); pass negative_prompt or drop true_cfg_scale"
            )
        other = self.kwargs.get("prompt_2") or None  # the pipeline reads `prompt_2 or prompt`
        if other is not None and any(o != self.prompt for o in ([other] if isinstance(other, str) else other)):
            raise ValueError(
                f"{type(pipe).__name__}: `prompt_2` differs from the prompt, which guidance does not support: Flux's "
                "T5 encoder reads prompt_2, and the subjects and maps follow the T5 tokens of the prompt; leave "
                "`prompt_2` unset (or pass the same text as the prompt)"
            )
        limit = self.kwargs.get("max_sequence_length") or self.max_sequence_length
        check_sequence_length(pipe.tokenizer_2, self.text, limit)

    # -- text side ----------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.pipe.tokenizer_2

    @property
    def text(self) -> str:
        convert = getattr(self.pipe, "maybe_convert_prompt", None)  # the pipeline converts T5's prompt alike
        return convert(self.prompt, self.pipe.tokenizer_2) if convert is not None else self.prompt

    @property
    def eot_index(self) -> int:
        layout = token_layout(self.pipe.tokenizer_2)  # padding attended: no mask in Flux
        return EndToken(int(end_token_index(self.pipe.tokenizer_2, self.text, layout)), layout)

    # -- denoising side -----------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._image_ids = self._pooled = self._text_ids = None

    def ready_after(self) -> str:
        # Flux sets its timesteps after prepare_latents; progress_bar opens the loop, once they are set.
        return "progress_bar"

    def _cond_from_encode(self, result) -> torch.Tensor:
        if self.cond is not None:  # true CFG: the second call encodes the negative prompt
            return self.cond
        embeds, self._pooled, self._text_ids = result  # (prompt_embeds, pooled_prompt_embeds, text_ids)
        self._pooled = self._pooled.detach()
        return embeds

    def _start_latents(self, result) -> torch.Tensor:
        latents, self._image_ids = result  # packed latents (B, N_img, 4 C), their position ids (N_img, 3)
        return latents

    def _with_start_latents(self, result, latents: torch.Tensor):
        return latents, result[1]

    def cond_rows(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return x if rows is None else x[rows]  # Flux has no classifier-free batch doubling

    def capture(self, z: torch.Tensor):
        tr = self.pipe.transformer
        grid = packed_grid(self._image_ids)
        attn_res = self._cfg.attn_res
        if attn_res is None:
            res = grid
        else:
            f = grid[0] // attn_res if grid[0] % attn_res == 0 else 0
            if not f or grid[1] % f or grid[1] // f != attn_res:
                raise ValueError(
                    f"attn_res={attn_res}: Flux's token grid is {grid[0]}x{grid[1]} (latent side / 2); attn_res must "
                    "be a side it average-pools to exactly (a divisor of a square grid), or None for the grid itself"
                )
            res = (attn_res, attn_res)
        blocks = list(self.read_blocks(len(tr.transformer_blocks)))
        return capture_flux_attention(tr, blocks, grid, res, self.normalise)

    def denoise(self, u, t, step, rows, cond) -> None:
        pooled = self._pooled if rows is None else self._pooled[rows]
        tr = self.pipe.transformer
        b = u.shape[0]
        guidance = None
        if tr.config.guidance_embeds:
            guidance = torch.full([b], self.pipe.guidance_scale, device=u.device, dtype=torch.float32)
        timestep = (t if torch.is_tensor(t) else torch.tensor(t)).to(u.device).expand(b).to(u.dtype)
        extra = self.kwargs.get("joint_attention_kwargs")
        tr(
            hidden_states=u,
            timestep=timestep / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=cond,
            txt_ids=self._text_ids,
            img_ids=self._image_ids,
            joint_attention_kwargs=dict(extra) if extra else None,
            return_dict=False,
        )
