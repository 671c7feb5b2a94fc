"""Personalized concepts on ShapesWorld (ait2i.shapes.personalize): textual inversion, LoRA, safe loading."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ait2i.shapes import personalize as P
from ait2i.shapes.model import load_pipeline


def _image(pipe, prompt, steps=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=4.0, generator=g, output_type="np").images[0]


def test_concept_scenes_are_stars_in_every_colour_and_deterministic():
    scenes = P.concept_scenes(0)
    assert len(scenes) == P.NUM_RENDERS
    stars = [o for s in scenes for o in s.objects if o.shape == "star"]
    assert len(stars) == P.NUM_RENDERS  # one star per render
    assert {o.color for o in stars} == set(P.R.COLORS)
    assert [o.cx for s in P.concept_scenes(0) for o in s.objects] == [o.cx for s in scenes for o in s.objects]
    rng = np.random.default_rng(0)
    cap = P.concept_caption(scenes[1], P.PLACEHOLDER, rng)
    assert P.PLACEHOLDER in cap and " and " in cap
    assert P.expand("a red <star>") == "a red <star> <star>_1"


def test_ring_concept_scenes_are_rings_and_star_scenes_are_unchanged():
    rings = P.concept_scenes(0, shape="ring")
    stars = P.concept_scenes(0)
    assert len(rings) == P.NUM_RENDERS
    assert [[o.shape for o in s.objects].count("ring") for s in rings] == [1] * P.NUM_RENDERS
    assert {o.color for s in rings for o in s.objects if o.shape == "ring"} == set(P.R.COLORS)
    assert not any(o.shape == "star" for s in rings for o in s.objects)
    # the star renders are those the shipped concepts were trained on (first object of render 1, seed 0)
    assert [o.shape for o in stars[1].objects] == [o.shape.replace("ring", "star") for o in rings[1].objects]
    cap = P.concept_caption(rings[1], "ring", np.random.default_rng(0), "ring")
    assert " ring" in cap and " and " in cap
    more_pairs = P.concept_scenes(0, n=64, shape="ring", alone_every=4)
    alone = [s for s in more_pairs if len(s.objects) == 1]
    assert len(alone) == 17 and {s.objects[0].color for s in alone} == set(P.R.COLORS)  # about one in four
    pairs = [s for s in more_pairs if len(s.objects) == 2]
    assert {o.shape for s in pairs for o in s.objects} == {"ring", *P.R.SHAPES}
    with pytest.raises(ValueError, match="alone_every"):
        P.concept_scenes(0, alone_every=0)
    with pytest.raises(ValueError, match="unknown concept shape 'heart'"):
        P.concept_scenes(0, shape="heart")
    assert P.placeholder("ring") == "<ring>"


def test_ring_is_one_unseen_clip_token():
    pipe = load_pipeline()
    assert pipe.tokenizer.tokenize("a red ring and a blue star") == [
        "a</w>", "red</w>", "ring</w>", "and</w>", "a</w>", "blue</w>", "star</w>",
    ]  # fmt: skip
    words = {w for i in range(2000) for w in P.R.caption(P.R.sample_training_scene(i), i).replace(",", "").split()}
    assert words.isdisjoint(P.CONCEPT_SHAPES)  # no training caption names a star or a ring


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
    assert path.name == P.TI_FILE
    fresh = load_pipeline()
    fresh.load_textual_inversion(str(path), token=P.PLACEHOLDER)
    ids = fresh.tokenizer.convert_tokens_to_ids([P.PLACEHOLDER, f"{P.PLACEHOLDER}_1"])
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
    assert path.name == P.LORA_FILE and path.is_file()
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


def test_two_loras_load_as_named_adapters_and_both_act(tmp_path):
    for shape, seed in (("star", 0), ("ring", 1)):
        pipe = load_pipeline()
        tr = P.Trainer(pipe, "lora", seed=seed, batch_size=2, prior_n=2, prior_steps=1, lr=5e-2, shape=shape,
                       targets="attn-conv", rank=2)  # fmt: skip
        tr.train_step(10)
        tr.train_step(10)
        tr.save(tmp_path / f"{shape}-lora")
    prompt = "a red star and a blue ring"
    both = P._concept_pipe(P.MULTI, "lora", tmp_path)
    assert sorted(both.get_active_adapters()) == ["ring-lora", "star-lora"]
    img_both = _image(both, prompt)
    singles = []
    for shape in P.CONCEPT_SHAPES:
        one = P._concept_pipe(shape, "lora", tmp_path)
        assert one.get_active_adapters() == [f"{shape}-lora"]
        singles.append(_image(one, prompt))
    base = _image(load_pipeline(), prompt)
    for img in singles + [base]:
        assert np.abs(img_both - img).max() > 1e-3  # both adapters act on the picture
    half = P._concept_pipe(P.MULTI, "lora", tmp_path, adapter_weight=0.5)
    assert np.abs(_image(half, prompt) - img_both).max() > 1e-3  # the adapter weight is applied
    both.set_adapters(["star-lora"])
    np.testing.assert_allclose(_image(both, prompt), singles[0], atol=1e-4)  # switching off the ring's LoRA
    with pytest.raises(ValueError, match="no ring-ti"):
        P._concept_pipe("ring", "ti", tmp_path)


def test_load_concept_refuses_anything_but_safetensors(tmp_path):
    pipe = load_pipeline()
    vec = {"<star>": torch.zeros(1, 128)}
    torch.save(vec, tmp_path / "learned_embeds.bin")
    with pytest.raises(ValueError, match="not a safetensors file"):
        P.load_concept(pipe, tmp_path / "learned_embeds.bin", "ti")
    with pytest.raises(ValueError, match="not safetensors and are refused"):
        P.load_concept(pipe, tmp_path, "ti")  # a folder holding only the pickle
    fake = tmp_path / "fake"
    fake.mkdir()
    torch.save(vec, fake / "pytorch_lora_weights.safetensors")  # a pickle under the safetensors name
    with pytest.raises(ValueError, match="not a safetensors file"):
        P.load_concept(pipe, fake, "lora")
    with pytest.raises(ValueError, match="unknown concept kind"):
        P.load_concept(pipe, fake, "dreambooth")
    with pytest.raises(ValueError, match="does not exist"):
        P.load_concept(pipe, tmp_path / "missing.safetensors", "ti")
    assert P.loaded_placeholders(pipe.tokenizer) == []  # nothing was loaded


def test_load_concept_loads_a_safetensors_embedding_and_names_placeholders(tmp_path):
    from safetensors.torch import save_file

    pipe = load_pipeline()
    save_file({"<star>": torch.randn(2, 128)}, str(tmp_path / "learned_embeds.safetensors"))
    assert P.load_concept(pipe, tmp_path, "ti") == "<star>"
    assert P.loaded_placeholders(pipe.tokenizer) == ["<star>"]
    P.check_placeholders(pipe.tokenizer, "a red <star> and a blue square", ["red <star>", "blue square"])
    with pytest.raises(ValueError, match=r"'<heart>'.*not loaded.*loaded placeholders: \['<star>'\]"):
        P.check_placeholders(pipe.tokenizer, "a red <star> and a blue <heart>", ["red <star>", "blue <heart>"])
    with pytest.raises(ValueError, match="'<heart>'"):
        P.check_placeholders(pipe.tokenizer, "a red star", ["<heart>"])


def test_unloaded_placeholder_without_a_concept_says_none_loaded():
    from ait2i.testing import clip_tokenizer

    with pytest.raises(ValueError, match="loaded placeholders: none"):
        P.check_placeholders(clip_tokenizer(), "a red <star>", ["red <star>"])


def _shipped(kind):
    folder = P.concepts_dir() / f"star-{kind}"
    if not (folder / (P.TI_FILE if kind == "ti" else P.LORA_FILE)).is_file():
        pytest.skip(f"no shipped {kind} concept")
    return folder


@pytest.mark.slow
def test_shipped_ti_concept_is_a_subject_and_guides():
    import ait2i
    from ait2i.subjects import resolve_subjects

    pipe = load_pipeline()
    token = P.load_concept(pipe, _shipped("ti"), "ti")
    assert token == P.PLACEHOLDER
    prompt = pipe.maybe_convert_prompt("a red <star> and a blue square", pipe.tokenizer)
    subj = resolve_subjects(pipe.tokenizer, prompt, ["red <star>", "blue square"])
    assert len(subj[0].tokens) == P.TI_VECTORS  # the multi-vector placeholder is one subject
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
    assert P.load_concept(pipe, _shipped("lora"), "lora") == P.LORA_WORD
    assert np.abs(_image(pipe, "a red star") - base).max() > 1e-3
    out = ait2i.generate(
        pipe, "a red star and a blue square", ["red star", "blue square"], "attend-and-excite",
        num_inference_steps=3, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert len(out.images) == 1


def test_score_image_reads_a_rendered_star_scene():
    from ait2i.shapes import render as R

    scene = R.Scene([R.ShapeSpec("red", "star", 9, 9, 14), R.ShapeSpec("blue", "square", 24, 24, 11)], 40)
    s = P.score_image(R.render(scene), (("red", "star"), ("blue", "square")))
    assert s["concept"] and s["exact_binding"] and s["others_exact"] == 1.0 and not s["has_extra"]
    s = P.score_image(R.render(scene), (("green", "star"), ("blue", "square")))
    assert not s["concept"] and not s["concept_star"] and s["any_concept"] and s["concept_ring"] is None
    assert P.measure_prompt((("red", "star"), ("blue", "square")), "<star>") == (
        "a red <star> and a blue square",
        ["red <star>", "blue square"],
    )


def test_score_image_reads_rings_two_concepts_and_bleed():
    from ait2i.shapes import render as R

    S = R.ShapeSpec
    ring = R.render(R.Scene([S("red", "ring", 9, 9, 13), S("blue", "square", 24, 24, 11)], 40))
    s = P.score_image(ring, (("red", "ring"), ("blue", "square")))
    assert s["concept"] and s["concept_ring"] and s["concept_star"] is None and s["bleed"] is None
    assert s["exact_binding"] and s["others_exact"] == 1.0
    good = R.render(R.Scene([S("red", "star", 9, 9, 14), S("blue", "ring", 23, 22, 13)], 40))
    req = (("red", "star"), ("blue", "ring"))
    s = P.score_image(good, req)
    assert s["concept"] and s["concept_star"] and s["concept_ring"] and s["bleed"] is False
    assert s["others_exact"] is None and s["clean_binding"]
    swapped = R.render(R.Scene([S("blue", "star", 9, 9, 14), S("red", "ring", 23, 22, 13)], 40))
    s = P.score_image(swapped, req)  # each shape in the other's colour
    assert not s["concept"] and not s["concept_star"] and not s["concept_ring"] and s["bleed"]
    assert s["concept_color"] and s["any_concept"]
    two_stars = R.render(R.Scene([S("red", "star", 9, 9, 14), S("blue", "star", 23, 22, 13)], 40))
    s = P.score_image(two_stars, req)  # the star drawn where the ring should be
    assert s["concept_star"] and not s["concept_ring"] and s["bleed"]
    with pytest.raises(ValueError, match="no concept shape"):
        P.score_image(good, (("red", "circle"),))
    assert P.measure_prompts("ring")[2] == (("red", "ring"), ("blue", "square"))
    assert P.measure_prompt(P.MULTI_PROMPTS[0], "ti")[0] == "a red <star> and a blue <ring>"
    assert P.measure_prompt(P.MULTI_PROMPTS[0], "lora") == ("a red star and a blue ring", ["red star", "blue ring"])


def test_report_rescores_rows_from_their_images(tmp_path):
    import json

    from ait2i.shapes import render as R

    (tmp_path / "images").mkdir()
    rows = []
    for seed, (shape, color) in enumerate((("ring", "red"), ("circle", "red"), ("ring", "green"))):
        name = f"images/ring_lora_none_0_{seed}.png"
        R.render(R.Scene([R.ShapeSpec(color, shape, 16, 16, 13)], 40)).save(tmp_path / name)
        rows.append({"concept_set": "ring", "kind": "lora", "method": "none", "prompt": "a red ring",
                     "prompt_index": 0, "seed": seed, "image": name, "concept": True})  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = P.load_rows(tmp_path)
    assert [r["concept"] for r in got] == [True, False, False]  # the stale True is read again from the images
    assert [r["concept_color"] for r in got] == [True, True, False]
    table = P.summary_table(tmp_path, got)
    assert "### ring" in table and "| lora | none | 1 x 3 | 0.333" in table
    path, legend = P.save_grid(tmp_path, tmp_path / "grid.png", [("ring", 0)], seeds=range(3), rows=got)
    assert path.is_file() and legend == ["row 1: 'a red ring' / lora / none"]
    with pytest.raises(ValueError, match="no rows"):
        P.save_grid(tmp_path, tmp_path / "grid.png", [("ring", 0)], rows=got, kinds=["ti"])
    rows[0]["prompt"] = "a blue ring"
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="not that of its index"):
        P.load_rows(tmp_path)
    with pytest.raises(ValueError, match="--seeds"):
        P._parse_seeds("0-x")


def test_measure_refuses_to_mix_adapter_weights_in_one_folder(tmp_path):
    import json

    row = {"concept_set": "star", "kind": "lora", "method": "none", "prompt": "a red star", "seed": 0,
           "prompt_index": 0, "image": "images/x.png", "adapter_weight": 0.7}  # fmt: skip
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="adapter weight"):
        P.main(["measure", "--out", str(tmp_path), "--sets", "star", "--kinds", "lora"])


def test_shipped_concepts_have_a_readme():
    d = P.concepts_dir()
    if not d.exists():
        pytest.skip("no shipped concepts")
    assert (d / "README.md").is_file()
    assert Path(d / "README.md").read_text().count("python -m ait2i.shapes.personalize") >= 2


@pytest.mark.slow
def test_readme_personalization_example_runs(tmp_path, monkeypatch):
    """The README's personalized-concept example runs as written (both shipped LoRAs, AI-T2I)."""
    import re

    _shipped("lora")
    if not (P.concepts_dir() / "ring-lora" / P.LORA_FILE).is_file():
        pytest.skip("no shipped ring LoRA")
    readme = Path(__file__).resolve().parents[1] / "README.md"
    m = re.search(r"<!-- example: personalization -->\n```python\n(.*?)```", readme.read_text(), re.S)
    assert m, "README.md has no personalization example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(m.group(1), "README.md:personalization", "exec"), namespace)  # noqa: S102 - our own docs
    assert sorted(namespace["pipe"].get_active_adapters()) == ["ring", "star"]
    assert (tmp_path / "ring.png").is_file() and (tmp_path / "star-and-ring.png").is_file()
