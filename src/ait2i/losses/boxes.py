"""Layout control: boxes per subject and the box-guided losses (docs/method.md, "Hosts and methods").

Three families of pure losses on subject maps ``S_g`` (``(B, G, H, W)``, non-negative) and one box per subject:

- **layout guidance** (Chen et al., 2023, "Training-free layout control with cross-attention guidance", backward
  guidance): :func:`layout_guidance_loss`;
- **BoxDiff** (Xie et al., 2023, "BoxDiff: text-to-image synthesis with training-free box-constrained diffusion"):
  inner-box, outer-box and corner constraints, :func:`boxdiff_inner_loss`, :func:`boxdiff_outer_loss`,
  :func:`boxdiff_corner_loss` (and their sum :func:`boxdiff_loss`);
- **AI-T2I with boxes**: :func:`box_aggregation_loss` (the aggregation target becomes the box) and
  :func:`box_isolation_loss` (each subject kept out of the other subjects' boxes and out of the area outside its own
  box), each in a Euclidean and a cosine form like the base terms of :mod:`ait2i.losses`.

:func:`box_terms` computes them all in one call for a method class.

Conventions are those of :mod:`ait2i.losses`: maps ``(..., H, W)``, float32 arithmetic, coordinates ``(x, y)`` in
cell units with cell centres at integers (``x`` = column, ``y`` = row), and a sample whose maps hold a NaN or inf
gets a NaN loss (only that sample). Boxes are normalised ``(x0, y0, x1, y1)`` in [0, 1] with the origin at the
**top-left** corner of the image (``y`` grows downwards, as for image rows): cell ``(x, y)`` of an ``H x W`` map
covers ``[x / W, (x + 1) / W] x [y / H, (y + 1) / H]`` of the normalised image.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import _check_stack, _nan_if_nonfinite, centroid

__all__ = [
    "Box",
    "box_aggregation_loss",
    "box_iou",
    "box_isolation_loss",
    "box_mask",
    "box_masks",
    "box_terms",
    "boxdiff_corner_loss",
    "boxdiff_inner_loss",
    "boxdiff_loss",
    "boxdiff_outer_loss",
    "boxes_overlap",
    "layout_guidance_loss",
    "overlapping_pairs",
    "parse_box",
    "split_box_spec",
]

_METRICS = ("euclidean", "cosine")
_EXAMPLE = "e.g. 0.05,0.1,0.45,0.5 for a box in the top-left quarter"


# ----------------------------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------------------------
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


def _intersection(a: Box, b: Box) -> float:
    iw = min(a.x1, b.x1) - max(a.x0, b.x0)
    ih = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(iw, 0.0) * max(ih, 0.0)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes, in [0, 1] (0 for boxes that only touch)."""
    a, b = parse_box(a), parse_box(b)
    inter = _intersection(a, b)
    return inter / (a.area + b.area - inter)


def boxes_overlap(a: Box, b: Box) -> bool:
    """Whether two boxes share a region of positive area (touching edges do not count)."""
    return _intersection(parse_box(a), parse_box(b)) > 0.0


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


def _edge_band(lo: float, hi: float, n: int, width: int, device=None) -> torch.Tensor:
    """1 for the cells within ``width`` cells of either edge of ``[lo, hi]`` (both sides), else 0: ``(n,)``."""
    idx = torch.arange(n, device=device, dtype=torch.float64)
    band = torch.zeros(n, device=device, dtype=torch.bool)
    for e in (lo * n, hi * n):
        band |= (idx + 1 > e - width) & (idx < e + width)  # the cell overlaps [e - width, e + width]
    return band.float()


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
def _prepare(subject_maps, boxes) -> tuple[torch.Tensor, list[Box], torch.Tensor]:
    """Checks the inputs; returns ``(maps (B, G, H, W) float32, boxes, masks (G, H, W))``."""
    maps = _check_stack(subject_maps, "subject_maps")
    g, h, w = maps.shape[1:]
    if isinstance(boxes, (str, Box)) or not isinstance(boxes, Sequence):
        raise ValueError(f"boxes must be a list of {g} boxes (one per subject), got {type(boxes).__name__}")
    if len(boxes) != g:
        raise ValueError(f"got {len(boxes)} boxes for {g} subject maps: give exactly one box per subject")
    if any(b is None for b in boxes):
        missing = [i for i, b in enumerate(boxes) if b is None]
        raise ValueError(f"subjects {missing} have no box: every subject needs one for the box losses")
    boxes = [parse_box(b) for b in boxes]
    return maps, boxes, box_masks(boxes, h, w, maps.device)


