"""ShapesWorld renderer: seeded 32x32 scenes of coloured shapes and their Attend-and-Excite style captions.

A scene holds 1-3 non-overlapping shapes (circle, square, triangle) in one of six well-separated colours on a
uniform dark grey background. Shapes are drawn at 4x resolution and box-filtered down, so edges are anti-aliased
while every pixel fully inside a shape has the exact colour of :data:`COLORS`.

Training data mix (:func:`sample_training_scene`):

- number of objects: 45% one, 45% two, 10% three (three-object scenes are rare on purpose, so the model has a
  real failure mode there);
- colours within a scene are distinct; shapes are drawn independently, so about a third of the two-object scenes
  are same-shape pairs ("a red circle and a blue circle"), where binding is carried by colour alone;
- the colour-shape pairs in :data:`HELD_OUT` never appear in training scenes (each of those colours and shapes
  still appears in other pairs), so prompts naming them test composition the model never saw;
- captions list the objects in a random order.

Outside the training mix, :class:`ShapeSpec` can also draw a five-pointed ``"star"`` and a ``"ring"`` (an
annulus whose hole is :data:`RING_INNER` of its diameter): :data:`EXTRA_SHAPES`, shapes the shipped model never
saw; and rotated or stretched shapes (``angle``, ``aspect``) and one shape painted in two colours
(``second_color``), e.g. to test the checker. At their defaults every scene renders as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32  # side of every rendered image, in pixels
SUPERSAMPLE = 4  # drawing resolution factor before the box-filter downsample

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 210, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Shapes the renderer can draw that are never in the training mix (new concepts, e.g. for personalization).
EXTRA_SHAPES: tuple[str, ...] = ("star", "ring")
ALL_SHAPES: tuple[str, ...] = SHAPES + EXTRA_SHAPES
STAR_INNER = (
    0.45  # inner-to-outer radius ratio of the five-pointed star (0.38 for a pentagram; fatter reads better at 32 px)
)
RING_INNER = 0.5  # hole diameter over outer diameter of the ring (a hole of 4.5 px at the smallest size, 9 px)

# Colour-shape pairs kept out of training (held-out compositions).
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("yellow", "triangle"), ("cyan", "circle"), ("purple", "square")})

BACKGROUND_RANGE = (20, 70)  # inclusive range of the grey level v of the background (v, v, v)
MIN_GAP = 2.0  # minimum gap in pixels between the bounding boxes of two shapes
MARGIN = 1.0  # minimum distance in pixels between a bounding box and the image border
# Size range (bounding side, pixels) per number of objects: three large shapes cannot fit with the gap.
SIZE_RANGE = {1: (10.0, 16.0), 2: (9.0, 15.0), 3: (9.0, 12.0)}
# Probability of 1, 2, 3 objects in a training scene.
TRAINING_MIX = (0.45, 0.45, 0.10)


@dataclass
class ShapeSpec:
    """One shape: colour name, shape name, centre (cx, cy) and bounding side ``size``, all in pixels.

    The optional fields draw shapes the training mix never holds (checker tests, new concepts); at their defaults
    a shape is drawn exactly as before they existed.

    Attributes:
        angle (`float`): rotation in degrees, counter-clockwise on screen, about the centre.
        aspect (`float`): width over height before rotation; ``size`` is then the longer side (2.0: a 2:1
            rectangle or ellipse).
        second_color (`str`, *optional*): paints the part of the shape right of a vertical line in this colour
            (colour leakage: one shape in two colours).
        split (`float`): where that line is, as a fraction of the shape's box width from its left edge.
    """

    color: str
    shape: str
    cx: float
    cy: float
    size: float
    angle: float = 0.0
    aspect: float = 1.0
    second_color: str | None = None
    split: float = 0.5

    @property
    def _plain(self) -> bool:
        return self.shape in SHAPES and self.angle == 0.0 and self.aspect == 1.0

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) in pixels (continuous coordinates)."""
        if self._plain:
            h = self.size / 2
            return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)
        pts = self.outline()
        return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))

    def outline(self) -> np.ndarray:
        """The outline as ``(N, 2)`` (x, y) points in pixels (a circle as a 180-gon), rotation and aspect applied."""
        w, h = self.size, self.size
        if self.aspect >= 1:
            h = self.size / self.aspect
        else:
            w = self.size * self.aspect
        if self.shape in ("circle", "ring"):  # a ring's outline is its outer circle (its hole: :meth:`hole`)
            t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
            pts = np.stack([np.cos(t) / 2, np.sin(t) / 2], axis=1)
        elif self.shape == "square":
            pts = np.array([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)])
        elif self.shape == "triangle":
            pts = np.array([(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)])
        else:  # star: five points, the first straight up, scaled to fill the unit box
            t = -np.pi / 2 + np.arange(10) * np.pi / 5
            r = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER)
            pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            pts = (pts - (lo + hi) / 2) / (hi - lo)
        pts = pts * np.array([w, h])
        a = np.deg2rad(self.angle)
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # counter-clockwise with y down
        return pts @ rot.T + np.array([self.cx, self.cy])

    def hole(self) -> np.ndarray | None:
        """The outline of the hole as ``(N, 2)`` points in pixels (a ring's inner circle), or None for a shape
        without one."""
        if self.shape != "ring":
            return None
        c = np.array([self.cx, self.cy])
        return c + (self.outline() - c) * RING_INNER

    @property
    def phrase(self) -> str:
        """The object as a caption phrase, e.g. ``"red circle"``."""
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    """A list of shapes and the background grey level ``background`` (the colour is (v, v, v))."""

    objects: list[ShapeSpec]
    background: int


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _validate(spec: ShapeSpec) -> None:
    if spec.color not in COLORS:
        raise ValueError(f"unknown colour {spec.color!r}; expected one of {sorted(COLORS)}")
    if spec.shape not in ALL_SHAPES:
        raise ValueError(f"unknown shape {spec.shape!r}; expected one of {list(ALL_SHAPES)}")
    if spec.size <= 0:
        raise ValueError(f"shape size must be positive, got {spec.size}")
    if spec.aspect <= 0:
        raise ValueError(f"aspect must be positive, got {spec.aspect}")
    if spec.second_color is not None and spec.second_color not in COLORS:
        raise ValueError(f"unknown colour {spec.second_color!r}; expected one of {sorted(COLORS)}")


