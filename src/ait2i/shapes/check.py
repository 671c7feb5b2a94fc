"""ShapesWorld checker: reads the objects (colour, shape, box) in a rendered or generated image.

The reading is deterministic and needs no learned model:

1. **background**: the median of the greyish border pixels (the renderer's background is a uniform grey, every
   palette colour is strongly saturated);
2. **colour segmentation** under an alpha-blend model: a pixel is ``f * colour + (1 - f) * background`` for the
   palette colour that explains it best. A pixel is assigned to that colour when ``f >= 0.5`` (it is mostly
   covered, the renderer's anti-aliased edges included) and its distance to the background-colour segment is
   small; pixels far from every segment (off-palette colours, muddy mixtures) are ignored;
3. **connected components** (8-connectivity) per colour;
4. **shape by geometry**: each component is compared with ideal shapes drawn in its bounding box (square, the
   inscribed circle, a triangle in each of the four axis orientations); the best soft IoU names the shape;
5. components smaller than ``min_area`` are reported with ``is_noise=True`` rather than counted as objects.

:func:`match` scores the detections against the requested ``(colour, shape)`` list with the benchmark's metrics.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

SUPERSAMPLE = 4  # sub-pixel grid of the shape templates


@dataclass(frozen=True)
class DetectedObject:
    """One connected region of a palette colour.

    Attributes:
        color (`str`): palette colour name.
        shape (`str`): best-matching shape (``"circle"``, ``"square"`` or ``"triangle"``).
        bbox (`tuple[int, int, int, int]`): ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
        area (`int`): number of pixels in the region.
        is_noise (`bool`): the region is smaller than the checker's ``min_area``: a speck, not an object.
        shape_score (`float`): soft IoU with the best shape template, in [0, 1] (1 = the ideal shape).
    """

    color: str
    shape: str
    bbox: tuple[int, int, int, int]
    area: int
    is_noise: bool = False
    shape_score: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def _palette(palette: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, int, int]]:
    if palette is None:
        from .render import COLORS

        palette = COLORS
    if not palette:
        raise ValueError("palette must name at least one colour")
    return {str(k): tuple(int(c) for c in v) for k, v in palette.items()}


def to_uint8(image) -> np.ndarray:
    """An image as a ``(H, W, 3)`` uint8 array.

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): an RGB PIL image, a uint8 array ``(H, W, 3)``, or a float
            array ``(H, W, 3)`` with values in [0, 1] (a diffusers ``output_type="np"`` image).
    """
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "RGBA", "L"):
            raise ValueError(f"expected an RGB image, got PIL mode {image.mode!r}; convert it with .convert('RGB')")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image array must have shape (H, W, 3), got {image.shape}")
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        if image.size and (np.nanmin(image) < -1e-3 or np.nanmax(image) > 1 + 1e-3):
            raise ValueError("a float image must hold values in [0, 1]; pass uint8 for 0-255 values")
        return np.clip(np.round(np.nan_to_num(image) * 255), 0, 255).astype(np.uint8)
    raise TypeError(f"image array must be uint8 or float in [0, 1], got dtype {image.dtype}")


def estimate_background(img: np.ndarray, max_chroma: float = 40.0) -> np.ndarray:
    """The background colour: median of the greyish border pixels (all border pixels if few are grey).

    Args:
        img (`np.ndarray`): ``(H, W, 3)`` uint8 image.
        max_chroma (`float`, *optional*, defaults to 40): a pixel with ``max - min`` channel value below this
            counts as grey.

    Returns:
        `np.ndarray`: ``(3,)`` float RGB.
    """
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]]).astype(np.float64)  # (P, 3)
    chroma = border.max(axis=1) - border.min(axis=1)
    grey = border[chroma < max_chroma]
    use = grey if len(grey) >= 0.25 * len(border) else border
    return np.median(use, axis=0)


def segment(
    img: np.ndarray,
    palette: Mapping[str, Sequence[int]],
    background: np.ndarray,
    max_residual: float = 60.0,
    min_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Assigns each pixel to a palette colour under the alpha-blend model, or to nothing (-1).

    Args:
        img (`np.ndarray`): ``(H, W, 3)`` uint8 image.
        palette (`Mapping[str, Sequence[int]]`): colour name -> RGB.
        background (`np.ndarray`): ``(3,)`` background RGB.
        max_residual (`float`, *optional*, defaults to 60): largest distance (RGB units) of a pixel from the
            background-to-colour segment; typical 40-80.
        min_fraction (`float`, *optional*, defaults to 0.5): smallest blend fraction ``f`` (coverage) of a
            colour pixel.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: labels ``(H, W)`` int (index into the palette, -1 for none) and the
        blend fractions ``(H, W)`` float of the assigned colour.
    """
    p = img.astype(np.float64) - background  # (H, W, 3)
    cols = np.array([palette[k] for k in palette], dtype=np.float64) - background  # (C, 3)
    norm2 = np.maximum((cols**2).sum(axis=1), 1e-6)  # (C,)
    f = np.einsum("hwk,ck->hwc", p, cols) / norm2  # (H, W, C)
    resid = np.linalg.norm(p[:, :, None, :] - f[..., None] * cols[None, None], axis=-1)  # (H, W, C)
    ok = (f >= min_fraction) & (resid <= max_residual)
    resid = np.where(ok, resid, np.inf)
    best = resid.argmin(axis=-1)  # (H, W)
    labels = np.where(np.isfinite(resid.min(axis=-1)), best, -1)
    frac = np.take_along_axis(f, best[..., None], axis=-1)[..., 0]
    return labels, np.where(labels >= 0, frac, 0.0)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, each as an ``(N, 2)`` array of (y, x) pixels."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pix = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pix.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        queue.append((yy, xx))
        out.append(np.array(pix, dtype=np.int64))
    return out


