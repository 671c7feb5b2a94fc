"""AI-T2I's loss terms (docs/method.md, section 3): aggregation, attribute binding, isolation (each with a Euclidean
and a cosine form) and presence, on the subject maps of :mod:`ait2i.losses.maps`, and :func:`ait2i_terms`, all four
on one capture. Region radii are given in cells at 16x16 (:data:`REFERENCE_RES`) and scaled with the map side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .maps import _check_maps, _check_stack, _grid, _with_mass, centroid, group_maps, nan_if_nonfinite

__all__ = [
    "REFERENCE_RES",
    "aggregation_loss",
    "ait2i_terms",
    "attribute_loss",
    "disc_mask",
    "isolation_loss",
    "nms_regions",
    "presence_loss",
]

#: Attention side at which the region radii are given (SD 1.x/2.x at 512 px); other sides scale them by H / 16.
REFERENCE_RES = 16


def presence_loss(max_att: torch.Tensor) -> torch.Tensor:
    """AI-T2I's presence term: ``max(0, 1 - min_g max_att_g)`` (equal to :func:`attend_excite_loss`).

    Args:
        max_att (`torch.Tensor` of shape `(B, G)`): from :func:`max_attention`.

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    return (1.0 - max_att.float().amin(dim=-1)).clamp_min(0.0)


# ----------------------------------------------------------------------------------------------------------------
# Geometry: discs, regions
# ----------------------------------------------------------------------------------------------------------------
def disc_mask(centres: torch.Tensor, h: int, w: int, radius: float) -> torch.Tensor:
    """Cells strictly within ``radius`` of each centre: ``(x - cx)^2 + (y - cy)^2 < radius^2``.

    Args:
        centres (`torch.Tensor` of shape `(..., 2)`): `(x, y)` disc centres.
        h (`int`), w (`int`): map size.
        radius (`float`): disc radius in cells.

    Returns:
        `torch.Tensor` of shape `(..., H, W)`, float32 0/1.
    """
    xs, ys = _grid(h, w, centres.device)
    cx = centres[..., 0, None, None]  # (..., 1, 1)
    cy = centres[..., 1, None, None]  # (..., 1, 1)
    return (((xs - cx) ** 2 + (ys - cy) ** 2) < radius**2).float()  # (..., H, W)


def _peak(maps: torch.Tensor) -> torch.Tensor:
    """``(x, y)`` of the first maximum (row-major order) of each map, as float32, no gradient."""
    w = maps.shape[-1]
    idx = maps.detach().flatten(-2).argmax(dim=-1)  # (...)
    return torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=-1).float()  # (..., 2)


