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
    """One shape: colour name, shape name, centre (cx, cy) and bounding side ``size``, all in pixels."""

    color: str
    shape: str
    cx: float
    cy: float
    size: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) in pixels (continuous coordinates)."""
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

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
    if spec.shape not in SHAPES:
        raise ValueError(f"unknown shape {spec.shape!r}; expected one of {list(SHAPES)}")
    if spec.size <= 0:
        raise ValueError(f"shape size must be positive, got {spec.size}")


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
        x0, y0, x1, y1 = (v * s for v in obj.bbox)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:  # upward triangle: apex at the top centre, base along the bottom of the box
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return big.reduce(s)  # box filter: each output pixel is the mean of an s x s block


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


def sample_training_scene(rng: np.random.Generator | int) -> Scene:
    """Samples a scene from the training mix (see the module docstring); never uses a :data:`HELD_OUT` pair.

    Args:
        rng (`np.random.Generator` or `int`): random source (an int is used as a seed).
    """
    rng = _as_rng(rng)
    n = int(rng.choice([1, 2, 3], p=TRAINING_MIX))
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