def render(scene: Scene) -> Image.Image:
    """Draws a scene as a 32x32 RGB image (4x supersampled, box-filtered).

    Args:
        scene (`Scene`): shapes and background grey level (0-255).

    Returns:
        `PIL.Image.Image`: a 32x32 RGB image.
    """
    if not 0 <= scene.background <= 255:
        raise ValueError(f"background grey level must be in [0, 255], got {scene.background}")
    s = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), (scene.background,) * 3)
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        _validate(obj)
        if not obj._plain or obj.second_color is not None:
            _draw_general(big, obj)
            continue
        x0, y0, x1, y1 = (v * s for v in obj.bbox)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:  # upward triangle: apex at the top centre, base along the bottom of the box
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return big.reduce(s)  # box filter: each output pixel is the mean of an s x s block


def _draw_general(big: Image.Image, obj: ShapeSpec) -> None:
    """Draws a rotated, stretched, star, ring or two-colour shape on the supersampled canvas (binary coverage)."""
    s = SUPERSAMPLE
    mask = Image.new("L", big.size, 0)
    # pixel (i, j) of the canvas is filled when its centre (i + 0.5, j + 0.5) is inside: shift by half a pixel
    ImageDraw.Draw(mask).polygon([(x * s - 0.5, y * s - 0.5) for x, y in obj.outline()], fill=255)
    hole = obj.hole()
    if hole is not None:  # the ring's hole shows what was there before (the background)
        ImageDraw.Draw(mask).polygon([(x * s - 0.5, y * s - 0.5) for x, y in hole], fill=0)
    if obj.second_color is None:
        big.paste(COLORS[obj.color], mask=mask)
        return
    x0, _, x1, _ = obj.bbox
    cut = int(round((x0 + obj.split * (x1 - x0)) * s))
    left, right = mask.copy(), mask.copy()
    ImageDraw.Draw(left).rectangle((cut, 0, big.size[0], big.size[1]), fill=0)
    ImageDraw.Draw(right).rectangle((0, 0, cut - 1, big.size[1]), fill=0)
    big.paste(COLORS[obj.color], mask=left)
    big.paste(COLORS[obj.second_color], mask=right)


