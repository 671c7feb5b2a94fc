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
(:func:`~ait2i.capture.store.quarter_depth`: block 4 of FLUX.1's 19); the guided pass stops there, so it costs a
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
them silently), fused QKV projections, gradient checkpointing and transformer caches (:func:`~ait2i.hosts.checks.
check_denoiser`). ``FlowMatchEulerDiscreteScheduler`` only.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..capture.joint import capture_flux_attention
from ..capture.store import Reads, block_layers, pooled_res, quarter_depth
from ..subjects import EndToken, end_token_index, token_layout
from .base import LOOP_START, ReadyAfter, register_host
from .checks import check_sequence_length
from .driver import DrivenHost
from .schedulers import FLOW_SCHEDULERS


def packed_grid(image_ids: torch.Tensor) -> tuple[int, int]:
    """The token grid ``(rows, cols)`` of Flux's packed latents from their position ids ``(N, 3)`` (0, row, col)."""
    return int(image_ids[:, 1].max()) + 1, int(image_ids[:, 2].max()) + 1


@register_host
class FluxHost(DrivenHost):
    """``FluxPipeline`` (FLUX.1 [dev] / [schnell] and fine-tunes with the same transformer)."""

    pipelines = ("FluxPipeline",)
    components = ("transformer", "scheduler", "encode_prompt", "prepare_latents")
    refused = {
        **DrivenHost.refused,
        "pooled_prompt_embeds": "subjects are words of the prompt: give the prompt as text",
        "negative_prompt_embeds": "give the negative prompt as text",
        "negative_pooled_prompt_embeds": "give the negative prompt as text",
        "negative_ip_adapter_image": "IP-Adapter image conditioning is not passed to the guided pass yet",
        "negative_ip_adapter_image_embeds": "IP-Adapter image conditioning is not passed to the guided pass yet",
    }
    #: ``read_blocks(num_double_stream_blocks) -> block indices`` whose attention is averaged into the maps.
    read_blocks: ClassVar = staticmethod(quarter_depth)
    schedulers = FLOW_SCHEDULERS
    #: One of :data:`~ait2i.capture.joint.FLUX_NORMALISATIONS`.
    normalise: ClassVar[str] = "joint"
    #: Default ``max_sequence_length`` of the pipeline's ``__call__``.
    max_sequence_length: ClassVar[int] = 512
    tokenizer_component = "tokenizer_2"  # T5's
    #: Flux's ``guidance_scale`` is the distilled guidance embedding; true classifier-free guidance is this one.
    cfg_scale = "true_cfg_scale"

    def check_pipeline(self) -> None:
        pipe = self.pipe
        need = ("transformer", "tokenizer_2", "text_encoder_2", "scheduler", "encode_prompt", "prepare_latents")
        missing = [a for a in need if getattr(pipe, a, None) is None]
        if missing:
            raise TypeError(
                f"{type(pipe).__name__} has no {', '.join(missing)}; guidance on Flux needs the T5 encoder and its "
                "tokenizer (the transformer attends to T5's tokens)"
            )
        super().check_pipeline()
        tr = pipe.transformer
        if any(getattr(b.attn, "fused_projections", False) for b in tr.transformer_blocks):
            raise ValueError(
                f"{type(pipe).__name__}: fused QKV projections are not supported (the capture reads to_q/to_k); "
                "call pipe.transformer.unfuse_qkv_projections() first"
            )

    def check_call_arguments(self) -> None:
        super().check_call_arguments()  # gradient checkpointing and caches included
        pipe = self.pipe
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

    def ready_after(self) -> ReadyAfter:
        return LOOP_START  # Flux sets its timesteps after prepare_latents

    def cond_from_encode(self, result) -> torch.Tensor:
        if self.cond is not None:  # true CFG: the second call encodes the negative prompt
            return self.cond
        embeds, self._pooled, self._text_ids = result  # (prompt_embeds, pooled_prompt_embeds, text_ids)
        self._pooled = self._pooled.detach()
        return embeds

    def start_latents(self, result) -> torch.Tensor:
        latents, self._image_ids = result  # packed latents (B, N_img, 4 C), their position ids (N_img, 3)
        return latents

    def with_start_latents(self, result, latents: torch.Tensor):
        return latents, result[1]

    def cond_rows(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return x if rows is None else x[rows]  # Flux has no classifier-free batch doubling

    def reads(self, cfg, z) -> Reads:
        """The double-stream attention of :attr:`read_blocks` on the packed token grid, pooled to ``cfg.attn_res``
        (``None``: 16x16 where the grid pools to it exactly, else the grid itself); ``cfg.from_where`` (UNet parts)
        does not apply."""
        grid = packed_grid(self._image_ids)
        res = pooled_res(grid, cfg.attn_res, "Flux's token grid", " (latent side / 2)")
        blocks = self.read_blocks(len(self.pipe.transformer.transformer_blocks))
        return Reads(block_layers(blocks, "attn"), grid, res)

    def capture(self, reads: Reads):
        return capture_flux_attention(self.pipe.transformer, reads, self.normalise)

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
