"""Tests of the guidance losses on synthetic maps with known answers, against a loop-based re-computation of the
DESIGN §4 formulas, and against diffusers' Attend-and-Excite pipeline methods."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from ait2i.losses import (
    aggregation_loss,
    ane_view,
    attend_excite_loss,
    attribute_loss,
    centroid,
    gaussian_kernel,
    gaussian_smooth,
    isolation_loss,
    max_attention,
    nms_regions,
    presence_loss,
)
from ait2i.methods import AIT2IConfig, AttendExciteConfig, NoGuidanceConfig, get_method

DIAG1_16 = math.sqrt(15**2 + 15**2)  # aggregation / attribute normaliser at 16x16
DIAG_16 = math.sqrt(16**2 + 16**2)  # isolation normaliser at 16x16


@dataclass
class Subj:
    label: str
    tokens: tuple[int, ...]
    attributes: tuple[int, ...] = ()


def deltas(points: dict[tuple[int, int], float], h: int = 16, w: int = 16) -> torch.Tensor:
    """One map (H, W) with the given masses at (x, y) cells, zero elsewhere."""
    m = torch.zeros(h, w)
    for (x, y), v in points.items():
        m[y, x] = v
    return m


def stack(*maps: torch.Tensor) -> torch.Tensor:
    return torch.stack(maps)[None]  # (1, G, H, W)


def blob(cx: float, cy: float, s: float = 1.0, h: int = 16, w: int = 16) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s**2))


# ------------------------------------------------------------------------------------------------------------------
# Loop-based reference of DESIGN §4 (plain Python floats; shares no code with ait2i.losses)
# ------------------------------------------------------------------------------------------------------------------
def ref_centroid(m):
    h, w = len(m), len(m[0])
    tot = sx = sy = 0.0
    for y in range(h):
        for x in range(w):
            tot += m[y][x]
            sx += m[y][x] * x
            sy += m[y][x] * y
    return (sx / tot, sy / tot)


def ref_regions(m, num, radius):
    """[(centroid, peak)] for the regions that find mass; peaks are first maxima in row-major order."""
    h, w = len(m), len(m[0])
    rem = [row[:] for row in m]
    out = []
    for _ in range(num):
        best, peak = 0.0, None
        for y in range(h):
            for x in range(w):
                if rem[y][x] > best:
                    best, peak = rem[y][x], (x, y)
        if peak is None:
            break
        inside = [[0.0] * w for _ in range(h)]
        for y in range(h):
            for x in range(w):
                if (x - peak[0]) ** 2 + (y - peak[1]) ** 2 < radius**2:
                    inside[y][x] = m[y][x]
                    rem[y][x] = 0.0
        out.append((ref_centroid(inside), peak))
    return out


def ref_spread(m, target, num, radius):
    h, w = len(m), len(m[0])
    regs = ref_regions(m, num, radius)
    tot = sum(math.dist(c, target) for c, _ in regs)
    if len(regs) >= 3:
        tot += math.dist(regs[1][0], regs[2][0])
    return tot / math.sqrt((h - 1) ** 2 + (w - 1) ** 2)


def ref_peak(m):
    return ref_regions(m, 1, 1.0)[0][1]


def ref_cos(a, b):
    fa = [v for row in a for v in row]
    fb = [v for row in b for v in row]
    dot = sum(p * q for p, q in zip(fa, fb))
    return dot / (math.sqrt(sum(p * p for p in fa)) * math.sqrt(sum(q * q for q in fb)))


def ref_outside(m, centre, radius):
    disc = [
        [m[y][x] if (x - centre[0]) ** 2 + (y - centre[1]) ** 2 < radius**2 else 0.0 for x in range(len(m[0]))]
        for y in range(len(m))
    ]
    return 1.0 - ref_cos(m, disc)


def ref_smooth_max(m, k=3, sigma=0.5):
    h, w = len(m), len(m[0])
    g1 = [math.exp(-(((i - (k - 1) / 2) / (2 * sigma)) ** 2)) for i in range(k)]
    s = sum(g1) ** 2
    p = k // 2

    def refl(i, n):
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    best = -1.0
    for y in range(h):
        for x in range(w):
            v = sum(g1[a] * g1[b] / s * m[refl(y + a - p, h)][refl(x + b - p, w)] for a in range(k) for b in range(k))
            best = max(best, v)
    return best


def ref_loss(raw, subjects, cfg, eot):
    """The AI-T2I loss of one sample raw[H][W][L] (nested lists), term by term, from the DESIGN formulas."""
    h, w, length = len(raw), len(raw[0]), len(raw[0][0])
    scale = h / 16
    lo, hi = (1, length - 1) if cfg.softmax_span == "all" else (1, eot)
    ane = [[None] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            e = [math.exp(100 * raw[y][x][t]) for t in range(lo, hi)]
            z = sum(e)
            ane[y][x] = {t: e[t - lo] / z for t in range(lo, hi)}

    def tok_map(t):
        return [[raw[y][x][t] for x in range(w)] for y in range(h)]

    def subj_map(tokens):
        return [[sum(raw[y][x][t] for t in tokens) / len(tokens) for x in range(w)] for y in range(h)]

    smaps = [subj_map(s.tokens) for s in subjects]
    max_att = [
        ref_smooth_max([[sum(ane[y][x][t] for t in s.tokens) / len(s.tokens) for x in range(w)] for y in range(h)])
        for s in subjects
    ]
    pairs = [(i, j) for i in range(len(subjects)) for j in range(i + 1, len(subjects))]
    if not pairs:
        iso = 0.0
    elif cfg.isolation_metric == "euclidean":
        iso = sum(
            1 - math.dist(ref_centroid(smaps[i]), ref_centroid(smaps[j])) / math.sqrt(h * h + w * w) for i, j in pairs
        ) / len(pairs)
    else:
        iso = sum(ref_cos(smaps[i], smaps[j]) for i, j in pairs) / len(pairs)
    r_sub, r_att = cfg.region_radius * scale, cfg.attribute_radius * scale
    if cfg.aggregation_metric == "euclidean":
        agg = sum(ref_spread(m, ref_peak(m), cfg.num_regions, r_sub) for m in smaps)
    else:
        agg = sum(ref_outside(m, ref_peak(m), r_sub) for m in smaps)
    att = 0.0
    for s, m in zip(subjects, smaps):
        for a in s.attributes:
            if cfg.attribute_metric == "euclidean":
                att += ref_spread(tok_map(a), ref_peak(m), cfg.num_regions, r_att)
            else:
                att += ref_outside(tok_map(a), ref_peak(m), r_sub)
    pres = max(0.0, 1 - min(max_att))
    terms = {"isolation": iso, "aggregation": agg, "attribute": att, "presence": pres}
    total = cfg.w_isolation * iso + cfg.w_aggregation * agg + cfg.w_presence * pres + cfg.w_attribute * att
    return total, terms, max_att


def random_raw(b=2, h=16, w=16, length=12, seed=0, sharp=3.0):
    """Attention-like maps: a softmax over tokens of smooth random logits (a few blobs per token)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, length, 4, 4, generator=g) * sharp
    logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    logits = logits + 0.3 * torch.randn(b, length, h, w, generator=g)
    return torch.softmax(logits.permute(0, 2, 3, 1), dim=-1)  # (B, H, W, L)


