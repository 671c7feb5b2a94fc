"""Attend-and-Excite (Chefer et al., 2023): ``L = max_g (1 - max A_g)`` on the softmaxed, smoothed maps.

The method ``"attend-and-excite"``: its config, its loss (:func:`ait2i.losses.attend_excite_loss` on the subjects'
maximum attention) and the space ``ait2i tune`` searches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses import attend_excite_loss, check_subjects, nan_if_nonfinite, subject_max_attention
from .base import SCHEDULE_SPACE, GuidanceConfig
from .space import REFINEMENT, declare_space


@dataclass
class AttendExciteConfig(GuidanceConfig):
    """Attend-and-Excite (Chefer et al., 2023): ``L = max_g (1 - max A_g)`` on the softmaxed, smoothed maps.

    Defaults are those of diffusers' ``StableDiffusionAttendAndExcitePipeline``.
    """

    refinement: dict[int | float, float] | None = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})
    name: str = field(default="attend-and-excite", repr=False)

    def loss(self, raw, subjects, eot_index):
        """``L = max_g max(0, 1 - max Â_g)``, terms ``{"attend_excite"}``."""
        raw = check_subjects(raw, subjects, self.softmax_span, eot_index)
        max_att = subject_max_attention(
            raw, subjects, eot_index, self.softmax_span, self.smooth_kernel, self.smooth_sigma
        )
        loss = nan_if_nonfinite(attend_excite_loss(max_att), raw)
        return loss, {"attend_excite": loss}, max_att


declare_space(AttendExciteConfig, {**SCHEDULE_SPACE, "refinement": REFINEMENT})
