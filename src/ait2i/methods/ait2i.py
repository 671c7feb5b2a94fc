"""AI-T2I (Cao et al., 2026): aggregation + attribute binding + isolation (+ presence); docs/method.md, section 3.

The methods ``"ait2i"`` (:class:`AIT2IConfig`, our defaults) and ``"ait2i-paper"`` (:func:`paper`, the authors'
released configuration): the config, its loss (the terms of :mod:`ait2i.losses.ait2i`, weighted) and the space
``ait2i tune`` searches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..losses import ait2i_terms, check_subjects, subject_max_attention
from .base import METRICS, SCHEDULE_SPACE, GuidanceConfig, check_integer, check_number
from .space import METRIC, REFINEMENT, FloatRange, declare_space


@dataclass
class AIT2IConfig(GuidanceConfig):
    """AI-T2I (Cao et al., 2026): aggregation + attribute binding + isolation (+ presence).

    Formulas: docs/method.md, section 3.
    """

    from_where: tuple[str, ...] = ("up", "down")
    #: Our default guides the first half of the steps whatever their number (25 of 50, as the authors' code);
    #: the "ait2i-paper" preset keeps the absolute 25.
    max_guided_steps: int | float = 0.5
    refinement: dict[int | float, float] | None = None
    #: Loss weights. Isolation pushes subjects apart; aggregation gathers each subject into one region;
    #: attribute binding gathers each attribute token onto its noun; presence is A&E's neglect term.
    w_isolation: float = 2.0
    w_aggregation: float = 1.25
    w_presence: float = 0.25
    w_attribute: float = 0.75
    #: Distance metric per geometric term: "euclidean" (centroid distances) or "cosine" (map overlap).
    #: Aggregation defaults to cosine, chosen by the ShapesWorld ablation (docs/method.md); the released code
    #: (preset "ait2i-paper") is Euclidean throughout.
    isolation_metric: str = "euclidean"
    aggregation_metric: str = "cosine"
    attribute_metric: str = "euclidean"
    #: Regions found by non-maximum suppression per map, and the disc radii (in cells at 16x16; scaled with
    #: ``attn_res / 16`` at other resolutions).
    num_regions: int = 3
    region_radius: float = 5.0
    attribute_radius: float = 6.0
    name: str = field(default="ait2i", repr=False)

    weight_fields: ClassVar[tuple[str, ...]] = ("w_isolation", "w_aggregation", "w_presence", "w_attribute")

    def _validate(self) -> None:
        super()._validate()
        for k in ("isolation_metric", "aggregation_metric", "attribute_metric"):
            if getattr(self, k) not in METRICS:
                raise ValueError(f"{k} must be one of {METRICS}, got {getattr(self, k)!r}")
        check_integer("num_regions", self.num_regions, 1)
        check_number("region_radius", self.region_radius, 0.0, None, low_open=True, note=" (cells at 16x16; typical 5)")
        check_number(
            "attribute_radius", self.attribute_radius, 0.0, None, low_open=True, note=" (cells at 16x16; typical 6)"
        )

    def loss(self, raw, subjects, eot_index):
        """``L = w_iso L_iso + w_agg L_agg + w_pres L_pres + w_attr L_attr``; terms ``{"isolation", "aggregation",
        "attribute", "presence"}`` (unweighted, :func:`ait2i.losses.ait2i_terms`, radii scaled by ``H / 16``).
        ``Â_g`` (presence, max attention) is the mean of the subject's noun-token maps in the Attend-and-Excite view
        (span ``softmax_span``), smoothed."""
        raw = check_subjects(raw, subjects, self.softmax_span, eot_index)
        max_att = subject_max_attention(
            raw, subjects, eot_index, self.softmax_span, self.smooth_kernel, self.smooth_sigma
        )
        terms = ait2i_terms(
            raw,
            subjects,
            max_att,
            isolation_metric=self.isolation_metric,
            aggregation_metric=self.aggregation_metric,
            attribute_metric=self.attribute_metric,
            num_regions=self.num_regions,
            region_radius=self.region_radius,
            attribute_radius=self.attribute_radius,
        )
        loss = (
            self.w_isolation * terms["isolation"]
            + self.w_aggregation * terms["aggregation"]
            + self.w_presence * terms["presence"]
            + self.w_attribute * terms["attribute"]
        )
        return loss, terms, max_att


def paper() -> AIT2IConfig:
    """The authors' released configuration (method ``"ait2i-paper"``), kept whatever our defaults become: 25
    guided steps whatever their number, Euclidean throughout."""
    return AIT2IConfig(
        name="ait2i-paper",
        max_guided_steps=25,
        isolation_metric="euclidean",
        aggregation_metric="euclidean",
        attribute_metric="euclidean",
    )


#: What ``ait2i tune`` searches for AI-T2I (and for its variants that declare no space of their own).
SPACE = {
    **SCHEDULE_SPACE,
    "w_isolation": FloatRange(0.0, 4.0),
    "w_aggregation": FloatRange(0.0, 4.0),
    "w_presence": FloatRange(0.0, 2.0),
    "w_attribute": FloatRange(0.0, 3.0),
    "isolation_metric": METRIC,
    "aggregation_metric": METRIC,
    "attribute_metric": METRIC,
    "refinement": REFINEMENT,
}
declare_space(AIT2IConfig, SPACE)
