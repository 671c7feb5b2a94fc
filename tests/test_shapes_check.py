"""The ShapesWorld checker against rendered ground truth."""

import importlib

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


@pytest.mark.parametrize("shape", R.SHAPES)
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
