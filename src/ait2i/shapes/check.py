"""ShapesWorld checker: reads the objects (colour, shape, box) in a rendered or generated image.

The reading is deterministic and needs no learned model:

1. **background**: the median of the greyish border pixels (the renderer's background is a uniform grey, every
   palette colour is strongly saturated);
2. **colour segmentation** under an alpha-blend model: a pixel is ``f * colour + (1 - f) * background`` for the
   palette colour that explains it best. A pixel is assigned to that colour when ``f >= 0.5`` (it is mostly
   covered, the renderer's anti-aliased edges included) and its distance to the background-colour segment is
   small; pixels far from every segment (off-palette colours, muddy mixtures) are ignored;
3. **connected components** (8-connectivity) per colour; two touching objects of one colour are cut apart at
   the neck between them (:func:`split_touching`);
4. **colour leakage**: touching pieces of different colours whose union is one well-formed shape are one object
   painted in several colours (``leaked_colors``), which matches no request;
5. **shape by geometry** (:func:`classify_shape`): ring (a round shape with a hole: background pixels the
   component encloses, its off-palette pixels counting as part of it), star (non-convex), triangle (lopsided),
   square (reaches out along its diagonals, tilted up to :data:`MAX_TILT` degrees) or circle; a shape stretched past
   :data:`MAX_ELONGATION` (a triangle past :data:`MAX_TRIANGLE_STRETCH`) is a ``"rectangle"``, ``"ellipse"`` or
   ``"other"``; the soft IoU with the ideal template is the shape score, and a shape scoring under its
   :data:`MIN_SCORE`, a non-convex shape that is no star and a square tilted further are ``"other"``;
6. **cut by the frame**: an object whose pixels run along an edge of the image for at least
   :data:`MIN_FRAME_RUN` pixels (scaled with the image side) is ``"cut"``, whatever its geometry: part of it lies
   outside the picture, so its shape cannot be read (the renderer keeps every shape a pixel inside the frame;
   guidance that pushes objects apart can push them out of it, and a square or circle cut along a straight
   edge still fits its template);
7. components smaller than ``min_area`` are reported with ``is_noise=True`` rather than counted as objects.

:func:`match` scores the detections against the requested ``(colour, shape)`` list with the benchmark's metrics.
"""

from __future__ import annotations