def _mass_fraction(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``sum(M * R) / sum(M)`` per map: ``(B, G)``; 0 for a map without mass (it has none of its mass in R)."""
    total = maps.sum(dim=(-2, -1))  # (B, G)
    inside = (maps * region).sum(dim=(-2, -1))  # (B, G)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, inside / safe, torch.zeros_like(total))


def _energy_cos(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``cos(M, M * R)`` per map: ``(B, G)``; the root of the fraction of the map's energy in a 0/1 region R."""
    return F.cosine_similarity(maps.flatten(-2), (maps * region).flatten(-2), dim=-1, eps=1e-12)


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")


def _normalise(maps: torch.Tensor, normalize: str) -> torch.Tensor:
    if normalize == "max":
        peak = maps.detach().amax(dim=(-2, -1), keepdim=True)  # (B, G, 1, 1)
        return maps / torch.where(peak > 0, peak, torch.ones_like(peak))
    if normalize == "none":
        return maps
    raise ValueError(f"normalize must be 'max' or 'none', got {normalize!r}")


def _topk_mean(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest of ``(B, N)`` values: ``(B,)``."""
    return values.topk(k, dim=-1).values.mean(dim=-1)


def _check_fraction(top_k: float) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k is the fraction P of the cells averaged, in (0, 1] (BoxDiff: 0.2), got {top_k!r}")


# ----------------------------------------------------------------------------------------------------------------
# Layout guidance (Chen et al., 2023)
# ----------------------------------------------------------------------------------------------------------------
def layout_guidance_loss(subject_maps: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor:
    """Layout guidance (Chen et al., 2023, backward guidance, Eq. 3): ``mean_g (1 - sum(S_g * B_g) / sum(S_g))^2``.

    ``B_g`` is the :func:`box_mask` of subject g's box. Averaged over subjects, as the authors' code does (it also
    averages over layers and heads; we apply it to the maps already averaged over heads and layers).

    Args:
        subject_maps (`torch.Tensor` of shape `(B, G, H, W)`): non-negative subject maps.
        boxes (`list[Box]` of length G): one box per subject.

    Returns:
        `torch.Tensor` of shape `(B,)`, in [0, 1]: 0 when all of every subject's mass lies in its box, 1 when none
        does (a map without mass counts as none).
    """
    maps, _, masks = _prepare(subject_maps, boxes)
    inside = _mass_fraction(maps, masks)  # (B, G)
    return _nan_if_nonfinite(((1.0 - inside) ** 2).mean(dim=-1), maps)


# ----------------------------------------------------------------------------------------------------------------
# BoxDiff (Xie et al., 2023)
# ----------------------------------------------------------------------------------------------------------------
def boxdiff_inner_loss(
    subject_maps: torch.Tensor, boxes: Sequence[Box], top_k: float = 0.2, normalize: str = "max"
) -> torch.Tensor:
    """BoxDiff inner-box constraint: ``sum_g max(0, 1 - topk_mean(S_g * B_g, k_g))``, ``k_g = max(1, P * |B_g|)``.

    ``topk_mean(X, k)`` is the mean of the k largest cells of X and ``|B_g|`` the box area in cells: the strongest
    cells inside the box should reach 1. Summed over subjects as in BoxDiff.

    Args:
        subject_maps (`torch.Tensor` of shape `(B, G, H, W)`): non-negative subject maps.
        boxes (`list[Box]` of length G): one box per subject.
        top_k (`float`, *optional*, defaults to 0.2): BoxDiff's P, the fraction of the box's cells averaged; 0.1-0.5.
        normalize (`str`, *optional*, defaults to `"max"`): `"max"` divides each map by its spatial maximum
            (detached) so that its peak is 1; `"none"` uses the maps as given (BoxDiff's own input: the
            Attend-and-Excite view, token softmax x100 and smoothing, already in [0, 1]).

    Returns:
        `torch.Tensor` of shape `(B,)`; 0 when the top P of each box's cells hold the map's maximum.
    """
    maps, _, masks = _prepare(subject_maps, boxes)
    _check_fraction(top_k)
    norm = _normalise(maps, normalize)
    out = []
    for g in range(maps.shape[1]):
        k = max(1, int(top_k * float(masks[g].sum())))
        out.append((1.0 - _topk_mean((norm[:, g] * masks[g]).flatten(1), k)).clamp_min(0.0))  # (B,)
    return _nan_if_nonfinite(torch.stack(out, dim=-1).sum(dim=-1), maps)


def boxdiff_outer_loss(
    subject_maps: torch.Tensor, boxes: Sequence[Box], top_k: float = 0.2, normalize: str = "max"
) -> torch.Tensor:
    """BoxDiff outer-box constraint: ``sum_g topk_mean(S_g * (1 - B_g), k_g)``, ``k_g = max(1, P * |1 - B_g|)``.

    The strongest cells outside the box should be 0. Summed over subjects as in BoxDiff. Arguments as in
    :func:`boxdiff_inner_loss`.

    Returns:
        `torch.Tensor` of shape `(B,)`; 0 when nothing lies outside the boxes (and for a box covering the image).
    """
    maps, _, masks = _prepare(subject_maps, boxes)
    _check_fraction(top_k)
    norm = _normalise(maps, normalize)
    cells = maps.shape[-2] * maps.shape[-1]
    out = []
    for g in range(maps.shape[1]):
        k = max(1, int(top_k * (cells - float(masks[g].sum()))))
        out.append(_topk_mean((norm[:, g] * (1.0 - masks[g])).flatten(1), k).clamp_min(0.0))  # (B,)
    return _nan_if_nonfinite(torch.stack(out, dim=-1).sum(dim=-1), maps)


def boxdiff_corner_loss(
    subject_maps: torch.Tensor, boxes: Sequence[Box], corner_width: int = 1, normalize: str = "max"
) -> torch.Tensor:
    """BoxDiff corner constraint: the map's max-projections onto the axes should reach the box edges and stop there.

    With ``p_x = max_y S_g`` (``(W,)``), ``p_y = max_x S_g`` (``(H,)``), the box's 1-D masks ``b_x``, ``b_y`` (its
    coverage of each column / row) and the bands ``e_x``, ``e_y`` of cells within ``corner_width`` cells of the box's
    edges (on both sides of each edge)::

        L_corner = sum_g [ mean_x(|p_x - b_x| * e_x) + mean_y(|p_y - b_y| * e_y) ]

    Means over the whole axis and a sum over subjects, as in BoxDiff; so at the edge cells the projection should be 1
    just inside the box and 0 just outside it. The gradient acts on each row's and column's maximum: it moves mass
    toward the box edges (grows the object to its box), not into the box as such.

    Args:
        subject_maps (`torch.Tensor` of shape `(B, G, H, W)`): non-negative subject maps.
        boxes (`list[Box]` of length G): one box per subject.
        corner_width (`int`, *optional*, defaults to 1): BoxDiff's L, the band half-width in cells; 1-2.
        normalize (`str`, *optional*, defaults to `"max"`): see :func:`boxdiff_inner_loss`.

    Returns:
        `torch.Tensor` of shape `(B,)`; 0 for a map equal to its box's mask (up to scale with ``"max"``).
    """
    maps, boxes, masks = _prepare(subject_maps, boxes)
    if isinstance(corner_width, bool) or not isinstance(corner_width, int) or corner_width < 1:
        raise ValueError(f"corner_width is BoxDiff's L, a band half-width in cells: an int >= 1, got {corner_width!r}")
    norm = _normalise(maps, normalize)
    h, w = maps.shape[-2:]
    dev = maps.device
    out = []
    for g, box in enumerate(boxes):
        px = norm[:, g].amax(dim=-2)  # (B, W) projection onto x
        py = norm[:, g].amax(dim=-1)  # (B, H) projection onto y
        bx, by = masks[g].amax(dim=-2), masks[g].amax(dim=-1)  # (W,), (H,) the box's 1-D masks
        ex = _edge_band(box.x0, box.x1, w, corner_width, dev)  # (W,)
        ey = _edge_band(box.y0, box.y1, h, corner_width, dev)  # (H,)
        out.append(((px - bx).abs() * ex).mean(dim=-1) + ((py - by).abs() * ey).mean(dim=-1))  # (B,)
    return _nan_if_nonfinite(torch.stack(out, dim=-1).sum(dim=-1), maps)


def boxdiff_loss(
    subject_maps: torch.Tensor,
    boxes: Sequence[Box],
    top_k: float = 0.2,
    corner_width: int = 1,
    normalize: str = "max",
) -> torch.Tensor:
    """BoxDiff (Xie et al., 2023): inner-box + outer-box + corner constraints, unweighted as in its code.

    See :func:`boxdiff_inner_loss`, :func:`boxdiff_outer_loss`, :func:`boxdiff_corner_loss`.

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    return (
        boxdiff_inner_loss(subject_maps, boxes, top_k, normalize)
        + boxdiff_outer_loss(subject_maps, boxes, top_k, normalize)
        + boxdiff_corner_loss(subject_maps, boxes, corner_width, normalize)
    )


# ----------------------------------------------------------------------------------------------------------------
# AI-T2I with boxes
# ----------------------------------------------------------------------------------------------------------------
def box_aggregation_loss(subject_maps: torch.Tensor, boxes: Sequence[Box], metric: str = "euclidean") -> torch.Tensor:
    """AI-T2I aggregation toward the box: gathers each subject's attention into its box, summed over subjects.

    Euclidean: ``(1 - sum(S_g * B_g) / sum(S_g)) + ||c(S_g) - b_g|| / sqrt((H-1)^2 + (W-1)^2)``, the fraction of the
    mass outside the box plus the distance from the map's centroid ``c`` to the box centre ``b_g`` (cell units) over
    the diagonal used by the base aggregation. Cosine: ``1 - cos(S_g, S_g * B_g)`` (energy outside the box, as the
    base cosine aggregation measures it outside the main disc). ``B_g`` is the :func:`box_mask`.

    Args:
        subject_maps (`torch.Tensor` of shape `(B, G, H, W)`): raw subject maps ``S_g``.
        boxes (`list[Box]` of length G): one box per subject.
        metric (`str`, *optional*, defaults to `"euclidean"`): `"euclidean"` or `"cosine"`.

    Returns:
        `torch.Tensor` of shape `(B,)`; 0 for maps inside their boxes (centred on them, for the Euclidean form),
        up to about ``G * 2``. A map without mass counts as entirely outside, its centroid term as 0.
    """
    _check_metric(metric)
    maps, boxes, masks = _prepare(subject_maps, boxes)
    h, w = maps.shape[-2:]
    if metric == "cosine":
        per_map = 1.0 - _energy_cos(maps, masks)  # (B, G)
    else:
        outside = 1.0 - _mass_fraction(maps, masks)  # (B, G)
        has_mass = maps.sum(dim=(-2, -1)) > 0  # (B, G)
        safe = torch.where(has_mass[..., None, None], maps, torch.ones_like(maps))  # no 0/0 in value or gradient
        centres = torch.tensor([b.centre_cells(h, w) for b in boxes], device=maps.device)  # (G, 2)
        dist = torch.linalg.vector_norm(centroid(safe) - centres, dim=-1)  # (B, G)
        dist = torch.where(has_mass, dist, torch.zeros_like(dist))
        per_map = outside + dist / math.sqrt(max((h - 1) ** 2 + (w - 1) ** 2, 1))
    return _nan_if_nonfinite(per_map.sum(dim=-1), maps)


def _foreign_regions(masks: torch.Tensor) -> torch.Tensor:
    """Per subject, the union of the other subjects' boxes minus its own box: ``(G, H, W)``."""
    g = masks.shape[0]
    if g < 2:
        return torch.zeros_like(masks)
    out = []
    for i in range(g):
        others = torch.cat([masks[:i], masks[i + 1 :]]).amax(dim=0)  # (H, W) union of the other boxes
        out.append(others * (1.0 - masks[i]))  # (H, W) shared areas belong to both: not foreign
    return torch.stack(out)


def box_isolation_loss(subject_maps: torch.Tensor, boxes: Sequence[Box], metric: str = "euclidean") -> torch.Tensor:
    """AI-T2I isolation with boxes: keeps each subject out of the other subjects' boxes and out of the area outside
    its own box, mean over subjects.

    With ``B_g`` the :func:`box_mask` of subject g's box, ``F_g = max_{h != g} B_h * (1 - B_g)`` (the other subjects'
    boxes minus the overlap with its own box: an overlap area is allowed to both) and ``O_g = 1 - B_g``:

    - Euclidean (mass form): ``sum(S_g * F_g) / sum(S_g) + sum(S_g * O_g) / sum(S_g)``, fractions of the attention
      mass, the same measure as the Euclidean box aggregation;
    - cosine: ``cos(S_g, S_g * F_g) + cos(S_g, S_g * O_g)``, like the base cosine isolation 0 for disjoint supports.

    Mass inside a foreign box is counted by both parts (it is also outside the subject's own box): entering another
    subject's box costs more than straying elsewhere. With one subject only the outside part remains.

    Args:
        subject_maps (`torch.Tensor` of shape `(B, G, H, W)`): raw subject maps ``S_g``.
        boxes (`list[Box]` of length G): one box per subject.
        metric (`str`, *optional*, defaults to `"euclidean"`): `"euclidean"` or `"cosine"`.

    Returns:
        `torch.Tensor` of shape `(B,)`, in [0, 2]; 0 when every subject stays inside its box.
    """
    _check_metric(metric)
    maps, _, masks = _prepare(subject_maps, boxes)
    foreign, outside = _foreign_regions(masks), 1.0 - masks  # (G, H, W) each
    if metric == "euclidean":
        per_map = _mass_fraction(maps, foreign) + _mass_fraction(maps, outside)  # (B, G)
    else:
        per_map = _energy_cos(maps, foreign) + _energy_cos(maps, outside)  # (B, G)
    return _nan_if_nonfinite(per_map.mean(dim=-1), maps)


# ----------------------------------------------------------------------------------------------------------------
# All terms in one call
# ----------------------------------------------------------------------------------------------------------------
def box_terms(
    subject_maps: torch.Tensor,
    boxes: Sequence[Box],
    metric: str = "euclidean",
    aggregation_metric: str | None = None,
    isolation_metric: str | None = None,
    top_k: float = 0.2,
    corner_width: int = 1,
    normalize: str = "max",
) -> dict[str, torch.Tensor]:
    """Every box loss of this module on one set of subject maps, unweighted, for a method to combine.

    Args:
        subject_maps (`torch.Tensor` of shape `(B, G, H, W)`): subject maps (raw for the AI-T2I and layout terms;
            BoxDiff's own input is the Attend-and-Excite view with ``normalize="none"``).
        boxes (`list[Box]` of length G): one box per subject (Box, 4-sequences or ``"x0,y0,x1,y1"`` strings).
        metric (`str`, *optional*, defaults to `"euclidean"`): form of both AI-T2I box terms.
        aggregation_metric (`str`, *optional*): overrides ``metric`` for ``box_aggregation``.
        isolation_metric (`str`, *optional*): overrides ``metric`` for ``box_isolation``.
        top_k (`float`, *optional*, defaults to 0.2): BoxDiff's P.
        corner_width (`int`, *optional*, defaults to 1): BoxDiff's L.
        normalize (`str`, *optional*, defaults to `"max"`): map normalisation of the BoxDiff terms.

    Returns:
        `dict[str, torch.Tensor]`, each `(B,)`: ``"layout_guidance"``, ``"boxdiff_inner"``, ``"boxdiff_outer"``,
        ``"boxdiff_corner"``, ``"box_aggregation"``, ``"box_isolation"``.
    """
    return {
        "layout_guidance": layout_guidance_loss(subject_maps, boxes),
        "boxdiff_inner": boxdiff_inner_loss(subject_maps, boxes, top_k, normalize),
        "boxdiff_outer": boxdiff_outer_loss(subject_maps, boxes, top_k, normalize),
        "boxdiff_corner": boxdiff_corner_loss(subject_maps, boxes, corner_width, normalize),
        "box_aggregation": box_aggregation_loss(subject_maps, boxes, aggregation_metric or metric),
        "box_isolation": box_isolation_loss(subject_maps, boxes, isolation_metric or metric),
    }
