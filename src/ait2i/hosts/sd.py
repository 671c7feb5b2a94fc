"""UNet hosts: :class:`UNetHost` (what every UNet family shares) and Stable Diffusion 1.x/2.x text-to-image,
image-to-image and inpainting (UNet, CLIP, ``callback_on_step_end``).

:class:`UNetHost` is the denoiser axis for a ``UNet2DConditionModel``: the guided pass runs the UNet with the call's
``cross_attention_kwargs`` and added conditions, and the maps are its cross-attention layers (``attn2``) at
``attn_res`` in the UNet parts ``from_where`` (:meth:`UNetHost.reads`). The Stable Diffusion hosts differ from it
only where their pipelines differ:

- **text-to-image** (``StableDiffusionPipeline``): the base behaviour;
- **image-to-image** (``StableDiffusionImg2ImgPipeline``): the loop starts at the timestep ``strength`` picks
  (kept from the pipeline's ``get_timesteps``), from the noised image latents of its own ``prepare_latents``; the
  guided window and step sizes span the steps actually run;
- **inpainting** (``StableDiffusionInpaintPipeline``): ``prepare_latents`` returns ``(latents, noise, ...)``; a
  9-channel UNet also sees the mask and the masked-image latents (kept from ``prepare_mask_latents``), so the guided
  pass concatenates them as the pipeline does.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..capture.store import Reads
from ..capture.unet import capture_attention, default_read_res, select_layers
from .base import ReadyAfter, register_host
from .checks import check_strength, latents_shape_for
from .driver import DrivenHost


class UNetHost(DrivenHost):
    """A host whose denoiser is a ``UNet2DConditionModel`` (``pipe.unet``); the injector is the family's choice.

    Class attributes:
        added_conditions (`tuple[str, ...]`): UNet ``addition_embed_type`` values whose inputs this host passes to
            the guided pass (see :meth:`added_cond_kwargs`); a UNet with any other added condition is refused.
    """

    pipelines = ()  # abstract
    components = ("unet", "tokenizer", "scheduler", "encode_prompt", "prepare_latents")
    components_note = "it is not a Stable Diffusion pipeline"
    added_conditions: ClassVar[tuple[str, ...]] = ()
    read_options: ClassVar[tuple[str, ...]] = ("attn_res", "from_where")

    def check_pipeline(self) -> None:
        super().check_pipeline()
        config = self.pipe.unet.config
        if getattr(config, "time_cond_proj_dim", None) is not None:
            raise TypeError(
                "UNets with a guidance-scale embedding (time_cond_proj_dim: LCM-distilled models) are not supported"
            )
        added = getattr(config, "addition_embed_type", None)
        if added is not None and added not in self.added_conditions:
            raise TypeError(
                f"this UNet takes added conditions ({added}), which {type(self).__name__} does not pass to the "
                "guided pass; not supported"
            )

    def latents_shape(self) -> tuple[int, ...] | None:
        """``(num_images_per_prompt, latent channels, height // vae_scale_factor, width // vae_scale_factor)``."""
        pipe = self.pipe
        unet, vae = getattr(pipe, "unet", None), getattr(pipe, "vae", None)
        size = getattr(getattr(unet, "config", None), "sample_size", None)
        if unet is None or not isinstance(size, int) or not hasattr(pipe, "vae_scale_factor"):
            return None
        channels = vae.config.latent_channels if vae is not None else unet.config.in_channels
        return latents_shape_for(self.kwargs, size * pipe.vae_scale_factor, channels, pipe.vae_scale_factor)

    def reads(self, cfg, z) -> Reads:
        """The UNet's cross-attention layers at ``cfg.attn_res`` (``None``: the host's default,
        :func:`~ait2i.capture.unet.default_read_res`) in the UNet parts ``cfg.from_where``.

        Raises:
            ValueError: no cross-attention layer of those parts runs at that resolution for this image size; the
                message lists the resolutions that do.
        """
        latent_hw = tuple(z.shape[-2:])
        if cfg.attn_res is None:
            res = default_read_res(self.pipe.unet, latent_hw, cfg.from_where)
        else:
            res = (cfg.attn_res, cfg.attn_res)
        layers = select_layers(self.pipe.unet, latent_hw, res, cfg.from_where)
        return Reads(tuple(layers), res, res)

    def capture(self, reads: Reads):
        return capture_attention(self.pipe.unet, list(reads.layers), reads.res)

    def denoise(self, u: torch.Tensor, t, step: int, rows: torch.Tensor | None, cond: torch.Tensor) -> None:
        self.unet(u, t, cond, rows)

    def unet(self, u: torch.Tensor, t, cond: torch.Tensor, rows: torch.Tensor | None = None, **inputs) -> None:
        """The UNet on ``u`` with the call's ``cross_attention_kwargs`` (LoRA scale, processor arguments) and the
        added conditions of rows ``rows`` (:meth:`added_cond_kwargs`)."""
        if self.kwargs.get("cross_attention_kwargs"):
            inputs["cross_attention_kwargs"] = self.kwargs["cross_attention_kwargs"]
        added = self.added_cond_kwargs(rows)
        if added is not None:
            inputs["added_cond_kwargs"] = added
        self.pipe.unet(u, t, encoder_hidden_states=cond, **inputs)

    def added_cond_kwargs(self, rows: torch.Tensor | None) -> dict | None:
        """The UNet's ``added_cond_kwargs`` for the conditional half (rows ``rows``); ``None``: the UNet takes none."""
        return None


@register_host
class StableDiffusionHost(UNetHost):
    """``StableDiffusionPipeline`` (SD 1.x / 2.x text-to-image)."""

    pipelines = ("StableDiffusionPipeline",)
    regional_adapters = True


@register_host
class StableDiffusionImg2ImgHost(UNetHost):
    """``StableDiffusionImg2ImgPipeline``: the loop runs the last ``strength`` of the schedule."""

    pipelines = ("StableDiffusionImg2ImgPipeline",)

    def check_call_arguments(self) -> None:
        super().check_call_arguments()
        check_strength(self)


#: A 9-channel inpainting UNet's guided pass needs the mask latents, prepared after the start latents.
MASK_LATENTS = ReadyAfter("prepare_mask_latents")


@register_host
class StableDiffusionInpaintHost(UNetHost):
    """``StableDiffusionInpaintPipeline``: 4-channel (blending) and 9-channel (mask channels) UNets."""

    pipelines = ("StableDiffusionInpaintPipeline",)

    def check_call_arguments(self) -> None:
        super().check_call_arguments()
        check_strength(self)

    def start_latents(self, result) -> torch.Tensor:
        return result[0]

    def with_start_latents(self, result, latents: torch.Tensor):
        return (latents, *result[1:])

    def preparations(self):
        return {**super().preparations(), "prepare_mask_latents": self._keep_mask}

    def ready_after(self) -> ReadyAfter:
        return MASK_LATENTS if self.pipe.unet.config.in_channels == 9 else super().ready_after()

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