_TEMPLATES: dict[tuple[int, int], dict[str, list[np.ndarray]]] = {}


def _templates(h: int, w: int) -> dict[str, list[np.ndarray]]:
    """Pixel coverage (in [0, 1]) of each ideal shape filling an ``h x w`` box: ``{shape: [variants]}``."""
    key = (h, w)
    if key not in _TEMPLATES:
        s = SUPERSAMPLE
        ys = (np.arange(h * s) + 0.5) / s  # sub-pixel centres, in pixels
        xs = (np.arange(w * s) + 0.5) / s
        v, u = np.meshgrid(ys / h, xs / w, indexing="ij")  # normalised to [0, 1]
        circle = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
        up = np.abs(u - 0.5) <= v / 2  # apex at the top centre, base at the bottom
        tri = [up, up[::-1], np.abs(v - 0.5) <= u / 2, np.abs(v - 0.5) <= (1 - u) / 2]

        def cover(m):
            return m.reshape(h, s, w, s).mean(axis=(1, 3))

        _TEMPLATES[key] = {
            "square": [np.ones((h, w))],
            "circle": [cover(circle)],
            "triangle": [cover(t) for t in tri],
        }
    return _TEMPLATES[key]


def _thirds_ratio(profile: np.ndarray) -> float:
    """Mass of the lighter outer third of a 1-D profile over the heavier one (1 = symmetric, ~0.2 = triangle)."""
    n = len(profile)
    k = max(1, round(n / 3))
    a, b = profile[:k].sum(), profile[n - k :].sum()
    return float(min(a, b) / max(a, b, 1e-9))


def _diagonal_ratio(mask: np.ndarray) -> float:
    """Extent of a mask along the two diagonals over its extent along the axes (square ~1.41, circle ~1)."""
    ys, xs = np.nonzero(mask)
    ext_axes = (xs.max() - xs.min() + 1) + (ys.max() - ys.min() + 1)
    # a unit pixel projects to a length of sqrt(2) on a diagonal: + 2 before dividing by sqrt(2)
    s, d = xs + ys, xs - ys
    ext_diag = (s.max() - s.min() + 2 + d.max() - d.min() + 2) / np.sqrt(2)
    return float(ext_diag / ext_axes)


def _template_iou(m: np.ndarray, name: str) -> float:
    return max(float(np.minimum(m, t).sum() / max(np.maximum(m, t).sum(), 1e-9)) for t in _templates(*m.shape)[name])


def classify_shape(mask: np.ndarray, triangle_ratio: float = 0.55, square_ratio: float = 1.2) -> tuple[str, float]:
    """The shape of a component mask, from two scale-free geometric cues.

    - A triangle is the only lopsided shape: along the axis from its apex to its base, its outer thirds hold
      about 1/9 and 5/9 of its area (ratio ~0.2); a circle's and a square's are equal (ratio 1).
    - A square reaches out along the diagonals (its corners): its diagonal extent is ~1.41 times its axis
      extent, a circle's ~1.

    Args:
        mask (`np.ndarray`): ``(h, w)`` bool coverage of one component, cropped to its bounding box.
        triangle_ratio (`float`, *optional*, defaults to 0.55): outer-thirds mass ratio below which the
            component is a triangle.
        square_ratio (`float`, *optional*, defaults to 1.2): diagonal-to-axis extent ratio above which a
            non-triangle is a square.

    Returns:
        `tuple[str, float]`: shape name and the soft IoU in [0, 1] of the mask with that shape's ideal template
        drawn in its bounding box (1 = the ideal shape; low values flag malformed blobs).
    """
    m = mask.astype(np.float64)
    if not m.any():
        raise ValueError("mask is empty")
    if min(_thirds_ratio(m.sum(axis=1)), _thirds_ratio(m.sum(axis=0))) < triangle_ratio:
        name = "triangle"
    else:
        name = "square" if _diagonal_ratio(m > 0) > square_ratio else "circle"
    return name, _template_iou(m, name)


