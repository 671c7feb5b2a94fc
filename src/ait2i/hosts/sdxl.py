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
64x64 and 32x32; the default ``attn_res=None`` picks ``ceil(1024 / 32) = 32``, i.e. 32x32 (down block 2, mid block,
up block 0: 20 + 10 + 30 = 60 layers with the SDXL base config; 64x64 has 4 + 6).
"""

from __future__ import annotations

import inspect

import torch

from ..subjects import format_tokens
from .base import CallbackHost, Host
from .controlnet import ControlNetHost
from .registry import register_host

_EOW = "</w>"


def _pieces(tokenizer, prompt: str) -> list[str]:
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return [p.removesuffix(_EOW) for p in tokenizer.convert_ids_to_tokens(ids)]


class _SDXLMixin:
    """What every SDXL host shares: the two-tokenizer text side and the UNet's added conditions."""

    # -- checks -----------------------------------------------------------------------------------------------
    def check(self) -> None:
        pipe = self.pipe
        embed = getattr(getattr(getattr(pipe, "unet", None), "config", None), "addition_embed_type", None)
        if embed == "text_time":
            # CallbackHost.check refuses every UNet with added conditions; SDXL passes exactly these, so run the
            # shared checks here without that one (kept in step with base.CallbackHost.check).
            Host.check(self)
            _callback_host_checks(self)
        else:
            super().check()  # not an SDXL UNet: refused there with the reason
        p2 = self.kwargs.get("prompt_2")
        if p2 is not None and p2 != self.prompt:
            raise ValueError(
                f"{type(pipe).__name__}: `prompt_2` ({p2!r}) differs from the prompt; the second text encoder would "
                "read other words at the subjects' token positions. Give prompt_2=None (the prompt for both "
                "encoders) or the same text."
            )
        self._check_tokenizers()

    def _check_tokenizers(self) -> None:
        tok1, tok2 = getattr(self.pipe, "tokenizer", None), getattr(self.pipe, "tokenizer_2", None)
        if tok1 is None or tok2 is None:
            return  # one text encoder only: nothing to align
        p1, p2 = self._converted(tok1), self._converted(tok2)
        a, b = _pieces(tok1, p1), _pieces(tok2, p2)
        if a == b:
            return
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        first = a[k] if k < len(a) else "(end)"
        second = b[k] if k < len(b) else "(end)"
        raise ValueError(
            f"{type(self.pipe).__name__}: the two tokenizers split the prompt differently from token {k} on "
            f"(tokenizer: {first!r}, tokenizer_2: {second!r}), so a token index would name different words in the "
            f"two text encoders. tokenizer: {format_tokens(tok1, p1)}; tokenizer_2: {format_tokens(tok2, p2)}. "
            "Rephrase that part of the prompt (or load a textual inversion into both encoders)."
        )

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
    def _cond_from_encode(self, result) -> torch.Tensor:
        self._text_embeds = result[2].detach()  # pooled conditional embeddings, (B, D)
        return result[0]

    def preparations(self):
        self._time_ids = None
        return {**super().preparations(), "_get_add_time_ids": self._keep_time_ids}

    def _keep_time_ids(self, result) -> None:
        if self._time_ids is None:  # the first call is the conditional one (the second: negative_original_size)
            self._time_ids = result

    def ready_after(self) -> str:
        # the time ids are computed after the start latents: update step 0 when the loop is about to start
        return "progress_bar"

    def _begin(self, make_engine, z):
        end = self.kwargs.get("denoising_end")
        if isinstance(end, float) and 0 < end < 1:  # the pipeline's own cutoff (StableDiffusionXLPipeline, 8.1)
            n = self.pipe.scheduler.config.num_train_timesteps
            cutoff = int(round(n - end * n))
            loop = self._loop_timesteps if self._loop_timesteps is not None else self.pipe.scheduler.timesteps
            self._loop_timesteps = [t for t in loop if t >= cutoff]
        super()._begin(make_engine, z)

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

    def _extra(self) -> dict:
        kw = {}
        if self.kwargs.get("cross_attention_kwargs"):
            kw["cross_attention_kwargs"] = self.kwargs["cross_attention_kwargs"]
        return kw


def _callback_host_checks(host) -> None:
    """``CallbackHost.check`` less its refusal of added conditions (``Host.check`` is run by the caller)."""
    pipe, kwargs = host.pipe, host.kwargs
    missing = [
        a for a in ("unet", "tokenizer", "scheduler", "encode_prompt", "prepare_latents") if not hasattr(pipe, a)
    ]
    if missing:
        raise TypeError(f"{type(pipe).__name__} has no {', '.join(missing)}; it is not a Stable Diffusion pipeline")
    if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
        raise TypeError(f"{type(pipe).__name__}.__call__ has no `callback_on_step_end`; upgrade diffusers (>= 0.30)")
    if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
        raise TypeError(
            "UNets with a guidance-scale embedding (time_cond_proj_dim: LCM-distilled models) are not supported"
        )
    n = kwargs.get("num_images_per_prompt", 1) or 1
    gen = kwargs.get("generator")
    if isinstance(gen, list) and len(gen) != n:
        raise ValueError(f"{len(gen)} generators for num_images_per_prompt={n}; give one per image")
    latents = kwargs.get("latents")
    if latents is not None and not torch.isfinite(latents).all():
        raise ValueError("latents contain NaN or inf")


@register_host
class StableDiffusionXLHost(_SDXLMixin, CallbackHost):
    """``StableDiffusionXLPipeline`` (text-to-image), ``denoising_end`` included."""

    pipelines = ("StableDiffusionXLPipeline",)

    def denoise(self, u, t, step, rows, cond) -> None:
        self.pipe.unet(
            u, t, encoder_hidden_states=cond, added_cond_kwargs=self.added_cond_kwargs(rows), **self._extra()
        )


@register_host
class StableDiffusionXLControlNetHost(_SDXLMixin, ControlNetHost):
    """``StableDiffusionXLControlNetPipeline``: the ControlNet also takes the added conditions."""

    pipelines = ("StableDiffusionXLControlNetPipeline",)
    refused = {
        **ControlNetHost.refused,
        "denoising_end": "the pipeline's ControlNet window counts the steps before the cutoff; not supported",
    }

    def denoise(self, u, t, step, rows, cond) -> None:
        b = self.cond.shape[0]
        images = [img[-b:] if rows is None else img[-b:][rows] for img in self._images]  # conditional half
        added = self.added_cond_kwargs(rows)
        down, mid = self.pipe.controlnet(
            u,
            t,
            encoder_hidden_states=cond,
            controlnet_cond=images if len(self._nets) > 1 else images[0],
            conditioning_scale=self.conditioning_scale(step),
            guess_mode=self._guess_mode(),
            added_cond_kwargs=added,
            return_dict=False,
        )
        self.pipe.unet(
            u,
            t,
            encoder_hidden_states=cond,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            added_cond_kwargs=added,
            **self._extra(),
        )


__all__ = ["StableDiffusionXLControlNetHost", "StableDiffusionXLHost"]
