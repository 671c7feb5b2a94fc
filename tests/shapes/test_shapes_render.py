"""Tests of the ShapesWorld renderer: determinism, layout, captions, the training mix and exact colours."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from ait2i.shapes import render as R


def _scenes(n: int, num_objects: int, base: int = 0) -> list[R.Scene]:
    return [R.sample_scene(np.random.default_rng(base + i), num_objects) for i in range(n)]


def test_same_seed_same_scene_and_pixels():
    for n in (1, 2, 3):
        a, b = R.sample_scene(7, n), R.sample_scene(np.random.default_rng(7), n)
        assert a == b
        assert np.array_equal(R.to_array(R.render(a)), R.to_array(R.render(b)))
        assert R.caption(a, 3) == R.caption(b, 3)
    assert R.sample_scene(1, 2) != R.sample_scene(2, 2)
    assert R.sample_training_scene(5) == R.sample_training_scene(5)


def test_render_is_32x32_rgb():
    img = R.render(R.sample_scene(0, 2))
    assert img.size == (32, 32) and img.mode == "RGB"


@pytest.mark.parametrize("num_objects", [1, 2, 3])
def test_layout_inside_image_and_gap(num_objects):
    lo, hi = R.SIZE_RANGE[num_objects]
    for scene in _scenes(150, num_objects):
        assert len(scene.objects) == num_objects
        assert R.BACKGROUND_RANGE[0] <= scene.background <= R.BACKGROUND_RANGE[1]
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            assert min(x0, y0) >= R.MARGIN - 1e-9 and max(x1, y1) <= 32 - R.MARGIN + 1e-9
            assert lo <= o.size <= hi
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                ax0, ay0, ax1, ay1 = a.bbox
                bx0, by0, bx1, by1 = b.bbox
                gap_x = max(bx0 - ax1, ax0 - bx1)
                gap_y = max(by0 - ay1, ay0 - by1)
                assert max(gap_x, gap_y) >= R.MIN_GAP - 1e-9
        assert len({o.color for o in scene.objects}) == num_objects  # distinct colours


def _phrases(caption: str) -> list[str]:
    m = re.fullmatch(r"a (\w+ \w+)(?:, a (\w+ \w+))* ?(?:and a (\w+ \w+))?", caption)
    assert m is not None, caption
    return re.findall(r"a (\w+ \w+)", caption)


def test_captions_name_exactly_the_objects():
    orders = set()
    for n in (1, 2, 3):
        for i, scene in enumerate(_scenes(100, n)):
            cap = R.caption(scene, i)
            assert sorted(_phrases(cap)) == sorted(o.phrase for o in scene.objects)
            if n == 1:
                assert cap == f"a {scene.objects[0].phrase}"
            elif n == 2:
                assert cap.count(" and ") == 1 and "," not in cap
            else:
                assert cap.count(", ") == 1 and cap.count(" and ") == 1
            if n == 2:
                orders.add(_phrases(cap)[0] == scene.objects[0].phrase)
    assert orders == {True, False}  # the order varies
    assert R.caption_of(["red circle", "blue square", "green triangle"]) == (
        "a red circle, a blue square and a green triangle"
    )


def test_training_sampler_excludes_held_out_and_follows_the_mix():
    counts = {1: 0, 2: 0, 3: 0}
    pairs, same_shape = set(), 0
    n = 2000
    rng = np.random.default_rng(0)
    for _ in range(n):
        scene = R.sample_training_scene(rng)
        counts[len(scene.objects)] += 1
        pairs |= {(o.color, o.shape) for o in scene.objects}
        if len(scene.objects) == 2 and scene.objects[0].shape == scene.objects[1].shape:
            same_shape += 1
    assert not pairs & R.HELD_OUT
    all_pairs = {(c, s) for c in R.COLORS for s in R.SHAPES}
    assert pairs == all_pairs - R.HELD_OUT  # every other pair is trained
    for k, p in zip((1, 2, 3), R.TRAINING_MIX):
        assert abs(counts[k] / n - p) < 0.035, (k, counts)
    assert same_shape / counts[2] > 0.2  # same-shape pairs: binding by colour alone


def test_held_out_pairs_can_still_be_rendered():
    c, s = sorted(R.HELD_OUT)[0]
    scene = R.sample_scene(0, 1, colors=[c], shapes=[s])
    assert (scene.objects[0].color, scene.objects[0].shape) == (c, s)


@pytest.mark.parametrize("num_objects", [1, 2, 3])
def test_exact_colour_at_centres_and_background(num_objects):
    for scene in _scenes(40, num_objects, base=1000):
        px = R.to_array(R.render(scene))
        for o in scene.objects:
            assert tuple(px[int(o.cy), int(o.cx)]) == R.COLORS[o.color], o
        # a pixel whose square is 1 px away from every bounding box is pure background
        for y in range(32):
            for x in range(32):
                if all(
                    x + 1 < o.bbox[0] - 1 or x > o.bbox[2] + 1 or y + 1 < o.bbox[1] - 1 or y > o.bbox[3] + 1
                    for o in scene.objects
                ):
                    assert tuple(px[y, x]) == (scene.background,) * 3
                    break


def test_shapes_differ_in_area():
    sq = R.render(R.Scene([R.ShapeSpec("red", "square", 16, 16, 12)], 30))
    ci = R.render(R.Scene([R.ShapeSpec("red", "circle", 16, 16, 12)], 30))
    tr = R.render(R.Scene([R.ShapeSpec("red", "triangle", 16, 16, 12)], 30))

    def area(img):
        return int((R.to_array(img)[..., 0] > 130).sum())

    assert area(sq) > area(ci) > area(tr)
    assert abs(area(sq) - 144) <= 2 and abs(area(tr) - 72) <= 8


def test_bad_input_raises():
    with pytest.raises(ValueError, match="num_objects"):
        R.sample_scene(0, 4)
    with pytest.raises(ValueError, match="unknown colour"):
        R.sample_scene(0, 1, colors=["pink"])
    with pytest.raises(ValueError, match="unknown shape"):
        R.sample_scene(0, 1, shapes=["hexagon"])
    with pytest.raises(ValueError, match="one entry per object"):
        R.sample_scene(0, 2, colors=["red"])
    with pytest.raises(TypeError, match="rng"):
        R.sample_scene("0", 1)
    with pytest.raises(ValueError, match="background"):
        R.render(R.Scene([], 300))
    with pytest.raises(ValueError, match="at least one"):
        R.caption_of([])


def test_package_keeps_the_render_submodule():
    import inspect

    import ait2i.shapes

    assert inspect.ismodule(ait2i.shapes.render)
    assert ait2i.shapes.sample_scene is R.sample_scene


# -- the optional drawing fields and the star leave every existing scene as it was --------------------------------


def test_default_scenes_render_bit_identically():
    """Digests taken before ShapeSpec had angle, aspect, second_color and split, and before the star existed."""
    h = hashlib.sha256()
    for i in range(300):
        rng = np.random.default_rng([4242, i])
        h.update(R.to_array(R.render(R.sample_scene(rng, int(rng.integers(1, 4))))).tobytes())
    assert h.hexdigest() == "b9800a7abdcd7fed8f4f40a06fb2c599c4758ba990b344e44bff422c8b28228f"


def test_training_mix_is_unchanged():
    h = hashlib.sha256()
    rng = np.random.default_rng(0)
    for _ in range(300):
        sc = R.sample_training_scene(rng)
        h.update(repr([(o.color, o.shape, o.cx, o.cy, o.size) for o in sc.objects] + [sc.background]).encode())
        h.update(R.to_array(R.render(sc)).tobytes())
    assert h.hexdigest() == "836809e9386a6c47a803a79dbb9f6bf8637ca3333c9c550644cd09f593f84f3d"
    first = R.sample_training_scene(2).objects[0]
    assert (first.color, first.shape, first.cx, first.cy, first.size) == (
        "red",
        "circle",
        17.94680551439897,
        20.44516039929509,
        10.551495652810582,
    )
    assert "star" not in R.SHAPES and "ring" not in R.SHAPES and R.ALL_SHAPES == R.SHAPES + ("star", "ring")


def test_explicit_defaults_draw_the_same_pixels():
    for shape in R.SHAPES:
        plain = R.ShapeSpec("blue", shape, 15.3, 16.7, 11.4)
        spelled = R.ShapeSpec("blue", shape, 15.3, 16.7, 11.4, angle=0.0, aspect=1.0, second_color=None, split=0.5)
        assert np.array_equal(R.to_array(R.render(R.Scene([plain], 33))), R.to_array(R.render(R.Scene([spelled], 33))))


def _covered(img, bg):
    return (np.abs(R.to_array(img).astype(int) - bg).sum(axis=-1) > 0).sum()


def test_rotation_aspect_and_bbox():
    sq = R.ShapeSpec("red", "square", 16, 16, 12, angle=15)
    x0, y0, x1, y1 = sq.bbox
    side = 12 * (np.cos(np.deg2rad(15)) + np.sin(np.deg2rad(15)))
    assert (x1 - x0, y1 - y0) == (pytest.approx(side), pytest.approx(side))
    # a rotated square keeps its area (the exact colour fills about 144 pixels' worth)
    img = R.to_array(R.render(R.Scene([sq], 30))).astype(float)
    coverage = (img[..., 0] - 30) / (R.COLORS["red"][0] - 30)
    assert coverage.sum() == pytest.approx(144, abs=3)
    rect = R.ShapeSpec("red", "square", 16, 16, 16, aspect=2)
    assert rect.bbox == pytest.approx((8, 12, 24, 20))
    tall = R.ShapeSpec("red", "circle", 16, 16, 16, aspect=0.5)
    assert tall.bbox == pytest.approx((12, 8, 20, 24), abs=1e-3)
    with pytest.raises(ValueError, match="aspect"):
        R.render(R.Scene([R.ShapeSpec("red", "square", 16, 16, 8, aspect=0)], 30))


def test_two_colour_shape():
    spec = R.ShapeSpec("blue", "square", 16, 16, 12, second_color="purple")  # box 10..22, split at x = 16
    px = R.to_array(R.render(R.Scene([spec], 30)))
    assert tuple(px[16, 12]) == R.COLORS["blue"] and tuple(px[16, 19]) == R.COLORS["purple"]
    assert {tuple(px[y, x]) for y in range(10, 22) for x in range(10, 22)} == {R.COLORS["blue"], R.COLORS["purple"]}
    with pytest.raises(ValueError, match="unknown colour"):
        R.render(R.Scene([R.ShapeSpec("blue", "square", 16, 16, 12, second_color="pink")], 30))


def test_star():
    star = R.ShapeSpec("yellow", "star", 16, 16, 14)
    x0, y0, x1, y1 = star.bbox
    assert (x1 - x0, y1 - y0) == (pytest.approx(14), pytest.approx(14))  # the star fills its box
    px = R.to_array(R.render(R.Scene([star], 30)))
    assert tuple(px[16, 16]) == R.COLORS["yellow"]
    assert tuple(px[int(y0) + 1, 16]) != (30, 30, 30)  # the top point
    assert tuple(px[int(y0) + 1, int(x0) + 1]) == (30, 30, 30)  # the box's corner is empty
    square = R.render(R.Scene([R.ShapeSpec("yellow", "square", 16, 16, 14)], 30))
    assert _covered(R.render(R.Scene([star], 30)), 30) < 0.6 * _covered(square, 30)
    scene = R.sample_scene(3, 2, shapes=["star", "circle"])  # scenes with stars can be sampled on request
    assert [o.shape for o in scene.objects] == ["star", "circle"]


def test_ring():
    ring = R.ShapeSpec("green", "ring", 16, 16, 14)
    assert ring.bbox == pytest.approx((9, 9, 23, 23), abs=1e-3)  # the ring fills its box, as a circle does
    px = R.to_array(R.render(R.Scene([ring], 30)))
    assert tuple(px[16, 16]) == (30, 30, 30)  # the hole shows the background
    assert tuple(px[16, 10]) == R.COLORS["green"] and tuple(px[10, 16]) == R.COLORS["green"]  # the band
    assert tuple(px[9, 9]) == (30, 30, 30)  # outside the outer circle
    # the hole is RING_INNER of the diameter: the ring covers 1 - RING_INNER**2 of the disc (green's G channel)
    area = (px[..., 1].astype(float) - 30).sum() / (R.COLORS["green"][1] - 30)
    assert area == pytest.approx(np.pi * 7**2 * (1 - R.RING_INNER**2), rel=0.03)
    assert R.ShapeSpec("green", "circle", 16, 16, 14).hole() is None
    np.testing.assert_allclose(np.linalg.norm(ring.hole() - 16, axis=1), 7 * R.RING_INNER)
    # a two-colour ring keeps its hole; a sampled scene can hold rings on request
    two = R.to_array(R.render(R.Scene([R.ShapeSpec("red", "ring", 16, 16, 14, second_color="blue")], 30)))
    assert tuple(two[16, 16]) == (30, 30, 30)
    assert tuple(two[16, 10]) == R.COLORS["red"] and tuple(two[16, 21]) == R.COLORS["blue"]
    scene = R.sample_scene(4, 2, shapes=["ring", "star"])
    assert [o.shape for o in scene.objects] == ["ring", "star"]
