"""The ShapesWorld checker against rendered ground truth."""

import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from ait2i.shapes.check import DetectedObject, check, classify_shape, estimate_background, match, to_uint8

R = importlib.import_module("ait2i.shapes.render")  # the package re-exports a function named render

# Held-out scenes: seeds drawn from (namespace, index) seed sequences that training never uses (it draws from
# (seed, step) with seed 0 and evaluates on (987654321, i)).
CHECK_NAMESPACE = 7_331


def _scene(i: int, namespace: int = CHECK_NAMESPACE) -> tuple[R.Scene, np.random.Generator]:
    rng = np.random.default_rng([namespace, i])
    return R.sample_scene(rng, int(rng.integers(1, 4))), rng


def _truth(scene: R.Scene) -> list[tuple[str, str]]:
    return sorted((o.color, o.shape) for o in scene.objects)


def _objects(found: list[DetectedObject]) -> list[tuple[str, str]]:
    return sorted((d.color, d.shape) for d in found if not d.is_noise)


def test_exact_scene_recovery_on_1000_clean_renders():
    n, exact, bbox_ok, total = 1000, 0, 0, 0
    for i in range(n):
        scene, _ = _scene(i)
        found = check(R.render(scene))
        exact += _objects(found) == _truth(scene)
        # every true object's box is found within a pixel by the detection of its colour
        for o in scene.objects:
            total += 1
            det = [d for d in found if d.color == o.color and not d.is_noise]
            bbox_ok += bool(det) and max(abs(a - b) for a, b in zip(det[0].bbox, o.bbox)) <= 1.0
    rate = exact / n
    print(f"clean exact scene recovery: {rate:.4f} ({exact}/{n}); boxes within 1 px: {bbox_ok}/{total}")
    assert rate >= 0.99
    assert bbox_ok / total >= 0.99


def test_generated_looking_images():
    """Render + slight Gaussian blur + Gaussian pixel noise (sigma 8), as a sampler's output looks."""
    n, exact = 300, 0
    for i in range(n):
        scene, rng = _scene(i, namespace=CHECK_NAMESPACE + 1)
        img = R.render(scene).filter(ImageFilter.GaussianBlur(0.6))
        arr = np.asarray(img, dtype=np.float64) + rng.normal(0.0, 8.0, (32, 32, 3))
        exact += _objects(check(np.clip(np.round(arr), 0, 255).astype(np.uint8))) == _truth(scene)
    rate = exact / n
    print(f"blurred + noisy exact scene recovery: {rate:.4f} ({exact}/{n})")
    assert rate >= 0.95  # measured 1.0 on 500 such images at sigma 8, 0.99 at sigma 12 + blur 0.8


