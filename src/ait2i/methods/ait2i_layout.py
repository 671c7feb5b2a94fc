"""AI-T2I with boxes, the method ``"ait2i-layout"``: the AI-T2I loss plus box aggregation (mass and centroid toward
the subject's box) and box isolation (out of the other subjects' boxes and out of the area outside its own), each
with a Euclidean or cosine form like the base terms (:mod:`ait2i.losses.boxes`); docs/method.md, layout.

Every subject needs a box (``Subject.box``: normalised ``x0,y0,x1,y1``, top-left origin); boxes that overlap are
allowed (``generate`` notes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..boxes import subject_boxes
from ..losses import box_aggregation_loss, box_isolation_loss, group_maps
from .ait2i import SPACE as AIT2I_SPACE
from .ait2i import AIT2IConfig
from .base import METRICS
from .space import METRIC, FloatRange, declare_space


@dataclass
class AIT2ILayoutConfig(AIT2IConfig):
    """AI-T2I with boxes: ``L_AI-T2I + w_box_agg L_box_agg + w_box_iso L_box_iso`` (docs/method.md, layout)."""

    #: Box aggregation (fraction of the subject's mass outside its box, plus its centroid's distance to the box
    #: centre; cosine: ``1 - cos(S, S * box)``) and box isolation (mass inside the other subjects' boxes and outside
    #: its own; cosine: the overlaps). Typical 0.5-4.
    w_box_aggregation: float = 2.0
    w_box_isolation: float = 2.0
    box_aggregation_metric: str = "euclidean"
    box_isolation_metric: str = "euclidean"
    name: str = field(default="ait2i-layout", repr=False)
    uses_boxes: ClassVar[bool] = True
    weight_fields: ClassVar[tuple[str, ...]] = (*AIT2IConfig.weight_fields, "w_box_aggregation", "w_box_isolation")

    def _validate(self) -> None:
        super()._validate()
        for k in ("box_aggregation_metric", "box_isolation_metric"):
            if getattr(self, k) not in METRICS:
                raise ValueError(f"{k} must be one of {METRICS}, got {getattr(self, k)!r}")

    def loss(self, raw, subjects, eot_index):
        boxes = subject_boxes(subjects, self.name)
        loss, terms, max_att = super().loss(raw, subjects, eot_index)
        maps = group_maps(raw.float(), [list(s.tokens) for s in subjects])  # (B, G, H, W)
        terms["box_aggregation"] = box_aggregation_loss(maps, boxes, self.box_aggregation_metric)
        terms["box_isolation"] = box_isolation_loss(maps, boxes, self.box_isolation_metric)
        loss = loss + self.w_box_aggregation * terms["box_aggregation"] + self.w_box_isolation * terms["box_isolation"]
        return loss, terms, max_att


declare_space(
    AIT2ILayoutConfig,
    {
        **AIT2I_SPACE,
        "w_box_aggregation": FloatRange(0.0, 6.0),
        "w_box_isolation": FloatRange(0.0, 6.0),
        "box_aggregation_metric": METRIC,
        "box_isolation_metric": METRIC,
    },
)
