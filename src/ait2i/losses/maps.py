"""Cross-attention guidance losses: AI-T2I (aggregation, attribute binding, isolation, presence) and Attend-and-Excite.

Every function here is a pure function of float32 tensors: it knows nothing of UNets, pipelines or tokenizers. Maps
are non-negative attention maps laid out ``(..., H, W)``; coordinates are ``(x, y)`` in cell units (``x`` = column,
``y`` = row, cell centres at integers). The formulas, their defaults and every open choice are written down in
``docs/method.md``, which is the specification.

Two views of one captured attention tensor ``raw`` (``(B, H, W, L)``, the mean over heads and layers of
``softmax(QK^T / sqrt(d))``) are used:

- the raw per-token maps, for the geometric terms (aggregation, attribute binding, isolation);
- the Attend-and-Excite view (:func:`ane_view`): kept tokens x100, softmax over the kept tokens at every pixel, then
  Gaussian smoothing, for the presence term and Attend-and-Excite.

A non-finite input gives a non-finite loss for that sample (the engine then skips the update); nothing is silently
repaired. An all-zero (massless) map is finite input: the geometric terms count it 0, with a zero gradient (it has no
centroid, nothing to gather or bind, overlaps nothing); the presence term still sees it as neglected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .config import AIT2IConfig, GuidanceConfig


__all__ = [
    "aggregation_loss",
    "ane_view",
    "attend_excite_loss",
    "attribute_loss",
    "centroid",
    "ait2i_objective",
    "attend_excite_objective",
    "check_subjects",
    "compute_loss",
    "subject_max_attention",
    "disc_mask",
    "gaussian_kernel",
    "gaussian_smooth",
    "group_maps",
    "isolation_loss",
    "max_attention",
    "nms_regions",
    "presence_loss",
]

#: Attention side at which the region radii are given (SD 1.x/2.x at 512 px); other sides scale them by H / 16.
REFERENCE_RES = 16


# ----------------------------------------------------------------------------------------------------------------
# Attend-and-Excite view: softmax over tokens, Gaussian smoothing, maxima
# ----------------------------------------------------------------------------------------------------------------
def gaussian_kernel(kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """The 2-D smoothing kernel of Attend-and-Excite: ``prod_d exp(-((x_d - m) / (2 sigma))^2)``, summing to 1.

    Note the ``2 * sigma`` (not ``sqrt(2) * sigma``) in the exponent: this is the kernel of the Attend-and-Excite
    reference code and of diffusers' pipeline, kept so that our maxima equal theirs.

    Args:
        kernel_size (`int`, *optional*, defaults to 3): odd side of the kernel.
        sigma (`float`, *optional*, defaults to 0.5): width parameter; typical 0.5-2.

    Returns:
        `torch.Tensor` of shape `(kernel_size, kernel_size)`, float32, summing to 1.
    """
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    grids = torch.meshgrid(
        torch.arange(kernel_size, dtype=torch.float32),
        torch.arange(kernel_size, dtype=torch.float32),
        indexing="ij",
    )
    mean = (kernel_size - 1) / 2
    kernel = torch.ones(kernel_size, kernel_size)
    for g in grids:  # same arithmetic order as the reference, so the values agree to the last bit
        kernel = kernel * (1 / (sigma * math.sqrt(2 * math.pi)) * torch.exp(-(((g - mean) / (2 * sigma)) ** 2)))
    return kernel / kernel.sum()


def gaussian_smooth(maps: torch.Tensor, kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """Smooths each map with :func:`gaussian_kernel`, reflect padding (same size out), as Attend-and-Excite does.

    Args:
        maps (`torch.Tensor` of shape `(..., H, W)`): maps to smooth; H, W > kernel_size // 2.
        kernel_size (`int`, *optional*, defaults to 3): odd kernel side.
        sigma (`float`, *optional*, defaults to 0.5): kernel width (see :func:`gaussian_kernel`).

    Returns:
        `torch.Tensor` of shape `(..., H, W)`, float32.
    """
    _check_maps(maps, "maps")
    maps = maps.float()
    kernel = gaussian_kernel(kernel_size, sigma).to(maps.device)
    h, w = maps.shape[-2:]
    pad = kernel_size // 2
    if pad >= min(h, w):
        raise ValueError(f"maps of size {h}x{w} are too small for a {kernel_size}x{kernel_size} kernel")
    weight = kernel.view(1, 1, kernel_size, kernel_size)
    out = []
    # One convolution per map: a batched or grouped convolution picks another kernel algorithm and differs from
    # the reference pipeline (which smooths one map at a time) in the last bit; maps are few (B x subjects).
    for x in maps.reshape(-1, 1, 1, h, w):  # (1, 1, H, W)
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (1, 1, H + 2p, W + 2p)
        out.append(F.conv2d(x, weight))  # (1, 1, H, W)
    return torch.cat(out).reshape(maps.shape)


def ane_view(raw: torch.Tensor, eot_index: int, span: str = "all") -> torch.Tensor:
    """The Attend-and-Excite view of the maps: kept tokens x100, softmax over the kept tokens at every pixel.

    Args:
        raw (`torch.Tensor` of shape `(B, H, W, L)`): averaged cross-attention probabilities per token.
        eot_index (`int`): index of the end-of-text token of the prompt (1 + number of prompt tokens). An
            :class:`~ait2i.subjects.EndToken` carries another encoder's token layout: its first prompt token
            ``first`` replaces 1 below, and when the padding after the end token is masked out of the attention
            (``keys_after_end=False``, T5 in PixArt) the span `"all"` stops at the end token (``first..eot_index``).
        span (`str`, *optional*, defaults to `"all"`): which tokens enter the softmax. `"all"`: tokens 1..L-2
            (diffusers' pipeline, ``maps[..., 1:-1]``); `"prompt"`: tokens 1..eot_index-1 (the prompt's own
            tokens, as in the original Attend-and-Excite code).

    Returns:
        `torch.Tensor` of shape `(B, H, W, L)`, float32; the kept tokens hold the softmax, every other position
        (start token, end token, padding, or outside the span) is 0. Token indices are unchanged.
    """
    if raw.ndim != 4:
        raise ValueError(f"raw must be (B, H, W, L), got shape {tuple(raw.shape)}")
    raw = raw.float()
    length = raw.shape[-1]
    if span not in ("all", "prompt"):
        raise ValueError(f"span must be 'all' or 'prompt', got {span!r}")
    first, to_end = _layout(eot_index)
    if span == "prompt" or to_end:
        if isinstance(eot_index, bool) or not isinstance(eot_index, int) or not first + 1 <= eot_index <= length - 1:
            raise ValueError(
                f"eot_index must be an int in [{first + 1}, {length - 1}] for span={span!r}, got {eot_index!r}"
            )
    lo, hi = _span(length, eot_index, span)
    if hi <= lo:
        raise ValueError(f"no token left to softmax over (L={length}, span={span!r})")
    soft = torch.softmax(raw[..., lo:hi] * 100, dim=-1)  # (B, H, W, hi - lo)
    zeros = raw.new_zeros  # non-kept positions are exactly 0
    return torch.cat([zeros(*raw.shape[:-1], lo), soft, zeros(*raw.shape[:-1], length - hi)], dim=-1)


def max_attention(
    ane: torch.Tensor, token_groups: Sequence[Sequence[int]], kernel_size: int = 3, sigma: float = 0.5
) -> torch.Tensor:
    """Attend-and-Excite's maximum attention per subject: mean of the group's maps, smoothed, spatial maximum.

    Args:
        ane (`torch.Tensor` of shape `(B, H, W, L)`): the :func:`ane_view` of the maps.
        token_groups (`list[list[int]]`): one list of token indices per subject (e.g. every piece of its noun).
        kernel_size (`int`, *optional*, defaults to 3): Gaussian kernel side.
        sigma (`float`, *optional*, defaults to 0.5): Gaussian width.

    Returns:
        `torch.Tensor` of shape `(B, G)`, float32, each in [0, 1].
    """
    maps = group_maps(ane, token_groups)  # (B, G, H, W)
    return gaussian_smooth(maps, kernel_size, sigma).amax(dim=(-2, -1))  # (B, G)


def group_maps(raw: torch.Tensor, token_groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Per group, the mean of its tokens' maps: ``(B, H, W, L) -> (B, G, H, W)``."""
    if raw.ndim != 4:
        raise ValueError(f"maps must be (B, H, W, L), got shape {tuple(raw.shape)}")
    length = raw.shape[-1]
    if len(token_groups) == 0:
        raise ValueError("token_groups is empty: give at least one group of token indices")
    out = []
    for g, group in enumerate(token_groups):
        group = list(group)
        if not group:
            raise ValueError(f"token group {g} is empty")
        bad = [t for t in group if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < length]
        if bad:
            raise ValueError(f"token indices {bad} of group {g} are outside [0, {length - 1}]")
        out.append(raw[..., group].float().mean(dim=-1))  # (B, H, W)
    return torch.stack(out, dim=1)  # (B, G, H, W)


