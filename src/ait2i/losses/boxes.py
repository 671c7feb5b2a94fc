"""Box losses: the terms of the methods that read a box per subject (docs/method.md, "Hosts and methods").

Three families of pure losses on subject maps ``S_g`` (``(B, G, H, W)``, non-negative) and one box per subject:

- **layout guidance** (Chen et al., 2023, "Training-free layout control with cross-attention guidance", backward
  guidance): :func:`layout_guidance_loss`;
- **BoxDiff** (Xie et al., 2023, "BoxDiff: text-to-image synthesis with training-free box-constrained diffusion"):
  inner-box, outer-box and corner constraints, :func:`boxdiff_inner_loss`, :func:`boxdiff_outer_loss`,
  :func:`boxdiff_corner_loss`;
- **AI-T2I with boxes**: :func:`box_aggregation_loss` (the aggregation target becomes the box) and
  :func:`box_isolation_loss` (each subject kept out of the other subjects' boxes and out of the area outside its own
  box), each in a Euclidean and a cosine form like the base terms of :mod:`ait2i.losses.ait2i`.

Conventions are those of :mod:`ait2i.losses.maps`: maps ``(..., H, W)``, float32 arithmetic, coordinates ``(x, y)``
in cell units with cell centres at integers (``x`` = column, ``y`` = row), and a sample whose maps hold a NaN or inf
gets a NaN loss (only that sample). Boxes are :class:`ait2i.boxes.Box` (normalised ``(x0, y0, x1, y1)``, top-left
origin) or any spelling :func:`ait2i.boxes.parse_box` reads; their masks are :func:`ait2i.boxes.box_mask`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..boxes import Box, box_masks, parse_box
from .maps import _check_stack, centroid, nan_if_nonfinite

__all__ = [
    "box_aggregation_loss",
    "box_isolation_loss",
    "boxdiff_corner_loss",
    "boxdiff_inner_loss",
    "boxdiff_outer_loss",
    "layout_guidance_loss",
]

_METRICS = ("euclidean", "cosine")


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
    return nan_if_nonfinite(((1.0 - inside) ** 2).mean(dim=-1), maps)


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
    return nan_if_nonfinite(torch.stack(out, dim=-1).sum(dim=-1), maps)


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
    return nan_if_nonfinite(torch.stack(out, dim=-1).sum(dim=-1), maps)


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
    return nan_if_nonfinite(torch.stack(out, dim=-1).sum(dim=-1), maps)


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
    return nan_if_nonfinite(per_map.sum(dim=-1), maps)


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
    return nan_if_nonfinite(per_map.mean(dim=-1), maps)
