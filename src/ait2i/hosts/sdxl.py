"""Stable Diffusion XL hosts: ``StableDiffusionXLPipeline`` and ``StableDiffusionXLControlNetPipeline``.

SDXL differs from SD 1.x/2.x in what the guided pass must give the UNet and in its text side:

- **added conditions**: the UNet (``addition_embed_type="text_time"``) also takes ``added_cond_kwargs``:
  ``text_embeds``, the pooled embedding of the second text encoder (kept from ``encode_prompt``'s third output),
  and ``time_ids``, the size/crop conditioning that the pipeline's own ``_get_add_time_ids`` returns for the
  conditional half (its first call; the second, with ``negative_original_size``, is the unconditional half). The
  time ids are computed after the start latents, so the step-0 update runs just before the loop (when the
  pipeline opens its progress bar). A user callback that replaces ``add_text_embeds`` / ``add_time_ids`` (e.g.
  diffusers' ``SDXLCFGCutoffCallback``) is followed.
- **two text encoders**: their hidden states are concatenated per token, so a token index must name the same word
  in both. Subjects resolve on the first tokenizer; before anything runs the host checks that the second tokenizer
  splits the prompt into the same pieces at the same positions (end-of-word markers aside: SDXL's second tokenizer
  pads with ``"!"`` and reads a literal ``"!"`` as that token), and fails naming the first difference otherwise (a
  textual inversion loaded into one encoder only; ``"!!"``, one piece for the first tokenizer, two for the second).
  ``prompt_2`` different from ``prompt`` is refused: the second encoder would read other words at the subjects'
  positions, so one token index would mean two words. ``negative_prompt_2`` is free (it is not guided).
- **denoising_end** (text-to-image): the loop stops at the pipeline's cutoff; the guided window and step sizes span
  the steps actually run. With ControlNet it is refused (the pipeline's control window counts the steps before
  the cutoff, which the shared ControlNet host does not know).

Attention resolutions: SDXL's UNet has cross-attention only in its two lower-resolution levels (down blocks 1-2,
the mid block, up blocks 0-1; 2 and 10 transformer layers per block). At 1024x1024 (latents 128x128) these run at
64x64 and 32x32; the default ``attn_res=None`` picks the coarsest of them at least 16 on a side, 32x32 (down
block 2, mid block, up block 0: 20 + 10 + 30 = 60 layers with the SDXL base config; 64x64 has 4 + 6).
"""

from __future__ import annotations

import torch

from .base import LOOP_START, ReadyAfter, register_host
from .checks import check_tokenizers_agree
from .controlnet import ControlNetHost
from .sd import UNetHost


class _SDXLMixin:
    """What every SDXL host shares: the two-tokenizer text side and the UNet's added conditions."""

    added_conditions = ("text_time",)

    # -- checks -----------------------------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        p2 = self.kwargs.get("prompt_2") or None  # the pipeline reads `prompt_2 or prompt`
        if p2 is not None and p2 != self.prompt:
            raise ValueError(
                f"{type(self.pipe).__name__}: `prompt_2` ({p2!r}) differs from the prompt; the second text encoder "
                "would read other words at the subjects' token positions. Give prompt_2=None (the prompt for both "
                "encoders) or the same text."
            )
        check_tokenizers_agree(self.pipe, self.prompt)

    def _converted(self, tokenizer) -> str:
        convert = getattr(self.pipe, "maybe_convert_prompt", None)
        return convert(self.prompt, tokenizer) if convert is not None else self.prompt

    # -- text side --------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.pipe.tokenizer if self.pipe.tokenizer is not None else self.pipe.tokenizer_2

    @property
    def text(self) -> str:
        return self._converted(self.tokenizer)

    # -- what the guided pass needs ---------------------------------------------------------------------------
    def cond_from_encode(self, result) -> torch.Tensor:
        self._text_embeds = result[2].detach()  # pooled conditional embeddings, (B, D)
        return result[0]

    def reset(self) -> None:
        super().reset()
        self._time_ids = None

    def preparations(self):
        return {**super().preparations(), "_get_add_time_ids": self._keep_time_ids}

    def _keep_time_ids(self, result) -> None:
        if self._time_ids is None:  # the first call is the conditional one (the second: negative_original_size)
            self._time_ids = result

    def ready_after(self) -> ReadyAfter:
        return LOOP_START  # the time ids are computed after the start latents

    def loop_timesteps(self) -> list:
        loop = super().loop_timesteps()
        end = self.kwargs.get("denoising_end")
        if isinstance(end, float) and 0 < end < 1:  # the pipeline's own cutoff (StableDiffusionXLPipeline, 8.1)
            n = self.pipe.scheduler.config.num_train_timesteps
            cutoff = int(round(n - end * n))
            loop = [t for t in loop if t >= cutoff]
        return loop

    def on_callback_outputs(self, outputs: dict) -> None:
        super().on_callback_outputs(outputs)
        b = self.cond.shape[0] if self.cond is not None else None
        emb = outputs.get("add_text_embeds")
        if isinstance(emb, torch.Tensor) and b and emb.shape[0] in (b, 2 * b):
            self._text_embeds = emb[-b:]
        ids = outputs.get("add_time_ids")
        if isinstance(ids, torch.Tensor) and b and ids.shape[0] in (b, 2 * b):
            self._time_ids = ids[-b:]

    def added_cond_kwargs(self, rows: torch.Tensor | None) -> dict:
        """``added_cond_kwargs`` of the conditional half (rows ``rows``), as the pipeline's loop builds them."""
        b = self.cond.shape[0]
        if self._time_ids is None:
            raise RuntimeError(f"{type(self.pipe).__name__} did not compute its time ids through _get_add_time_ids")
        text = self._text_embeds
        ids = self._time_ids.to(text.device)
        if ids.shape[0] != b:  # the pipeline repeats the (1, 6) ids over the batch
            ids = ids.repeat(b // ids.shape[0], 1)
        if rows is not None:
            text, ids = text[rows], ids[rows]
        return {"text_embeds": text, "time_ids": ids}


@register_host
class StableDiffusionXLHost(_SDXLMixin, UNetHost):
    """``StableDiffusionXLPipeline`` (text-to-image), ``denoising_end`` included."""

    pipelines = ("StableDiffusionXLPipeline",)


@register_host
class StableDiffusionXLControlNetHost(_SDXLMixin, ControlNetHost):
    """``StableDiffusionXLControlNetPipeline``: the ControlNet also takes the added conditions."""

    pipelines = ("StableDiffusionXLControlNetPipeline",)
    refused = {
        **ControlNetHost.refused,
        "denoising_end": "the pipeline's ControlNet window counts the steps before the cutoff; not supported",
    }


__all__ = ["StableDiffusionXLControlNetHost", "StableDiffusionXLHost"]