import dataclasses
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
        shape (`str`): best-matching shape (``"circle"``, ``"square"``, ``"triangle"``, ``"star"``, ``"ring"``;
            ``"rectangle"``, ``"ellipse"``, ``"other"`` for stretched ones; ``"cut"`` for an object the frame
            cuts, :func:`cut_by_frame`; ``"unknown"`` for noise).
        bbox (`tuple[int, int, int, int]`): ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
        area (`int`): number of pixels in the region.
        is_noise (`bool`): the region is smaller than the checker's ``min_area``: a speck, not an object.
        shape_score (`float`): soft IoU with the best shape template, in [0, 1] (1 = the ideal shape).
        leaked_colors (`tuple[str, ...]`): other palette colours painted on this one shape (colour leakage),
            largest first; empty for a one-colour object. A mixed object never matches a request.
    """

    color: str
    shape: str
    bbox: tuple[int, int, int, int]
    area: int
    is_noise: bool = False
    shape_score: float = 1.0
    leaked_colors: tuple[str, ...] = ()

    @property
    def mixed(self) -> bool:
        """The shape is painted in more than one palette colour."""
        return bool(self.leaked_colors)

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

#: Shapes a request can name. Everything else the checker reports ("rectangle", "ellipse", "other", "cut") never
#: matches.
REQUESTABLE = ("circle", "square", "triangle", "star", "ring")
#: Largest tilt, in degrees either way, at which a square is still a square; a square tilted further (up to a
#: diamond) is ``"other"``. The tilt is measured in steps of :data:`TILT_STEP`.
MAX_TILT = 15.0
TILT_STEP = 2.5  # degrees between the tilts at which a square's diagonal reach is measured
SQUARE_TILTS = tuple(float(d) for d in np.arange(-MAX_TILT, MAX_TILT + 1e-9, 5.0) if d != 0)  # tilted templates
STAR_INNER = 0.45  # inner-to-outer radius ratio of the renderer's star
STAR_TURNS = tuple(range(0, 72, 6))  # star template rotations, degrees (five-fold symmetric)
#: How far (pixels, each side) a star template may reach beyond the mask's box: the thin points of a small star
#: fall under half a pixel's coverage and leave the mask, whose box then stops short of the star's.
STAR_GROW = (0.0, 0.5, 1.0)  # the first: the template fills the box
RING_INNER = 0.5  # hole diameter over outer diameter of the renderer's ring


def _star_outline(turn: float) -> np.ndarray:
    t = np.deg2rad(turn) - np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _inside(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of the points (u, v) against ``poly`` ``(N, 2)``."""
    out = np.zeros(u.shape, dtype=bool)
    for (xa, ya), (xb, yb) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (ya > v) != (yb > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = xa + (v - ya) * (xb - xa) / (yb - ya)
        out ^= crosses & (u < x_at)
    return out


def _box_poly(poly: np.ndarray) -> np.ndarray:
    """A polygon stretched to fill the unit box (the template convention: the shape fills its bounding box)."""
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    return (poly - lo) / (hi - lo)


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
        unit_square = np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])
        tilted = []
        for deg in SQUARE_TILTS:
            a = np.deg2rad(deg)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            tilted.append(_inside(u, v, _box_poly(unit_square @ rot.T)))
        stars = [
            _inside((u * w + g) / (w + 2 * g), (v * h + g) / (h + 2 * g), _box_poly(_star_outline(t)))
            for g in STAR_GROW
            for t in STAR_TURNS
        ]
        n = len(STAR_TURNS)
        ring = circle & ((u - 0.5) ** 2 + (v - 0.5) ** 2 >= 0.25 * RING_INNER**2)

        def cover(m):
            return m.reshape(h, s, w, s).mean(axis=(1, 3))

        _TEMPLATES[key] = {
            "square": [np.ones((h, w))] + [cover(t) for t in tilted],
            "circle": [cover(circle)],
            "triangle": [cover(t) for t in tri],
            "star": [cover(t) for t in stars[:n]],  # filling the box
            "grown star": [cover(t) for t in stars[n:]],  # reaching beyond it, see STAR_GROW
            "ring": [cover(ring)],
        }
    return _TEMPLATES[key]


def _thirds_ratio(profile: np.ndarray) -> float:
    """Mass of the lighter outer third of a 1-D profile over the heavier one (1 = symmetric, ~0.2 = triangle)."""
    n = len(profile)
    k = max(1, round(n / 3))
    a, b = profile[:k].sum(), profile[n - k :].sum()
    return float(min(a, b) / max(a, b, 1e-9))


def _extent(xs: np.ndarray, ys: np.ndarray, angle: float) -> float:
    """Extent of a set of unit pixels along the direction ``angle`` (radians)."""
    c, s = np.cos(angle), np.sin(angle)
    proj = xs * c + ys * s
    return float(proj.max() - proj.min() + abs(c) + abs(s))  # + the pixel's own projected width


def _diagonal_ratio(mask: np.ndarray) -> tuple[float, float]:
    """Extent of a mask along two diagonals over its extent along two axes, the axes turned (in steps of
    :data:`TILT_STEP`, every tilt of a square from -45 to 45 degrees) to the largest ratio (square ~1.41 at its own
    tilt, circle ~1 at every tilt). Returns the ratio and that tilt in degrees (the smallest of equal ones)."""
    ys, xs = np.nonzero(mask)
    best, tilt = 0.0, 0.0
    for deg in sorted(np.arange(-45.0, 45.0, TILT_STEP), key=abs):
        a = np.deg2rad(deg)
        axes = _extent(xs, ys, a) + _extent(xs, ys, a + np.pi / 2)
        diag = _extent(xs, ys, a + np.pi / 4) + _extent(xs, ys, a - np.pi / 4)
        if diag / axes > best + 1e-9:
            best, tilt = diag / axes, float(deg)
    return float(best), tilt


