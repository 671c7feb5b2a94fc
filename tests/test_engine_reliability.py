"""Reliability of the engine, the method configs, the losses and the hosts (issue 17, items 3, 4, 5, 7, 18).

Every test here failed on the code before the fix it covers: a NaN loss skipped updates silently, nonsense configs
were accepted, Attend-and-Excite lost its refinement steps at short runs without a word, a negative prompt without
classifier-free guidance was ignored, and latents of the wrong shape or an empty img2img schedule failed late.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

import pytest
import torch

import ait2i
from ait2i import AIT2IConfig, AttendExciteConfig
from ait2i.engine import GuidanceEngine
from ait2i.losses import aggregation_loss, attribute_loss, isolation_loss
from ait2i.methods import AIT2ILayoutConfig, BoxDiffConfig
from ait2i.subjects import Subject
from ait2i.testing import tiny_sd_pipeline

NAN, INF = float("nan"), float("inf")
TWO = [Subject("a", (1,)), Subject("b", (2,), (3,))]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


def _softmax_attend(zero_token: int | None = None, gain: float = 1.0):
    """``attend`` of a toy denoiser: a softmax over 16 tokens of the latents' channel mean (4x4 maps)."""

    def attend(z, t, rows):
        mean = z.float().mean(1, keepdim=True)[..., :4, :4]  # (B, 1, 4, 4)
        logits = mean * torch.linspace(-1, 1, 16).view(1, 16, 1, 1) * gain  # (B, 16, 4, 4): tokens differ
        raw = torch.softmax(logits.permute(0, 2, 3, 1), -1)  # (B, 4, 4, 16)
        if zero_token is not None:
            raw = raw * (torch.arange(16) != zero_token).float()  # that token's map is all zero
        return raw

    return attend


# ------------------------------------------------------------------------------------------------------------------
# Item 3: losses finite on empty maps; skipped updates reported
# ------------------------------------------------------------------------------------------------------------------
def _value_and_grads(fn, *maps):
    ms = [m.clone().requires_grad_(True) for m in maps]
    v = fn(*ms)
    grads = torch.autograd.grad(v.sum(), ms, allow_unused=True)
    return v.detach(), [torch.zeros_like(m) if g is None else g for m, g in zip(ms, grads)]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_isolation_with_an_empty_subject_map_is_zero_with_zero_gradient(metric):
    full, empty = torch.rand(1, 1, 8, 8) + 0.1, torch.zeros(1, 1, 8, 8)
    v, (gf, ge) = _value_and_grads(lambda a, b: isolation_loss(torch.cat([a, b], 1), metric), full, empty)
    assert v.tolist() == [0.0]  # a map without mass overlaps nothing (no centroid): its pairs count 0
    assert torch.equal(gf, torch.zeros_like(gf)) and torch.equal(ge, torch.zeros_like(ge))  # no 1e11 spike, no NaN
    # the other pairs keep their value: three subjects, one empty -> mean of (pair(full, full2), 0, 0)
    full2 = torch.rand(1, 1, 8, 8) + 0.1
    both = isolation_loss(torch.cat([full, full2], 1), metric)
    three = isolation_loss(torch.cat([full, full2, empty], 1), metric)
    torch.testing.assert_close(three, both / 3)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_aggregation_and_attribute_terms_on_empty_maps_are_zero_with_zero_gradient(metric):
    full, empty = torch.rand(1, 1, 16, 16) + 0.1, torch.zeros(1, 1, 16, 16)
    v, (g,) = _value_and_grads(lambda m: aggregation_loss(m, metric), empty)
    assert v.tolist() == [0.0] and torch.equal(g, torch.zeros_like(g))  # nothing to gather
    for attr, owner in ((empty, full), (full, empty), (empty, empty)):
        v, (ga, go) = _value_and_grads(lambda a, o: attribute_loss(a, o, metric), attr, owner)
        # an empty attribute has nothing to bind; an empty owner has no peak to bind to (was: the top-left cell)
        assert v.tolist() == [0.0], (metric, attr.sum(), owner.sum())
        assert torch.equal(ga, torch.zeros_like(ga)) and torch.equal(go, torch.zeros_like(go))


