"""Stable Diffusion 1.x/2.x hosts: text-to-image, image-to-image and inpainting (UNet, CLIP, ``callback_on_step_end``).

They differ from :class:`~ait2i.hosts.base.CallbackHost` only where their pipelines differ:

- **text-to-image** (``StableDiffusionPipeline``): the base behaviour;
- **image-to-image** (``StableDiffusionImg2ImgPipeline``): the loop starts at the timestep ``strength`` picks
  (kept from the pipeline's ``get_timesteps``), from the noised image latents of its own ``prepare_latents``; the
  guided window and step sizes span the steps actually run;
- **inpainting** (``StableDiffusionInpaintPipeline``): ``prepare_latents`` returns ``(latents, noise, ...)``; a
  9-channel UNet also sees the mask and the masked-image latents (kept from ``prepare_mask_latents``), so the guided
  pass concatenates them as the pipeline does.
"""

from __future__ import annotations

import math
import numbers

import torch

from .base import CallbackHost, _default
from .registry import register_host


def check_strength(host: CallbackHost) -> None:
    """Refuse a ``strength`` that is not a number in [0, 1], or one that leaves no denoising step.

    The pipeline runs ``int(num_inference_steps * strength)`` steps; below 1 its loop is empty and the guided run
    would fail late ("loop index 0 is out of step"), so say what to raise up front.

    Raises:
        ValueError: naming strength, num_inference_steps and the fix.
    """
    kw, pipe = host.kwargs, host.pipe
    strength = kw.get("strength", _default(pipe, "strength"))
    if strength is None:
        return
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(f"{type(pipe).__name__}: strength must be a finite number in [0, 1], got {strength!r}")
    if kw.get("timesteps") is not None or kw.get("sigmas") is not None:
        return  # the schedule is the caller's: the pipeline counts its steps from it
    steps = kw.get("num_inference_steps") or _default(pipe, "num_inference_steps")
    if isinstance(steps, numbers.Integral) and math.floor(steps * strength) < 1:
        raise ValueError(
            f"{type(pipe).__name__}: strength={strength} x num_inference_steps={steps} leaves no denoising step (the "
            f"pipeline runs int({steps} x {strength}) = {int(steps * strength)} steps); raise strength or "
            "num_inference_steps so that their product is at least 1"
        )


@register_host
class StableDiffusionHost(CallbackHost):
    """``StableDiffusionPipeline`` (SD 1.x / 2.x text-to-image)."""

    pipelines = ("StableDiffusionPipeline",)


@register_host
class StableDiffusionImg2ImgHost(CallbackHost):
    """``StableDiffusionImg2ImgPipeline``: the loop runs the last ``strength`` of the schedule."""

    pipelines = ("StableDiffusionImg2ImgPipeline",)

    def check_call_arguments(self) -> None:
        super().check_call_arguments()
        check_strength(self)


@register_host
class StableDiffusionInpaintHost(CallbackHost):
    """``StableDiffusionInpaintPipeline``: 4-channel (blending) and 9-channel (mask channels) UNets."""

    pipelines = ("StableDiffusionInpaintPipeline",)

    def check_call_arguments(self) -> None:
        super().check_call_arguments()
        check_strength(self)

    def _start_latents(self, result) -> torch.Tensor:
        return result[0]

    def _with_start_latents(self, result, latents: torch.Tensor):
        return (latents, *result[1:])

    def preparations(self):
        return {**super().preparations(), "prepare_mask_latents": self._keep_mask}

    def ready_after(self) -> str:
        # a 9-channel UNet's guided pass needs the mask latents, prepared after the start latents
        return "prepare_mask_latents" if self.pipe.unet.config.in_channels == 9 else "prepare_latents"

    def _keep_mask(self, result) -> None:
        self._mask, self._masked = result  # (CFG ? 2B : B, 1 / 4, h, w); the conditional half is the last B rows

    def on_callback_outputs(self, outputs: dict) -> None:
        super().on_callback_outputs(outputs)
        self._mask = outputs.get("mask", self._mask)
        self._masked = outputs.get("masked_image_latents", self._masked)

    def denoise(self, u, t, step, rows, cond) -> None:
        if self.pipe.unet.config.in_channels == 9:
            mask, masked = self.cond_rows(self._mask, rows), self.cond_rows(self._masked, rows)
            u = torch.cat([u, mask.to(u.dtype), masked.to(u.dtype)], dim=1)
        self.unet(u, t, cond, rows)