def attend_excite_loss(max_att: torch.Tensor) -> torch.Tensor:
    """Attend-and-Excite (Chefer et al., 2023, Eq. 1): ``max_g max(0, 1 - max_att_g)``, the most neglected subject.

    Args:
        max_att (`torch.Tensor` of shape `(B, G)`): from :func:`max_attention`.

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    return (1.0 - max_att.float()).clamp_min(0.0).amax(dim=-1)


def presence_loss(max_att: torch.Tensor) -> torch.Tensor:
    """AI-T2I's presence term: ``max(0, 1 - min_g max_att_g)`` (equal to :func:`attend_excite_loss`).

    Args:
        max_att (`torch.Tensor` of shape `(B, G)`): from :func:`max_attention`.

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    return (1.0 - max_att.float().amin(dim=-1)).clamp_min(0.0)


# ----------------------------------------------------------------------------------------------------------------
# Geometry: centroids, discs, regions
# ----------------------------------------------------------------------------------------------------------------
def _grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(h, device=device, dtype=torch.float32).view(h, 1)  # (H, 1)
    xs = torch.arange(w, device=device, dtype=torch.float32).view(1, w)  # (1, W)
    return xs, ys


def centroid(maps: torch.Tensor) -> torch.Tensor:
    """Attention centroid ``c(M) = sum_xy M[y, x] (x, y) / sum_xy M[y, x]`` (differentiable).

    Args:
        maps (`torch.Tensor` of shape `(..., H, W)`): non-negative maps.

    Returns:
        `torch.Tensor` of shape `(..., 2)`: `(x, y)` in cell units. NaN for a map without mass.
    """
    _check_maps(maps, "maps")
    maps = maps.float()
    xs, ys = _grid(*maps.shape[-2:], maps.device)
    mass = maps.sum(dim=(-2, -1))  # (...)
    cx = (maps * xs).sum(dim=(-2, -1)) / mass  # (...)
    cy = (maps * ys).sum(dim=(-2, -1)) / mass  # (...)
    return torch.stack([cx, cy], dim=-1)  # (..., 2)


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
    return _nan_if_nonfinite(per_map.sum(dim=-1), maps)


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
    return _nan_if_nonfinite(_nan_if_nonfinite(per_map.sum(dim=-1), attr), owner)


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
    return _nan_if_nonfinite(per_pair.mean(dim=-1), maps)


