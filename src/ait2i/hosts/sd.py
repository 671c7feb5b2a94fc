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

import torch

from .base import CallbackHost
from .registry import register_host


@register_host
class StableDiffusionHost(CallbackHost):
    """``StableDiffusionPipeline`` (SD 1.x / 2.x text-to-image)."""

    pipelines = ("StableDiffusionPipeline",)


@register_host
class StableDiffusionImg2ImgHost(CallbackHost):
    """``StableDiffusionImg2ImgPipeline``: the loop runs the last ``strength`` of the schedule."""

    pipelines = ("StableDiffusionImg2ImgPipeline",)


@register_host
class StableDiffusionInpaintHost(CallbackHost):
    """``StableDiffusionInpaintPipeline``: 4-channel (blending) and 9-channel (mask channels) UNets."""

    pipelines = ("StableDiffusionInpaintPipeline",)

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