def test_ait2i_objective_finite_when_a_subject_map_is_all_zero():
    raw = torch.softmax(torch.randn(2, 16, 16, 12), -1)
    raw[0, ..., 2] = 0.0  # subject "b" has no attention in sample 0
    raw.requires_grad_(True)
    for cfg in (AIT2IConfig(), ait2i.get_method("ait2i-paper")):
        loss, terms, _ = cfg.loss(raw, TWO, eot_index=8)
        assert torch.isfinite(loss).all() and all(torch.isfinite(t).all() for t in terms.values())
        (g,) = torch.autograd.grad(loss.sum(), raw)
        assert torch.isfinite(g).all() and g.abs().max() < 1e3


def test_engine_updates_a_sample_whose_subject_map_is_all_zero():
    z = torch.randn(2, 4, 4, 4)
    eng = GuidanceEngine(AIT2IConfig(), TWO, _softmax_attend(zero_token=2), eot_index=8, num_steps=10)
    new = eng.step(0, 999, z)
    rec = eng.diagnostics.steps[0]
    assert rec.skipped == [False, False] and all(math.isfinite(v) for v in rec.loss)
    assert not torch.equal(new, z)


@dataclass
class NaNLoss(AIT2IConfig):
    """AI-T2I whose loss is NaN for sample 0 (a stand-in for any capture that goes non-finite)."""

    name: str = field(default="nan-loss", repr=False)

    def loss(self, raw, subjects, eot_index):
        loss, terms, max_att = super().loss(raw, subjects, eot_index)
        bad = torch.zeros_like(loss)
        bad[0] = NAN
        return loss + bad, terms, max_att