# ----------------------------------------------------------------------------------------------------------------
# The loss the engine calls
# ----------------------------------------------------------------------------------------------------------------
def check_subjects(raw: torch.Tensor, subjects: Sequence, softmax_span: str, eot_index: int) -> torch.Tensor:
    """Validate a capture and its subjects for a loss; return ``raw`` as float32.

    Raises:
        ValueError: ``raw`` is not ``(B, H, W, L)``, no subject, or a noun/attribute index outside the prompt's
            tokens (start, end and padding tokens excluded).
    """
    if not isinstance(raw, torch.Tensor) or raw.ndim != 4:
        raise ValueError(f"raw must be a (B, H, W, L) tensor, got {getattr(raw, 'shape', type(raw))}")
    if len(subjects) == 0:
        raise ValueError("no subject given: name at least one subject of the prompt")
    length = raw.shape[-1]
    lo, hi = _span(length, eot_index, softmax_span)
    hi -= 1
    for s in subjects:
        bad = [t for t in (*s.tokens, *s.attributes) if not _is_index(t) or not lo <= t <= hi]
        if not s.tokens or bad:
            raise ValueError(
                f"subject {s.label!r}: token indices {bad or '(none)'} invalid; nouns and attributes must be prompt "
                f"tokens in [{lo}, {hi}] (start, end and padding tokens excluded)"
            )
    return raw.float()


def subject_max_attention(raw: torch.Tensor, subjects: Sequence, cfg: GuidanceConfig, eot_index: int) -> torch.Tensor:
    """``(B, G)`` maximum of each subject's smoothed Attend-and-Excite map; NaN rows where the capture is not finite."""
    ane = ane_view(raw, eot_index, cfg.softmax_span)  # (B, H, W, L)
    max_att = max_attention(ane, [list(s.tokens) for s in subjects], cfg.smooth_kernel, cfg.smooth_sigma)  # (B, G)
    return _nan_if_nonfinite(max_att, raw)


