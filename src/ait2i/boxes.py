"""Boxes: where a subject should be (docs/method.md, "Hosts and methods").

A :class:`Box` is a normalised ``(x0, y0, x1, y1)`` in [0, 1] with the origin at the **top-left** corner of the
image (``y`` grows downwards, as for image rows), validated on construction; :func:`parse_box` and
:func:`split_box_spec` read its spellings (``"x0,y0,x1,y1"``, ``"phrase@x0,y0,x1,y1"``), :func:`box_iou` and
:func:`overlapping_pairs` compare boxes, :func:`box_mask` lays a box on a map grid (cell ``(x, y)`` of an
``H x W`` map covers ``[x / W, (x + 1) / W] x [y / H, (y + 1) / H]`` of the normalised image). The box losses
are in :mod:`ait2i.losses.boxes`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Box",
    "box_iou",
    "box_mask",
    "box_masks",
    "box_notes",
    "boxes_overlap",
    "overlapping_pairs",
    "parse_box",
    "split_box_spec",
    "subject_boxes",
    "xyxy_iou",
]

_EXAMPLE = "e.g. 0.05,0.1,0.45,0.5 for a box in the top-left quarter"


@dataclass(frozen=True)
class Box:
    """A normalised box ``(x0, y0, x1, y1)`` in [0, 1], origin at the top-left corner of the image.

    Args:
        x0 (`float`): left edge, in [0, 1).
        y0 (`float`): top edge, in [0, 1).
        x1 (`float`): right edge, in (x0, 1].
        y1 (`float`): bottom edge, in (y0, 1].

    Raises:
        `ValueError`: a coordinate that is not a finite number in [0, 1], or ``x1 <= x0`` / ``y1 <= y0``.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self):
        values = (self.x0, self.y0, self.x1, self.y1)
        for name, v in zip(("x0", "y0", "x1", "y1"), values):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(
                    f"box {name}={v!r} is not a number; give a box as four normalised numbers x0,y0,x1,y1 ({_EXAMPLE})"
                )
            if not math.isfinite(v):
                raise ValueError(f"box {name}={v!r} is not finite; give finite coordinates in [0, 1] ({_EXAMPLE})")
            if not 0.0 <= v <= 1.0:
                raise ValueError(
                    f"box {name}={v!r} is outside [0, 1]; box coordinates are fractions of the image width and height "
                    f"(divide pixel coordinates by the image size), {_EXAMPLE}"
                )
            object.__setattr__(self, name, float(v))
        if not self.x1 > self.x0:
            raise ValueError(
                f"box {self.as_tuple()}: x1={self.x1} must be greater than x0={self.x0}; the order is x0,y0,x1,y1 "
                f"(left, top, right, bottom), {_EXAMPLE}"
            )
        if not self.y1 > self.y0:
            raise ValueError(
                f"box {self.as_tuple()}: y1={self.y1} must be greater than y0={self.y0}; the order is x0,y0,x1,y1 "
                f"(left, top, right, bottom) with y growing downwards, {_EXAMPLE}"
            )

    @classmethod
    def from_sequence(cls, values: Sequence[float]) -> Box:
        """A box from four numbers ``(x0, y0, x1, y1)``; `ValueError` for any other length."""
        if isinstance(values, Box):
            return values
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ValueError(f"a box is four numbers x0,y0,x1,y1, got {values!r} ({_EXAMPLE})")
        values = tuple(values)  # lists, tuples, numpy arrays
        if len(values) != 4:
            raise ValueError(f"a box is four numbers x0,y0,x1,y1, got {len(values)}: {tuple(values)!r} ({_EXAMPLE})")
        return cls(*values)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def centre(self) -> tuple[float, float]:
        """``(x, y)`` of the box centre, normalised."""
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    def centre_cells(self, h: int, w: int) -> tuple[float, float]:
        """``(x, y)`` of the box centre in the cell units of an ``h x w`` map (cell centres at integers)."""
        cx, cy = self.centre
        return (cx * w - 0.5, cy * h - 0.5)

    def __str__(self) -> str:
        return ",".join(f"{v:g}" for v in self.as_tuple())


def parse_box(spec: str | Sequence[float] | Box) -> Box:
    """A :class:`Box` from its spelling ``"x0,y0,x1,y1"`` (normalised, top-left origin), a 4-sequence or a box.

    Spaces around the numbers and one pair of enclosing brackets (``[...]`` or ``(...)``) are allowed.

    Args:
        spec (`str`, `Sequence[float]` or `Box`): e.g. ``"0.05,0.1,0.45,0.5"``.

    Returns:
        `Box`.

    Raises:
        `ValueError`: not four numbers, or an invalid box (see :class:`Box`).
    """
    if isinstance(spec, Box):
        return spec
    if not isinstance(spec, str):
        return Box.from_sequence(spec)  # 4-sequence or array
    text = spec.strip()
    if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
        text = text[1:-1]
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(
            f"box {spec!r}: expected four comma-separated numbers x0,y0,x1,y1, got {len(parts)} ({_EXAMPLE})"
        )
    values = []
    for p in parts:
        try:
            values.append(float(p))
        except ValueError:
            raise ValueError(f"box {spec!r}: {p!r} is not a number; write x0,y0,x1,y1 ({_EXAMPLE})") from None
    return Box(*values)