def test_skipped_updates_are_noted_and_warned_once_with_counts(pipe):
    kw = dict(num_inference_steps=4, output_type="latent", num_images_per_prompt=2, generator=[_gen(0), _gen(1)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ait2i.generate(pipe, "a cat and a dog", ["cat", "dog"], NaNLoss(max_guided_steps=1.0), **kw)
    notes = [n for n in out.diagnostics.notes if "skipped" in n]
    assert len(notes) == 1 and "4 of 4" in notes[0] and "sample 0" in notes[0], out.diagnostics.notes
    ours = [w for w in caught if "skipped" in str(w.message)]
    assert len(ours) == 1 and "4 of 4" in str(ours[0].message)
    assert [r.skipped for r in out.diagnostics.steps] == [[True, False]] * 4


def test_a_nan_textual_inversion_embedding_is_refused_before_the_loop():
    pipe = tiny_sd_pipeline()
    pipe.tokenizer.add_tokens(["<bad>"])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[-1] = NAN
    with pytest.raises(ValueError, match="NaN or inf"):
        ait2i.generate(pipe, "a <bad> and a dog", ["<bad>", "dog"], num_inference_steps=2, output_type="latent")


# ------------------------------------------------------------------------------------------------------------------
# Item 4: every config field validated; updates that make the latents non-finite are undone
# ------------------------------------------------------------------------------------------------------------------
BAD_FIELDS = [
    (AIT2IConfig, {"scale_range": (NAN, 0.5)}, "scale_range"),
    (AIT2IConfig, {"scale_range": (INF, 0.5)}, "scale_range"),
    (AIT2IConfig, {"scale_range": (1.0,)}, "scale_range"),
    (AIT2IConfig, {"scale_range": (1.0, True)}, "scale_range"),
    (AIT2IConfig, {"scale_factor": 1e30}, "scale_factor"),
    (AIT2IConfig, {"scale_factor": NAN}, "scale_factor"),
    (AIT2IConfig, {"scale_factor": True}, "scale_factor"),
    (AIT2IConfig, {"region_radius": NAN}, "region_radius"),
    (AIT2IConfig, {"attribute_radius": INF}, "attribute_radius"),
    (AIT2IConfig, {"num_regions": 2.5}, "num_regions"),
    (AIT2IConfig, {"num_regions": True}, "num_regions"),
    (AIT2IConfig, {"w_isolation": True}, "w_isolation"),
    (AIT2IConfig, {"w_presence": "1"}, "w_presence"),
    (AIT2IConfig, {"max_refinement_steps": 1.5}, "max_refinement_steps"),
    (AIT2IConfig, {"max_refinement_steps": True}, "max_refinement_steps"),
    (AIT2IConfig, {"attn_res": True}, "attn_res"),
    (AIT2IConfig, {"attn_res": 16.0}, "attn_res"),
    (AIT2IConfig, {"from_where": "up"}, "from_where"),
    (AIT2IConfig, {"max_guided_steps": NAN}, "max_guided_steps"),
    (AIT2IConfig, {"refinement": {0: NAN}}, "refinement"),
    (AIT2IConfig, {"refinement": {True: 0.5}}, "refinement"),
    (AIT2IConfig, {"smooth_sigma": NAN}, "smooth_sigma"),
    (AIT2IConfig, {"smooth_sigma": INF}, "smooth_sigma"),
    (AIT2IConfig, {"smooth_kernel": 3.0}, "smooth_kernel"),
    (AttendExciteConfig, {"max_refinement_steps": -1}, "max_refinement_steps"),
    (AIT2ILayoutConfig, {"w_box_isolation": NAN}, "w_box_isolation"),
    (BoxDiffConfig, {"top_k": NAN}, "top_k"),
    (BoxDiffConfig, {"corner_width": 1.5}, "corner_width"),
]


@pytest.mark.parametrize("cls,changes,field_name", BAD_FIELDS, ids=[f"{c.__name__}-{f}" for c, _, f in BAD_FIELDS])
def test_nonsense_fields_are_refused_naming_the_field_and_value(cls, changes, field_name):
    with pytest.raises(ValueError, match=field_name) as err:
        cls(**changes)
    assert repr(next(iter(changes.values()))) in str(err.value) or field_name == "refinement"
    with pytest.raises(ValueError, match=field_name):  # .replace validates too
        cls().replace(**changes)


NEVER_MOVES = [
    (AIT2IConfig, {"scale_factor": 0.0}),
    (AIT2IConfig, {"scale_range": (0.0, 0.0)}),
    (AIT2IConfig, {"w_isolation": 0.0, "w_aggregation": 0.0, "w_presence": 0.0, "w_attribute": 0.0}),
    (AIT2IConfig, {"max_guided_steps": 0}),
    (AttendExciteConfig, {"max_guided_steps": 0, "refinement": {}}),
    (AttendExciteConfig, {"max_guided_steps": 0, "max_refinement_steps": 0}),
    (BoxDiffConfig, {"w_inner": 0.0, "w_outer": 0.0, "w_corner": 0.0}),
]


@pytest.mark.parametrize("cls,changes", NEVER_MOVES, ids=[str(c) for _, c in NEVER_MOVES])
def test_a_config_that_never_moves_the_latents_is_refused_pointing_to_none(cls, changes):
    with pytest.raises(ValueError, match="method 'none'"):
        cls(**changes)


def test_refinement_alone_still_moves():
    AttendExciteConfig(max_guided_steps=0)  # refinement at steps 0, 10, 20 moves the latents: allowed


def test_record_maps_must_be_int_steps(pipe):
    for bad in ((1.7,), (True,), ("1",)):
        with pytest.raises(ValueError, match="record_maps"):
            ait2i.generate(pipe, "a cat", ["cat"], "none", record_maps=bad, num_inference_steps=2)


@dataclass
class Steep(AIT2IConfig):
    """A loss with a huge gradient: one update overflows float16 latents."""

    name: str = field(default="steep", repr=False)

    def loss(self, raw, subjects, eot_index):
        loss, terms, max_att = super().loss(raw, subjects, eot_index)
        steep = raw[..., 1].sum(dim=(1, 2)) * 1e6
        steep = steep * torch.tensor([1.0, 0.0])  # sample 1: a normal update
        return loss + steep, terms, max_att


def test_an_update_that_makes_the_latents_non_finite_is_undone_and_recorded():
    z = torch.randn(2, 4, 4, 4).half()
    eng = GuidanceEngine(Steep(), TWO, _softmax_attend(gain=4.0), eot_index=8, num_steps=10)
    new = eng.step(0, 999, z)
    rec = eng.diagnostics.steps[0]
    assert torch.isfinite(new).all()
    assert torch.equal(new[0], z[0]) and not torch.equal(new[1], z[1])  # sample 0 undone, sample 1 updated
    assert rec.skipped == [True, False]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eng.finish()
    assert any("non-finite latents" in n for n in eng.diagnostics.notes), eng.diagnostics.notes
    assert len([w for w in caught if "non-finite latents" in str(w.message)]) == 1


# ------------------------------------------------------------------------------------------------------------------
# Item 5: absolute windows beyond a short run are said in the notes
# ------------------------------------------------------------------------------------------------------------------
def test_attend_and_excite_windows_beyond_a_short_run_are_noted():
    eng = GuidanceEngine(AttendExciteConfig(), TWO, _softmax_attend(), eot_index=8, num_steps=8)
    notes = " ".join(eng.diagnostics.notes)
    assert "refinement at steps [10, 20]" in notes and "8 steps" in notes and "fraction" in notes
    assert "max_guided_steps=25" in notes
    at50 = GuidanceEngine(AttendExciteConfig(), TWO, _softmax_attend(), eot_index=8, num_steps=50)
    assert not [n for n in at50.diagnostics.notes if "beyond" in n or "every step" in n]


def test_window_note_reaches_the_output(pipe):
    out = ait2i.generate(
        pipe, "a cat and a dog", ["cat", "dog"], "attend-and-excite", num_inference_steps=2, output_type="latent"
    )
    assert any("refinement at steps [10, 20]" in n for n in out.diagnostics.notes)


# ------------------------------------------------------------------------------------------------------------------
# Items 7 and 18 (API): guidance scale, latents shape, img2img strength
# ------------------------------------------------------------------------------------------------------------------
def test_negative_prompt_without_cfg_is_refused(pipe):
    with pytest.raises(ValueError, match="negative_prompt.*guidance_scale > 1"):
        ait2i.generate(pipe, "a cat", ["cat"], negative_prompt="red", guidance_scale=1.0, num_inference_steps=2)
    with pytest.raises(ValueError, match="negative_prompt.*guidance_scale > 1"):
        ait2i.generate(pipe, "a cat", ["cat"], "none", negative_prompt="red", guidance_scale=0.5)


@pytest.mark.parametrize("scale", [NAN, INF, -INF])
def test_non_finite_guidance_scale_is_refused(pipe, scale):
    with pytest.raises(ValueError, match="guidance_scale"):
        ait2i.generate(pipe, "a cat", ["cat"], guidance_scale=scale, num_inference_steps=2)


def test_latents_of_the_wrong_shape_are_refused_naming_the_expected_shape(pipe):
    with pytest.raises(ValueError, match=r"latents.*\(1, 4, 8, 8\).*\(1, 4, 32, 32\)"):
        ait2i.generate(pipe, "a cat", ["cat"], latents=torch.randn(1, 4, 8, 8), num_inference_steps=2)
    with pytest.raises(ValueError, match=r"\(2, 4, 32, 32\)"):
        ait2i.generate(pipe, "a cat", ["cat"], latents=torch.randn(1, 4, 32, 32), num_images_per_prompt=2)
    # the right shape runs
    out = ait2i.generate(
        pipe, "a cat", ["cat"], latents=torch.randn(1, 4, 32, 32), num_inference_steps=2, output_type="latent"
    )
    assert out.images.shape == (1, 4, 32, 32)


def test_img2img_with_no_denoising_step_is_refused_up_front():
    img = tiny_sd_pipeline(kind="img2img")
    image = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="raise strength or num_inference_steps"):
        ait2i.generate(img, "a cat", ["cat"], image=image, strength=0.1, num_inference_steps=5)
    with pytest.raises(ValueError, match="strength"):
        ait2i.generate(img, "a cat", ["cat"], image=image, strength=NAN, num_inference_steps=5)


def test_dataclasses_replace_keeps_validating():
    cfg = AIT2IConfig()
    with pytest.raises(ValueError, match="region_radius"):
        dataclasses.replace(cfg, region_radius=NAN)


def test_skipped_refinement_updates_are_noted_per_sample_and_stop_refining():
    base = _softmax_attend()

    def attend(z, t, rows):  # sample 1's capture goes NaN in the refinement passes (those that name their rows)
        raw = base(z, t, rows)
        if rows is None:
            return raw
        return torch.where((rows == 1).view(-1, 1, 1, 1), torch.full_like(raw, NAN), raw)

    cfg = AttendExciteConfig(max_guided_steps=1, refinement={0: 0.99}, max_refinement_steps=3)
    eng = GuidanceEngine(cfg, TWO, attend, eot_index=8, num_steps=4)
    eng.step(0, 999, torch.randn(2, 4, 4, 4))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        eng.finish()
    notes = [n for n in eng.diagnostics.notes if "refinement update skipped" in n]
    assert len(notes) == 1 and "sample 1: 1 iterations" in notes[0] and "sample 0" not in notes[0], notes
    assert eng.diagnostics.steps[0].refinement_iterations[1] == 1  # stopped after its failed update