def attend_excite_objective(
    raw: torch.Tensor, subjects: Sequence, cfg: GuidanceConfig, eot_index: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Attend-and-Excite on one capture: ``L = max_g max(0, 1 - max Â_g)``, terms ``{"attend_excite"}``."""
    raw = check_subjects(raw, subjects, cfg.softmax_span, eot_index)
    max_att = subject_max_attention(raw, subjects, cfg, eot_index)
    loss = _nan_if_nonfinite(attend_excite_loss(max_att), raw)
    return loss, {"attend_excite": loss}, max_att


def ait2i_objective(
    raw: torch.Tensor, subjects: Sequence, cfg: AIT2IConfig, eot_index: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """AI-T2I on one capture: ``L = w_iso L_iso + w_agg L_agg + w_pres L_pres + w_attr L_attr``.

    Terms ``{"isolation", "aggregation", "attribute", "presence"}`` (unweighted), radii scaled by ``H / 16``.
    ``Â_g`` (presence, max attention) is the mean of the subject's noun-token maps in the :func:`ane_view` (span
    ``cfg.softmax_span``), smoothed.
    """
    raw = check_subjects(raw, subjects, cfg.softmax_span, eot_index)
    max_att = subject_max_attention(raw, subjects, cfg, eot_index)
    scale = raw.shape[1] / REFERENCE_RES
    subject_maps = group_maps(raw, [list(s.tokens) for s in subjects])  # (B, G, H, W)
    owners = [g for g, s in enumerate(subjects) for _ in s.attributes]
    attr_tokens = [a for s in subjects for a in s.attributes]
    attr_maps = raw[..., attr_tokens].permute(0, 3, 1, 2)  # (B, K, H, W)
    terms = {
        "isolation": isolation_loss(subject_maps, cfg.isolation_metric),
        "aggregation": aggregation_loss(
            subject_maps, cfg.aggregation_metric, cfg.num_regions, cfg.region_radius * scale
        ),
        "attribute": attribute_loss(
            attr_maps,
            subject_maps[:, owners],
            cfg.attribute_metric,
            cfg.num_regions,
            cfg.attribute_radius * scale,
            cfg.region_radius * scale,
        ),
        "presence": _nan_if_nonfinite(presence_loss(max_att), raw),
    }
    loss = (
        cfg.w_isolation * terms["isolation"]
        + cfg.w_aggregation * terms["aggregation"]
        + cfg.w_presence * terms["presence"]
        + cfg.w_attribute * terms["attribute"]
    )
    return loss, terms, max_att


def compute_loss(
    raw: torch.Tensor, subjects: Sequence, cfg: GuidanceConfig, eot_index: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The guidance loss of a method on one capture of the cross-attention maps: ``cfg.loss(raw, subjects, eot)``.

    Args:
        raw (`torch.Tensor` of shape `(B, H, W, L)`): mean over heads and layers of ``softmax(QK^T / sqrt d)``.
        subjects (`list`): objects with ``.label``, ``.tokens`` (noun pieces) and ``.attributes`` (token indices).
        cfg (`GuidanceConfig`): a guiding method (``cfg.guides``), e.g. `AIT2IConfig` or `AttendExciteConfig`.
        eot_index (`int`): index of the prompt's end-of-text token.

    Returns:
        `(loss (B,), terms dict[str, (B,)], max_att (B, G))`, all float32.

    Raises:
        TypeError: ``cfg`` is a method without a loss (``"none"``).
    """
    if not getattr(cfg, "guides", False):
        raise TypeError(
            f"compute_loss needs a guiding method (e.g. AIT2IConfig, AttendExciteConfig); {cfg.name!r} has no loss"
        )
    return cfg.loss(raw, subjects, eot_index)


# ----------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------
def _layout(eot_index) -> tuple[int, bool]:
    """``(first prompt token, "all" stops at the end token)`` of the token layout ``eot_index`` carries."""
    layout = getattr(eot_index, "layout", None)  # ait2i.subjects.EndToken; a plain int is CLIP's layout
    return (1, False) if layout is None else (layout.first, not layout.keys_after_end)


def _span(length: int, eot_index, span: str) -> tuple[int, int]:
    """``[lo, hi)`` of the tokens a span keeps: CLIP ``"all"`` = ``1..L-2``, ``"prompt"`` = ``1..eot-1``."""
    first, to_end = _layout(eot_index)
    if span == "all":
        return first, (int(eot_index) + 1 if to_end else length - 1)
    return first, eot_index


def _is_index(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _check_maps(maps, name: str) -> None:
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim < 2:
        raise ValueError(f"{name} must be (..., H, W), got shape {tuple(maps.shape)}")


def _check_stack(maps, name: str) -> torch.Tensor:
    _check_maps(maps, name)
    if maps.ndim != 4:
        raise ValueError(f"{name} must be (B, G, H, W), got shape {tuple(maps.shape)}")
    return maps.float()


def _with_mass(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(has mass (...), maps with every massless map replaced by ones)`` for ``(..., H, W)`` maps.

    A term computes on the safe maps and masks the massless ones out with ``torch.where``: neither its value nor its
    gradient then sees a 0/0 (a centroid, a cosine of a zero vector).
    """
    has = maps.detach().sum(dim=(-2, -1)) > 0  # (...) False for an all-zero map (and for NaN)
    return has, torch.where(has[..., None, None], maps, torch.ones_like(maps))


def _nan_if_nonfinite(loss: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """NaN for every sample (leading dim) whose maps hold a NaN or inf; other samples untouched."""
    finite = torch.isfinite(maps.detach()).flatten(1).all(dim=1)  # (B,)
    finite = finite.view(-1, *([1] * (loss.ndim - 1)))
    return torch.where(finite, loss, torch.full_like(loss, float("nan")))