def split_box_spec(spec: str) -> tuple[str, Box | None]:
    """Splits a subject spelling ``"phrase@x0,y0,x1,y1"`` into the phrase and its box.

    ``split_box_spec("red circle@0.05,0.1,0.45,0.5") -> ("red circle", Box(0.05, 0.1, 0.45, 0.5))``; without ``@``
    the box is ``None``: ``split_box_spec("red circle") -> ("red circle", None)``.

    Args:
        spec (`str`): the subject phrase, optionally followed by ``@`` and a box.

    Returns:
        `(phrase, box or None)`, the phrase stripped of surrounding spaces.

    Raises:
        `ValueError`: empty phrase, more than one ``@``, or an invalid box.
    """
    if not isinstance(spec, str):
        raise ValueError(f"subject spec must be a string 'phrase' or 'phrase@x0,y0,x1,y1', got {spec!r}")
    if spec.count("@") > 1:
        raise ValueError(f"subject spec {spec!r} has more than one '@'; write 'phrase@x0,y0,x1,y1' ({_EXAMPLE})")
    phrase, at, box = spec.partition("@")
    phrase = phrase.strip()
    if not phrase:
        raise ValueError(f"subject spec {spec!r} has no phrase before the box; write 'phrase@x0,y0,x1,y1'")
    if not at:
        return phrase, None
    if not box.strip():
        raise ValueError(f"subject spec {spec!r} has '@' but no box after it; write 'phrase@x0,y0,x1,y1' ({_EXAMPLE})")
    return phrase, parse_box(box)


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    """Area shared by two ``(x0, y0, x1, y1)`` boxes (0 for disjoint or touching ones)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    return max(iw, 0.0) * max(ih, 0.0)


def xyxy_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes in any units (pixels, fractions); 0 when both
    are empty."""
    inter = _intersection(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (any spelling :func:`parse_box` reads), in [0, 1] (0 for boxes that
    only touch)."""
    return xyxy_iou(parse_box(a).as_tuple(), parse_box(b).as_tuple())


def boxes_overlap(a: Box, b: Box) -> bool:
    """Whether two boxes share a region of positive area (touching edges do not count)."""
    return _intersection(parse_box(a).as_tuple(), parse_box(b).as_tuple()) > 0.0


def overlapping_pairs(boxes: Sequence[Box | None]) -> list[tuple[int, int, float]]:
    """``(i, j, iou)`` for every pair ``i < j`` of overlapping boxes (``None`` entries skipped), for diagnostics.

    Overlapping boxes are allowed: the isolation term leaves the shared area alone (see :func:`box_isolation_loss`).
    """
    out = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if boxes[i] is not None and boxes[j] is not None and boxes_overlap(boxes[i], boxes[j]):
                out.append((i, j, box_iou(boxes[i], boxes[j])))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------
def _coverage(lo: float, hi: float, n: int, device=None) -> torch.Tensor:
    """Fraction of each of ``n`` unit cells ``[i, i + 1]`` that lies in ``[lo * n, hi * n]``: ``(n,)``."""
    edges = torch.arange(n, device=device, dtype=torch.float64)
    return ((torch.clamp(edges + 1, max=hi * n) - torch.clamp(edges, min=lo * n)).clamp(0.0, 1.0)).float()


def box_mask(box: Box | Sequence[float] | str, h: int, w: int, device=None) -> torch.Tensor:
    """The mask of a box on an ``h x w`` map grid: the fraction of each cell's area that lies inside the box.

    Cell ``(x, y)`` covers ``[x / w, (x + 1) / w] x [y / h, (y + 1) / h]`` of the normalised image (top-left origin),
    so the mask is the outer product of the box's 1-D coverages along y and x. Cells fully inside are 1, fully outside
    0, cells cut by an edge hold their covered fraction; a box whose edges fall on cell boundaries gives an exact 0/1
    mask, and ``mask.sum() == box.area * h * w`` always. (Chen et al. and BoxDiff round the edges to whole cells; the
    fractional mask keeps a small box from vanishing on a coarse grid and moves smoothly with the box.)

    Args:
        box (`Box`, 4-sequence or `str`): the box.
        h (`int`), w (`int`): map size in cells.
        device (*optional*): device of the mask.

    Returns:
        `torch.Tensor` of shape `(h, w)`, float32 in [0, 1].
    """
    box = parse_box(box)
    for name, n in (("h", h), ("w", w)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int (map size in cells), got {n!r}")
    cy = _coverage(box.y0, box.y1, h, device)  # (h,)
    cx = _coverage(box.x0, box.x1, w, device)  # (w,)
    return cy[:, None] * cx[None, :]  # (h, w)


def box_masks(boxes: Sequence[Box], h: int, w: int, device=None) -> torch.Tensor:
    """:func:`box_mask` of each box, stacked: ``(G, h, w)``."""
    return torch.stack([box_mask(b, h, w, device) for b in boxes])


# ----------------------------------------------------------------------------------------------------------------
# The boxes of a method's subjects
# ----------------------------------------------------------------------------------------------------------------
def subject_boxes(subjects: Sequence, method: str) -> list[Box]:
    """Every subject's box, for a method that reads boxes (``uses_boxes``).

    Raises:
        `ValueError`: a subject without a box (the message names them and how to give one).
    """
    missing = [s.label for s in subjects if s.box is None]
    if missing:
        raise ValueError(
            f"method {method!r} needs a box for every subject; {missing} have none. Give subjects as "
            "'phrase@x0,y0,x1,y1' (normalised, top-left origin) or Subject(..., box=...)"
        )
    return [s.box for s in subjects]


def box_notes(subjects: Sequence) -> list[str]:
    """Diagnostics notes for overlapping boxes (allowed; the box terms then share the overlap)."""
    boxes = [s.box for s in subjects]
    return [
        f"boxes of {subjects[i].label!r} and {subjects[j].label!r} overlap (IoU {iou:.2f})"
        for i, j, iou in overlapping_pairs(boxes)
    ]