def _boxes_clear(a: ShapeSpec, b: ShapeSpec, gap: float) -> bool:
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def sample_scene(
    rng: np.random.Generator | int,
    num_objects: int,
    colors: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
) -> Scene:
    """Samples a scene of ``num_objects`` non-overlapping shapes, deterministically for a given ``rng``.

    Args:
        rng (`np.random.Generator` or `int`): random source (an int is used as a seed).
        num_objects (`int`): 1, 2 or 3.
        colors (`Sequence[str]`, *optional*): the colour of each object, in order; random distinct colours
            if omitted.
        shapes (`Sequence[str]`, *optional*): the shape of each object, in order; random if omitted.

    Returns:
        `Scene`: shapes whose bounding boxes are at least 2 px apart and 1 px inside the image.
    """
    rng = _as_rng(rng)
    if num_objects not in SIZE_RANGE:
        raise ValueError(f"num_objects must be 1, 2 or 3, got {num_objects}")
    if colors is None:
        colors = [str(c) for c in rng.choice(list(COLORS), size=num_objects, replace=False)]
    if shapes is None:
        shapes = [str(SHAPES[i]) for i in rng.integers(0, len(SHAPES), size=num_objects)]
    if len(colors) != num_objects or len(shapes) != num_objects:
        raise ValueError(
            f"colors and shapes need one entry per object ({num_objects}), got {len(colors)} and {len(shapes)}"
        )
    for c, sh in zip(colors, shapes):
        _validate(ShapeSpec(c, sh, 0.0, 0.0, 1.0))
    lo, hi = SIZE_RANGE[num_objects]
    background = int(rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1))
    for _ in range(1000):  # rejection sampling of the layout; succeeds within a few tries in practice
        objects: list[ShapeSpec] = []
        for c, sh in zip(colors, shapes):
            size = float(rng.uniform(lo, hi))
            h = size / 2
            for _ in range(50):
                cx = float(rng.uniform(MARGIN + h, IMAGE_SIZE - MARGIN - h))
                cy = float(rng.uniform(MARGIN + h, IMAGE_SIZE - MARGIN - h))
                cand = ShapeSpec(c, sh, cx, cy, size)
                if all(_boxes_clear(cand, o, MIN_GAP) for o in objects):
                    objects.append(cand)
                    break
            else:
                break
        if len(objects) == num_objects:
            return Scene(objects=objects, background=background)
    raise RuntimeError(f"could not place {num_objects} shapes without overlap")  # pragma: no cover


def sample_training_scene(rng: np.random.Generator | int, mix: Sequence[float] = TRAINING_MIX) -> Scene:
    """Samples a scene from the training mix (see the module docstring); never uses a :data:`HELD_OUT` pair.

    Args:
        rng (`np.random.Generator` or `int`): random source (an int is used as a seed).
        mix (three floats, *optional*, defaults to :data:`TRAINING_MIX`): probabilities of 1, 2 and 3 objects.
    """
    rng = _as_rng(rng)
    n = int(rng.choice([1, 2, 3], p=list(mix)))
    while True:
        colors = [str(c) for c in rng.choice(list(COLORS), size=n, replace=False)]
        shapes = [str(SHAPES[i]) for i in rng.integers(0, len(SHAPES), size=n)]
        if not any((c, s) in HELD_OUT for c, s in zip(colors, shapes)):
            return sample_scene(rng, n, colors=colors, shapes=shapes)


def caption_of(phrases: Sequence[str]) -> str:
    """Joins object phrases AnE-style: "a red circle", "a x and a y", "a x, a y and a z"."""
    if not phrases:
        raise ValueError("a caption needs at least one object phrase")
    items = [f"a {p}" for p in phrases]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene, rng: np.random.Generator | int) -> str:
    """Captions a scene, naming every object once in a random order (e.g. "a red circle and a blue square").

    Args:
        scene (`Scene`): the scene to describe.
        rng (`np.random.Generator` or `int`): random source for the object order.
    """
    rng = _as_rng(rng)
    order = rng.permutation(len(scene.objects))
    return caption_of([scene.objects[i].phrase for i in order])


def to_array(image: Image.Image) -> np.ndarray:
    """A rendered image as a uint8 array of shape (32, 32, 3)."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
