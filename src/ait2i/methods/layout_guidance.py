"""Layout guidance (Chen et al., 2023, backward guidance), the method ``"layout-guidance"``:
``mean_g (1 - mass inside box / total mass)^2`` on the raw maps (:func:`ait2i.losses.layout_guidance_loss`).

Every subject needs a box (``Subject.box``); it searches the schedule every method inherits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..boxes import subject_boxes
from ..losses import check_subjects, group_maps, layout_guidance_loss, subject_max_attention
from .base import GuidanceConfig


@dataclass
class LayoutGuidanceConfig(GuidanceConfig):
    """Layout guidance (Chen et al., 2023, backward guidance): ``mean_g (1 - sum(S_g B_g) / sum(S_g))^2``.

    The maps are the raw cross-attention averaged over the read layers and heads (the paper averages the loss over
    layers instead); one update per guided step (the paper iterates 5 times in each of its first 10 of 50 steps).
    """

    from_where: tuple[str, ...] = ("up", "down", "mid")
    max_guided_steps: int | float = 0.2
    scale_factor: float = 30.0
    name: str = field(default="layout-guidance", repr=False)
    uses_boxes: ClassVar[bool] = True

    def loss(self, raw, subjects, eot_index):
        boxes = subject_boxes(subjects, self.name)
        raw = check_subjects(raw, subjects, self.softmax_span, eot_index)
        max_att = subject_max_attention(
            raw, subjects, eot_index, self.softmax_span, self.smooth_kernel, self.smooth_sigma
        )
        maps = group_maps(raw, [list(s.tokens) for s in subjects])
        loss = layout_guidance_loss(maps, boxes)
        return loss, {"layout_guidance": loss}, max_att
