"""PixArt-α / PixArt-Σ hosts (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``: cross-attention DiT, T5 text).

**Loop.** These pipelines have no ``callback_on_step_end``: the latents are updated from the scheduler's ``step``
(:data:`~ait2i.hosts.injectors.SCHEDULER_STEP`). The legacy ``callback`` sees the updated latents and is allowed.

**Maps.** Every ``PixArtTransformer2DModel`` block has a cross-attention ``attn2`` on the same token grid
(``latent side / patch_size``). A map is ``softmax(QK^T / sqrt(d) + mask)`` of the read blocks' ``attn2``, averaged
over those blocks and their heads (:class:`~ait2i.capture.unet.CaptureProcessor`, installed on them only). The
pipeline's T5 attention mask reaches ``attn2`` as the transformer's additive bias (``-10000`` on padding), and the
capture computes the probabilities with that same bias, so the padded keys get probability 0 exactly as in the
denoiser: the maps sum to 1 over the prompt's tokens and its ``</s>``. The maps are average-pooled from the grid to
``attn_res`` (the default ``None`` reads 16x16 where the grid pools to it exactly, e.g. a 1024 px PixArt-α's 64x64
grid pooled by 4, and keeps any other grid as it is).

**Which blocks.** :attr:`PixArtAlphaHost.read_blocks` (default: the first half of the blocks); the guided pass stops
in the last read block's ``attn2`` (the rest of the transformer is neither run nor back-propagated). Measured for
cost on the tiny test transformer (8 blocks, 16x16 grid, 4 guided steps, one CPU thread): the guidance overhead over
the stock call (0.12 s) is 0.15 s reading the first half and 0.23 s reading all blocks (1.6x; the pass runs the
blocks up to the last read one, forward and backward). Which blocks give the better maps on a trained PixArt is not
measured (no weights here); the first half follows SD3's host, where it was measured on the ShapesWorld MM-DiT.

**Guided pass.** The conditional half of what the pipeline passes the transformer: ``encoder_hidden_states`` and
``encoder_attention_mask`` from ``encode_prompt``, the timestep broadcast as the pipeline does, and PixArt-α's
micro-conditions (``resolution``, ``aspect_ratio`` from the height and width the pipeline checks, after resolution
binning) when its transformer's ``sample_size`` is 128; PixArt-Σ passes none.

**Text.** The subjects resolve on the T5 tokenizer (SentencePiece: words start with ``"▁"``, no start token, ``</s>``
after the prompt; see :class:`~ait2i.subjects.TokenLayout`) on the prompt as the pipeline encodes it: lower-cased and
stripped (its ``_text_preprocessing``), and the subject phrases are lower-cased alike. The end-token index carries
that layout with the padding masked out, so the losses' ``"all"`` span is the prompt's tokens and ``</s>``.

**Handled.** ``use_resolution_binning`` (the pipeline bins the size, the latents follow, the image is resized back),
negative prompts, several images per prompt, the schedulers of :data:`~ait2i.hosts.schedulers.SUPPORTED_SCHEDULERS`.

**Refused.** ``clean_caption=True`` (the pipeline's default) when cleaning would change the prompt's text (it rewrites
words: pass ``clean_caption=False``); a prompt longer than ``max_sequence_length`` tokens (T5 truncates it);
``prompt_embeds`` / ``prompt_attention_mask`` (subjects are words of the prompt).
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import ClassVar

import torch

from ..capture.dit import capture_cross_attention
from ..capture.store import Reads, block_layers, first_half, token_grid_res
from ..subjects import EndToken, end_token_index, token_layout
from .base import register_host
from .checks import check_sequence_length
from .driver import DrivenHost
from .injectors import SCHEDULER_STEP, intercept


def _preprocess(text: str) -> str:
    """What PixArt's ``_text_preprocessing`` does to a text without caption cleaning."""
    return text.lower().strip()


