"""Stable Diffusion 3 host (``StableDiffusion3Pipeline``: MM-DiT joint attention, flow matching).

**What the maps are.** An MM-DiT block has no cross-attention: image and text tokens attend jointly, one softmax
over the concatenated keys ``[image ; text]``. A subject's map is the image-query x text-key block of that
attention: for each read block, the probabilities ``softmax_joint(q_img k^T / sqrt(d))`` **within the joint
softmax** (image keys included), at the CLIP keys, then the mean over the read blocks and their heads. A map then
holds the share of its pixel's attention that goes to that token (the 77 columns sum to less than 1; the
Attend-and-Excite view re-softmaxes them anyway). The alternatives (:data:`MAP_NORMALISATIONS`, set
:attr:`StableDiffusion3Host.normalise`): ``"text"``, the softmax over all text keys (CLIP and T5) at the CLIP
keys; ``"clip"``, the softmax over the 77 CLIP keys alone (maps summing to 1, as a UNet's).

**Which blocks.** :attr:`StableDiffusion3Host.read_blocks`, default :func:`quarter_depth`: the one block at a
quarter of the depth (block 1 of 4; 6 of SD3-medium's 24). The guided pass stops after it, so it costs about a
quarter of a forward pass; ``"joint"`` adds an ``N_img x N_img`` logit matrix per read block (the normaliser).

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

**Scheduler.** ``FlowMatchEulerDiscreteScheduler`` only (:data:`FLOW_SCHEDULERS`). The pipeline feeds the latents
themselves to the transformer (the scheduler has no ``scale_model_input``: ``c = 1``), and its ``step`` starts from
the latents it is given, so an update acts fully.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..attention import AttentionStore, WrappingProcessor, token_grid_res
from .base import CallbackHost, Host, _latents_shape, check_tokenizers_agree
from .registry import register_host

#: Schedulers checked with this host (also in ``schedulers.SUPPORTED_SCHEDULERS``, which ``run`` consults).
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)

#: How the image-query x CLIP-key probabilities are normalised (see the module docstring).
MAP_NORMALISATIONS = ("clip", "text", "joint")


class JointAttentionStore(AttentionStore):
    """:class:`~ait2i.attention.AttentionStore` on the patch grid ``grid``, returning maps average-pooled to ``res``."""

    def __init__(self, grid: tuple[int, int], res: tuple[int, int], layers: list[str]):
        super().__init__(res, layers)
        self.grid = tuple(grid)

    def maps(self) -> torch.Tensor:
        """The recorded maps as ``(B, h, w, L)`` float32 at ``res``."""
        if self._sum is None:
            raise RuntimeError("no attention was recorded: the guided forward pass reached no read block")
        b, _, length = self._sum.shape
        m = (self._sum / self._count).float().reshape(b, *self.grid, length)
        if self.grid != tuple(self.res):
            m = F.avg_pool2d(m.permute(0, 3, 1, 2), self.grid[0] // self.res[0]).permute(0, 2, 3, 1)
        return m


def joint_text_probabilities(attn, hidden_states, context, n_keys: int, normalise: str = "joint") -> torch.Tensor:
    """Image-query x text-key attention probabilities of one joint-attention call, ``(B * heads, N_img, n_keys)``.

    Args:
        attn (`Attention`): the block's joint attention (``JointAttnProcessor2_0`` layout: ``to_q``/``to_k`` on the
            image stream, ``add_k_proj`` on the context, optional RMS/layer norms on queries and keys).
        hidden_states (`torch.Tensor` of shape `(B, N_img, C)`): the image tokens.
        context (`torch.Tensor` of shape `(B, N_text, C_ctx)`): the text tokens.
        n_keys (`int`): the first ``n_keys`` text keys are returned (77: the CLIP part).
        normalise (`str`, *optional*, defaults to `"joint"`): ``"clip"``: softmax over the first ``n_keys`` text
            keys; ``"text"``: softmax over all text keys; ``"joint"``: the joint softmax (image + text keys).
    """
    if normalise not in MAP_NORMALISATIONS:
        raise ValueError(f"normalise must be one of {MAP_NORMALISATIONS}, got {normalise!r}")
    b, heads = hidden_states.shape[0], attn.heads

    def split(x, norm):
        x = x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)
        return (norm(x) if norm is not None else x).float()

    q = split(attn.to_q(hidden_states), attn.norm_q)  # (B, heads, N_img, d)
    scale = q.shape[-1] ** -0.5  # scaled_dot_product_attention's default, as JointAttnProcessor2_0 uses
    keys = split(attn.add_k_proj(context), attn.norm_added_k)
    if normalise == "clip":
        keys = keys[:, :, :n_keys]
    logits = q @ keys.transpose(-1, -2) * scale  # (B, heads, N_img, N_text or n_keys)
    if normalise == "joint":
        image_logits = q @ split(attn.to_k(hidden_states), attn.norm_k).transpose(-1, -2) * scale
        lse = torch.logsumexp(torch.cat([image_logits, logits], dim=-1), dim=-1, keepdim=True)
        probs = torch.exp(logits[..., :n_keys] - lse)
    else:
        probs = logits.softmax(-1)[..., :n_keys]
    return probs.reshape(b * heads, probs.shape[2], n_keys)


class JointCaptureProcessor(WrappingProcessor):
    """Records one joint-attention block's image-to-CLIP-token probabilities while its store records.

    Every call reaches ``original`` with the same arguments (and ``inspect.signature(processor.__call__)`` is the
    original's, so that ``Attention.forward`` passes it the same keyword arguments), except the last read block of
    a recording pass, which ends the pass (:class:`~ait2i.attention.StopForward`) before computing its output.
    """

    def __init__(self, store: AttentionStore, name: str, original, n_keys: int, normalise: str):
        super().__init__(store, name, original)
        self.n_keys, self.normalise = n_keys, normalise

    def _call(self, attn, hidden_states, *args, **kwargs):
        context = kwargs.get("encoder_hidden_states", args[0] if args else None)
        if self.store.recording and context is not None:
            probs = joint_text_probabilities(attn, hidden_states, context, self.n_keys, self.normalise)
            self.store.add(self.name, probs, attn.heads)  # may end the forward pass (StopForward)
        return self.original(attn, hidden_states, *args, **kwargs)


@contextmanager
def capture_blocks(transformer, layers: list[str], grid, res, make_processor, what: str):
    """Install ``make_processor(store, name, original)`` on the attention processors ``layers`` of a transformer;
    yield their :class:`JointAttentionStore` (maps pooled from ``grid`` to ``res``); always restore the processors.

    Raises:
        ValueError: a layer the transformer does not have (``what`` names the kind of attention expected).
    """
    original = dict(transformer.attn_processors)
    missing = [n for n in layers if n not in original]
    if missing:
        raise ValueError(f"{type(transformer).__name__} has no {what} {missing}")
    store = JointAttentionStore(grid, res, layers)
    transformer.set_attn_processor(
        {n: (make_processor(store, n, p) if n in layers else p) for n, p in original.items()}
    )
    try:
        yield store
    finally:
        transformer.set_attn_processor(original)


def capture_joint_attention(transformer, blocks, grid, res, n_keys: int = 77, normalise: str = "joint"):
    """Install :class:`JointCaptureProcessor` on the joint attention of ``blocks``; yield the store; always restore."""
    layers = [f"transformer_blocks.{i}.attn.processor" for i in blocks]

    def make(store, name, original):
        return JointCaptureProcessor(store, name, original, n_keys, normalise)

    return capture_blocks(transformer, layers, grid, res, make, "joint attention")


def first_half(num_blocks: int) -> list[int]:
    """Blocks ``0 .. ceil(num_blocks / 2) - 1`` (SD3's default before the measurement; other hosts use it)."""
    return list(range((num_blocks + 1) // 2))


def quarter_depth(num_blocks: int) -> list[int]:
    """The default read block: ``[num_blocks // 4]``, the block at a quarter of the depth."""
    return [num_blocks // 4]


@register_host
class StableDiffusion3Host(CallbackHost):
    """``StableDiffusion3Pipeline`` (SD3 / SD3.5; with or without the T5 encoder)."""

    pipelines = ("StableDiffusion3Pipeline",)
    refused = {
        **CallbackHost.refused,
        "pooled_prompt_embeds": "subjects are words of the prompt: give the prompt as text",
    }
    #: ``read_blocks(num_blocks) -> block indices`` whose joint attention is averaged into the maps.
    read_blocks: ClassVar = staticmethod(quarter_depth)
    schedulers = FLOW_SCHEDULERS
    #: One of :data:`MAP_NORMALISATIONS`.
    normalise: ClassVar[str] = "joint"

    def check(self) -> None:
        Host.check(self)  # CallbackHost.check looks for a UNet
        pipe = self.pipe
        need = ("transformer", "tokenizer", "scheduler", "encode_prompt", "prepare_latents", "progress_bar")
        missing = [a for a in need if not hasattr(pipe, a)]
        if missing:
            raise TypeError(f"{type(pipe).__name__} has no {', '.join(missing)}; it is not an SD3 pipeline")
        if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
            raise TypeError(f"{type(pipe).__name__}.__call__ has no `callback_on_step_end`; upgrade diffusers")
        scheduler = type(pipe.scheduler).__name__
        if scheduler not in FLOW_SCHEDULERS:
            raise TypeError(
                f"scheduler {scheduler} is not supported with {type(pipe).__name__}; supported: "
                f"{', '.join(FLOW_SCHEDULERS)} (flow matching: the transformer sees the latents unscaled)"
            )
        self.check_call_arguments()
        check_tokenizers_agree(pipe, self.prompt)  # CLIP-1 and CLIP-2 are joined position by position
        self._check_other_prompt("prompt_2", getattr(pipe, "tokenizer_2", None), "text_encoder_2")
        self._check_other_prompt("prompt_3", getattr(pipe, "tokenizer_3", None), "text_encoder_3")

    def latents_shape(self) -> tuple[int, ...] | None:
        pipe = self.pipe
        size = getattr(pipe, "default_sample_size", None)
        if not isinstance(size, int):
            return None
        scale = pipe.vae_scale_factor
        return _latents_shape(self.kwargs, size * scale, pipe.transformer.config.in_channels, scale)

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

    def ready_after(self) -> str:
        # SD3 sets its timesteps after prepare_latents; progress_bar opens the loop, once they are set.
        return "progress_bar"

    def _cond_from_encode(self, result) -> torch.Tensor:
        self._pooled = result[2].detach()  # (prompt_embeds, negative, pooled, negative pooled)
        return result[0]

    def on_callback_outputs(self, outputs: dict) -> None:
        super().on_callback_outputs(outputs)
        pooled = outputs.get("pooled_prompt_embeds")
        if isinstance(pooled, torch.Tensor):
            b = self._pooled.shape[0]
            self._pooled = pooled[b:] if pooled.shape[0] == 2 * b else pooled if pooled.shape[0] == b else self._pooled

    def capture(self, z: torch.Tensor):
        tr = self.pipe.transformer
        grid, res = token_grid_res(tr, z, self._cfg.attn_res)
        blocks = list(self.read_blocks(len(tr.transformer_blocks)))
        return capture_joint_attention(tr, blocks, grid, res, self.n_keys, self.normalise)

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
