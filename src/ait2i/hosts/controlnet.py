"""ControlNet host (``StableDiffusionControlNetPipeline``, one ControlNet or several).

The guided pass runs the ControlNet on the guided latents, exactly as the pipeline's loop does for the conditional
half of its batch: the prepared control image(s) (kept from the pipeline's ``prepare_image``), the conditioning
scale times the ``control_guidance_start``/``control_guidance_end`` window of that step, guess mode (also when the
ControlNet's config sets ``global_pool_conditions``); its residuals enter the UNet. Two control images therefore
give two different losses.
"""

from __future__ import annotations

from .base import register_host
from .sd import UNetHost


@register_host
class ControlNetHost(UNetHost):
    """``StableDiffusionControlNetPipeline``."""

    pipelines = ("StableDiffusionControlNetPipeline",)

    def reset(self) -> None:
        self._images: list = []  # the prepared control image(s), in the pipeline's order

    def preparations(self):
        return {**super().preparations(), "prepare_image": lambda image: self._images.append(image)}

    def on_callback_outputs(self, outputs: dict) -> None:
        super().on_callback_outputs(outputs)
        image = outputs.get("image")
        if image is not None:  # the pipeline's loop uses a control image the callback returns
            self._images = list(image) if isinstance(image, (list, tuple)) else [image]

    @property
    def _multi(self) -> bool:
        """A ``MultiControlNetModel`` (lists of images and scales), even with a single net."""
        return hasattr(self.pipe.controlnet, "nets")

    @property
    def _nets(self) -> list:
        cn = self.pipe.controlnet
        return list(cn.nets) if self._multi else [cn]

    def _guess_mode(self) -> bool:
        return bool(self.kwargs.get("guess_mode", False) or self._nets[0].config.global_pool_conditions)

    def _window(self) -> tuple[list[float], list[float]]:
        start = self.kwargs.get("control_guidance_start", 0.0)
        end = self.kwargs.get("control_guidance_end", 1.0)
        if not isinstance(start, list) and isinstance(end, list):
            start = [start] * len(end)
        elif isinstance(start, list) and not isinstance(end, list):
            end = [end] * len(start)
        elif not isinstance(start, list):
            start, end = [start] * len(self._nets), [end] * len(self._nets)
        return start, end

    def conditioning_scale(self, loop_index: int):
        """The ControlNet conditioning scale at loop index ``loop_index`` (one float, or one per ControlNet)."""
        n = len(self.loop)
        keep = [1.0 - float(loop_index / n < s or (loop_index + 1) / n > e) for s, e in zip(*self._window())]
        scale = self.kwargs.get("controlnet_conditioning_scale", 1.0)
        if self._multi:
            scales = scale if isinstance(scale, list) else [scale] * len(self._nets)
            return [c * k for c, k in zip(scales, keep)]
        return (scale[0] if isinstance(scale, list) else scale) * keep[0]

    def denoise(self, u, t, step, rows, cond) -> None:
        images = [self.cond_rows(img, rows) for img in self._images]
        image = images if self._multi else images[0]
        added = self.added_cond_kwargs(rows)
        down, mid = self.pipe.controlnet(
            u,
            t,
            encoder_hidden_states=cond,
            controlnet_cond=image,
            conditioning_scale=self.conditioning_scale(step),
            guess_mode=self._guess_mode(),
            return_dict=False,
            **({"added_cond_kwargs": added} if added is not None else {}),
        )
        self.unet(u, t, cond, rows, down_block_additional_residuals=down, mid_block_additional_residual=mid)