class PipelineTokenizer:
    """The pipeline's tokenizer as PixArt applies it: each text lower-cased and stripped before tokenizing."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, text, *args, **kwargs):
        return self.tokenizer(_preprocess(text) if isinstance(text, str) else text, *args, **kwargs)

    def tokenize(self, text: str, *args, **kwargs):
        return self.tokenizer.tokenize(_preprocess(text), *args, **kwargs)


@register_host
class PixArtAlphaHost(DrivenHost):
    """``PixArtAlphaPipeline`` (PixArt-α; micro-conditions at ``sample_size`` 128)."""

    pipelines = ("PixArtAlphaPipeline",)
    injector = SCHEDULER_STEP
    refused = {
        **DrivenHost.refused,
        "prompt_attention_mask": "subjects are words of the prompt: give the prompt as text",
    }
    #: ``read_blocks(num_blocks) -> block indices`` whose ``attn2`` maps are averaged.
    read_blocks: ClassVar = staticmethod(first_half)
    #: Default ``max_sequence_length`` of the pipeline's ``__call__``.
    max_sequence_length: ClassVar[int] = 120

    def check(self) -> None:
        super().check()
        pipe = self.pipe
        blocks = getattr(getattr(pipe, "transformer", None), "transformer_blocks", None)
        if blocks is None or not all(getattr(b, "attn2", None) is not None for b in blocks):
            raise TypeError(f"{type(pipe).__name__}: the transformer has no cross-attention (attn2) in every block")
        if self.kwargs.get("clean_caption", True):
            cleaned = pipe._text_preprocessing(self.prompt, clean_caption=True)[0]
            if cleaned != _preprocess(self.prompt):
                raise ValueError(
                    f"{type(pipe).__name__}: clean_caption=True rewrites the prompt to {cleaned!r}, so the words the "
                    "subjects name are not the ones encoded; pass clean_caption=False (or the cleaned prompt)"
                )
        limit = self.kwargs.get("max_sequence_length") or self.max_sequence_length
        check_sequence_length(pipe.tokenizer, self.text, limit)

    # -- text side ----------------------------------------------------------------------------------------------
    @classmethod
    def subject_tokenizer(cls, pipe):
        return PipelineTokenizer(pipe.tokenizer)

    @property
    def tokenizer(self):
        return PipelineTokenizer(self.pipe.tokenizer)

    @property
    def text(self) -> str:
        return _preprocess(self.prompt)

    @property
    def eot_index(self) -> int:
        layout = replace(token_layout(self.pipe.tokenizer), keys_after_end=False)  # the padding is masked out
        return EndToken(int(end_token_index(self.pipe.tokenizer, self.text, layout)), layout)

    # -- denoising side -----------------------------------------------------------------------------------------
    def run(self, cfg, make_engine):
        with intercept(self.pipe, "check_inputs", self._keep_size):
            return super().run(cfg, make_engine)

    def _keep_size(self, original, *a, **k):
        args = inspect.signature(original).bind(*a, **k).arguments
        self._size = (int(args["height"]), int(args["width"]))  # after resolution binning
        return original(*a, **k)

    def cond_from_encode(self, result) -> torch.Tensor:
        self._mask = result[1]  # (prompt_embeds, prompt_attention_mask, negative..., negative mask)
        return result[0]

    def reads(self, cfg, z) -> Reads:
        """The ``attn2`` of :attr:`read_blocks` on the token grid, pooled to ``cfg.attn_res`` (``None``: the grid
        itself); ``cfg.from_where`` (UNet parts) does not apply."""
        tr = self.pipe.transformer
        grid, res = token_grid_res(tr, z, cfg.attn_res)
        return Reads(block_layers(self.read_blocks(len(tr.transformer_blocks)), "attn2"), grid, res)

    def capture(self, reads: Reads):
        return capture_cross_attention(self.pipe.transformer, reads)

    def micro_conditions(self, batch: int, dtype, device) -> dict:
        """The micro-conditions the pipeline passes (PixArt-α at ``sample_size`` 128: resolution, aspect ratio)."""
        if self.pipe.transformer.config.sample_size != 128:
            return {"resolution": None, "aspect_ratio": None}
        height, width = self._size
        resolution = torch.tensor([height, width]).repeat(batch, 1).to(dtype=dtype, device=device)
        aspect_ratio = torch.tensor([float(height / width)]).repeat(batch, 1).to(dtype=dtype, device=device)
        return {"resolution": resolution, "aspect_ratio": aspect_ratio}

    def denoise(self, u, t, step, rows, cond) -> None:
        mask = self._mask if rows is None else self._mask[rows]
        timestep = t if torch.is_tensor(t) else torch.tensor([t], device=u.device)
        timestep = (timestep[None] if timestep.ndim == 0 else timestep).to(u.device).expand(u.shape[0])
        self.pipe.transformer(
            u,
            encoder_hidden_states=cond,
            encoder_attention_mask=mask,
            timestep=timestep,
            added_cond_kwargs=self.micro_conditions(u.shape[0], cond.dtype, u.device),
            return_dict=False,
        )


@register_host
class PixArtSigmaHost(PixArtAlphaHost):
    """``PixArtSigmaPipeline`` (PixArt-Σ: no micro-conditions, ``max_sequence_length`` 300)."""

    pipelines = ("PixArtSigmaPipeline",)
    max_sequence_length: ClassVar[int] = 300

    def micro_conditions(self, batch: int, dtype, device) -> dict:
        return {"resolution": None, "aspect_ratio": None}
