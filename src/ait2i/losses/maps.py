"""Attention maps per subject: the checks of a capture, the Attend-and-Excite view, smoothing, centroids.

Every function of :mod:`ait2i.losses` is a pure function of float32 tensors: it knows nothing of UNets, pipelines,
tokenizers or method configs (the methods of :mod:`ait2i.methods` pass their settings as arguments). Maps are
non-negative attention maps laid out ``(..., H, W)``; coordinates are ``(x, y)`` in cell units (``x`` = column,
``y`` = row, cell centres at integers). The formulas, their defaults and every open choice are written down in
``docs/method.md``, which is the specification.

Two views of one captured attention tensor ``raw`` (``(B, H, W, L)``, the mean over heads and layers of
``softmax(QK^T / sqrt(d))``) are used:

- the raw per-token maps (:func:`group_maps`), for the geometric terms (aggregation, attribute binding, isolation,
  the box terms);
- the Attend-and-Excite view (:func:`ane_view`): kept tokens x100, softmax over the kept tokens at every pixel, then
  Gaussian smoothing, for the presence term and Attend-and-Excite.

A non-finite input gives a non-finite loss for that sample (the engine then skips the update); nothing is silently
repaired. An all-zero (massless) map is finite input: the geometric terms count it 0, with a zero gradient (it has no
centroid, nothing to gather or bind, overlaps nothing); the presence term still sees it as neglected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ane_view",
    "centroid",
    "check_subjects",
    "gaussian_kernel",
    "gaussian_smooth",
    "group_maps",
    "max_attention",
    "nan_if_nonfinite",
    "subject_max_attention",
]


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
    first, to_end = _token_layout(eot_index)
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


# ----------------------------------------------------------------------------------------------------------------
# Geometry: centroids
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


# ----------------------------------------------------------------------------------------------------------------
# A capture and its subjects
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


def subject_max_attention(
    raw: torch.Tensor, subjects: Sequence, eot_index: int, span: str = "all", kernel_size: int = 3, sigma: float = 0.5
) -> torch.Tensor:
    """``(B, G)`` maximum of each subject's smoothed Attend-and-Excite map (:func:`ane_view` with ``span``,
    :func:`max_attention` with the kernel); NaN rows where the capture is not finite."""
    ane = ane_view(raw, eot_index, span)  # (B, H, W, L)
    max_att = max_attention(ane, [list(s.tokens) for s in subjects], kernel_size, sigma)  # (B, G)
    return nan_if_nonfinite(max_att, raw)


# ----------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------
def _token_layout(eot_index) -> tuple[int, bool]:
    """``(first prompt token, "all" stops at the end token)`` of the token layout ``eot_index`` carries."""
    layout = getattr(eot_index, "layout", None)  # ait2i.subjects.EndToken; a plain int is CLIP's layout
    return (1, False) if layout is None else (layout.first, not layout.keys_after_end)


def _span(length: int, eot_index, span: str) -> tuple[int, int]:
    """``[lo, hi)`` of the tokens a span keeps: CLIP ``"all"`` = ``1..L-2``, ``"prompt"`` = ``1..eot-1``."""
    first, to_end = _token_layout(eot_index)
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


def nan_if_nonfinite(loss: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """NaN for every sample (leading dim) whose maps hold a NaN or inf; other samples untouched."""
    finite = torch.isfinite(maps.detach()).flatten(1).all(dim=1)  # (B,)
    finite = finite.view(-1, *([1] * (loss.ndim - 1)))
    return torch.where(finite, loss, torch.full_like(loss, float("nan")))