# ------------------------------------------------------------------------------------------------------------------
# Smoothing, Attend-and-Excite view, parity with diffusers
# ------------------------------------------------------------------------------------------------------------------
def test_gaussian_kernel_values():
    k = gaussian_kernel(3, 0.5)
    e = math.exp(-1.0)  # exp(-((1) / (2 * 0.5))^2)
    one_d = torch.tensor([e, 1.0, e]) / (1 + 2 * e)
    torch.testing.assert_close(k, one_d[:, None] * one_d[None, :], rtol=0, atol=1e-7)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert k[1, 1].item() == pytest.approx(1 / (1 + 2 * e) ** 2, abs=1e-7)  # 0.3319
    k5 = gaussian_kernel(5, 1.0)
    g = torch.exp(-(((torch.arange(5.0) - 2) / 2.0) ** 2))
    torch.testing.assert_close(k5, torch.outer(g, g) / torch.outer(g, g).sum(), rtol=0, atol=1e-7)


def test_gaussian_kernel_equals_diffusers():
    from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite import (
        pipeline_stable_diffusion_attend_and_excite as ane_module,
    )

    GaussianSmoothing = ane_module.GaussianSmoothing

    assert torch.equal(gaussian_kernel(3, 0.5), GaussianSmoothing().weight[0, 0])


