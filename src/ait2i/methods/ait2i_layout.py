"""Layout-controllable methods in the one engine: AI-T2I with boxes, layout guidance and a BoxDiff-style baseline.

Each is a registered method (``uses_boxes = True``) whose loss reads every subject's ``box`` (normalised
``x0,y0,x1,y1``, top-left origin; ``Subject.box``) and calls the pure box losses of :mod:`ait2i.layout`:

- ``"ait2i-layout"`` (:class:`AIT2ILayoutConfig`): the AI-T2I loss plus box aggregation (mass and centroid toward
  the subject's box) and box isolation (out of the other subjects' boxes and out of the area outside its own),
  each with a Euclidean or cosine form like the base terms;
- ``"layout-guidance"`` (:class:`LayoutGuidanceConfig`, Chen et al., 2023, backward guidance):
  ``mean_g (1 - mass inside box / total mass)^2`` on the raw maps;
- ``"boxdiff"`` (:class:`BoxDiffConfig`, after Xie et al., 2023): inner-box, outer-box and corner constraints on
  the top-k activations of the Attend-and-Excite view of the maps (softmaxed over the prompt's tokens, smoothed).

Every subject of a box method needs a box; boxes that overlap are allowed (``generate`` notes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from . import layout as L
from . import losses
from .config import METRICS, AIT2IConfig, GuidanceConfig, _integer, _number


def _boxes(subjects: Sequence, method: str) -> list[L.Box]:
    missing = [s.label for s in subjects if s.box is None]
    if missing:
        raise ValueError(
            f"method {method!r} needs a box for every subject; {missing} have none. Give subjects as "
            "'phrase@x0,y0,x1,y1' (normalised, top-left origin) or Subject(..., box=...)"
        )
    return [s.box for s in subjects]


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
        boxes = _boxes(subjects, self.name)
        loss, terms, max_att = losses.ait2i_objective(raw, subjects, self, eot_index)
        maps = losses.group_maps(raw.float(), [list(s.tokens) for s in subjects])  # (B, G, H, W)
        terms["box_aggregation"] = L.box_aggregation_loss(maps, boxes, self.box_aggregation_metric)
        terms["box_isolation"] = L.box_isolation_loss(maps, boxes, self.box_isolation_metric)
        loss = loss + self.w_box_aggregation * terms["box_aggregation"] + self.w_box_isolation * terms["box_isolation"]
        return loss, terms, max_att


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
        boxes = _boxes(subjects, self.name)
        raw = losses.check_subjects(raw, subjects, self.softmax_span, eot_index)
        max_att = losses.subject_max_attention(raw, subjects, self, eot_index)
        maps = losses.group_maps(raw, [list(s.tokens) for s in subjects])
        loss = L.layout_guidance_loss(maps, boxes)
        return loss, {"layout_guidance": loss}, max_att


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
        _number("top_k", self.top_k, 0.0, 1.0, low_open=True, note=" (BoxDiff's P, the fraction of cells averaged)")
        _integer("corner_width", self.corner_width, 1, note=" (BoxDiff's L, in cells)")

    def loss(self, raw, subjects, eot_index):
        boxes = _boxes(subjects, self.name)
        raw = losses.check_subjects(raw, subjects, self.softmax_span, eot_index)
        max_att = losses.subject_max_attention(raw, subjects, self, eot_index)
        ane = losses.ane_view(raw, eot_index, self.softmax_span)  # (B, H, W, L)
        maps = losses.gaussian_smooth(
            losses.group_maps(ane, [list(s.tokens) for s in subjects]), self.smooth_kernel, self.smooth_sigma
        )  # (B, G, H, W)
        terms = {
            "boxdiff_inner": L.boxdiff_inner_loss(maps, boxes, self.top_k, "none"),
            "boxdiff_outer": L.boxdiff_outer_loss(maps, boxes, self.top_k, "none"),
            "boxdiff_corner": L.boxdiff_corner_loss(maps, boxes, self.corner_width, "none"),
        }
        loss = (
            self.w_inner * terms["boxdiff_inner"]
            + self.w_outer * terms["boxdiff_outer"]
            + self.w_corner * terms["boxdiff_corner"]
        )
        return loss, terms, max_att


def box_notes(subjects: Sequence) -> list[str]:
    """Diagnostics notes for overlapping boxes (allowed; the box terms then share the overlap)."""
    boxes = [s.box for s in subjects]
    return [
        f"boxes of {subjects[i].label!r} and {subjects[j].label!r} overlap (IoU {iou:.2f})"
        for i, j, iou in L.overlapping_pairs(boxes)
    ]
