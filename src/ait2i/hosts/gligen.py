"""GLIGEN host (``StableDiffusionGLIGENPipeline``: boxes + phrases grounded by gated self-attention).

GLIGEN's pipeline has no ``callback_on_step_end``, so it is driven through the scheduler-step hook
(:data:`~ait2i.hosts.injectors.SCHEDULER_STEP`). Its gated self-attention stays as it is: the guided pass runs the
UNet with exactly the grounding inputs the pipeline's loop passes, the conditional half of them. The pipeline
builds those (``cross_attention_kwargs["gligen"]``: box coordinates, phrase embeddings, masks) in its ``__call__``
into the ``cross_attention_kwargs`` dict it is given; the host hands it its own dict and reads them from there. The
grounding ("fuser") is on for the first ``gligen_scheduled_sampling_beta`` of the steps; the guided pass of step
``j`` sets it as the loop will at ``j`` and restores it.

Refused: ``gligen_inpaint_image`` (GLIGEN's inpainting re-noises and replaces the latents inside the box at every
step and adds UNet input channels).
"""

from __future__ import annotations

from .base import ReadyAfter, register_host
from .injectors import SCHEDULER_STEP
from .sd import UNetHost

#: ``enable_fuser(True)`` is called once the grounding inputs exist, right before the loop.
GROUNDING = ReadyAfter("enable_fuser")


@register_host
class GLIGENHost(UNetHost):
    """``StableDiffusionGLIGENPipeline`` (text-box grounding)."""

    pipelines = ("StableDiffusionGLIGENPipeline",)
    injector = SCHEDULER_STEP
    refused = {
        **UNetHost.refused,
        "gligen_inpaint_image": "GLIGEN inpainting replaces the latents inside the boxes at every step",
    }

    def __init__(self, pipe, prompt: str, kwargs: dict):
        super().__init__(pipe, prompt, kwargs)
        # The pipeline writes its grounding inputs into the dict it is given: ours, so the guided pass can read them.
        self._kwargs_dict = self.kwargs["cross_attention_kwargs"] = dict(
            self.kwargs.get("cross_attention_kwargs") or {}
        )

    def ready_after(self) -> ReadyAfter:
        return GROUNDING

    def _fusers(self) -> list:
        return [m for m in self.pipe.unet.modules() if type(m).__name__ == "GatedSelfAttentionDense"]

    def denoise(self, u, t, step, rows, cond) -> None:
        grounding = self._kwargs_dict.get("gligen")
        if grounding is None:
            raise RuntimeError("StableDiffusionGLIGENPipeline did not write its grounding inputs (gligen) as expected")
        user = {k: v for k, v in self._kwargs_dict.items() if k != "gligen"}
        beta = self.kwargs.get("gligen_scheduled_sampling_beta", 0.3)
        grounded = step < int(beta * len(self.loop))  # the pipeline's scheduled sampling, at the guided step
        fusers = self._fusers()
        before = [m.enabled for m in fusers]
        for m in fusers:
            m.enabled = grounded
        try:
            self.pipe.unet(
                u,
                t,
                encoder_hidden_states=cond,
                cross_attention_kwargs={**user, "gligen": {k: self.cond_rows(v, rows) for k, v in grounding.items()}},
            )
        finally:
            for m, e in zip(fusers, before):
                m.enabled = e


__all__ = ["GLIGENHost"]