def check(
    image,
    palette: Mapping[str, Sequence[int]] | None = None,
    min_area: int | None = None,
    max_residual: float = 60.0,
) -> list[DetectedObject]:
    """Reads the coloured shapes in a ShapesWorld image.

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): RGB image (32x32 for ShapesWorld; any size works).
        palette (`Mapping[str, Sequence[int]]`, *optional*): colour name -> RGB; defaults to the renderer's
            ``COLORS``.
        min_area (`int`, *optional*): components with fewer pixels are reported as noise. Defaults to 12 pixels
            at 32x32 (the smallest rendered object, a size-9 triangle, covers about 40), scaled with the image
            area.
        max_residual (`float`, *optional*, defaults to 60): colour tolerance, see :func:`segment`.

    Returns:
        `list[DetectedObject]`: one entry per component, objects first (largest first), then noise.
    """
    img = to_uint8(image)
    pal = _palette(palette)
    h, w = img.shape[:2]
    if min(h, w) < 3:
        raise ValueError(f"image is too small to read: {h}x{w}")
    if min_area is None:
        min_area = max(1, round(12 * h * w / 1024))
    bg = estimate_background(img)
    labels, _ = segment(img, pal, bg, max_residual=max_residual)
    names = list(pal)
    found: list[DetectedObject] = []
    for ci, name in enumerate(names):
        for pix in components(labels == ci):
            ys, xs = pix[:, 0], pix[:, 1]
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            crop = np.zeros((y1 - y0, x1 - x0))
            crop[ys - y0, xs - x0] = 1.0
            area = len(pix)
            noise = area < min_area
            shape, score = classify_shape(crop) if not noise else ("unknown", 0.0)
            found.append(DetectedObject(name, shape, (x0, y0, x1, y1), area, noise, round(score, 4)))
    found.sort(key=lambda d: (d.is_noise, -d.area, d.bbox))
    return found


# -- scoring ----------------------------------------------------------------------------------------------------


def _max_matching(n_left: int, n_right: int, ok) -> int:
    """Size of a maximum bipartite matching where ``ok(i, j)`` says left ``i`` may take right ``j`` (Kuhn)."""
    owner = [-1] * n_right

    def augment(i, visited):
        for j in range(n_right):
            if ok(i, j) and not visited[j]:
                visited[j] = True
                if owner[j] < 0 or augment(owner[j], visited):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, [False] * n_right) for i in range(n_left))


def match(detected: Sequence[DetectedObject], requested: Sequence[tuple[str, str]]) -> dict:
    """Scores one image's detections against the requested objects.

    Noise components are ignored. Matches are one-to-one (two requested circles need two detected circles).

    Args:
        detected (`Sequence[DetectedObject]`): output of :func:`check`.
        requested (`Sequence[tuple[str, str]]`): ``(colour, shape)`` per requested object.

    Returns:
        `dict` with
        - ``num_requested``, ``num_detected`` (non-noise), ``num_noise``;
        - ``present``: requested objects whose shape (the noun) is matched by a detection;
        - ``color_present``: requested objects whose colour is matched;
        - ``exact``: requested objects matched with both colour and shape;
        - ``recall``: ``present / num_requested``;
        - ``all_present``: every requested object's shape is there (no neglect);
        - ``exact_binding``: every requested object is there with its own colour and shape;
        - ``extra``: number of detected objects beyond the requested count (``max(0, detected - requested)``);
        - ``has_extra``: ``extra > 0``.
    """
    if not requested:
        raise ValueError("requested must list at least one (colour, shape) pair")
    req = [tuple(r) for r in requested]
    if any(len(r) != 2 for r in req):
        raise ValueError(f"requested must be (colour, shape) pairs, got {requested!r}")
    objs = [d for d in detected if not d.is_noise]
    n, m = len(req), len(objs)
    present = _max_matching(n, m, lambda i, j: objs[j].shape == req[i][1])
    color_present = _max_matching(n, m, lambda i, j: objs[j].color == req[i][0])
    exact = _max_matching(n, m, lambda i, j: (objs[j].color, objs[j].shape) == req[i])
    extra = max(0, m - n)
    return {
        "num_requested": n,
        "num_detected": m,
        "num_noise": len(detected) - m,
        "present": present,
        "color_present": color_present,
        "exact": exact,
        "recall": present / n,
        "all_present": present == n,
        "exact_binding": exact == n,
        "extra": extra,
        "has_extra": extra > 0,
    }