def test_noise_blobs_are_reported_not_counted():
    for i in range(50):
        scene, rng = _scene(i, namespace=CHECK_NAMESPACE + 2)
        arr = R.to_array(R.render(scene)).copy()
        occupied = np.zeros((32, 32), dtype=bool)
        for o in scene.objects:
            x0, y0, x1, y1 = (round(v) for v in o.bbox)
            occupied[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True
        placed = 0
        for _ in range(200):  # specks of 1-3 x 1-3 pixels in palette colours, away from the objects
            sy, sx = rng.integers(1, 4, size=2)
            y, x = rng.integers(0, 32 - sy), rng.integers(0, 32 - sx)
            if occupied[max(0, y - 1) : y + sy + 1, max(0, x - 1) : x + sx + 1].any():
                continue
            arr[y : y + sy, x : x + sx] = R.COLORS[str(rng.choice(list(R.COLORS)))]
            occupied[y : y + sy, x : x + sx] = True
            placed += 1
            if placed == 3:
                break
        found = check(arr)
        assert _objects(found) == _truth(scene)
        assert sum(d.is_noise for d in found) >= 1 if placed else True


def test_empty_background_has_no_objects():
    for v in (20, 45, 70):
        assert check(np.full((32, 32, 3), v, dtype=np.uint8)) == []


def test_off_palette_colours_are_ignored():
    arr = np.full((32, 32, 3), 40, dtype=np.uint8)
    arr[5:15, 5:15] = (235, 130, 40)  # orange: half-way between red and yellow
    arr[18:28, 18:28] = (128, 128, 128)  # light grey
    assert [d for d in check(arr) if not d.is_noise] == []


def test_background_estimate_with_objects_on_the_border():
    arr = np.full((32, 32, 3), 33, dtype=np.uint8)
    arr[:, :10] = R.COLORS["red"]  # a red band covering a third of the border
    np.testing.assert_allclose(estimate_background(arr), [33, 33, 33])


def test_bbox_and_area_of_a_known_square():
    arr = np.full((32, 32, 3), 50, dtype=np.uint8)
    arr[4:14, 20:30] = R.COLORS["blue"]
    (d,) = check(arr)
    assert (d.color, d.shape, d.bbox, d.area, d.is_noise) == ("blue", "square", (20, 4, 30, 14), 100, False)
    assert d.shape_score == pytest.approx(1.0)


@pytest.mark.parametrize("shape", R.ALL_SHAPES)
def test_shape_classes_at_every_size(shape):
    for size in np.arange(9.0, 16.01, 0.5):
        scene = R.Scene([R.ShapeSpec("green", shape, 16.3, 15.8, float(size))], background=30)
        (d,) = check(R.render(scene))
        assert d.shape == shape, size


def test_classify_shape_rejects_empty_mask():
    with pytest.raises(ValueError, match="empty"):
        classify_shape(np.zeros((4, 4)))


def test_input_types():
    scene, _ = _scene(0)
    img = R.render(scene)
    ref = check(img)
    assert check(R.to_array(img)) == ref
    assert check(R.to_array(img).astype(np.float32) / 255.0) == ref
    with pytest.raises(TypeError, match="PIL image or a numpy array"):
        check([[0, 0, 0]])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        check(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_uint8(np.full((4, 4, 3), 3.0))
    with pytest.raises(ValueError, match="convert"):
        check(Image.new("CMYK", (32, 32)))


def _d(color, shape, noise=False):
    return DetectedObject(color, shape, (0, 0, 5, 5), 25, noise)


def _pick(m, *keys):
    return tuple(m[k] for k in keys)


def test_match_metrics_on_hand_made_detections():
    req = [("red", "circle"), ("blue", "square")]
    m = match([_d("red", "circle"), _d("blue", "square")], req)
    assert _pick(m, "present", "exact", "all_present", "exact_binding", "extra") == (2, 2, True, True, 0)
    # swapped colours: both shapes present, binding wrong
    m = match([_d("blue", "circle"), _d("red", "square")], req)
    assert _pick(m, "present", "color_present", "exact", "all_present", "exact_binding") == (
        2,
        2,
        0,
        True,
        False,
    )
    # neglect: the square is missing; an extra noise speck is not an object
    m = match([_d("red", "circle"), _d("blue", "square", noise=True)], req)
    assert _pick(m, "present", "recall", "all_present", "num_noise", "num_detected") == (1, 0.5, False, 1, 1)
    # one detection cannot serve two requests: two red circles requested, one found
    m = match([_d("red", "circle")], [("red", "circle"), ("blue", "circle")])
    assert (m["present"], m["exact"], m["recall"]) == (1, 1, 0.5)
    # an extra object
    m = match([_d("red", "circle"), _d("blue", "square"), _d("green", "triangle")], req)
    assert (m["exact_binding"], m["extra"], m["has_extra"]) == (True, 1, True)
    # matching is one-to-one and maximal: the greedy choice (red circle -> first circle) would lose one
    m = match([_d("green", "circle"), _d("red", "circle")], [("red", "circle"), ("green", "circle")])
    assert m["exact"] == 2
    with pytest.raises(ValueError, match="at least one"):
        match([], [])
    with pytest.raises(ValueError, match="pairs"):
        match([], [("red",)])


# -- the stricter reading: colour leakage, touching objects, aspect ratio, tilt, the star ----------------------

S = R.ShapeSpec
DATA = Path(__file__).parents[1] / "data" / "shapes-check"


def _read(*objects, background=40):
    """(colour, leaked colours, shape) of every non-noise detection of a rendered scene, sorted."""
    found = check(R.render(R.Scene(list(objects), background)))
    return sorted((d.color, d.leaked_colors, d.shape) for d in found if not d.is_noise)


CASES = {
    # one square, left blue and right purple: one object with leakage, not two correct ones
    "blue|purple square": (
        (S("blue", "square", 16, 16, 14, second_color="purple"),),
        [("blue", ("purple",), "square")],
    ),
    "red|green circle": (
        (S("red", "circle", 15, 17, 13, second_color="green", split=0.6),),
        [("red", ("green",), "circle")],
    ),
    "cyan|yellow triangle": (
        (S("cyan", "triangle", 16, 15, 14, second_color="yellow", split=0.45),),
        [("yellow", ("cyan",), "triangle")],
    ),
    # touching objects of one colour are two objects
    "two red circles touching": (
        (S("red", "circle", 9.5, 16, 11), S("red", "circle", 20.5, 16, 11)),
        [("red", (), "circle")] * 2,
    ),
    "red square touching red triangle": (
        (S("red", "square", 9, 14, 12), S("red", "triangle", 21, 14, 12)),
        [("red", (), "square"), ("red", (), "triangle")],
    ),
    "two green squares stacked, corners touching": (
        (S("green", "square", 10, 9, 10), S("green", "square", 20, 19, 10)),
        [("green", (), "square")] * 2,
    ),
    # touching objects of two colours stay two one-colour objects
    "blue circle touching yellow square": (
        (S("blue", "circle", 9.5, 16, 11), S("yellow", "square", 20.5, 16, 11)),
        [("blue", (), "circle"), ("yellow", (), "square")],
    ),
    # aspect ratio counts
    "2:1 rectangle": ((S("green", "square", 16, 16, 16, aspect=2),), [("green", (), "rectangle")]),
    "1:2 rectangle": ((S("green", "square", 16, 16, 14, aspect=0.5),), [("green", (), "rectangle")]),
    "2:1 ellipse": ((S("purple", "circle", 16, 16, 16, aspect=2),), [("purple", (), "ellipse")]),
    "1:2 ellipse, tilted": ((S("purple", "circle", 16, 16, 16, aspect=0.5, angle=10),), [("purple", (), "ellipse")]),
    "2:1 triangle": ((S("red", "triangle", 16, 16, 16, aspect=2),), [("red", (), "other")]),
    # tilted squares up to 15 degrees are squares
    "square tilted 15": ((S("yellow", "square", 16, 16, 12, angle=15),), [("yellow", (), "square")]),
    "square tilted -15": ((S("yellow", "square", 16, 16, 12, angle=-15),), [("yellow", (), "square")]),
    # the star, a shape the model never saw
    "three stars": (
        (S("cyan", "star", 8, 8, 9), S("red", "star", 22, 10, 12), S("yellow", "star", 12, 23, 16)),
        [("cyan", (), "star"), ("red", (), "star"), ("yellow", (), "star")],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hand_made_cases(case):
    objects, expected = CASES[case]
    assert _read(*objects) == sorted(expected)


def test_a_mixed_object_matches_no_request():
    found = check(R.render(R.Scene([S("blue", "square", 16, 16, 14, second_color="purple")], 40)))
    (d,) = found
    assert d.mixed and d.to_dict()["leaked_colors"] == ("purple",)
    m = match(found, [("blue", "square"), ("purple", "square")])
    assert (m["exact"], m["color_present"], m["present"], m["num_mixed"]) == (0, 0, 1, 1)
    assert not m["exact_binding"] and not m["clean_binding"]
    m = match(found, [("blue", "square")])  # nor a request of one of its colours
    assert (m["exact"], m["exact_binding"], m["all_present"]) == (0, False, True)


def test_colour_leakage_at_random_splits():
    """One shape in two colours, at random sizes, places and split lines: one mixed detection of the right shape."""
    rng = np.random.default_rng([CHECK_NAMESPACE, 10])
    ok, n = 0, 0
    for shape in R.SHAPES:
        for _ in range(40):
            c1, c2 = (str(c) for c in rng.choice(list(R.COLORS), 2, replace=False))
            spec = S(
                c1,
                shape,
                *rng.uniform(10, 22, 2),
                float(rng.uniform(9, 16)),
                second_color=c2,
                split=float(rng.uniform(0.3, 0.7)),
            )
            found = [d for d in check(R.render(R.Scene([spec], int(rng.integers(20, 71))))) if not d.is_noise]
            n += 1
            ok += len(found) == 1 and found[0].shape == shape and {found[0].color, *found[0].leaked_colors} >= {c1, c2}
    print(f"leaked shapes read as one mixed object: {ok}/{n}")
    assert ok / n >= 0.97  # measured 299/300 on 900 at splits 0.25-0.75 (the miss: a tiny triangle corner)


def test_touching_pairs_of_one_colour_at_random():
    """Two shapes of one colour side by side, boxes touching (random sizes, vertical offsets): two objects.

    Left out, as a known limit: two squares, whose straight sides meet along an edge (no neck to cut at), and
    shapes stacked vertically, where a triangle's base sits flat on what is below it (a "house").
    """
    rng = np.random.default_rng([CHECK_NAMESPACE, 11])
    ok, n = 0, 0
    while n < 120:
        a, b = (str(x) for x in rng.choice(R.SHAPES, 2))
        if a == b == "square":
            continue
        s1, s2 = (float(v) for v in rng.uniform(9, 14, 2))
        cy = 16 + float(rng.uniform(-2, 2))
        off = float(rng.uniform(-1, 1)) * min(s1, s2) / 3
        o1, o2 = S("green", a, 16 - s1 / 2, cy, s1), S("green", b, 16 + s2 / 2, cy + off, s2)
        found = [d for d in check(R.render(R.Scene([o1, o2], 40))) if not d.is_noise]
        n += 1
        ok += sorted(d.shape for d in found) == sorted([a, b])
    print(f"touching one-colour pairs read as the two shapes: {ok}/{n}")
    assert ok / n >= 0.9


def test_tilted_squares_and_stars_at_every_size():
    for size in np.arange(9.0, 16.01, 1.0):
        for angle in (-15.0, -10.0, -5.0, 5.0, 10.0, 15.0):
            (d,) = check(R.render(R.Scene([S("blue", "square", 16.2, 15.7, float(size), angle=angle)], 50)))
            assert d.shape == "square", (size, angle)
        for angle in (0.0, 20.0, 36.0):
            (d,) = check(R.render(R.Scene([S("red", "star", 15.6, 16.3, float(size), angle=angle)], 50)))
            assert d.shape == "star", (size, angle)


def _confusion(rng) -> dict:
    """``{(drawn shape, read shape): count}`` over 60 random single-shape scenes per shape of ``R.ALL_SHAPES``."""
    confusion = {}
    for shape in R.ALL_SHAPES:
        for _ in range(60):
            spec = S(str(rng.choice(list(R.COLORS))), shape, *rng.uniform(9, 23, 2), float(rng.uniform(9, 16)))
            (d,) = [d for d in check(R.render(R.Scene([spec], int(rng.integers(20, 71))))) if not d.is_noise]
            confusion[(shape, d.shape)] = confusion.get((shape, d.shape), 0) + 1
    return confusion


def test_star_is_told_from_the_other_shapes_at_random():
    confusion = _confusion(np.random.default_rng([CHECK_NAMESPACE, 12]))
    print(confusion)
    for shape in R.SHAPES:
        assert confusion.get((shape, "star"), 0) == 0  # nothing else is ever a star
    assert confusion[("star", "star")] >= 57


def test_aspect_ratio_at_every_size():
    for size in np.arange(12.0, 20.01, 2.0):
        for shape, stretched in (("square", "rectangle"), ("circle", "ellipse")):
            for aspect in (2.0, 0.5):
                (d,) = check(R.render(R.Scene([S("cyan", shape, 16, 16, float(size), aspect=aspect)], 30)))
                assert d.shape == stretched, (shape, size, aspect)
            (d,) = check(R.render(R.Scene([S("cyan", shape, 16, 16, float(size), aspect=1.15)], 30)))
            assert d.shape == shape, (shape, size)  # a slight stretch is still the shape


# Images of the shipped model (20 DDIM steps, no guidance) whose reading the stricter checker changed, each read
# by eye: (prompt, the objects in it as (colour, leaked colours, shape), exact binding, extra objects).
MODEL_IMAGES = {
    # two overlapping yellow squares (the old checker saw one yellow circle)
    "model_01_0.png": ("a yellow square and a red triangle", [("yellow", (), "square")] * 2, False, 0),
    # a blue circle painted half purple, and two purple circles overlapping as a figure eight
    "model_06_1.png": (
        "a purple circle and a blue circle",
        [("blue", ("purple",), "circle"), ("purple", (), "circle"), ("purple", (), "circle")],
        False,
        1,
    ),
    # a purple circle and a blue-purple circle: the old checker passed it (blue triangle + purple circle + extra)
    "model_06_2.png": (
        "a purple circle and a blue circle",
        [("blue", ("purple",), "circle"), ("purple", (), "circle")],
        False,
        0,
    ),
    # a cyan square and two red squares touching (the old checker saw one red square)
    "model_07_3.png": (
        "a cyan square and a red square",
        [("cyan", (), "square"), ("red", (), "square"), ("red", (), "square")],
        True,
        1,
    ),
    # a red circle, a purple square and a red-purple circle (the old checker: a red circle and a purple triangle)
    "model_09_3.png": (
        "a red circle and a purple square",
        [("purple", (), "square"), ("red", (), "circle"), ("red", ("purple",), "circle")],
        True,
        1,
    ),
    # four squares, one painted purple above and yellow below, and a green circle
    "model_21_3.png": (
        "a yellow square, a purple square and a green circle",
        [
            ("green", (), "circle"),
            ("purple", (), "square"),
            ("purple", ("yellow",), "square"),
            ("yellow", (), "square"),
        ],
        True,
        1,
    ),
}


@pytest.mark.parametrize("name", list(MODEL_IMAGES))
def test_model_images_read_by_eye(name):
    from ait2i.bench.suites.shapes import shapes_items

    prompt, objects, exact, extra = MODEL_IMAGES[name]
    found = check(Image.open(DATA / name))
    assert sorted((d.color, d.leaked_colors, d.shape) for d in found if not d.is_noise) == sorted(objects)
    requested = next(it.data["objects"] for it in shapes_items(per_category=12) if it.prompt == prompt)
    m = match(found, requested)
    assert (m["exact_binding"], m["extra"], m["clean_binding"]) == (exact, extra, exact and extra == 0)


# -- the ring: a second shape the model never saw, told apart by its hole ----------------------------------------


def test_holes_are_enclosed_background_only():
    from ait2i.shapes.check import holes

    yy, xx = np.mgrid[:15, :15]
    r2 = (yy - 7) ** 2 + (xx - 7) ** 2
    disc = r2 <= 49
    ring = disc & (r2 >= 9)
    assert not holes(disc).any()
    assert holes(ring).sum() == (r2 < 9).sum()
    open_ring = ring & ~((xx > 7) & (np.abs(yy - 7) <= 1))  # a gap in the band: nothing is enclosed
    assert not holes(open_ring).any()


def test_rings_at_every_size_position_and_colour():
    rng = np.random.default_rng([CHECK_NAMESPACE, 20])
    for size in np.arange(9.0, 16.01, 0.5):
        for color in R.COLORS:
            spec = S(color, "ring", *rng.uniform(size / 2 + 1, 31 - size / 2, 2), float(size))
            found = [d for d in check(R.render(R.Scene([spec], int(rng.integers(20, 71))))) if not d.is_noise]
            assert [(d.color, d.shape) for d in found] == [(color, "ring")], (size, color, found)
            assert found[0].shape_score >= 0.7


def test_ring_is_told_from_the_other_shapes_at_random():
    confusion = _confusion(np.random.default_rng([CHECK_NAMESPACE, 21]))
    print(confusion)
    for shape in ("circle", "square", "triangle", "star"):
        assert confusion.get((shape, "ring"), 0) == 0  # nothing else is ever a ring
        assert confusion.get(("ring", shape), 0) == 0  # and a ring is never read as another shape
    assert confusion[("ring", "ring")] == 60


def test_rings_next_to_other_shapes_and_stretched_rings():
    assert _read(S("red", "ring", 9, 9, 12), S("blue", "circle", 23, 22, 12)) == [
        ("blue", (), "circle"),
        ("red", (), "ring"),
    ]
    assert _read(S("cyan", "ring", 9, 10, 11), S("yellow", "star", 22, 10, 12), S("purple", "ring", 15, 24, 10)) == [
        ("cyan", (), "ring"),
        ("purple", (), "ring"),
        ("yellow", (), "star"),
    ]
    assert _read(S("green", "ring", 16, 16, 18, aspect=2)) == [("green", (), "other")]  # a stretched ring
    # a ring in two colours is one mixed ring
    ((color, leaked, shape),) = _read(S("red", "ring", 16, 16, 14, second_color="blue"))
    assert shape == "ring" and {color, *leaked} == {"red", "blue"} and len(leaked) == 1
    m = match(check(R.render(R.Scene([S("red", "ring", 9, 9, 12), S("blue", "star", 23, 22, 12)], 40))),
              [("red", "ring"), ("blue", "star")])  # fmt: skip
    assert m["exact_binding"] and m["clean_binding"]
    m = match(check(R.render(R.Scene([S("red", "circle", 9, 9, 12)], 40))), [("red", "ring")])
    assert not m["exact_binding"] and m["color_present"] == 1
