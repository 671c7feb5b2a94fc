"""BoxDiff-style constraints (after Xie et al., 2023), the method ``"boxdiff"``: inner-box, outer-box and corner
constraints (:mod:`ait2i.losses.boxes`) on the top-k activations of the Attend-and-Excite view of the maps
(softmaxed over the prompt's tokens, smoothed). Every subject needs a box (``Subject.box``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..boxes import subject_boxes
from ..losses import (
    ane_view,
    boxdiff_corner_loss,
    boxdiff_inner_loss,
    boxdiff_outer_loss,
    check_subjects,
    gaussian_smooth,
    group_maps,
    subject_max_attention,
)
from .base import SCHEDULE_SPACE, GuidanceConfig, check_integer, check_number
from .space import FloatRange, IntRange, declare_space


@dataclass
class BoxDiffConfig(GuidanceConfig):
    """BoxDiff-style constraints (after Xie et al., 2023) on the Attend-and-Excite view of the maps.

    ``L = w_inner L_inner + w_outer L_outer + w_corner L_corner`` with ``top_k`` (BoxDiff's P) and ``corner_width``
    (its L); the maps are each subject's softmaxed (over the prompt's tokens, x100) and smoothed map, as BoxDiff
    builds on Attend-and-Excite. Simplifications: fractional box masks, a symmetric corner band (docs/method.md).
    """

    max_guided_steps: int | float = 0.5
    top_k: float = 0.2
    corner_width: int = 1
    w_inner: float = 1.0
    w_outer: float = 1.0
    w_corner: float = 1.0
    name: str = field(default="boxdiff", repr=False)
    uses_boxes: ClassVar[bool] = True
    weight_fields: ClassVar[tuple[str, ...]] = ("w_inner", "w_outer", "w_corner")

    def _validate(self) -> None:
        super()._validate()
        check_number(
            "top_k", self.top_k, 0.0, 1.0, low_open=True, note=" (BoxDiff's P, the fraction of cells averaged)"
        )
        check_integer("corner_width", self.corner_width, 1, note=" (BoxDiff's L, in cells)")

    def loss(self, raw, subjects, eot_index):
        boxes = subject_boxes(subjects, self.name)
        raw = check_subjects(raw, subjects, self.softmax_span, eot_index)
        max_att = subject_max_attention(
            raw, subjects, eot_index, self.softmax_span, self.smooth_kernel, self.smooth_sigma
        )
        ane = ane_view(raw, eot_index, self.softmax_span)  # (B, H, W, L)
        maps = gaussian_smooth(
            group_maps(ane, [list(s.tokens) for s in subjects]), self.smooth_kernel, self.smooth_sigma
        )  # (B, G, H, W)
        terms = {
            "boxdiff_inner": boxdiff_inner_loss(maps, boxes, self.top_k, "none"),
            "boxdiff_outer": boxdiff_outer_loss(maps, boxes, self.top_k, "none"),
            "boxdiff_corner": boxdiff_corner_loss(maps, boxes, self.corner_width, "none"),
        }
        loss = (
            self.w_inner * terms["boxdiff_inner"]
            + self.w_outer * terms["boxdiff_outer"]
            + self.w_corner * terms["boxdiff_corner"]
        )
        return loss, terms, max_att


declare_space(
    BoxDiffConfig,
    {
        **SCHEDULE_SPACE,
        "top_k": FloatRange(0.05, 0.5),
        "corner_width": IntRange(1, 3),
        "w_inner": FloatRange(0.0, 3.0),
        "w_outer": FloatRange(0.0, 3.0),
        "w_corner": FloatRange(0.0, 3.0),
    },
)