def _regions(maps: torch.Tensor, num_regions: int, radius: float):
    """Non-maximum suppression regions, with a validity flag per region.

    Returns ``(centroids (..., R, 2), peaks (..., R, 2), valid (..., R) bool)``. A region is valid when the
    suppressed map still holds positive mass; an invalid region's centroid and peak are set to the first peak (a
    finite placeholder: callers mask it out), so that neither value nor gradient picks up a 0/0.
    """
    if num_regions < 1:
        raise ValueError(f"num_regions must be >= 1, got {num_regions}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    h, w = maps.shape[-2:]
    xs, ys = _grid(h, w, maps.device)
    remaining = maps.detach().clone()  # (..., H, W) selects the regions; the centroids read the original map
    centroids, peaks, valid = [], [], []
    for _ in range(num_regions):
        ok = remaining.flatten(-2).amax(dim=-1) > 0  # (...) False once nothing is left (or NaN)
        peak = _peak(remaining)  # (..., 2)
        mask = disc_mask(peak, h, w, radius)  # (..., H, W)
        inside = maps * mask  # (..., H, W) the original map inside the disc
        mass = inside.sum(dim=(-2, -1))  # (...)
        safe = torch.where(ok, mass, torch.ones_like(mass))
        c = torch.stack([(inside * xs).sum(dim=(-2, -1)) / safe, (inside * ys).sum(dim=(-2, -1)) / safe], -1)
        centroids.append(c)
        peaks.append(peak)
        valid.append(ok)
        remaining = remaining * (1.0 - mask)
    centroids = torch.stack(centroids, dim=-2)  # (..., R, 2)
    peaks = torch.stack(peaks, dim=-2)  # (..., R, 2)
    valid = torch.stack(valid, dim=-1)  # (..., R)
    first = peaks[..., :1, :].expand_as(peaks)
    keep = valid[..., None]
    return torch.where(keep, centroids, first), torch.where(keep, peaks, first), valid


def nms_regions(maps: torch.Tensor, num_regions: int = 3, radius: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Regions of a map by non-maximum suppression (AI-T2I): peak, disc, centroid inside the disc, suppress, repeat.

    Region ``i``: its peak ``p_i`` is the first maximum (row-major) of the map with the earlier discs zeroed; its
    disc ``D_i`` holds the cells with ``||cell - p_i|| < radius``; its centroid is ``c(M * D_i)`` computed on the
    original (not suppressed) map, so overlapping discs share mass. Then ``D_i`` is zeroed in the suppressed map.

    Args:
        maps (`torch.Tensor` of shape `(..., H, W)`): non-negative maps.
        num_regions (`int`, *optional*, defaults to 3): regions per map.
        radius (`float`, *optional*, defaults to 5.0): disc radius in cells (5 at 16x16).

    Returns:
        `(centroids, peaks)`, each `(..., R, 2)` float32 `(x, y)`; centroids differentiable, peaks detached. A
        region that finds no mass left (the earlier discs covered all of it) is NaN in both.
    """
    _check_maps(maps, "maps")
    c, p, valid = _regions(maps.float(), num_regions, radius)
    nan = torch.tensor(float("nan"), device=c.device)
    return torch.where(valid[..., None], c, nan), torch.where(valid[..., None], p, nan)


# ----------------------------------------------------------------------------------------------------------------
# AI-T2I terms
# ----------------------------------------------------------------------------------------------------------------
def _spread(centroids, valid, target, h: int, w: int) -> torch.Tensor:
    """``(sum_i ||c_i - target|| + ||c_2 - c_3||) / sqrt((h-1)^2 + (w-1)^2)`` over the valid regions."""
    dist = torch.linalg.vector_norm(centroids - target[..., None, :], dim=-1)  # (..., R)
    total = (dist * valid).sum(dim=-1)  # (...)
    if centroids.shape[-2] >= 3:
        between = torch.linalg.vector_norm(centroids[..., 1, :] - centroids[..., 2, :], dim=-1)  # (...)
        total = total + between * (valid[..., 1] & valid[..., 2])
    return total / math.sqrt(max((h - 1) ** 2 + (w - 1) ** 2, 1))


def _energy_outside(maps: torch.Tensor, disc: torch.Tensor) -> torch.Tensor:
    """``1 - cos(M, M * D)``: 0 when all of the map lies inside the disc, 1 when none does."""
    flat, inside = maps.flatten(-2), (maps * disc).flatten(-2)
    return 1.0 - F.cosine_similarity(flat, inside, dim=-1, eps=1e-12)


def aggregation_loss(
    subject_maps: torch.Tensor, metric: str = "euclidean", num_regions: int = 3, radius: float = 5.0
) -> torch.Tensor:
    """AI-T2I aggregation: gathers each subject's scattered activations into one region, summed over subjects.

    Euclidean (the released form): with the regions of :func:`nms_regions` (centroids ``c_i``, first peak ``p_1``
    detached), ``(sum_i ||c_i - p_1|| + ||c_2 - c_3||) / sqrt((H-1)^2 + (W-1)^2)``; regions with no mass left
    contribute nothing. Cosine: ``1 - cos(S, S * D_1)`` with ``D_1`` the first region's disc.

    Args:
        subject_maps (`torch.Tensor` of shape `(B, G, H, W)`): raw subject maps ``S_g``.
        metric (`str`, *optional*, defaults to `"euclidean"`): `"euclidean"` or `"cosine"`.
        num_regions (`int`, *optional*, defaults to 3): NMS regions per map (Euclidean form).
        radius (`float`, *optional*, defaults to 5.0): disc radius in cells; 5 at 16x16.

    Returns:
        `torch.Tensor` of shape `(B,)`. Scattered blobs -> large (up to about 3-4); one compact blob -> ~0; a map
        without mass -> 0 (zero gradient).
    """
    maps = _check_stack(subject_maps, "subject_maps")
    h, w = maps.shape[-2:]
    has, safe = _with_mass(maps)  # (B, G), (B, G, H, W)
    if metric == "euclidean":
        c, p, valid = _regions(maps, num_regions, radius)
        per_map = _spread(c, valid, p[..., 0, :], h, w)  # (B, G)
    elif metric == "cosine":
        per_map = _energy_outside(safe, disc_mask(_peak(safe), h, w, radius))  # (B, G)
    else:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    per_map = torch.where(has, per_map, torch.zeros_like(per_map))  # a map without mass: nothing to gather
    return nan_if_nonfinite(per_map.sum(dim=-1), maps)


def attribute_loss(
    attr_maps: torch.Tensor,
    owner_maps: torch.Tensor,
    metric: str = "euclidean",
    num_regions: int = 3,
    radius: float = 6.0,
    owner_radius: float = 5.0,
) -> torch.Tensor:
    """AI-T2I attribute binding: gathers each attribute token's attention onto its subject, summed over attributes.

    Euclidean (the released form): regions of the attribute map (radius ``radius``), distances from their centroids
    to the owner's first peak (detached), plus ``||c_2 - c_3||``, over ``sqrt((H-1)^2 + (W-1)^2)``. Cosine:
    ``1 - cos(A, A * D)`` with ``D`` the owner's first disc (radius ``owner_radius``).

    Args:
        attr_maps (`torch.Tensor` of shape `(B, K, H, W)`): one raw map per attribute token.
        owner_maps (`torch.Tensor` of shape `(B, K, H, W)`): the subject map ``S_g`` that owns each attribute.
        metric (`str`, *optional*, defaults to `"euclidean"`): `"euclidean"` or `"cosine"`.
        num_regions (`int`, *optional*, defaults to 3): NMS regions of each attribute map.
        radius (`float`, *optional*, defaults to 6.0): attribute disc radius in cells (6 at 16x16).
        owner_radius (`float`, *optional*, defaults to 5.0): the owner's disc radius (cosine form).

    Returns:
        `torch.Tensor` of shape `(B,)`; zeros when ``K == 0``. An attribute map without mass, or one whose owner
        map has none (no peak to bind to), counts 0 with a zero gradient.
    """
    attr = _check_stack(attr_maps, "attr_maps")
    owner = _check_stack(owner_maps, "owner_maps")
    if attr.shape != owner.shape:
        raise ValueError(f"attr_maps {tuple(attr.shape)} and owner_maps {tuple(owner.shape)} must have one shape")
    h, w = attr.shape[-2:]
    if attr.shape[1] == 0:
        return attr.new_zeros(attr.shape[0])
    attr_has, safe = _with_mass(attr)  # (B, K), (B, K, H, W)
    owner_has, _ = _with_mass(owner)  # (B, K)
    target = _peak(owner)  # (B, K, 2)
    if metric == "euclidean":
        c, _, valid = _regions(attr, num_regions, radius)
        per_map = _spread(c, valid, target, h, w)  # (B, K)
    elif metric == "cosine":
        if not owner_radius > 0:
            raise ValueError(f"owner_radius must be > 0, got {owner_radius}")
        per_map = _energy_outside(safe, disc_mask(target, h, w, owner_radius))  # (B, K)
    else:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    # an attribute without mass has nothing to bind; an owner without mass has no peak to bind it to
    per_map = torch.where(attr_has & owner_has, per_map, torch.zeros_like(per_map))
    return nan_if_nonfinite(nan_if_nonfinite(per_map.sum(dim=-1), attr), owner)


def isolation_loss(subject_maps: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """AI-T2I isolation: pushes different subjects apart, mean over the pairs of subjects.

    Euclidean (the released form): ``1 - ||c(S_g) - c(S_h)|| / sqrt(H^2 + W^2)`` (1 when the centroids coincide).
    Cosine: ``cos(S_g, S_h)`` (0 for disjoint maps, 1 for proportional ones).

    Args:
        subject_maps (`torch.Tensor` of shape `(B, G, H, W)`): raw subject maps ``S_g``.
        metric (`str`, *optional*, defaults to `"euclidean"`): `"euclidean"` or `"cosine"`.

    Returns:
        `torch.Tensor` of shape `(B,)`; exactly 0 when ``G < 2``. A pair with a map without mass counts 0 (no
        centroid, no overlap) with a zero gradient, and stays in the mean.
    """
    maps = _check_stack(subject_maps, "subject_maps")
    b, g, h, w = maps.shape
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if g < 2:
        return maps.new_zeros(b)
    i, j = torch.triu_indices(g, g, offset=1, device=maps.device)  # pairs g < h
    has, safe = _with_mass(maps)  # (B, G), (B, G, H, W)
    if metric == "euclidean":
        c = centroid(safe)  # (B, G, 2)
        per_pair = 1.0 - torch.linalg.vector_norm(c[:, i] - c[:, j], dim=-1) / math.sqrt(h**2 + w**2)  # (B, P)
    else:
        flat = safe.flatten(-2)  # (B, G, HW)
        per_pair = F.cosine_similarity(flat[:, i], flat[:, j], dim=-1, eps=1e-12)  # (B, P)
    # a map without mass has no centroid and overlaps nothing: its pairs count 0 (value and gradient)
    per_pair = torch.where(has[:, i] & has[:, j], per_pair, torch.zeros_like(per_pair))
    return nan_if_nonfinite(per_pair.mean(dim=-1), maps)


# ----------------------------------------------------------------------------------------------------------------
# All four terms on one capture
# ----------------------------------------------------------------------------------------------------------------
def ait2i_terms(
    raw: torch.Tensor,
    subjects: Sequence,
    max_att: torch.Tensor,
    *,
    isolation_metric: str = "euclidean",
    aggregation_metric: str = "euclidean",
    attribute_metric: str = "euclidean",
    num_regions: int = 3,
    region_radius: float = 5.0,
    attribute_radius: float = 6.0,
) -> dict[str, torch.Tensor]:
    """AI-T2I's terms on one checked capture, unweighted: ``{"isolation", "aggregation", "attribute", "presence"}``.

    Args:
        raw (`torch.Tensor` of shape `(B, H, W, L)`): the capture, float32, checked by
            :func:`~ait2i.losses.maps.check_subjects`.
        subjects (`list`): objects with ``.tokens`` (noun pieces) and ``.attributes`` (token indices).
        max_att (`torch.Tensor` of shape `(B, G)`): :func:`~ait2i.losses.maps.subject_max_attention` (presence).
        isolation_metric, aggregation_metric, attribute_metric (`str`): `"euclidean"` or `"cosine"` per term.
        num_regions (`int`): NMS regions per map.
        region_radius, attribute_radius (`float`): disc radii in cells at 16x16, scaled by ``H / 16``.

    Returns:
        `dict[str, torch.Tensor]`, each `(B,)`.
    """
    scale = raw.shape[1] / REFERENCE_RES
    subject_maps = group_maps(raw, [list(s.tokens) for s in subjects])  # (B, G, H, W)
    owners = [g for g, s in enumerate(subjects) for _ in s.attributes]
    attr_tokens = [a for s in subjects for a in s.attributes]
    attr_maps = raw[..., attr_tokens].permute(0, 3, 1, 2)  # (B, K, H, W)
    return {
        "isolation": isolation_loss(subject_maps, isolation_metric),
        "aggregation": aggregation_loss(subject_maps, aggregation_metric, num_regions, region_radius * scale),
        "attribute": attribute_loss(
            attr_maps,
            subject_maps[:, owners],
            attribute_metric,
            num_regions,
            attribute_radius * scale,
            region_radius * scale,
        ),
        "presence": nan_if_nonfinite(presence_loss(max_att), raw),
    }
