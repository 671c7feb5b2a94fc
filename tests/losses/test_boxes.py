"""Tests of the layout (box) losses on synthetic maps: boxes and their spellings, box masks, hand-computed values,
monotone growth as mass leaves a box, gradients that move mass into the box, isolation between boxes, NaN rows and
batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from ait2i.boxes import Box, box_iou, box_mask, boxes_overlap, overlapping_pairs, parse_box, split_box_spec
from ait2i.losses import (
    box_aggregation_loss,
    box_isolation_loss,
    boxdiff_corner_loss,
    boxdiff_inner_loss,
    boxdiff_outer_loss,
    layout_guidance_loss,
)

TERMS = ("layout_guidance", "boxdiff_inner", "boxdiff_outer", "boxdiff_corner", "box_aggregation", "box_isolation")
CENTRE = Box(0.25, 0.25, 0.75, 0.75)  # cells 4..11 on a 16x16 grid, both axes


def all_terms(maps, boxes) -> dict[str, torch.Tensor]:
    """Every term with its default settings, the AI-T2I ones in both forms: ``{name: (B,)}``."""
    return {
        "layout_guidance": layout_guidance_loss(maps, boxes),
        "boxdiff_inner": boxdiff_inner_loss(maps, boxes),
        "boxdiff_outer": boxdiff_outer_loss(maps, boxes),
        "boxdiff_corner": boxdiff_corner_loss(maps, boxes),
        "box_aggregation": box_aggregation_loss(maps, boxes, "euclidean"),
        "box_isolation": box_isolation_loss(maps, boxes, "euclidean"),
        "box_aggregation_cosine": box_aggregation_loss(maps, boxes, "cosine"),
        "box_isolation_cosine": box_isolation_loss(maps, boxes, "cosine"),
    }


def blob(cx: float, cy: float, s: float = 1.0, h: int = 16, w: int = 16) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s**2))


def shift_x(m: torch.Tensor, dx: int) -> torch.Tensor:
    """``m`` moved ``dx`` cells to the right, zero-filled (no wrap-around)."""
    out = torch.zeros_like(m)
    out[..., dx:] = m[..., : m.shape[-1] - dx]
    return out


def stack(*maps: torch.Tensor) -> torch.Tensor:
    return torch.stack(maps)[None]  # (1, G, H, W)


def inside_fraction(m: torch.Tensor, box: Box) -> float:
    return float((m * box_mask(box, *m.shape[-2:])).sum() / m.sum())


# ------------------------------------------------------------------------------------------------------------------
# Boxes, spellings, overlap
# ------------------------------------------------------------------------------------------------------------------
def test_box_fields_and_properties():
    b = Box(0.1, 0.2, 0.5, 0.6)
    assert b.as_tuple() == (0.1, 0.2, 0.5, 0.6) and isinstance(Box(0, 0, 1, 1).x1, float)
    assert b.width == pytest.approx(0.4) and b.height == pytest.approx(0.4) and b.area == pytest.approx(0.16)
    assert b.centre == pytest.approx((0.3, 0.4))
    assert b.centre_cells(10, 20) == pytest.approx((0.3 * 20 - 0.5, 0.4 * 10 - 0.5))
    with pytest.raises(AttributeError):
        b.x0 = 0.0  # frozen
    assert parse_box(str(b)) == b


@pytest.mark.parametrize(
    "values, match",
    [
        ((-0.1, 0.0, 0.5, 0.5), r"x0=-0\.1 is outside \[0, 1\].*divide pixel coordinates"),
        ((0.0, 0.0, 0.5, 1.2), r"y1=1\.2 is outside \[0, 1\]"),
        ((0.0, 0.0, 512, 512), "outside"),
        ((0.5, 0.0, 0.4, 0.5), r"x1=0\.4 must be greater than x0=0\.5.*left, top, right, bottom"),
        ((0.5, 0.0, 0.5, 0.5), "x1=0.5 must be greater than x0=0.5"),
        ((0.0, 0.5, 0.5, 0.2), r"y1=0\.2 must be greater than y0=0\.5.*y growing downwards"),
        ((0.0, float("nan"), 0.5, 0.5), "y0=nan is not finite"),
        ((0.0, 0.0, float("inf"), 0.5), "x1=inf is not finite"),
        ((0.0, 0.0, "0.5", 0.5), "x1='0.5' is not a number"),
        ((0.0, True, 0.5, 0.5), "y0=True is not a number"),
    ],
)
def test_box_validation(values, match):
    with pytest.raises(ValueError, match=match):
        Box(*values)


def test_box_wrong_length():
    with pytest.raises(ValueError, match="four numbers x0,y0,x1,y1, got 3"):
        Box.from_sequence((0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="four numbers"):
        parse_box([0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(ValueError, match="four numbers"):
        Box.from_sequence(0.5)


def test_parse_box_spellings():
    want = Box(0.05, 0.1, 0.45, 0.5)
    assert parse_box("0.05,0.1,0.45,0.5") == want
    assert parse_box(" 0.05, 0.1 ,0.45,  0.5 ") == want
    assert parse_box("[0.05,0.1,0.45,0.5]") == want and parse_box("(0.05,0.1,0.45,0.5)") == want
    assert parse_box((0.05, 0.1, 0.45, 0.5)) == want and parse_box([0.05, 0.1, 0.45, 0.5]) == want
    assert parse_box(want) is want
    assert parse_box("0,0,1,1") == Box(0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="expected four comma-separated numbers x0,y0,x1,y1, got 3"):
        parse_box("0.1,0.2,0.3")
    with pytest.raises(ValueError, match="'a' is not a number"):
        parse_box("a,0.2,0.3,0.4")
    with pytest.raises(ValueError, match="outside"):
        parse_box("10,20,300,400")
    with pytest.raises(ValueError, match="must be greater"):
        parse_box("0.45,0.5,0.05,0.1")


def test_split_box_spec():
    assert split_box_spec("red circle@0.05,0.1,0.45,0.5") == ("red circle", Box(0.05, 0.1, 0.45, 0.5))
    assert split_box_spec("  cat  @ 0, 0, 1, 1") == ("cat", Box(0, 0, 1, 1))
    assert split_box_spec("red circle") == ("red circle", None)
    assert split_box_spec("cat#2@0.5,0.5,1,1") == ("cat#2", Box(0.5, 0.5, 1, 1))  # occurrence numbers pass through
    with pytest.raises(ValueError, match="no phrase"):
        split_box_spec("@0,0,1,1")
    with pytest.raises(ValueError, match="no box after it"):
        split_box_spec("cat@ ")
    with pytest.raises(ValueError, match="more than one '@'"):
        split_box_spec("cat@0,0,1,1@0,0,1,1")
    with pytest.raises(ValueError, match="must be greater"):
        split_box_spec("cat@0.5,0,0.2,1")


def test_iou_and_overlap():
    a, b = Box(0, 0, 0.5, 0.5), Box(0.25, 0, 0.75, 0.5)
    assert box_iou(a, b) == pytest.approx(0.125 / 0.375)
    assert box_iou(a, a) == pytest.approx(1.0) and boxes_overlap(a, a)
    assert boxes_overlap(a, b) and boxes_overlap(b, a)
    touching = Box(0.5, 0, 1, 0.5)
    assert not boxes_overlap(a, touching) and box_iou(a, touching) == 0.0
    far = Box(0.6, 0.6, 0.9, 0.9)
    assert not boxes_overlap(a, far) and box_iou(a, far) == 0.0
    assert box_iou("0,0,0.5,0.5", (0, 0, 0.25, 0.5)) == pytest.approx(0.5)
    pairs = overlapping_pairs([a, touching, b, None, far])
    assert [(i, j) for i, j, _ in pairs] == [(0, 2), (1, 2)]
    assert pairs[0][2] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------------------------
# Masks and the top-left origin
# ------------------------------------------------------------------------------------------------------------------
def test_box_mask_cells_and_fractions():
    m = box_mask(Box(0, 0, 0.5, 0.25), 4, 4)
    want = torch.zeros(4, 4)
    want[0, :2] = 1.0  # top row (y = 0), left two columns
    assert torch.equal(m, want) and m.dtype == torch.float32
    m = box_mask("0.1,0.5,0.3,1", 4, 10)  # x covers [1, 3] columns exactly; y covers rows 2, 3
    want = torch.zeros(4, 10)
    want[2:, 1:3] = 1.0
    torch.testing.assert_close(m, want)
    m = box_mask(Box(0.125, 0, 0.5, 0.375), 4, 4)  # x: [0.5, 2] cells, y: [0, 1.5] cells
    cx = torch.tensor([0.5, 1.0, 0.0, 0.0])
    cy = torch.tensor([1.0, 0.5, 0.0, 0.0])
    torch.testing.assert_close(m, cy[:, None] * cx[None, :])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x0, y0 = torch.rand(2, generator=g).tolist()
        box = Box(x0 * 0.9, y0 * 0.9, x0 * 0.9 + 0.05 + 0.05 * x0, y0 * 0.9 + 0.1)
        assert box_mask(box, 13, 7).sum().item() == pytest.approx(box.area * 13 * 7, rel=1e-5)
    with pytest.raises(ValueError, match="positive int"):
        box_mask(Box(0, 0, 1, 1), 0, 4)


def test_top_left_origin():
    top_left = blob(2, 2)[None, None]  # (x, y) = (2, 2): near the top-left corner
    tl, bl = Box(0, 0, 0.5, 0.5), Box(0, 0.5, 0.5, 1)
    assert inside_fraction(top_left[0, 0], tl) > 0.99 and inside_fraction(top_left[0, 0], bl) < 0.01
    good, bad = all_terms(top_left, [tl]), all_terms(top_left, [bl])
    for name in good:
        assert good[name].item() < bad[name].item(), name
    assert layout_guidance_loss(top_left, [tl]).item() < 1e-4 and layout_guidance_loss(top_left, [bl]).item() > 0.98


# ------------------------------------------------------------------------------------------------------------------
# Hand-computed values
# ------------------------------------------------------------------------------------------------------------------
def test_layout_guidance_values():
    half = torch.zeros(16, 16)
    half[8, 8] = 1.0  # inside CENTRE
    half[0, 0] = 1.0  # outside
    assert layout_guidance_loss(stack(half), [CENTRE]).item() == pytest.approx(0.25)
    quarter = torch.zeros(16, 16)
    quarter[8, 8], quarter[0, 15] = 1.0, 3.0
    inside = box_mask(CENTRE, 16, 16)
    # mean over subjects: (0^2 + 0.75^2) / 2
    got = layout_guidance_loss(stack(inside, quarter), [CENTRE, CENTRE])
    assert got.item() == pytest.approx(0.75**2 / 2)


def test_boxdiff_inner_outer_values():
    m = torch.zeros(4, 4)
    m[0, 0], m[0, 1], m[1, 0] = 1.0, 0.5, 0.25  # inside box (0, 0, 0.5, 0.5): 4 cells
    m[3, 3], m[2, 2] = 2.0, 1.0  # outside: 12 cells
    box = [Box(0, 0, 0.5, 0.5)]
    # "max": map / 2 -> inside top-2 (k = int(0.5 * 4)) mean (0.5 + 0.25) / 2; outside top-6 mean (1 + 0.5) / 6
    assert boxdiff_inner_loss(stack(m), box, top_k=0.5).item() == pytest.approx(1 - 0.375)
    assert boxdiff_outer_loss(stack(m), box, top_k=0.5).item() == pytest.approx(0.25)
    # "none": the map as given
    assert boxdiff_inner_loss(stack(m), box, top_k=0.5, normalize="none").item() == pytest.approx(0.25)
    assert boxdiff_outer_loss(stack(m), box, top_k=0.5, normalize="none").item() == pytest.approx(0.5)
    # inner clamps at 0 when the maps exceed 1 (unnormalised); k is at least 1
    assert boxdiff_inner_loss(stack(4 * m), box, top_k=0.5, normalize="none").item() == 0.0
    assert boxdiff_outer_loss(stack(m), box, top_k=0.01).item() == pytest.approx(1.0)  # k = 1: the peak, 2 / 2
    # summed over subjects
    two = boxdiff_inner_loss(stack(m, m), box * 2, top_k=0.5)
    assert two.item() == pytest.approx(2 * (1 - 0.375))


def test_boxdiff_corner_values():
    box = [Box(0.25, 0.25, 0.75, 0.75)]  # cells 2..5 on 8x8; bands (L = 1): cells 1, 2, 5, 6 on each axis
    m = torch.zeros(8, 8)
    m[2:6, 2:5] = 1.0  # one column short on the right: column 5 should reach 1
    assert boxdiff_corner_loss(stack(m), box).item() == pytest.approx(1 / 8)
    m = torch.zeros(8, 8)
    m[2:6, 2:7] = 1.0  # one column too far: column 6 should be 0
    assert boxdiff_corner_loss(stack(m), box).item() == pytest.approx(1 / 8)
    m[2:6, 7] = 1.0  # column 7 is outside the band: no extra cost (the outer term sees it)
    assert boxdiff_corner_loss(stack(m), box).item() == pytest.approx(1 / 8)
    m = torch.zeros(8, 8)
    m[2:6, 2:6] = 0.5  # the exact box at half strength: "max" rescales it, "none" pays 0.5 at 4 band cells per axis
    assert boxdiff_corner_loss(stack(m), box).item() == pytest.approx(0.0)
    assert boxdiff_corner_loss(stack(m), box, normalize="none").item() == pytest.approx(2 * 2 * 0.5 / 8)
    wide = boxdiff_corner_loss(stack(torch.zeros(8, 8).index_fill_(1, torch.tensor([0]), 1.0)), box, corner_width=2)
    # a single column at x = 0, all rows: bands (L = 2) are cells 0..3 and 4..7 on each axis
    # x: |1 - 0| at 0, |0 - 1| at 2..5 -> 5 / 8; y: projection 1 everywhere vs the box's 1-D mask -> 4 / 8
    assert wide.item() == pytest.approx(5 / 8 + 4 / 8)


def test_box_aggregation_values():
    corner = torch.zeros(16, 16)
    corner[0, 0] = 1.0
    box = [Box(0.5, 0.5, 1, 1)]  # centre in cells: (11.5, 11.5)
    want = 1.0 + 11.5 * math.sqrt(2) / math.sqrt(15**2 + 15**2)
    assert box_aggregation_loss(stack(corner), box).item() == pytest.approx(want)
    assert box_aggregation_loss(stack(corner), box, metric="cosine").item() == pytest.approx(1.0)
    m = torch.zeros(16, 16)
    m[12, 12], m[0, 0] = 3.0, 4.0  # energy inside 9 of 25: cos = 3 / 5
    assert box_aggregation_loss(stack(m), box, metric="cosine").item() == pytest.approx(1 - 0.6)
    c = ((12 * 3) / 7, (12 * 3) / 7)
    want = 4 / 7 + math.dist(c, (11.5, 11.5)) / math.sqrt(450)
    assert box_aggregation_loss(stack(m), box).item() == pytest.approx(want, rel=1e-5)
    # summed over subjects
    assert box_aggregation_loss(stack(corner, m), box * 2, metric="cosine").item() == pytest.approx(1.4)


def test_box_isolation_values():
    left, right = Box(0, 0, 0.5, 1), Box(0.5, 0, 1, 1)
    a = torch.zeros(16, 16)
    a[8, 2], a[8, 12] = 3.0, 1.0  # 3/4 of its mass in its own (left) box, 1/4 in the right subject's box
    b = box_mask(right, 16, 16)
    # Euclidean: subject a: foreign 1/4 + outside 1/4; subject b: 0; mean over the two subjects
    assert box_isolation_loss(stack(a, b), [left, right]).item() == pytest.approx(0.25)
    a[8, 2], a[8, 12] = 3.0, 4.0  # cosine: cos(a, a * F) = cos(a, a * O) = 4 / 5
    assert box_isolation_loss(stack(a, b), [left, right], metric="cosine").item() == pytest.approx(0.8)
    # one subject: only the outside part remains
    assert box_isolation_loss(stack(a), [left]).item() == pytest.approx(4 / 7)


def test_overlapping_boxes_share_their_common_area():
    a_box, b_box = Box(0, 0.25, 0.625, 0.75), Box(0.375, 0.25, 1, 0.75)  # overlap: columns 6..9
    a, b = box_mask(a_box, 16, 16), box_mask(b_box, 16, 16)  # each fills its box, overlap included
    for metric in ("euclidean", "cosine"):
        assert box_isolation_loss(stack(a, b), [a_box, b_box], metric=metric).item() == pytest.approx(0.0, abs=1e-7)
    # mass in the other box but outside the overlap counts
    a2 = a.clone()
    a2[8, 13] = 1.0
    assert box_isolation_loss(stack(a2, b), [a_box, b_box]).item() > 0.0


# ------------------------------------------------------------------------------------------------------------------
# Zero inside, growth as mass leaves the box
# ------------------------------------------------------------------------------------------------------------------
def test_every_term_is_zero_for_a_map_filling_its_box():
    boxes = [CENTRE, Box(0, 0, 0.1875, 0.3125), Box(0.8125, 0.125, 1, 1)]  # edges on cell boundaries
    maps = torch.stack([box_mask(b, 16, 16) for b in boxes])[None]  # (1, 3, 16, 16)
    maps = torch.cat([maps, 0.3 * maps])  # scale does not matter
    for name, value in all_terms(maps, boxes).items():
        torch.testing.assert_close(value, torch.zeros(2), atol=1e-6, rtol=0, msg=name)
    # fractional box edges: a cell cut by an edge holds that share of its mass outside, so the map of the cells
    # entirely inside has no mass outside, while the mask itself keeps a little outside
    box = [Box(0.23, 0.31, 0.61, 0.77)]
    mask = box_mask(box[0], 16, 16)
    full = (mask == 1).float()[None, None]
    for name in ("layout_guidance", "boxdiff_outer", "box_aggregation_cosine", "box_isolation", "box_isolation_cosine"):
        assert all_terms(full, box)[name].item() == pytest.approx(0.0, abs=1e-6), name
    assert 0 < layout_guidance_loss(mask[None, None], box).item() < 0.05
    assert boxdiff_corner_loss(mask[None, None], box).item() == pytest.approx(0.0, abs=1e-6)


def test_mass_terms_are_zero_for_a_blob_inside_its_box():
    m = blob(7.5, 7.5, 1.0) * box_mask(CENTRE, 16, 16)  # a blob centred on the box, truncated to it
    terms = all_terms(m[None, None], [CENTRE])
    for name in ("layout_guidance", "boxdiff_outer", "box_aggregation", "box_aggregation_cosine", "box_isolation"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-6), name
    assert terms["box_isolation_cosine"].item() == pytest.approx(0.0, abs=1e-6)


def _assert_grows(values: list[float], name: str, margin: float = 0.02):
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(s >= -1e-6 for s in steps), (name, values)
    assert values[-1] > values[0] + margin, (name, values)


LEFT_BOX = Box(0.125, 0.25, 0.375, 0.75)  # columns 2..5, rows 4..11: room on the right to move out, on the grid


def test_every_term_grows_as_the_box_shaped_map_leaves_its_box():
    plateau = box_mask(LEFT_BOX, 16, 16)
    series: dict[str, list[float]] = {}
    for dx in range(0, 11):  # at dx = 4 it has left the box entirely; at dx = 10 it reaches the grid's edge
        for name, value in all_terms(shift_x(plateau, dx)[None, None], [LEFT_BOX]).items():
            series.setdefault(name, []).append(value.item())
    for name, values in series.items():
        assert values[0] == pytest.approx(0.0, abs=1e-6), name
        if name == "boxdiff_corner":
            # edges, not mass: it grows while the map crosses the edge band, then stays positive; once the map is
            # past the band the corner term no longer sees it (the outer-box term does)
            _assert_grows(values[:5], name)
            assert min(values[1:]) > 0.1, values
            continue
        _assert_grows(values, name)
    # the mass terms grow strictly while the map leaves the box
    for name in ("layout_guidance", "box_aggregation", "box_aggregation_cosine", "box_isolation", "boxdiff_outer"):
        assert all(b > a for a, b in zip(series[name][:5], series[name][1:5])), (name, series[name])
    assert all(b > a for a, b in zip(series["box_aggregation"], series["box_aggregation"][1:]))  # centroid term


def test_terms_grow_as_a_blob_moves_out_of_its_box():
    series: dict[str, list[float]] = {}
    for step in range(0, 9):
        m = blob(3.5 + step, 7.5, 1.0)  # from the box centre to 5 cells right of the box, tails on the grid
        for name, value in all_terms(m[None, None], [LEFT_BOX]).items():
            series.setdefault(name, []).append(value.item())
    for name, values in series.items():
        if name == "boxdiff_corner":  # about edges, not mass: it falls while the blob nears an edge (see above)
            continue
        assert values[0] < 0.4, (name, values)  # a peaked blob keeps the inner term above 0 even when centred
        _assert_grows(values, name, margin=0.15)  # boxdiff_outer saturates near 0.18 once out
    assert all(b > a for a, b in zip(series["box_aggregation"], series["box_aggregation"][1:]))


# ------------------------------------------------------------------------------------------------------------------
# Gradients move mass into the box
# ------------------------------------------------------------------------------------------------------------------
def _gradient_step(name: str, m: torch.Tensor, boxes, lr: float = 0.05) -> torch.Tensor:
    """One descent step on the map itself (kept non-negative), step scaled to ``lr`` of the peak."""
    x = m.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(all_terms(x, boxes)[name].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    return (m - lr * m.max() * grad / grad.abs().max()).clamp_min(0.0)


@pytest.mark.parametrize(
    "name",
    [
        "layout_guidance",
        "boxdiff_inner",
        "boxdiff_outer",
        "boxdiff_corner",
        "box_aggregation",
        "box_aggregation_cosine",
        "box_isolation",
        "box_isolation_cosine",
    ],
)
def test_gradient_step_moves_mass_into_the_box(name):
    # a blob centred inside the box that spills over its right edge, on a small floor everywhere
    m = (blob(10.0, 7.5, 1.5) + 0.01)[None, None]
    before = inside_fraction(m[0, 0], CENTRE)
    after = _gradient_step(name, m, [CENTRE])
    assert inside_fraction(after[0, 0], CENTRE) > before + 1e-4, name
    assert all_terms(after, [CENTRE])[name].item() < all_terms(m, [CENTRE])[name].item(), name


@pytest.mark.parametrize(
    "name", ["layout_guidance", "boxdiff_outer", "box_aggregation", "box_aggregation_cosine", "box_isolation"]
)
def test_gradient_through_a_softmax_gathers_a_far_blob(name):
    # maps as the model makes them (a spatial softmax of logits); the blob sits mostly outside the box
    logits = (3 * blob(12.5, 3.0, 2.0) + 2 * blob(7.5, 7.5, 2.0))[None, None].requires_grad_(True)
    maps = torch.softmax(logits.flatten(-2), -1).view_as(logits)
    (grad,) = torch.autograd.grad(all_terms(maps, [CENTRE])[name].sum(), logits)
    with torch.no_grad():
        after = torch.softmax((logits - 20 * grad).flatten(-2), -1).view_as(logits)
    assert inside_fraction(after[0, 0], CENTRE) > inside_fraction(maps[0, 0].detach(), CENTRE) + 1e-3, name


def test_massless_map_is_finite_with_finite_gradient():
    x = torch.zeros(1, 1, 16, 16, requires_grad=True)
    terms = all_terms(x, [CENTRE])
    assert terms["layout_guidance"].item() == 1.0 and terms["box_aggregation"].item() == 1.0
    assert all(torch.isfinite(v).all() for v in terms.values())
    (grad,) = torch.autograd.grad(sum(v.sum() for v in terms.values()), x)
    assert torch.isfinite(grad).all()


# ------------------------------------------------------------------------------------------------------------------
# Isolation between subjects
# ------------------------------------------------------------------------------------------------------------------
LEFT, RIGHT = Box(0, 0.25, 0.375, 0.75), Box(0.625, 0.25, 1, 0.75)  # columns 0..5 and 10..15, rows 4..11


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_isolation_grows_as_a_subject_enters_another_box(metric):
    b = box_mask(RIGHT, 16, 16)
    values = []
    for x in (2.5, 4.5, 6.5, 8.5, 10.5, 12.5):  # subject a walks from its box into the right subject's box
        values.append(box_isolation_loss(stack(blob(x, 7.5, 1.0), b), [LEFT, RIGHT], metric=metric).item())
    assert all(q > p for p, q in zip(values, values[1:])), values


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_mass_in_another_box_costs_more_than_mass_elsewhere(metric):
    base = box_mask(LEFT, 16, 16)
    b = box_mask(RIGHT, 16, 16)
    stray_gap, stray_foreign = base.clone(), base.clone()
    stray_gap[7:9, 7:9] = 1.0  # between the boxes: outside its box, in nobody's box
    stray_foreign[7:9, 12:14] = 1.0  # the same mass inside the right subject's box
    gap = box_isolation_loss(stack(stray_gap, b), [LEFT, RIGHT], metric=metric).item()
    foreign = box_isolation_loss(stack(stray_foreign, b), [LEFT, RIGHT], metric=metric).item()
    assert foreign > gap > 0.0
    # aggregation only sees "outside its own box": the two placements cost the same there
    agg = [box_aggregation_loss(stack(m, b), [LEFT, RIGHT], metric="cosine").item() for m in (stray_gap, stray_foreign)]
    assert agg[0] == pytest.approx(agg[1])


def test_isolation_gradient_pushes_out_of_the_other_box():
    b = box_mask(RIGHT, 16, 16)
    a = blob(9.0, 7.5, 1.5) + 0.01  # straddling the gap and the right box
    x = stack(a, b).requires_grad_(True)
    (grad,) = torch.autograd.grad(box_isolation_loss(x, [LEFT, RIGHT]).sum(), x)
    after = (x.detach() - 0.05 * grad / grad.abs().max()).clamp_min(0.0)[0, 0]
    in_foreign = lambda m: float((m * b).sum() / m.sum())
    assert in_foreign(after) < in_foreign(a)


# ------------------------------------------------------------------------------------------------------------------
# NaN rows, batch independence, argument checks
# ------------------------------------------------------------------------------------------------------------------
def _random_maps(b=3, g=2, h=16, w=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.nn.functional.interpolate(torch.randn(b, g, 4, 4, generator=gen) * 3, size=(h, w), mode="bilinear")
    return torch.softmax(logits.flatten(-2), -1).view(b, g, h, w)


BOXES = [Box(0.05, 0.1, 0.45, 0.5), Box(0.4, 0.45, 0.95, 0.9)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_row_gives_nan_for_that_row_only(bad):
    maps = _random_maps()
    clean = all_terms(maps, BOXES)
    maps[1, 0, 3, 4] = bad
    dirty = all_terms(maps, BOXES)
    for name in clean:
        assert torch.isnan(dirty[name][1]), name
        torch.testing.assert_close(dirty[name][[0, 2]], clean[name][[0, 2]], msg=name)


def test_batch_independence():
    maps = _random_maps(b=4, seed=1)
    together = all_terms(maps, BOXES)
    for i in range(4):
        alone = all_terms(maps[i : i + 1], BOXES)
        for name in together:
            torch.testing.assert_close(together[name][i : i + 1], alone[name], msg=name)
    for name, value in together.items():
        assert value.shape == (4,) and value.dtype == torch.float32, name


def test_box_terms_read_every_box_spelling():
    maps = _random_maps(b=2)
    spelled = all_terms(maps, ["0.05,0.1,0.45,0.5", (0.4, 0.45, 0.95, 0.9)])
    boxed = all_terms(maps, [Box(0.05, 0.1, 0.45, 0.5), Box(0.4, 0.45, 0.95, 0.9)])
    assert tuple(spelled)[: len(TERMS)] == TERMS
    for name in boxed:
        torch.testing.assert_close(spelled[name], boxed[name], msg=name)


def test_argument_checks():
    maps = _random_maps(b=1)
    with pytest.raises(ValueError, match="got 1 boxes for 2 subject maps"):
        layout_guidance_loss(maps, BOXES[:1])
    with pytest.raises(ValueError, match=r"subjects \[1\] have no box"):
        box_aggregation_loss(maps, [BOXES[0], None])
    with pytest.raises(ValueError, match="list of 2 boxes"):
        layout_guidance_loss(maps, BOXES[0])
    with pytest.raises(ValueError, match=r"\(B, G, H, W\)"):
        layout_guidance_loss(maps[0], BOXES)
    with pytest.raises(ValueError, match="metric"):
        box_aggregation_loss(maps, BOXES, metric="manhattan")
    with pytest.raises(ValueError, match="metric"):
        box_isolation_loss(maps, BOXES, metric="l1")
    with pytest.raises(ValueError, match="top_k"):
        boxdiff_inner_loss(maps, BOXES, top_k=0.0)
    with pytest.raises(ValueError, match="top_k"):
        boxdiff_outer_loss(maps, BOXES, top_k=1.5)
    with pytest.raises(ValueError, match="corner_width"):
        boxdiff_corner_loss(maps, BOXES, corner_width=0)
    with pytest.raises(ValueError, match="normalize"):
        boxdiff_inner_loss(maps, BOXES, normalize="sum")
