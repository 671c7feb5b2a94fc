"""Stable Diffusion 3 host (``StableDiffusion3Pipeline``: MM-DiT joint attention, flow matching).

**What the maps are.** An MM-DiT block has no cross-attention: image and text tokens attend jointly, one softmax
over the concatenated keys ``[image ; text]``. A subject's map is the image-query x text-key block of that
attention: for each read block, the probabilities ``softmax_joint(q_img k^T / sqrt(d))`` **within the joint
softmax** (image keys included), at the CLIP keys, then the mean over the read blocks and their heads. A map then
holds the share of its pixel's attention that goes to that token (the 77 columns sum to less than 1; the
Attend-and-Excite view re-softmaxes them anyway). The alternatives (:data:`~ait2i.capture.joint.MAP_NORMALISATIONS`,
set :attr:`StableDiffusion3Host.normalise`): ``"text"``, the softmax over all text keys (CLIP and T5) at the CLIP
keys; ``"clip"``, the softmax over the 77 CLIP keys alone (maps summing to 1, as a UNet's).

**Which blocks.** :attr:`StableDiffusion3Host.read_blocks`, default :func:`~ait2i.capture.store.quarter_depth`: the
one block at a quarter of the depth (block 1 of 4; 6 of SD3-medium's 24). The guided pass stops after it, so it
costs about a quarter of a forward pass; ``"joint"`` adds an ``N_img x N_img`` logit matrix per read block (the
normaliser).

Both choices were first measured on the ShapesWorld MM-DiT's training export at step 632 (8 prompts), and measured
again on the shipped model (step 4951) with ``python benchmarks/sd3_read_choice.py --per-category 2 --seeds 0-1``:
4 prompts (2 "two", 2 "three" objects) x 2 seeds, 10 steps, guidance scale 4, ``ait2i`` at ``scale_factor`` 20
against 0. "reduction" is the relative drop of the summed loss over steps 1-4 (mean +- sd over the 8 runs); "lift"
is the share of a subject's map (steps 2 and 5 of the unguided run) on its colour's pixels in the final image over
the area share of those pixels (1 = no better than uniform).

=========  =====================  =====================  =====================
blocks     clip (red. / lift)     text (red. / lift)     joint (red. / lift)
=========  =====================  =====================  =====================
0          +0.000 +- 0.011 / 1.00 +0.009 +- 0.012 / 0.89 -0.005 +- 0.016 / 0.85
1          +0.037 +- 0.020 / 1.03 +0.041 +- 0.064 / 1.34 **+0.100 +- 0.068 / 1.37**
2          +0.039 +- 0.055 / 1.03 -0.007 +- 0.081 / 1.47 +0.125 +- 0.114 / 1.19
3          +0.039 +- 0.037 / 0.84 +0.038 +- 0.039 / 1.06 +0.065 +- 0.087 / 1.27
0, 1       +0.016 +- 0.018 / 1.00 +0.028 +- 0.023 / 1.09 +0.047 +- 0.060 / 1.05
0-3        -0.000 +- 0.044 / 0.96 +0.025 +- 0.029 / 1.19 +0.031 +- 0.042 / 1.09
=========  =====================  =====================  =====================

The default (block 1, within the joint softmax) is again the best balance of the two (block 2 lets guidance act a
little more but its maps point less well; the "text" normalisation at block 2 points best but guidance barely
acts through it); the sample is small (sd of the reduction up to 0.11), so neighbouring choices are not resolved.

**Token layout.** ``StableDiffusion3Pipeline.encode_prompt`` builds the context as ``[CLIP (77 tokens: the two
CLIP encoders' hidden states concatenated on channels, zero-padded to joint_attention_dim) ; T5 (max_sequence_length
tokens, zeros when text_encoder_3 is None)]`` along the sequence. The subjects resolve on the first CLIP tokenizer
and index the first 77 text keys (positions ``0..76`` of the text part of the joint sequence, i.e. joint positions
``N_img + 0 .. N_img + 76``); the maps returned are ``(b, h, w, 77)`` with the start token at 0 and padding after
the end token, as the losses expect. The T5 tokens are not read.

**Refused.** ``prompt_2`` / ``prompt_3`` that the encoders would tokenise differently from ``prompt`` (CLIP-2's
hidden states are concatenated position by position with CLIP-1's, so a different ``prompt_2`` puts other words at
the subjects' indices; a different ``prompt_3`` conditions on words the maps do not read); ``prompt_embeds``,
``pooled_prompt_embeds``, IP-Adapter images.

**Scheduler.** ``FlowMatchEulerDiscreteScheduler`` only (:data:`~ait2i.hosts.schedulers.FLOW_SCHEDULERS`). The
pipeline feeds the latents themselves to the transformer (the scheduler has no ``scale_model_input``: ``c = 1``),
and its ``step`` starts from the latents it is given, so an update acts fully."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..capture.joint import capture_joint_attention
from ..capture.store import Reads, block_layers, quarter_depth, token_grid_res
from .base import LOOP_START, ReadyAfter, register_host
from .checks import check_tokenizers_agree, latents_shape_for
from .driver import DrivenHost
from .schedulers import FLOW_SCHEDULERS


@register_host
class StableDiffusion3Host(DrivenHost):
    """``StableDiffusion3Pipeline`` (SD3 / SD3.5; with or without the T5 encoder)."""

    pipelines = ("StableDiffusion3Pipeline",)
    components = ("transformer", "tokenizer", "scheduler", "encode_prompt", "prepare_latents", "progress_bar")
    components_note = "it is not an SD3 pipeline"
    refused = {
        **DrivenHost.refused,
        "pooled_prompt_embeds": "subjects are words of the prompt: give the prompt as text",
    }
    #: ``read_blocks(num_blocks) -> block indices`` whose joint attention is averaged into the maps.
    read_blocks: ClassVar = staticmethod(quarter_depth)
    schedulers = FLOW_SCHEDULERS
    #: One of :data:`~ait2i.capture.joint.MAP_NORMALISATIONS`.
    normalise: ClassVar[str] = "joint"

    def check_pipeline(self) -> None:
        super().check_pipeline()
        pipe = self.pipe
        scheduler = type(pipe.scheduler).__name__
        if scheduler not in FLOW_SCHEDULERS:
            raise TypeError(
                f"scheduler {scheduler} is not supported with {type(pipe).__name__}; supported: "
                f"{', '.join(FLOW_SCHEDULERS)} (flow matching: the transformer sees the latents unscaled)"
            )

    def check_call_arguments(self) -> None:
        super().check_call_arguments()
        pipe = self.pipe
        check_tokenizers_agree(pipe, self.prompt)  # CLIP-1 and CLIP-2 are joined position by position
        self._check_other_prompt("prompt_2", getattr(pipe, "tokenizer_2", None), "text_encoder_2")
        self._check_other_prompt("prompt_3", getattr(pipe, "tokenizer_3", None), "text_encoder_3")

    def latents_shape(self) -> tuple[int, ...] | None:
        pipe = self.pipe
        size = getattr(pipe, "default_sample_size", None)
        if not isinstance(size, int):
            return None
        scale = pipe.vae_scale_factor
        return latents_shape_for(self.kwargs, size * scale, pipe.transformer.config.in_channels, scale)

    def _check_other_prompt(self, key: str, tokenizer, encoder: str) -> None:
        other = self.kwargs.get(key) or None  # the pipeline reads `prompt_2 or prompt` (an empty one is unset)
        if other is None or getattr(self.pipe, encoder, None) is None:
            return  # the pipeline uses the prompt itself, or has no such encoder (prompt_3 without T5)
        others = [other] if isinstance(other, str) else list(other)
        ids = tokenizer(self.prompt).input_ids
        if any(tokenizer(o).input_ids != ids for o in others):
            raise ValueError(
                f"{type(self.pipe).__name__}: `{key}` differs from the prompt, which guidance does not support: "
                f"{encoder} would encode other words than the ones the subjects index (the subjects and the "
                f"attention maps follow the prompt's CLIP tokens); leave `{key}` unset"
            )

    # -- text and denoising side ------------------------------------------------------------------------------
    @property
    def n_keys(self) -> int:
        """The CLIP part of the text sequence (77)."""
        return int(getattr(self.pipe, "tokenizer_max_length", None) or self.pipe.tokenizer.model_max_length)

    def ready_after(self) -> ReadyAfter:
        return LOOP_START  # SD3 sets its timesteps after prepare_latents

    def cond_from_encode(self, result) -> torch.Tensor:
        self._pooled = result[2].detach()  # (prompt_embeds, negative, pooled, negative pooled)
        return result[0]

    def on_callback_outputs(self, outputs: dict) -> None:
        super().on_callback_outputs(outputs)
        pooled = outputs.get("pooled_prompt_embeds")
        if isinstance(pooled, torch.Tensor):
            b = self._pooled.shape[0]
            self._pooled = pooled[b:] if pooled.shape[0] == 2 * b else pooled if pooled.shape[0] == b else self._pooled

    def reads(self, cfg, z) -> Reads:
        """The joint attention of :attr:`read_blocks` on the patch grid, pooled to ``cfg.attn_res`` (``None``: 16x16
        where the grid pools to it exactly, else the grid itself); ``cfg.from_where`` (UNet parts) does not apply."""
        tr = self.pipe.transformer
        grid, res = token_grid_res(tr, z, cfg.attn_res)
        return Reads(block_layers(self.read_blocks(len(tr.transformer_blocks)), "attn"), grid, res)

    def capture(self, reads: Reads):
        return capture_joint_attention(self.pipe.transformer, reads, self.n_keys, self.normalise)

    def denoise(self, u, t, step, rows, cond) -> None:
        pooled = self._pooled if rows is None else self._pooled[rows]
        extra = self.kwargs.get("joint_attention_kwargs")
        self.pipe.transformer(
            hidden_states=u,
            timestep=t.expand(u.shape[0]),
            encoder_hidden_states=cond,
            pooled_projections=pooled,
            joint_attention_kwargs=dict(extra) if extra else None,
            return_dict=False,
        )
