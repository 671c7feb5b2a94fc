"""Personalized concepts on ShapesWorld: training (ait2i.shapes.personalize), safe loading (ait2i.shapes.concept)
and the ``personalization`` suite of the benchmark runner (prompts, scores, tables)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ait2i.bench.suites import personalization as PS
from ait2i.shapes import concept as C
from ait2i.shapes import personalize as P
from ait2i.shapes import render as R
from ait2i.shapes.model import load_pipeline
from ait2i.subjects import check_placeholders, loaded_placeholders


def _image(pipe, prompt, steps=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=4.0, generator=g, output_type="np").images[0]


def test_concept_scenes_are_stars_in_every_colour_and_deterministic():
    scenes = P.concept_scenes(0)
    assert len(scenes) == P.NUM_RENDERS
    stars = [o for s in scenes for o in s.objects if o.shape == "star"]
    assert len(stars) == P.NUM_RENDERS  # one star per render
    assert {o.color for o in stars} == set(R.COLORS)
    assert [o.cx for s in P.concept_scenes(0) for o in s.objects] == [o.cx for s in scenes for o in s.objects]
    rng = np.random.default_rng(0)
    cap = P.concept_caption(scenes[1], C.PLACEHOLDER, rng)
    assert C.PLACEHOLDER in cap and " and " in cap
    assert P.expand("a red <star>") == "a red <star> <star>_1"


def test_ring_concept_scenes_are_rings_and_star_scenes_are_unchanged():
    rings = P.concept_scenes(0, shape="ring")
    stars = P.concept_scenes(0)
    assert len(rings) == P.NUM_RENDERS
    assert [[o.shape for o in s.objects].count("ring") for s in rings] == [1] * P.NUM_RENDERS
    assert {o.color for s in rings for o in s.objects if o.shape == "ring"} == set(R.COLORS)
    assert not any(o.shape == "star" for s in rings for o in s.objects)
    # the star renders are those the shipped concepts were trained on (first object of render 1, seed 0)
    assert [o.shape for o in stars[1].objects] == [o.shape.replace("ring", "star") for o in rings[1].objects]
    cap = P.concept_caption(rings[1], "ring", np.random.default_rng(0), "ring")
    assert " ring" in cap and " and " in cap
    more_pairs = P.concept_scenes(0, n=64, shape="ring", alone_every=4)
    alone = [s for s in more_pairs if len(s.objects) == 1]
    assert len(alone) == 17 and {s.objects[0].color for s in alone} == set(R.COLORS)  # about one in four
    pairs = [s for s in more_pairs if len(s.objects) == 2]
    assert {o.shape for s in pairs for o in s.objects} == {"ring", *R.SHAPES}
    with pytest.raises(ValueError, match="alone_every"):
        P.concept_scenes(0, alone_every=0)
    with pytest.raises(ValueError, match="unknown concept shape 'heart'"):
        P.concept_scenes(0, shape="heart")
    assert C.placeholder("ring") == "<ring>"


def test_ring_is_one_unseen_clip_token():
    pipe = load_pipeline()
    assert pipe.tokenizer.tokenize("a red ring and a blue star") == [
        "a</w>", "red</w>", "ring</w>", "and</w>", "a</w>", "blue</w>", "star</w>",
    ]  # fmt: skip
    words = {w for i in range(2000) for w in R.caption(R.sample_training_scene(i), i).replace(",", "").split()}
    assert words.isdisjoint(C.CONCEPT_SHAPES)  # no training caption names a star or a ring


def test_ti_steps_move_only_the_placeholder_and_the_file_loads(tmp_path):
    pipe = load_pipeline()
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    tr = P.Trainer(pipe, "ti", batch_size=2)
    emb = pipe.text_encoder.get_input_embeddings().weight
    before = emb.detach().clone()
    te_other = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items() if "token_embedding" not in k}
    for _ in range(2):
        tr.train_step(10)
    after = emb.detach()
    moved = (after != before).any(dim=1)
    assert moved[tr.ids].all()
    assert not moved[tr.keep].any()  # every ordinary token's row is exactly as shipped
    assert all(torch.equal(v, pipe.text_encoder.state_dict()[k]) for k, v in te_other.items())
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in unet_before.items())

    path = tr.save(tmp_path)
    assert path.name == C.TI_FILE
    fresh = load_pipeline()
    fresh.load_textual_inversion(str(path), token=C.PLACEHOLDER)
    ids = fresh.tokenizer.convert_tokens_to_ids([C.PLACEHOLDER, f"{C.PLACEHOLDER}_1"])
    got = fresh.text_encoder.get_input_embeddings().weight[ids]
    torch.testing.assert_close(got, after[tr.ids], rtol=0, atol=1e-6)
    assert fresh.maybe_convert_prompt("a red <star>", fresh.tokenizer) == "a red <star> <star>_1"


@pytest.mark.parametrize("targets,text_encoder", [("attn", False), ("attn-conv", False), ("attn-conv", True)])
def test_lora_save_loads_with_load_lora_weights_and_changes_the_output(tmp_path, targets, text_encoder):
    from safetensors import safe_open

    pipe = load_pipeline()
    base = _image(pipe, "a red star")
    tr = P.Trainer(pipe, "lora", batch_size=2, prior_n=2, prior_steps=1, lr=5e-2, targets=targets, rank=4,
                   text_encoder=text_encoder)  # fmt: skip
    tr.train_step(10)
    tr.train_step(10)  # two steps: the B matrices start at zero, so after one step only B has moved
    trained = _image(pipe, "a red star")
    path = tr.save(tmp_path)
    assert path.name == C.LORA_FILE and path.is_file()
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    convs = [k for k in keys if ".resnets." in k and (".conv1." in k or ".conv2." in k)]
    if targets == "attn-conv":  # every ResNet 3x3 convolution has its LoRA, saved as 4-D conv weights
        n_resnets = sum(1 for n, m in pipe.unet.named_modules() if type(m).__name__ == "ResnetBlock2D")
        assert len(convs) == 2 * 2 * n_resnets  # conv1 and conv2, lora_A and lora_B
        with safe_open(str(path), "pt") as f:
            assert all(f.get_tensor(k).ndim == 4 for k in convs)
        assert any("proj_in" in k for k in keys) and any("conv_shortcut" in k for k in keys)
    else:
        assert not convs
    te_keys = [k for k in keys if k.startswith("text_encoder.")]
    assert bool(te_keys) == text_encoder
    assert all(k.startswith(("unet.", "text_encoder.")) and ".lora_" in k for k in keys)  # peft key format

    fresh = load_pipeline()
    fresh.load_lora_weights(str(tmp_path))
    loaded = _image(fresh, "a red star")
    assert np.abs(loaded - base).max() > 1e-3  # the LoRA changes the picture
    np.testing.assert_allclose(loaded, trained, atol=1e-4)  # ... exactly as it did in training


def _concept_pipe(shapes, folder, adapter_weight=1.0):
    pipe = load_pipeline()
    words = C.load_concepts(pipe, shapes, "lora", folder, adapter_weight)
    assert words == [f"{s}-lora" for s in shapes]  # no TRAINING.json with a trigger word: the adapter names
    return pipe


def test_two_loras_load_as_named_adapters_and_both_act(tmp_path):
    for shape, seed in (("star", 0), ("ring", 1)):
        pipe = load_pipeline()
        tr = P.Trainer(pipe, "lora", seed=seed, batch_size=2, prior_n=2, prior_steps=1, lr=5e-2, shape=shape,
                       targets="attn-conv", rank=2)  # fmt: skip
        tr.train_step(10)
        tr.train_step(10)
        tr.save(tmp_path / f"{shape}-lora")
    prompt = "a red star and a blue ring"
    both = _concept_pipe(C.CONCEPT_SHAPES, tmp_path)
    assert sorted(both.get_active_adapters()) == ["ring-lora", "star-lora"]
    img_both = _image(both, prompt)
    singles = []
    for shape in C.CONCEPT_SHAPES:
        one = _concept_pipe((shape,), tmp_path)
        assert one.get_active_adapters() == [f"{shape}-lora"]
        singles.append(_image(one, prompt))
    base = _image(load_pipeline(), prompt)
    for img in singles + [base]:
        assert np.abs(img_both - img).max() > 1e-3  # both adapters act on the picture
    half = _concept_pipe(C.CONCEPT_SHAPES, tmp_path, adapter_weight=0.5)
    assert np.abs(_image(half, prompt) - img_both).max() > 1e-3  # the adapter weight is applied
    both.set_adapters(["star-lora"])
    np.testing.assert_allclose(_image(both, prompt), singles[0], atol=1e-4)  # switching off the ring's LoRA
    with pytest.raises(ValueError, match="no ring-ti"):
        C.load_concepts(load_pipeline(), ("ring",), "ti", tmp_path)


def test_load_concept_refuses_anything_but_safetensors(tmp_path):
    pipe = load_pipeline()
    vec = {"<star>": torch.zeros(1, 128)}
    torch.save(vec, tmp_path / "learned_embeds.bin")
    with pytest.raises(ValueError, match="not a safetensors file"):
        C.load_concept(pipe, tmp_path / "learned_embeds.bin", "ti")
    with pytest.raises(ValueError, match="not safetensors and are refused"):
        C.load_concept(pipe, tmp_path, "ti")  # a folder holding only the pickle
    fake = tmp_path / "fake"
    fake.mkdir()
    torch.save(vec, fake / "pytorch_lora_weights.safetensors")  # a pickle under the safetensors name
    with pytest.raises(ValueError, match="not a safetensors file"):
        C.load_concept(pipe, fake, "lora")
    with pytest.raises(ValueError, match="unknown concept kind"):
        C.load_concept(pipe, fake, "dreambooth")
    with pytest.raises(ValueError, match="does not exist"):
        C.load_concept(pipe, tmp_path / "missing.safetensors", "ti")
    assert loaded_placeholders(pipe.tokenizer) == []  # nothing was loaded


def test_load_concept_loads_a_safetensors_embedding_and_names_placeholders(tmp_path):
    from safetensors.torch import save_file

    pipe = load_pipeline()
    save_file({"<star>": torch.randn(2, 128)}, str(tmp_path / "learned_embeds.safetensors"))
    assert C.load_concept(pipe, tmp_path, "ti") == "<star>"
    assert loaded_placeholders(pipe.tokenizer) == ["<star>"]
    check_placeholders(pipe.tokenizer, "a red <star> and a blue square", ["red <star>", "blue square"])
    with pytest.raises(ValueError, match=r"'<heart>'.*not loaded.*loaded placeholders: \['<star>'\]"):
        check_placeholders(pipe.tokenizer, "a red <star> and a blue <heart>", ["red <star>", "blue <heart>"])
    with pytest.raises(ValueError, match="'<heart>'"):
        check_placeholders(pipe.tokenizer, "a red star", ["<heart>"])


def test_unloaded_placeholder_without_a_concept_says_none_loaded():
    from ait2i.testing import clip_tokenizer

    with pytest.raises(ValueError, match="loaded placeholders: none"):
        check_placeholders(clip_tokenizer(), "a red <star>", ["red <star>"])


def _shipped(kind):
    folder = C.concepts_dir() / f"star-{kind}"
    if not (folder / (C.TI_FILE if kind == "ti" else C.LORA_FILE)).is_file():
        pytest.skip(f"no shipped {kind} concept")
    return folder


@pytest.mark.slow
def test_shipped_ti_concept_is_a_subject_and_guides():
    import ait2i
    from ait2i.subjects import resolve_subjects

    pipe = load_pipeline()
    token = C.load_concept(pipe, _shipped("ti"), "ti")
    assert token == C.PLACEHOLDER
    prompt = pipe.maybe_convert_prompt("a red <star> and a blue square", pipe.tokenizer)
    subj = resolve_subjects(pipe.tokenizer, prompt, ["red <star>", "blue square"])
    assert len(subj[0].tokens) == C.TI_VECTORS  # the multi-vector placeholder is one subject
    out = ait2i.generate(
        pipe, "a red <star> and a blue square", ["red <star>", "blue square"], "ait2i", num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert len(out.images) == 1


@pytest.mark.slow
def test_shipped_lora_concept_loads_and_guides():
    import ait2i

    pipe = load_pipeline()
    base = _image(pipe, "a red star")
    assert C.load_concept(pipe, _shipped("lora"), "lora") == C.LORA_WORD
    assert np.abs(_image(pipe, "a red star") - base).max() > 1e-3
    out = ait2i.generate(
        pipe, "a red star and a blue square", ["red star", "blue square"], "attend-and-excite",
        num_inference_steps=3, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert len(out.images) == 1


def test_score_image_reads_a_rendered_star_scene():
    from ait2i.shapes import render as R

    scene = R.Scene([R.ShapeSpec("red", "star", 9, 9, 14), R.ShapeSpec("blue", "square", 24, 24, 11)], 40)
    s = PS.score_image(R.render(scene), (("red", "star"), ("blue", "square")))
    assert s["concept"] and s["exact_binding"] and s["others_exact"] == 1.0 and not s["has_extra"]
    s = PS.score_image(R.render(scene), (("green", "star"), ("blue", "square")))
    assert not s["concept"] and not s["concept_star"] and s["any_concept"] and s["concept_ring"] is None
    assert PS.measure_prompt((("red", "star"), ("blue", "square")), "<star>") == (
        "a red <star> and a blue square",
        ["red <star>", "blue square"],
    )


def test_score_image_reads_rings_two_concepts_and_bleed():
    from ait2i.shapes import render as R

    S = R.ShapeSpec
    ring = R.render(R.Scene([S("red", "ring", 9, 9, 13), S("blue", "square", 24, 24, 11)], 40))
    s = PS.score_image(ring, (("red", "ring"), ("blue", "square")))
    assert s["concept"] and s["concept_ring"] and s["concept_star"] is None and s["bleed"] is None
    assert s["exact_binding"] and s["others_exact"] == 1.0
    good = R.render(R.Scene([S("red", "star", 9, 9, 14), S("blue", "ring", 23, 22, 13)], 40))
    req = (("red", "star"), ("blue", "ring"))
    s = PS.score_image(good, req)
    assert s["concept"] and s["concept_star"] and s["concept_ring"] and s["bleed"] is False
    assert s["others_exact"] is None and s["clean_binding"]
    swapped = R.render(R.Scene([S("blue", "star", 9, 9, 14), S("red", "ring", 23, 22, 13)], 40))
    s = PS.score_image(swapped, req)  # each shape in the other's colour
    assert not s["concept"] and not s["concept_star"] and not s["concept_ring"] and s["bleed"]
    assert s["concept_color"] and s["any_concept"]
    two_stars = R.render(R.Scene([S("red", "star", 9, 9, 14), S("blue", "star", 23, 22, 13)], 40))
    s = PS.score_image(two_stars, req)  # the star drawn where the ring should be
    assert s["concept_star"] and not s["concept_ring"] and s["bleed"]
    with pytest.raises(ValueError, match="no concept shape"):
        PS.score_image(good, (("red", "circle"),))
    assert PS.measure_prompts("ring")[2] == (("red", "ring"), ("blue", "square"))
    assert PS.measure_prompt(PS.MULTI_PROMPTS[0], "ti")[0] == "a red <star> and a blue <ring>"
    assert PS.measure_prompt(PS.MULTI_PROMPTS[0], "lora") == ("a red star and a blue ring", ["red star", "blue ring"])


def _runner_rows(tmp_path, shapes_colors):
    """Runner rows (as ``rows.jsonl`` holds them) of rendered one-object images of the ring-lora category."""
    rows = []
    for seed, (shape, color) in enumerate(shapes_colors):
        name = f"none/ring-lora/000_a_red_ring/{seed}.png"
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        R.render(R.Scene([R.ShapeSpec(color, shape, 16, 16, 13)], 40)).save(tmp_path / name)
        rows.append({"method": "none", "category": "ring-lora", "index": 0, "prompt": "a red ring", "seed": seed,
                     "image": name, "concept": True})  # fmt: skip
    return rows


def test_summary_rescores_runner_rows_from_their_images(tmp_path):
    rows = _runner_rows(tmp_path, (("ring", "red"), ("circle", "red"), ("ring", "green")))
    got = PS.rescore(tmp_path, rows)
    assert [r["concept"] for r in got] == [True, False, False]  # the stale True is read again from the images
    assert [r["concept_color"] for r in got] == [True, True, False]
    assert {(r["concept_set"], r["kind"], r["prompt_index"]) for r in got} == {("ring", "lora", 0)}
    methods = {"none": {"class": "NoGuidance", "name": "none"}}
    table = PS.write_summary(tmp_path, got, methods, missing=["x.png"])
    assert "### ring" in table and "| lora | none | 1 x 3 | 0.333" in table and "1 planned image(s)" in table
    assert (tmp_path / "summary.md").read_text() == table
    path, legend = PS.save_grid(tmp_path, tmp_path / "grid.png", got, [("ring", 0)], seeds=range(3), methods=methods)
    assert path.is_file() and legend == ["row 1: 'a red ring' / lora / none"]
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically
    with pytest.raises(ValueError, match="no rows"):
        PS.save_grid(tmp_path, tmp_path / "grid.png", got, [("ring", 0)], kinds=["ti"])
    rows[0]["prompt"] = "a blue ring"
    with pytest.raises(ValueError, match="not that of its index"):
        PS.rescore(tmp_path, rows)
    assert PS.parse_picks(["star:2", "star+ring:0"]) == [("star", 2), ("star+ring", 0)]
    with pytest.raises(ValueError, match="SET:INDEX"):
        PS.parse_picks(["star+ring:4"])


def test_suite_items_names_and_model_identity(tmp_path):
    s = PS.suite()
    assert s.name == "personalization" and s.categories == PS.categories()
    assert len(s.items) == 3 * (8 + 8 + 4) and s.seeds == "0-15" and s.protocol == "shapes"
    by = {(it.category, it.index): it for it in s.items}
    assert by[("star-ti", 2)].prompt == "a red <star> and a blue square"
    assert by[("star-lora", 2)].subjects == ("red star", "blue square")
    assert by[("star+ring-ti", 0)].subjects == ("red <star>", "blue <ring>")
    assert all(it.methods == ("none",) for it in s.items if it.category.endswith("-base"))
    assert all(it.methods is None for it in s.items if not it.category.endswith("-base"))
    assert PS.suite("star+ring-lora, star-lora").name == "personalization:star-lora,star+ring-lora"  # one order
    with pytest.raises(ValueError, match="unknown personalization category 'heart-lora'"):
        PS.suite("heart-lora")
    for w in (0.0, float("nan")):
        with pytest.raises(ValueError, match="adapter weight must be a positive number"):
            PS.suite(adapter_weight=w)
    with pytest.raises(ValueError, match="unknown concept sets or kinds"):
        PS.categories(["star"], ["dreambooth"])
    cats = ["star-lora", "star-base"]
    one, seven = (PS.model_identity("shapesworld:x", cats, None, w) for w in (1.0, 0.7))
    assert one.startswith("shapesworld:x + concepts star-lora:") and one.endswith("(LoRA adapter weight 1)")
    assert seven.endswith("(LoRA adapter weight 0.7)")
    assert PS.model_identity("shapesworld:x", ["star-base"]) == "shapesworld:x"  # nothing loaded
    with pytest.raises(ValueError, match="no star-lora concept folder .* which star\\+ring-lora needs"):
        PS.model_identity("m", ["star+ring-lora"], tmp_path)


def _fake_generate(calls):
    """Records each call and draws the requested objects (so the checker has something to read)."""
    from types import SimpleNamespace

    def generate(pipe, prompt, subjects, method, num_inference_steps, **kw):
        adapters = sorted(pipe.get_active_adapters()) if pipe.get_list_adapters() else []
        calls.append((prompt, method, num_inference_steps, adapters))
        scene = R.Scene([R.ShapeSpec("red", "star", 16, 16, 14)], 40)
        return SimpleNamespace(images=[R.render(scene)] * kw["num_images_per_prompt"])

    return generate


def test_runner_runs_the_suite_with_its_concepts_and_resumes(tmp_path):
    """``ait2i bench personalization`` is the one runner with the suite's prepare hook: each item generated with
    its concepts loaded, base items unguided only, Attend-and-Excite as the benchmark runs it, rows tied to PNGs,
    a rerun resumes, and another adapter weight or step count is refused rather than mixed into the folder."""
    import dataclasses

    from ait2i.bench.runner import Run, generate, matched_rows, resolve_protocol
    from ait2i.bench.specs import parse_methods

    if not (C.concepts_dir() / "star-lora" / C.LORA_FILE).is_file():
        pytest.skip("no shipped star LoRA")
    cats = ["star-lora", "star-base"]
    pipe = load_pipeline()
    methods = parse_methods("default")

    def run(weight=1.0, steps=None):
        suite = PS.suite(",".join(cats), adapter_weight=weight).head(1)
        model = PS.model_identity("shapesworld:test", cats, None, weight)
        protocol = resolve_protocol("shapes", "cpu", num_inference_steps=steps)
        return Run(suite, methods, (0, 1), protocol, model, tmp_path)

    calls: list = []
    scorers = {"personalization": PS.PersonalizationScorer()}
    rep = generate(pipe, run(), progress=False, scorers=scorers, generate_fn=_fake_generate(calls))
    assert len(rep.generated) == (3 + 1) * 2  # the lora item with every method, the base item with none only
    assert sorted((c[0], c[1].name, c[3]) for c in calls) == [
        ("a red star", "ait2i", ["star-lora"]), ("a red star", "attend-and-excite", ["star-lora"]),
        ("a red star", "none", []), ("a red star", "none", ["star-lora"]),
    ]  # fmt: skip
    assert pipe.get_list_adapters() == {}  # the runner's pipeline itself is never changed
    ae = next(c[1] for c in calls if c[1].name == "attend-and-excite")
    assert ae == dict(methods)[next(lab for lab, c in methods if c.name == "attend-and-excite")]
    assert ae.guided_steps(20) == 10 and sorted(ae.refinement_thresholds(20)) == [0, 4, 8]
    assert all(c[2] == 20 for c in calls)
    rows, missing = matched_rows(run(), PS.METRICS)
    assert len(rows) == 8 and not missing and all(r["concept"] for r in rows)
    n = len(calls)
    assert generate(pipe, run(), progress=False, scorers=scorers, generate_fn=_fake_generate(calls)).skipped == 8
    assert len(calls) == n  # resumed: nothing left to do
    for other in (run(weight=0.7), run(steps=10)):
        with pytest.raises(ValueError, match="holds images of a different run"):
            generate(pipe, other, progress=False, scorers=scorers, generate_fn=_fake_generate(calls))
    assert len(calls) == n
    bare = dataclasses.replace(run(), suite=dataclasses.replace(run().suite, prepare=None))
    assert bare.manifest() == run().manifest()  # the hook is no part of what a folder records


def test_shipped_concepts_have_a_readme():
    d = C.concepts_dir()
    if not d.exists():
        pytest.skip("no shipped concepts")
    assert (d / "README.md").is_file()
    assert Path(d / "README.md").read_text().count("python -m ait2i.shapes.personalize train") >= 2


@pytest.mark.slow
def test_readme_personalization_example_runs(tmp_path, monkeypatch):
    """The README's personalized-concept example runs as written (both shipped LoRAs, AI-T2I)."""
    import re

    _shipped("lora")
    if not (C.concepts_dir() / "ring-lora" / C.LORA_FILE).is_file():
        pytest.skip("no shipped ring LoRA")
    readme = Path(__file__).resolve().parents[2] / "README.md"
    m = re.search(r"<!-- example: personalization -->\n```python\n(.*?)```", readme.read_text(), re.S)
    assert m, "README.md has no personalization example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(m.group(1), "README.md:personalization", "exec"), namespace)  # noqa: S102 - our own docs
    assert sorted(namespace["pipe"].get_active_adapters()) == ["ring", "star"]
    assert (tmp_path / "ring.png").is_file() and (tmp_path / "star-and-ring.png").is_file()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--sets", "heart"], "unknown concept sets or kinds ['heart']"),
        (["--kinds", "lora", "--model", "x"], "drop --model"),
        (["--grid-prompts", "star:9"], "--grid-prompts 'star:9'"),
        (["--adapter-weight", "0"], "adapter weight must be a positive number"),
    ],
)
def test_bench_personalization_refuses_before_loading(tmp_path, capsys, extra, needle):
    from ait2i.cli.bench import main as bench_main

    assert bench_main(["personalization", *extra, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error:") and needle in err
    assert not (tmp_path / "run").exists()