def test_gaussian_smooth_reflect_padding_and_shape():
    m = torch.zeros(2, 3, 6, 7)
    m[0, 1, 0, 0] = 1.0  # corner cell: reflect padding mirrors its neighbours, not the cell itself
    m[0, 2, 1, 1] = 1.0  # diagonal neighbour of the corner: mirrored into all four padded corners of (0, 0)
    out = gaussian_smooth(m)
    assert out.shape == m.shape and out.dtype == torch.float32
    k = gaussian_kernel(3, 0.5)
    assert out[0, 1, 0, 0].item() == pytest.approx(k[1, 1].item(), abs=1e-7)
    assert out[0, 2, 0, 0].item() == pytest.approx(4 * k[0, 0].item(), abs=1e-7)
    assert out[1].abs().sum() == 0
    with pytest.raises(ValueError, match="odd"):
        gaussian_smooth(m, kernel_size=2)


def test_ane_view_spans():
    raw = random_raw(b=1, length=10)
    view = ane_view(raw, eot_index=6, span="all")
    assert torch.all(view[..., 0] == 0) and torch.all(view[..., -1] == 0)
    torch.testing.assert_close(view[..., 1:-1].sum(-1), torch.ones(1, 16, 16))
    torch.testing.assert_close(view[..., 1:-1], torch.softmax(raw[..., 1:-1] * 100, -1), rtol=0, atol=0)
    view = ane_view(raw, eot_index=6, span="prompt")
    assert torch.all(view[..., 6:] == 0) and torch.all(view[..., 0] == 0)
    torch.testing.assert_close(view[..., 1:6], torch.softmax(raw[..., 1:6] * 100, -1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="eot_index"):
        ane_view(raw, eot_index=1, span="prompt")
    with pytest.raises(ValueError, match="span"):
        ane_view(raw, eot_index=6, span="words")


def test_max_attention_and_loss_equal_diffusers_attend_and_excite():
    from diffusers import StableDiffusionAttendAndExcitePipeline as Pipe

    raw = random_raw(b=3, length=77, seed=3, sharp=0.05)  # realistic: small logit differences per token
    indices = [2, 5, 7]
    ours = max_attention(ane_view(raw, eot_index=9, span="all"), [[i] for i in indices])  # (B, G)
    for b in range(raw.shape[0]):
        theirs = Pipe._compute_max_attention_per_index(attention_maps=raw[b].clone(), indices=indices)
        assert torch.equal(ours[b], torch.stack(theirs)), (ours[b], theirs)
        assert torch.equal(attend_excite_loss(ours)[b], Pipe._compute_loss(theirs))


def test_max_attention_groups_are_token_means():
    raw = random_raw(b=1, length=10, seed=5)
    ane = ane_view(raw, eot_index=8, span="prompt")
    got = max_attention(ane, [[2, 3]])
    want = gaussian_smooth((ane[..., 2] + ane[..., 3]) / 2).amax(dim=(-2, -1))
    torch.testing.assert_close(got[:, 0], want)
    with pytest.raises(ValueError, match="outside"):
        max_attention(ane, [[2, 10]])


def test_attend_excite_and_presence_values():
    m = torch.tensor([[0.9, 0.3, 1.2], [1.5, 1.1, 1.0]])
    torch.testing.assert_close(attend_excite_loss(m), torch.tensor([0.7, 0.0]))
    torch.testing.assert_close(presence_loss(m), torch.tensor([0.7, 0.0]))


# ------------------------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------------------------
def test_centroid_xy_order_and_gradient():
    m = deltas({(3, 1): 1.0, (5, 1): 3.0}).requires_grad_(True)
    c = centroid(m)
    torch.testing.assert_close(c, torch.tensor([4.5, 1.0]))
    c[0].backward()
    assert m.grad[1, 5] > 0 > m.grad[1, 3]


def test_nms_regions_hand_computed():
    # (2,2) and (6,2) share the first disc (distance 4 < 5); (10,2) is 8 away: second region, whose disc again
    # reaches (6,2) in the original map; nothing is left for a third region.
    m = deltas({(2, 2): 1.0, (6, 2): 0.9, (10, 2): 0.8}).requires_grad_(True)
    c, p = nms_regions(m, num_regions=3, radius=5.0)
    torch.testing.assert_close(c[0], torch.tensor([(2 * 1.0 + 6 * 0.9) / 1.9, 2.0]))
    torch.testing.assert_close(c[1], torch.tensor([(6 * 0.9 + 10 * 0.8) / 1.7, 2.0]))
    torch.testing.assert_close(p[:2], torch.tensor([[2.0, 2.0], [10.0, 2.0]]))
    assert torch.isnan(c[2]).all() and torch.isnan(p[2]).all()
    assert c.requires_grad and not p.requires_grad


def test_nms_disc_is_strict_and_ties_take_first_cell():
    on_edge = stack(deltas({(2, 2): 1.0, (7, 2): 1.0}))  # distance exactly 5: outside the disc; tie -> (2, 2)
    assert aggregation_loss(on_edge).item() == pytest.approx(5 / DIAG1_16, abs=1e-6)
    inside = stack(deltas({(2, 2): 1.0, (6, 2): 1.0}))  # one region, centroid (4, 2), peak (2, 2)
    assert aggregation_loss(inside).item() == pytest.approx(2 / DIAG1_16, abs=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------------------------------------
def test_aggregation_compact_blob_is_zero_and_scattered_blobs_high():
    compact = stack(deltas({(x, y): 2.0 if (x, y) == (7, 7) else 1.0 for x in (6, 7, 8) for y in (6, 7, 8)}))
    assert aggregation_loss(compact).item() == pytest.approx(0.0, abs=1e-6)
    two = stack(deltas({(2, 2): 1.0, (12, 12): 0.5}))
    assert aggregation_loss(two).item() == pytest.approx(math.sqrt(200) / DIAG1_16, abs=1e-6)  # = 2/3
    three = stack(deltas({(2, 2): 1.0, (12, 2): 0.6, (2, 12): 0.3}))
    want = (0 + 10 + 10 + math.sqrt(200)) / DIAG1_16  # 3 centroids to the first peak + 2nd-3rd
    assert aggregation_loss(three).item() == pytest.approx(want, abs=1e-6)
    # summed over subjects
    both = torch.cat([two, three], dim=1)
    assert aggregation_loss(both).item() == pytest.approx(math.sqrt(200) / DIAG1_16 + want, abs=1e-5)
    # smooth maps: one Gaussian blob is far below two separated blobs
    assert aggregation_loss(stack(blob(8, 8))) < 0.2 < aggregation_loss(stack(blob(3, 3) + blob(12, 12)))


def test_aggregation_cosine():
    two = stack(deltas({(2, 2): 1.0, (12, 12): 1.0}))
    assert aggregation_loss(two, metric="cosine").item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    compact = stack(blob(8, 8, s=0.7) * (blob(8, 8, s=0.7) > 1e-3))
    assert aggregation_loss(compact, metric="cosine").item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# Attribute binding
# ------------------------------------------------------------------------------------------------------------------
def test_attribute_loss_hand_computed():
    owner = stack(deltas({(12, 12): 1.0}))
    attr_far = stack(deltas({(2, 2): 1.0}))
    assert attribute_loss(attr_far, owner).item() == pytest.approx(math.sqrt(200) / DIAG1_16, abs=1e-6)
    attr_on = stack(deltas({(12, 12): 1.0}))
    assert attribute_loss(attr_on, owner).item() == pytest.approx(0.0, abs=1e-6)
    attr_split = stack(deltas({(2, 2): 1.0, (12, 12): 1.0}))
    assert attribute_loss(attr_split, owner, metric="cosine").item() == pytest.approx(1 - 2**-0.5, abs=1e-6)
    assert attribute_loss(attr_on, owner, metric="cosine").item() == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros(1, 0, 16, 16)
    assert torch.equal(attribute_loss(empty, empty), torch.zeros(1))


# ------------------------------------------------------------------------------------------------------------------
# Isolation
# ------------------------------------------------------------------------------------------------------------------
def test_isolation_euclidean_values():
    a, b = deltas({(0, 0): 1.0}), deltas({(15, 15): 1.0})
    assert isolation_loss(stack(a, b)).item() == pytest.approx(1 - 15 * math.sqrt(2) / DIAG_16, abs=1e-6)  # 1/16
    assert isolation_loss(stack(a, a)).item() == pytest.approx(1.0, abs=1e-6)
    c = deltas({(15, 0): 1.0})
    want = ((1 - 15 * math.sqrt(2) / DIAG_16) + 2 * (1 - 15 / DIAG_16)) / 3  # mean over the 3 pairs
    assert isolation_loss(stack(a, b, c)).item() == pytest.approx(want, abs=1e-6)
    assert isolation_loss(stack(blob(8, 8), blob(8.5, 8))) > 0.9  # nearly on top of each other
    assert isolation_loss(stack(blob(2, 2), blob(13, 13))) < 0.35  # opposite corners: 1 - 11/16


def test_isolation_cosine_values():
    a, b = blob(3, 3) * (blob(3, 3) > 1e-2), blob(12, 12) * (blob(12, 12) > 1e-2)
    assert isolation_loss(stack(a, b), metric="cosine").item() == 0.0  # disjoint
    assert isolation_loss(stack(a, 2 * a), metric="cosine").item() == pytest.approx(1.0, abs=1e-6)


def test_isolation_single_subject_is_exactly_zero():
    out = isolation_loss(stack(blob(4, 4)))
    assert torch.equal(out, torch.zeros(1))
    raw = random_raw(b=2)
    _, terms, _ = AIT2IConfig().loss(raw, [Subj("cat", (2,), (1,))], eot_index=8)
    assert torch.equal(terms["isolation"], torch.zeros(2))


# ------------------------------------------------------------------------------------------------------------------
# Gradients move mass the right way: one step on the map logits lowers the term
# ------------------------------------------------------------------------------------------------------------------
def _step(fn, logits, lr):
    logits = logits.clone().requires_grad_(True)
    before = fn(logits)
    (grad,) = torch.autograd.grad(before.sum(), logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        after = fn(logits - lr * grad)
    return before.detach(), after, logits.detach() - lr * grad


def _maps(logits):  # (B, G, H, W) logits -> per-map spatial softmax
    b, g, h, w = logits.shape
    return torch.softmax(logits.flatten(-2), dim=-1).view(b, g, h, w)


def test_aggregation_gradient_gathers_mass():
    # three bumps of decreasing height: stable regions, so one small step keeps the same peaks
    logits = (4 * blob(3, 3, 1.2) + 3 * blob(12, 12, 1.2) + 2 * blob(12, 3, 1.2))[None, None] * 2
    outside = deltas({(x, y): 1.0 for x in range(16) for y in range(16) if (x - 3) ** 2 + (y - 3) ** 2 >= 25}) > 0
    for metric in ("euclidean", "cosine"):
        before, after, new = _step(lambda z, m=metric: aggregation_loss(_maps(z), metric=m), logits, 10.0)
        assert after < before, metric
        m0, m1 = _maps(logits)[0, 0], _maps(new)[0, 0]
        assert m1[outside].sum() < m0[outside].sum(), metric  # mass leaves the other regions
        for r in (1, 2):  # the other regions' centroids move towards the first peak
            c0, c1 = nms_regions(m0)[0][r], nms_regions(m1)[0][r]
            assert math.dist(c1.tolist(), (3, 3)) < math.dist(c0.tolist(), (3, 3)), (metric, r)


def test_isolation_gradient_pushes_apart():
    logits = torch.stack([blob(7, 7, 2), blob(9, 9, 2)])[None] * 4
    for metric, lr in (("euclidean", 5.0), ("cosine", 5.0)):
        before, after, new = _step(lambda z, m=metric: isolation_loss(_maps(z), metric=m), logits, lr)
        assert after < before, metric
        c0, c1 = centroid(_maps(logits))[0], centroid(_maps(new))[0]
        assert (c1[0] - c1[1]).norm() > (c0[0] - c0[1]).norm()


def test_attribute_gradient_moves_attribute_to_owner():
    owner = _maps(blob(11, 11, 1.5)[None, None] * 5)
    logits = blob(4, 4, 1.5)[None, None] * 4
    for metric, lr in (("euclidean", 2.0), ("cosine", 50.0)):
        before, after, new = _step(lambda z, m=metric: attribute_loss(_maps(z), owner, metric=m), logits, lr)
        assert after < before, metric
        d0 = (centroid(_maps(logits))[0, 0] - 11).norm()
        d1 = (centroid(_maps(new))[0, 0] - 11).norm()
        assert d1 < d0


def test_presence_gradient_raises_the_weakest_subject():
    raw_logits = torch.log(random_raw(b=1, length=10, seed=7))

    def fn(z):
        return presence_loss(max_attention(ane_view(torch.softmax(z, -1), 8, "prompt"), [[2], [4]]))

    before, after, _ = _step(fn, raw_logits, 1e-3)
    assert after < before


# ------------------------------------------------------------------------------------------------------------------
# The full loss
# ------------------------------------------------------------------------------------------------------------------
SUBJECTS = [Subj("red cat", (2,), (1,)), Subj("blue dog", (4, 5), (3,)), Subj("tree", (6,))]


@pytest.mark.parametrize(
    "cfg",
    [
        get_method("ait2i-paper"),
        AIT2IConfig(),
        AIT2IConfig(
            isolation_metric="cosine",
            aggregation_metric="cosine",
            attribute_metric="cosine",
            softmax_span="all",
            w_isolation=1.0,
            w_aggregation=0.5,
            w_presence=1.5,
            w_attribute=2.0,
        ),
        AIT2IConfig(num_regions=2, region_radius=3.0, attribute_radius=4.0, isolation_metric="cosine"),
    ],
    ids=["paper", "default", "cosine", "regions2"],
)
def test_full_loss_equals_loop_reference(cfg):
    raw = random_raw(b=2, length=12, seed=11)
    loss, terms, max_att = cfg.loss(raw, SUBJECTS, eot_index=8)
    assert loss.shape == (2,) and max_att.shape == (2, 3)
    assert set(terms) == {"isolation", "aggregation", "attribute", "presence"}
    for b in range(2):
        want, want_terms, want_max = ref_loss(raw[b].tolist(), SUBJECTS, cfg, 8)
        assert loss[b].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
        for k, v in want_terms.items():
            assert terms[k][b].item() == pytest.approx(v, rel=1e-4, abs=1e-5), k
        assert max_att[b].tolist() == pytest.approx(want_max, rel=1e-4, abs=1e-6)


def test_full_loss_radii_scale_with_resolution():
    raw = torch.zeros(1, 32, 32, 6)
    raw[0, 4, 4, 2] = 1.0  # two deltas 8 cells apart: one region at radius 5 * 32/16 = 10
    raw[0, 4, 12, 2] = 1.0
    euclid = AIT2IConfig(aggregation_metric="euclidean")
    _, terms, _ = euclid.loss(raw, [Subj("cat", (2,))], eot_index=4)
    assert terms["aggregation"].item() == pytest.approx(4 / math.sqrt(31**2 + 31**2), abs=1e-6)
    # cosine: both deltas lie inside the main disc of radius 10, so no energy is outside it ...
    _, terms, _ = AIT2IConfig(aggregation_metric="cosine").loss(raw, [Subj("cat", (2,))], eot_index=4)
    assert terms["aggregation"].item() == pytest.approx(0.0, abs=1e-6)
    # ... while at 16x16 the same two deltas 8 cells apart are farther than the radius 5
    raw16 = torch.zeros(1, 16, 16, 6)
    raw16[0, 4, 4, 2] = raw16[0, 4, 12, 2] = 1.0
    _, terms, _ = AIT2IConfig(aggregation_metric="cosine").loss(raw16, [Subj("cat", (2,))], eot_index=4)
    assert terms["aggregation"].item() > 0.2


def test_method_loss_attend_and_excite():
    raw = random_raw(b=2, length=12, seed=2)
    loss, terms, max_att = AttendExciteConfig().loss(raw, SUBJECTS, eot_index=8)
    assert set(terms) == {"attend_excite"}
    want = max_attention(ane_view(raw, 8, "all"), [[2], [4, 5], [6]])
    torch.testing.assert_close(max_att, want)
    torch.testing.assert_close(loss, (1 - want).clamp_min(0).amax(-1))


def test_method_loss_is_differentiable_per_sample_and_float32():
    raw = random_raw(b=2, length=12, seed=4).half().float().requires_grad_(True)
    loss, _, _ = AIT2IConfig().loss(raw.half(), SUBJECTS, eot_index=8)
    assert loss.dtype == torch.float32
    (g,) = torch.autograd.grad(loss[1], raw)
    assert torch.isfinite(g).all() and g[1].abs().sum() > 0 and g[0].abs().sum() == 0
    single, _, _ = AIT2IConfig().loss(raw[1:].detach(), SUBJECTS, eot_index=8)
    torch.testing.assert_close(single, loss[1:].detach())


@pytest.mark.parametrize("cfg", [AIT2IConfig(), AttendExciteConfig()], ids=["ait2i", "ane"])
def test_nan_input_gives_nan_loss_for_that_sample_only(cfg):
    raw = random_raw(b=2, length=12, seed=6)
    raw[0, 3, 5, 9] = float("nan")  # a token that no subject uses
    loss, _, max_att = cfg.loss(raw, SUBJECTS, eot_index=8)
    assert torch.isnan(loss[0]) and torch.isfinite(loss[1])
    assert torch.isnan(max_att[0]).all() and torch.isfinite(max_att[1]).all()
    raw[1, 0, 0, 2] = float("inf")
    loss, _, _ = cfg.loss(raw, SUBJECTS, eot_index=8)
    assert torch.isnan(loss).all()


def test_nan_propagates_through_each_term():
    m = torch.rand(2, 2, 16, 16)
    m[0, 1, 4, 4] = float("nan")
    for metric in ("euclidean", "cosine"):
        for out in (
            aggregation_loss(m, metric),
            isolation_loss(m, metric),
            attribute_loss(m, m.flip(1), metric),
        ):
            assert torch.isnan(out[0]) and torch.isfinite(out[1]), metric


def test_method_loss_bad_input():
    raw = random_raw(b=1, length=12)
    with pytest.raises(ValueError, match="no subject"):
        AIT2IConfig().loss(raw, [], 8)
    with pytest.raises(ValueError, match=r"\[1, 7\]"):
        AIT2IConfig(softmax_span="prompt").loss(raw, [Subj("x", (8,))], 8)  # the end token
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        AttendExciteConfig().loss(raw, [Subj("x", (0,))], 8)  # the start token
    loss, terms, max_att = NoGuidanceConfig().loss(raw, [Subj("x", (2,))], 8)  # "none": no loss, maxima only
    assert torch.equal(loss, torch.zeros(1)) and terms == {} and max_att.shape == (1, 1)
    with pytest.raises(ValueError, match="metric"):
        aggregation_loss(torch.rand(1, 1, 16, 16), metric="l1")
    with pytest.raises(ValueError, match=r"\(B, G, H, W\)"):
        isolation_loss(torch.rand(16, 16))


def test_paper_preset_is_the_released_configuration_and_default_differs_as_documented():
    paper, ours = get_method("ait2i-paper"), get_method("ait2i")
    assert (paper.isolation_metric, paper.aggregation_metric, paper.attribute_metric) == ("euclidean",) * 3
    assert (paper.w_isolation, paper.w_aggregation, paper.w_presence, paper.w_attribute) == (2.0, 1.25, 0.25, 0.75)
    assert (paper.num_regions, paper.region_radius, paper.attribute_radius) == (3, 5.0, 6.0)
    assert paper.max_guided_steps == 25 and not paper.refinement and paper.from_where == ("up", "down")
    # docs/method.md: the default changes exactly two settings (guided window as a fraction, cosine aggregation)
    changed = {k for k in AIT2IConfig.__dataclass_fields__ if getattr(paper, k) != getattr(ours, k)} - {"name"}
    assert changed == {"max_guided_steps", "aggregation_metric"} and ours.aggregation_metric == "cosine"


def test_a_positive_fraction_guides_at_least_one_step():
    assert AIT2IConfig(max_guided_steps=0.2).guided_steps(2) == 1  # round(0.4) would be 0: a quiet no-op
    assert AIT2IConfig(max_guided_steps=0.5).guided_steps(20) == 10
    assert AttendExciteConfig(max_guided_steps=0).guided_steps(20) == 0  # an explicit 0 stays 0 (refinement moves)
