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


def test_lora_save_loads_with_load_lora_weights_and_changes_the_output(tmp_path):
    pipe = load_pipeline()
    base = _image(pipe, "a red star")
    tr = P.Trainer(pipe, "lora", batch_size=2, prior_n=2, prior_steps=1, lr=5e-2)
    tr.train_step(10)
    trained = _image(pipe, "a red star")
    path = tr.save(tmp_path)
    assert path.name == P.LORA_FILE and path.is_file()

    fresh = load_pipeline()
    fresh.load_lora_weights(str(tmp_path))
    loaded = _image(fresh, "a red star")
    assert np.abs(loaded - base).max() > 1e-3  # the LoRA changes the picture
    np.testing.assert_allclose(loaded, trained, atol=1e-4)  # ... exactly as it did in training


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
    assert not s["concept"] and s["any_star"]
    assert P.measure_prompt((("red", "star"), ("blue", "square")), "<star>") == (
        "a red <star> and a blue square",
        ["red <star>", "blue square"],
    )


def test_shipped_concepts_have_a_readme():
    d = P.concepts_dir()
    if not d.exists():
        pytest.skip("no shipped concepts")
    assert (d / "README.md").is_file()
    assert Path(d / "README.md").read_text().count("python -m ait2i.shapes.personalize") >= 2