def triangle_stretch(mask: np.ndarray, apex_axis: int) -> float:
    """Height (apex to base) over base width of a triangle mask cropped to its box: 1 for the renderer's triangle,
    0.87 for an equilateral one, 2 for a tall 2:1 and 0.5 for a flat 2:1 triangle.

    Args:
        mask (`np.ndarray`): ``(h, w)`` bool mask, cropped to its bounding box.
        apex_axis (`int`): the array axis along which the mask is lopsided (0: apex up or down, 1: left or right).
    """
    h, w = mask.shape
    return h / w if apex_axis == 0 else w / h


def elongation(mask: np.ndarray) -> float:
    """Square root of the ratio of the principal second moments of a mask: 1 for a circle, a square or a star at
    any rotation, ~1.15 for the renderer's triangle, 2 for a 2:1 rectangle or ellipse."""
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64), bias=True) + np.eye(2) / 12  # + a unit pixel's spread
    lo, hi = np.linalg.eigvalsh(cov)
    return float(np.sqrt(hi / max(lo, 1e-9)))


def solidity(mask: np.ndarray) -> float:
    """Area of a mask over the area of the convex hull of its pixels' corners (a star ~0.6, convex shapes ~1)."""
    ys, xs = np.nonzero(mask)
    pts = np.unique(np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]), axis=0)
    pts = sorted(map(tuple, pts.tolist()))

    def half(points):
        hull = []
        for p in points:
            while len(hull) >= 2:
                (ax, ay), (bx, by) = hull[-2], hull[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                hull.pop()
            hull.append(p)
        return hull

    lower, upper = half(pts), half(pts[::-1])
    hull = np.array(lower[:-1] + upper[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return float(len(xs) / max(area, 1e-9))


def holes(mask: np.ndarray) -> np.ndarray:
    """The pixels a mask encloses: those outside it that no 4-connected path of outside pixels joins to the edge of
    the array (the hole of a ring; none for a circle, square, triangle or star)."""
    out = ~mask
    reach = np.zeros_like(out)
    reach[0], reach[-1], reach[:, 0], reach[:, -1] = out[0], out[-1], out[:, 0], out[:, -1]
    queue = deque(zip(*np.nonzero(reach)))
    h, w = mask.shape
    while queue:
        y, x = queue.popleft()
        for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= yy < h and 0 <= xx < w and out[yy, xx] and not reach[yy, xx]:
                reach[yy, xx] = True
                queue.append((yy, xx))
    return out & ~reach


def _template_iou(m: np.ndarray, name: str) -> float:
    return max(float(np.minimum(m, t).sum() / max(np.maximum(m, t).sum(), 1e-9)) for t in _templates(*m.shape)[name])


#: What a shape is called when it is stretched past its :data:`MAX_ELONGATION`.
STRETCHED = {"square": "rectangle", "circle": "ellipse", "triangle": "other", "star": "other", "ring": "other"}
#: Largest :func:`elongation` of each shape but the triangle (a 2:1 rectangle or ellipse measures 2.0, a square or
#: circle ~1.0-1.1).
MAX_ELONGATION = {"square": 1.35, "circle": 1.35, "star": 1.35, "ring": 1.35}
#: Largest stretch of a triangle, either way, from the renderer's (height = base): :func:`triangle_stretch` from
#: 1/1.6 to 1.6 (tall triangles of elongation 1.52-1.65 are 1.3-1.45; 2:1 triangles, 0.5 and 2, and a triangle on
#: a square of its colour are ``"other"``).
MAX_TRIANGLE_STRETCH = 1.6
#: A triangle more elongated than this (:func:`elongation`; rendered ones, clean or blurred + noisy, measure at most
#: 1.3) is one only when it is well formed: its score at least its :data:`GOOD_SCORE` (a circle cut by another
#: object or a torn strip of a square is lopsided, elongated and a poor fit).
LOOSE_TRIANGLE_ELONGATION = 1.35
#: Lowest shape score (template IoU) of each shape: a worse fit is ``"other"`` (a T, a trapezoid, a bent or torn
#: shape). Measured on 3000 rendered scenes, clean and blurred + noisy (see ``docs/results/shapes.md``).
MIN_SCORE = {"circle": 0.75, "square": 0.75, "triangle": 0.55, "star": 0.5, "ring": 0.6}
#: Solidity below which a shape that is not a star is ``"other"`` (a T, an open ring, a cross): clean and noisy
#: renders of the convex shapes stay above 0.76.
MIN_SOLIDITY = 0.7


def classify_shape(
    mask: np.ndarray,
    triangle_ratio: float = 0.55,
    square_ratio: float = 1.2,
    star_solidity: float = 0.8,
    star_margin: float = 0.1,
    ring_hole: float = 0.08,
    ring_margin: float = 0.1,
    hole: np.ndarray | None = None,
) -> tuple[str, float]:
    """The shape of a component mask, from scale-free geometric cues.

    - A ring is the only shape with a hole: the background pixels it encloses (:func:`holes`) are at least
      ``ring_hole`` of its filled area (clean renders at sizes 9-16: 0.17-0.25; the other shapes enclose none),
      and, filled in, it is round: the circle template fits the filled mask at least as well as the others but
      ``ring_margin``.
    - A star is the only strongly non-convex shape among the rest: its area is well below that of its convex hull
      (:func:`solidity` under ``star_solidity``; clean renders: stars 0.55-0.74, other shapes 0.84-1), and the
      star template then fits it about as well as the best one (within ``star_margin``; a star of 8-9 px has lost
      its thin points to the pixel grid: a star template reaching up to a pixel beyond the mask's box,
      :data:`STAR_GROW`, then fits it best). Any other shape with a solidity under :data:`MIN_SOLIDITY` (a T, an
      open ring) is ``"other"``.
    - A triangle is the only lopsided shape: along the axis from its apex to its base, its outer thirds hold
      about 1/9 and 5/9 of its area (ratio ~0.2); a circle's and a square's are equal (ratio 1).
    - A square reaches out along the diagonals (its corners): its diagonal extent is ~1.41 times its axis
      extent, a circle's ~1, measured with the axes turned to the square's own tilt; a square tilted more than
      :data:`MAX_TILT` degrees either way (up to a diamond) is ``"other"``.
    - A shape stretched past :data:`MAX_ELONGATION` (e.g. a 2:1 rectangle), or a triangle whose height over base
      (:func:`triangle_stretch`) is past :data:`MAX_TRIANGLE_STRETCH` either way, is reported as
      :data:`STRETCHED` (``"rectangle"``, ``"ellipse"`` or ``"other"``), which no request names.
    - A shape whose score is under its :data:`MIN_SCORE` is ``"other"``: the best shape fits it badly; so is a
      triangle elongated past :data:`LOOSE_TRIANGLE_ELONGATION` that scores under its :data:`GOOD_SCORE`.

    Args:
        mask (`np.ndarray`): ``(h, w)`` bool coverage of one component, cropped to its bounding box.
        triangle_ratio (`float`, *optional*, defaults to 0.55): outer-thirds mass ratio below which the
            component is a triangle.
        square_ratio (`float`, *optional*, defaults to 1.2): diagonal-to-axis extent ratio above which a
            non-triangle is a square.
        star_solidity (`float`, *optional*, defaults to 0.8): solidity below which a component may be a star.
        star_margin (`float`, *optional*, defaults to 0.1): how far the star template's IoU may trail the best.
        ring_hole (`float`, *optional*, defaults to 0.08): smallest enclosed fraction of a ring's filled area.
        ring_margin (`float`, *optional*, defaults to 0.1): how far the circle template's IoU with the filled
            mask may trail the best of the other templates.
        hole (`np.ndarray`, *optional*): ``(h, w)`` bool, the background the shape encloses; defaults to
            :func:`holes` of the mask. :func:`check` counts the shape's pixels of no palette colour in (a ring with
            an off-palette arc still encloses its hole).

    Returns:
        `tuple[str, float]`: shape name and the soft IoU in [0, 1] of the mask with that shape's ideal template
        drawn in its bounding box (1 = the ideal shape; low values flag malformed blobs).
    """
    m = mask.astype(np.float64)
    if not m.any():
        raise ValueError("mask is empty")
    name = None
    shape_mask = m > 0
    if hole is None:
        hole = holes(shape_mask)
    elif hole.shape != mask.shape:
        raise ValueError(f"hole must have the mask's shape {mask.shape}, got {hole.shape}")
    if hole.sum() >= ring_hole * (shape_mask.sum() + hole.sum()):
        filled = np.maximum(m, hole)
        ious = {k: _template_iou(filled, k) for k in ("circle", "square", "triangle", "star")}
        if ious["circle"] >= max(ious.values()) - ring_margin:
            name = "ring"
            shape_mask = shape_mask | hole  # its elongation is that of the filled disc
    solid = solidity(m > 0) if name is None else 1.0
    if name is None and solid < star_solidity:
        ious = {k: _template_iou(m, k) for k in REQUESTABLE}
        best = max(ious.values())
        if ious["star"] >= best - star_margin or _template_iou(m, "grown star") >= best:
            name = "star"
    if name is None and solid < MIN_SOLIDITY:
        return "other", max(_template_iou(m, k) for k in REQUESTABLE)  # a T, an open ring: no requestable shape
    if name is None:
        thirds = (_thirds_ratio(m.sum(axis=1)), _thirds_ratio(m.sum(axis=0)))
        if min(thirds) < triangle_ratio:
            name = "triangle"
        else:
            ratio, tilt = _diagonal_ratio(m > 0)
            name = "circle" if ratio <= square_ratio else "square" if abs(tilt) <= MAX_TILT else "other"
    if name == "other":  # a square tilted past MAX_TILT (up to a diamond)
        return name, _template_iou(m, "square")
    score = _template_iou(m, name)
    if name == "triangle":
        stretch = triangle_stretch(m > 0, apex_axis=int(np.argmin(thirds)))
        stretched = not 1 / MAX_TRIANGLE_STRETCH <= stretch <= MAX_TRIANGLE_STRETCH
        if elongation(shape_mask) > LOOSE_TRIANGLE_ELONGATION and score < GOOD_SCORE[name]:
            return "other", score
    else:
        stretched = elongation(shape_mask) > MAX_ELONGATION[name]
    if stretched:
        return STRETCHED[name], score
    if score < MIN_SCORE[name]:
        return "other", score  # a poor fit of the best shape: a T, a trapezoid, a torn or bent shape
    return name, score


def distance_map(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each mask pixel's centre to the nearest pixel centre outside the mask (0 outside;
    the area beyond the array counts as outside)."""
    pad = np.pad(mask, 1)
    fy, fx = np.nonzero(pad)
    by, bx = np.nonzero(~pad)
    out = np.zeros(pad.shape)
    if len(fy):
        d2 = (fy[:, None] - by[None, :]) ** 2 + (fx[:, None] - bx[None, :]) ** 2
        out[fy, fx] = np.sqrt(d2.min(axis=1))
    return out[1:-1, 1:-1]


def split_touching(
    mask: np.ndarray, min_area: int, neck_ratio: float = 0.6, loose_neck_ratio: float = 0.85, min_peak: float = 2.0
) -> list[np.ndarray]:
    """Splits a one-colour component into the objects that touch in it, at necks of its distance map.

    A convex shape (circle, square, triangle, rectangle, ellipse) has one maximum of its distance map, and a star
    one too (its arms are ridges that fall away from the centre). Two shapes that touch have two maxima joined by a
    neck. A maximum at least ``min_peak`` pixels deep is another object when the neck that joins it to a deeper
    one is at most ``neck_ratio`` times its depth (a narrow neck: touching objects), or at most
    ``loose_neck_ratio`` times its depth when the whole is not one well-formed shape but every part is
    (overlapping objects, e.g. two circles as a figure eight). The component is cut by a seeded watershed; a cut
    is kept only when every part has ``min_area`` pixels.

    Args:
        mask (`np.ndarray`): ``(h, w)`` bool mask of one connected component.
        min_area (`int`): smallest part.
        neck_ratio (`float`, *optional*, defaults to 0.6): neck depth over the shallower maximum's depth.
        loose_neck_ratio (`float`, *optional*, defaults to 0.85): the same for a whole that is no good shape.
        min_peak (`float`, *optional*, defaults to 2.0): smallest depth (inscribed radius, pixels) of an object.

    Returns:
        `list[np.ndarray]`: bool masks of the parts (``[mask]`` when nothing is cut).
    """
    import heapq

    dt = distance_map(mask)
    h, w = mask.shape
    order = sorted(zip(*np.nonzero(mask)), key=lambda p: -dt[p])
    parent: dict = {}
    peak: dict = {}
    lobes = []  # (neck / depth, seed pixel) of every maximum that meets a deeper one

    def root(p):
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for p in order:
        y, x = p
        roots = {root((y + dy, x + dx)) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (y + dy, x + dx) in parent}
        parent[p] = p
        if not roots:
            peak[p] = dt[p]
            continue
        elder = max(roots, key=lambda r: (peak[r], r))
        for r in roots:
            if r != elder and peak[r] >= min_peak:
                lobes.append((dt[p] / peak[r], r))
            parent[r] = elder
        parent[p] = elder

    def cut(seeds):
        seeds = seeds + [root(order[0])]
        label = -np.ones((h, w), dtype=np.int64)
        heap = []
        for k, (y, x) in enumerate(seeds):
            label[y, x] = k
            heapq.heappush(heap, (-dt[y, x], y, x))
        while heap:  # flood from the seeds, deepest pixels first
            _, y, x = heapq.heappop(heap)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and label[yy, xx] < 0:
                        label[yy, xx] = label[y, x]
                        heapq.heappush(heap, (-dt[yy, xx], yy, xx))
        parts = [label == k for k in range(len(seeds))]
        return parts if min(int(q.sum()) for q in parts) >= min_area else None

    strict = [r for ratio, r in lobes if ratio <= neck_ratio]
    if strict:
        parts = cut(strict)
        if parts:
            return parts
    loose = [r for ratio, r in lobes if ratio <= loose_neck_ratio]
    if loose and not _good(mask)[0]:
        parts = cut(loose)
        if parts and all(_good(q)[0] for q in parts):
            return parts
    return [mask]


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    p = np.pad(mask, 1)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= p[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


def _enclosed(mask: np.ndarray, unknown: np.ndarray | None) -> np.ndarray:
    """The background a mask encloses, its pixels of unknown colour (``unknown``) counting as part of it."""
    if unknown is None:
        return holes(mask)
    return holes(mask | unknown) & ~unknown


#: Pixels along one edge of a 32x32 image from which an object counts as cut by the frame (scaled with the side).
#: A clean render never reaches the edge (``render.MARGIN``); a circle that grazes it covers 1-2 edge pixels.
MIN_FRAME_RUN = 3


def _longest_run(line: np.ndarray) -> int:
    best = run = 0
    for v in line:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


def cut_by_frame(mask: np.ndarray, min_run: int | None = None) -> bool:
    """Whether an object's full-image ``mask`` runs along an edge of the image for at least ``min_run`` pixels
    (default :data:`MIN_FRAME_RUN` at 32 pixels a side, scaled with the shorter side): the frame cuts it."""
    if min_run is None:
        min_run = max(2, round(MIN_FRAME_RUN * min(mask.shape) / 32))
    return any(_longest_run(edge) >= min_run for edge in (mask[0], mask[-1], mask[:, 0], mask[:, -1]))


def _detection(mask: np.ndarray, color: str, min_area: int, leaked=(), unknown=None) -> DetectedObject:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    area = len(ys)
    noise = area < min_area
    box = (slice(y0, y1), slice(x0, x1))
    shape, score = classify_shape(mask[box], hole=_enclosed(mask, unknown)[box]) if not noise else ("unknown", 0.0)
    if not noise and cut_by_frame(mask):
        shape = "cut"
    return DetectedObject(color, shape, (x0, y0, x1, y1), area, noise, round(score, 4), tuple(leaked))


#: Template IoU from which a shape counts as well formed (the 1st percentile on clean renders at sizes 9-16 is
#: circle 0.86, square 0.97, triangle 0.79, star 0.67; unions of two touching objects score at most ~0.62).
GOOD_SCORE = {"circle": 0.75, "square": 0.75, "triangle": 0.7, "star": 0.6, "ring": 0.6}


def _good(mask: np.ndarray, slack: float = 0.0, unknown: np.ndarray | None = None) -> tuple[bool, str, float]:
    """Whether a mask is one well-formed requestable shape (its score at least :data:`GOOD_SCORE` - ``slack``);
    ``unknown``: pixels of no palette colour, see :func:`_enclosed`."""
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    name, score = classify_shape(mask[box], hole=_enclosed(mask, unknown)[box])
    return name in REQUESTABLE and score >= GOOD_SCORE[name] - slack, name, score


def check(
    image,
    palette: Mapping[str, Sequence[int]] | None = None,
    min_area: int | None = None,
    max_residual: float = 60.0,
    leak_fraction: float = 0.1,
) -> list[DetectedObject]:
    """Reads the coloured shapes in a ShapesWorld image.

    Beyond colour segmentation and shape geometry (see the module docstring):

    - **touching objects of one colour** are cut apart at the neck between them (:func:`split_touching`);
    - **one shape in two colours** (colour leakage) is one object: pieces of different colours that touch (or meet
      across a seam of blended pixels) and each hold at least ``leak_fraction`` of the colour pixels there are
      joined when their union is a well-formed shape (a :data:`REQUESTABLE` shape with template IoU at least
      :data:`GOOD_SCORE`); the object takes the colour of its largest piece and lists the others in
      ``leaked_colors``. Pieces that do not make one shape stay separate objects (two touching objects);
    - a piece under ``leak_fraction`` of the colour pixels of what it touches is a fringe of that object: noise.

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): RGB image (32x32 for ShapesWorld; any size works).
        palette (`Mapping[str, Sequence[int]]`, *optional*): colour name -> RGB; defaults to the renderer's
            ``COLORS``.
        min_area (`int`, *optional*): components with fewer pixels are reported as noise. Defaults to 12 pixels
            at 32x32 (the smallest rendered object, a size-9 triangle, covers about 40), scaled with the image
            area.
        max_residual (`float`, *optional*, defaults to 60): colour tolerance, see :func:`segment`.
        leak_fraction (`float`, *optional*, defaults to 0.1): see above.

    Returns:
        `list[DetectedObject]`: one entry per object or speck, objects first (largest first), then noise.
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
    far = np.linalg.norm(img.astype(np.float64) - bg, axis=-1) > max_residual
    # pixels of no palette colour at any coverage (an off-palette arc of a ring), not the blended edges of a shape
    unknown = far & (segment(img, pal, bg, max_residual=max_residual, min_fraction=0.0)[0] < 0)
    names = list(pal)
    # pieces: one-colour components, touching objects cut apart
    pieces: list[tuple[int, np.ndarray]] = []
    for ci in range(len(names)):
        for pix in components(labels == ci):
            m = np.zeros((h, w), dtype=bool)
            m[pix[:, 0], pix[:, 1]] = True
            # a well-formed ring is one object: its distance map has a ridge of maxima all round, no neck to cut
            whole = len(pix) < 2 * min_area or (_enclosed(m, unknown).any() and _good(m, unknown=unknown)[1] == "ring")
            parts = [m] if whole else split_touching(m, min_area)
            pieces.extend((ci, p) for p in parts)
    # groups of pieces that touch, directly or across blended (unassigned, non-background) pixels
    fg = (labels >= 0) | far
    found: list[DetectedObject] = []
    for comp in components(fg):
        inside = np.zeros((h, w), dtype=bool)
        inside[comp[:, 0], comp[:, 1]] = True
        group = [(ci, m) for ci, m in pieces if (m & inside).any()]
        total = sum(int(m.sum()) for _, m in group)
        least = max(min_area / 3, leak_fraction * total)  # smallest piece that may be part of a mixed object
        cand = [(ci, m) for ci, m in group if m.sum() >= least]
        rest = [(ci, m) for ci, m in group if m.sum() < least]
        objects: list[tuple[dict[int, int], np.ndarray]] = [({ci: int(m.sum())}, m) for ci, m in cand]
        if len({ci for ci, _ in cand}) > 1:
            objects = _join_leaks(objects, inside, labels)
        has_object = any(m.sum() >= min_area for _, m in objects)
        for areas, m in objects:
            order = sorted(areas, key=lambda c: (-areas[c], c))
            found.append(_detection(m, names[order[0]], min_area, [names[c] for c in order[1:]], unknown))
        for ci, m in rest:  # specks, and fringes of another object (under leak_fraction of the group)
            d = _detection(m, names[ci], min_area)
            if has_object and not d.is_noise:
                d = dataclasses.replace(d, shape="unknown", is_noise=True, shape_score=0.0)
            found.append(d)
    found.sort(key=lambda d: (d.is_noise, -d.area, d.bbox))
    return found


def _join_leaks(objects, inside, labels):
    """Joins pieces of different colours whose union (seams included) is one well-formed shape: all of them if
    that works, else the best pair at a time."""

    def union(items):
        m = np.zeros_like(inside)
        for _, p in items:
            m |= p
        near = [_dilate(p) for _, p in items]
        pad = np.pad(m, 1)
        count = sum(pad[dy : dy + m.shape[0], dx : dx + m.shape[1]] for dy in (0, 1, 2) for dx in (0, 1, 2))
        # blended pixels between two pieces (unassigned, or a speck of a third colour), next to both and mostly
        # surrounded by them (not the outer halo)
        seam = inside & ~m & (np.sum(near, axis=0) >= 2) & (count >= 5)
        areas: dict[int, int] = {}
        for a, _ in items:
            for c, n in a.items():
                areas[c] = areas.get(c, 0) + n
        return areas, m | seam

    if len(objects) > 2:
        areas, m = union(objects)
        if _good(m)[0]:
            return [(areas, m)]
    while True:
        best = None
        for i in range(len(objects)):
            for j in range(i + 1, len(objects)):
                a, b = objects[i], objects[j]
                if (
                    set(a[0]) == set(b[0])
                    or not (_dilate(a[1]) & b[1]).any()
                    and not (_dilate(_dilate(a[1])) & b[1]).any()
                ):
                    continue
                areas, m = union([a, b])
                ok, _, score = _good(m)
                if ok and (best is None or score > best[0]):
                    best = (score, i, j, (areas, m))
        if best is None:
            return objects
        _, i, j, joined = best
        objects = [o for k, o in enumerate(objects) if k not in (i, j)] + [joined]


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

    Noise components are ignored. Matches are one-to-one (two requested circles need two detected circles). A
    mixed detection (one shape in several colours, see :attr:`DetectedObject.leaked_colors`) counts for its shape
    only: it matches no request's colour, so it never makes a requested object exact.

    Args:
        detected (`Sequence[DetectedObject]`): output of :func:`check`.
        requested (`Sequence[tuple[str, str]]`): ``(colour, shape)`` per requested object.

    Returns:
        `dict` with
        - ``num_requested``, ``num_detected`` (non-noise), ``num_noise``, ``num_mixed`` (mixed detections);
        - ``present``: requested objects whose shape (the noun) is matched by a detection;
        - ``color_present``: requested objects whose colour is matched by a one-colour detection;
        - ``exact``: requested objects matched with both colour and shape by a one-colour detection;
        - ``recall``: ``present / num_requested``;
        - ``all_present``: every requested object's shape is there (no neglect);
        - ``exact_binding``: every requested object is there with its own colour and shape;
        - ``extra``: number of detected objects beyond the requested count (``max(0, detected - requested)``);
        - ``has_extra``: ``extra > 0``;
        - ``clean_binding``: ``exact_binding`` and no extra object: the image holds exactly what was asked.
    """
    if not requested:
        raise ValueError("requested must list at least one (colour, shape) pair")
    req = [tuple(r) for r in requested]
    if any(len(r) != 2 for r in req):
        raise ValueError(f"requested must be (colour, shape) pairs, got {requested!r}")
    objs = [d for d in detected if not d.is_noise]
    n, m = len(req), len(objs)
    present = _max_matching(n, m, lambda i, j: objs[j].shape == req[i][1])
    color_present = _max_matching(n, m, lambda i, j: not objs[j].mixed and objs[j].color == req[i][0])
    exact = _max_matching(n, m, lambda i, j: not objs[j].mixed and (objs[j].color, objs[j].shape) == req[i])
    extra = max(0, m - n)
    return {
        "num_requested": n,
        "num_detected": m,
        "num_noise": len(detected) - m,
        "num_mixed": sum(d.mixed for d in objs),
        "present": present,
        "color_present": color_present,
        "exact": exact,
        "recall": present / n,
        "all_present": present == n,
        "exact_binding": exact == n,
        "extra": extra,
        "has_extra": extra > 0,
        "clean_binding": exact == n and extra == 0,
    }
