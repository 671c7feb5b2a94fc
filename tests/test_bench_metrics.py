"""Benchmark metrics: arithmetic against hand-computed values, tiny random CLIP/BLIP/OWL-ViT models, scoring."""

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ait2i.bench import metrics as M
from ait2i.bench.scoring import compare_runs, score_run, summarize

CB_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "t2i-compbench"
needs_cb = pytest.mark.skipif(not (CB_DIR / "color_val.txt").is_file(), reason="shared T2I-CompBench copies absent")


# -- pure arithmetic -----------------------------------------------------------------------------------------------
def test_templates_and_article_cleanup():
    assert len(M.IMAGENET_TEMPLATES) == 80 and len(set(M.IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in M.IMAGENET_TEMPLATES)
    texts = M.template_texts("a cat")
    assert texts[0] == "a bad photo of a cat."  # "of a a cat" -> "of a cat"
    assert texts[M.IMAGENET_TEMPLATES.index("a tattoo of the {}.")] == "a tattoo of a cat."  # "the a" -> "a"
    assert texts[M.IMAGENET_TEMPLATES.index("a {} in a video game.")] == "a cat in a video game."
    assert texts[M.IMAGENET_TEMPLATES.index("a photo of many {}.")] == "a photo of many a cat."
    # plain substring replacement, as published: "panda and" loses its "a a" too
    assert M.template_texts("a panda and a cat", ["{}"]) == ["a pandand a cat"]


def test_split_prompt():
    assert M.split_prompt("a cat and a red bench") == ("a cat", "a red bench")
    assert M.split_prompt("a dog with a bow") == ("a dog", "a bow")
    assert M.split_prompt("a cat and a dog with a hat") == ("a cat", "a dog with a hat")  # " and " first
    assert M.split_prompt("a cat and a dog and a bird") == ("a cat", "a dog")  # first two parts
    with pytest.raises(ValueError, match="neither"):
        M.split_prompt("a cat")


def test_ensemble_normalises_averages_normalises():
    e = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # unit rows: (0.6, 0.8), (0, 1); mean (0.3, 0.9)
    expected = torch.tensor([0.3, 0.9]) / math.sqrt(0.9)
    assert torch.allclose(M.ensemble(e), expected, atol=1e-6)


def test_ane_clip_scores_min_object_rule():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    full, first, second = torch.tensor([0.6, 0.8]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    s = M.ane_clip_scores(img, full, first, second)
    assert torch.allclose(s["full"], torch.tensor([0.6, 0.8, 1.0]))
    assert torch.allclose(s["first"], torch.tensor([1.0, 0.0, 0.6]))
    assert torch.allclose(s["second"], torch.tensor([0.0, 1.0, 0.8]))
    assert torch.allclose(s["min_object"], torch.tensor([0.0, 0.0, 0.6]))


def test_yes_probability_arithmetic():
    logits = torch.zeros(2, 10)
    logits[0, 3] = math.log(2.0)  # yes = 3: weight 2; no = 4: weight 1 -> 2/3
    logits[1, 4] = math.log(3.0)  # yes 1, no 3 -> 1/4
    logits[:, 7] = 50.0  # a token that dominates the softmax does not change the yes/no ratio
    p = M.yes_probability(logits, yes_id=3, no_id=4)
    assert torch.allclose(p, torch.tensor([2 / 3, 1 / 4]), atol=1e-6)
    assert M.binding_score([0.5, 0.8]) == pytest.approx(0.4)
    assert M.binding_score([]) == 1.0


def test_vqa_questions_built_from_noun_phrases():
    assert M.__name__ and __import__("ait2i.bench.phrases", fromlist=["x"]).vqa_questions(
        "A blue bench and a green bowl."
    ) == ["a blue bench?", "a green bowl?"]


def test_spatial_rules_on_boxes():
    left, right = [0.0, 0.4, 0.2, 0.6], [0.7, 0.4, 0.9, 0.6]
    top, bottom = [0.4, 0.0, 0.6, 0.2], [0.4, 0.7, 0.6, 0.9]
    assert M.relation_holds(left, right, "on the left of") and not M.relation_holds(right, left, "on the left of")
    assert M.relation_holds(right, left, "on the right of")
    assert M.relation_holds(top, bottom, "on the top of") and M.relation_holds(bottom, top, "on the bottom of")
    assert not M.relation_holds(top, bottom, "on the left of")  # vertical offset dominates
    assert M.relation_holds(left, [0.15, 0.4, 0.35, 0.6], "next to") and not M.relation_holds(left, right, "near")
    dets = {"dog": [(0.9, left)], "cat": [(0.8, right)]}
    assert M.spatial_score(dets, "dog", "cat", "on the left of") == 1.0
    assert M.spatial_score(dets, "cat", "dog", "on the left of") == 0.0
    assert M.spatial_score({"dog": [(0.9, left)], "cat": []}, "dog", "cat", "on the left of") == 0.0
    assert M.nms([[0, 0, 1, 1], [0, 0, 1, 0.9], [2, 2, 3, 3]], [0.5, 0.9, 0.7]) == [1, 2]
    assert M.box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)


def test_numeracy_parsing_and_score():
    assert M.parse_counts("three lamps and two trains") == [(3, "lamp"), (2, "train")]
    assert M.parse_counts("one turtle") == [(1, "turtle")]
    assert M.parse_counts("three fish", {"fish": "fish"}) == [(3, "fish")]
    dets = {"lamp": [(0.9, [0, 0, 1, 1])] * 3, "train": [(0.9, [0, 0, 1, 1])]}
    assert M.numeracy_score(dets, [(3, "lamp"), (2, "train")]) == 0.5


@needs_cb
def test_rules_parse_every_real_spatial_and_numeracy_prompt():
    from ait2i.bench.compbench import compbench_prompts, plural_nouns

    for _, p, _ in compbench_prompts("spatial", CB_DIR):
        obj1, rel, obj2 = M.parse_spatial(p)
        assert obj1 and obj2 and rel in M.SPATIAL_RELATIONS and " " not in obj1.strip("'"), p
    plurals = plural_nouns(CB_DIR)
    for _, p, _ in compbench_prompts("numeracy", CB_DIR):
        counts = M.parse_counts(p, plurals)
        assert counts and all(n >= 1 for n, _ in counts), p
    assert M.parse_counts("two boys", plurals) == [(2, "boy")]


def test_summarize_interval_over_prompts():
    s = summarize({"a": [1.0, 3.0], "b": [5.0, 7.0]})
    assert s["mean"] == 4.0 and s["n_images"] == 4 and s["n_prompts"] == 2
    half = 1.96 * math.sqrt(8.0) / math.sqrt(2)  # prompt means 2 and 6: sd sqrt(8)
    assert s["half_width"] == pytest.approx(half) and s["ci95"] == pytest.approx([4 - half, 4 + half])
    assert summarize({"a": [1.0, 2.0]})["ci95"] is None


# -- tiny random models --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPImageProcessor

    from ait2i.testing import clip_tokenizer, tiny_clip_model

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return M.ClipEmbedder(tiny_clip_model(), clip_tokenizer(), proc)


@pytest.fixture(scope="module")
def tiny_blip():
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "yes",
        "no",
        "a",
        "an",
        "the",
        "picture",
        "of",
        "green",
        "blue",
        "bench",
        "bowl",
        "cat",
        "dog",
        "red",
        "?",
        "on",
        "grass",
    ]
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "vocab.txt"), "w") as fh:
        fh.write("\n".join(words) + "\n")
    tok = BertTokenizer(os.path.join(d, "vocab.txt"))
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    cfg = BlipConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "encoder_hidden_size": 32,
            "bos_token_id": tok.bos_token_id,
            "sep_token_id": tok.sep_token_id,
            "pad_token_id": tok.pad_token_id,
            "max_position_embeddings": 64,
        },
        vision_config={
            "hidden_size": 32,
            "image_size": 32,
            "patch_size": 8,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    return BlipForConditionalGeneration(cfg).eval(), BlipForQuestionAnswering(cfg).eval(), proc


@pytest.fixture(scope="module")
def tiny_owl():
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    from ait2i.testing import clip_tokenizer

    cfg = OwlViTConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    torch.manual_seed(0)
    ip = OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    return OwlViTForObjectDetection(cfg).eval(), OwlViTProcessor(image_processor=ip, tokenizer=clip_tokenizer(16))


def _images(n, seed=0, size=40):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_embedder_template_ensembling_and_min_object(tiny_clip):
    prompt = "a cat and a red bench"
    manual = M.ensemble(tiny_clip.texts(M.template_texts(prompt)))
    assert torch.allclose(tiny_clip.prompt(prompt), manual, atol=1e-6)
    assert not torch.allclose(manual, tiny_clip.texts([prompt])[0], atol=1e-3)  # templates change the embedding
    images = _images(3)
    emb = tiny_clip.images(images)
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    s = M.ane_clip(tiny_clip, prompt, images)
    first = (emb @ tiny_clip.prompt("a cat")).tolist()
    second = (emb @ tiny_clip.prompt("a red bench")).tolist()
    assert s["first"] == pytest.approx(first, abs=1e-6) and s["second"] == pytest.approx(second, abs=1e-6)
    assert s["min_object"] == pytest.approx([min(a, b) for a, b in zip(first, second)], abs=1e-6)
    assert s["full"] == pytest.approx((emb @ manual).tolist(), abs=1e-6)
    cs = M.clipscore(tiny_clip, prompt, images)
    assert cs == pytest.approx((emb @ tiny_clip.texts([prompt])[0]).tolist(), abs=1e-6)


def test_blip_caption_and_vqa_on_tiny_models(tiny_blip, tiny_clip):
    cap_model, vqa_model, proc = tiny_blip
    images = _images(2)
    caps = M.blip_captions(cap_model, proc, images, max_length=8, min_length=3)
    assert len(caps) == 2 and all(isinstance(c, str) and not c.startswith("a picture of") for c in caps)
    sims = M.caption_similarity(tiny_clip, "a green bench", caps)
    expected = (tiny_clip.texts(caps) @ tiny_clip.prompt("a green bench")).tolist()
    assert sims == pytest.approx(expected, abs=1e-6)
    qs = ["a green bench?", "a blue bowl?"]
    p = M.vqa_yes(vqa_model, proc, images, qs)
    assert len(p) == 2 and all(0.0 < x < 1.0 for x in p)
    single = [M.vqa_yes(vqa_model, proc, [im], [q])[0] for im, q in zip(images, qs)]
    assert p == pytest.approx(single, abs=1e-5)  # padding in a batch changes nothing
    with pytest.raises(ValueError, match="images for"):
        M.vqa_yes(vqa_model, proc, images, qs[:1])


def test_detect_on_tiny_owlvit(tiny_owl):
    model, proc = tiny_owl
    dets = M.detect(model, proc, _images(1)[0], ["dog", "cat"], threshold=0.0)
    assert set(dets) == {"dog", "cat"} and dets["dog"]
    scores = [s for s, _ in dets["dog"]]
    assert scores == sorted(scores, reverse=True)
    boxes = [b for _, b in dets["dog"]]
    assert all(M.box_iou(a, b) <= 0.5 for i, a in enumerate(boxes) for b in boxes[i + 1 :])


# -- scoring run folders -------------------------------------------------------------------------------------------
def _fake_run(out: Path, spec: str, seeds, limit, method="none", data_dir=None, skip=()):
    """A run folder with random images and a real manifest (no diffusion needed to test scoring)."""
    from ait2i.bench.generation import build_manifest, work_items, write_json_atomic
    from ait2i.bench.suites import load_suite
    from ait2i.config import get_config

    suite = load_suite(spec, data_dir).head(limit)
    out.mkdir(parents=True)
    common = {"num_inference_steps": 2, "guidance_scale": 7.5, "height": None, "width": None, "dtype": "float32"}
    write_json_atomic(out / "manifest.json", build_manifest(suite, seeds, "tiny", get_config(method), **common))
    items = work_items(suite, seeds)
    for k, (it, im) in enumerate(zip(items, _images(len(items), seed=len(str(out))))):
        if k in skip:
            continue
        (out / it.path).parent.mkdir(parents=True, exist_ok=True)
        im.save(out / it.path)
    return items


def test_score_ane_folder_and_compare(tmp_path, tiny_clip, tiny_blip):
    items = _fake_run(tmp_path / "a", "ane:animals_objects", (0, 1), 3)
    models = {"clip": tiny_clip, "blip": (tiny_blip[0], tiny_blip[2])}
    res = score_run(
        tmp_path / "a",
        ["clip", "blip"],
        models,
        progress=False,
        caption_kwargs={"max_length": 6, "min_length": 2, "num_beams": 1},
    )
    assert len(res["per_image"]) == len(items) == 6 and not res["missing"]
    row = next(r for r in res["per_image"] if r["path"] == items[0].path)
    image = Image.open(tmp_path / "a" / items[0].path).convert("RGB")
    direct = M.ane_clip(tiny_clip, items[0].prompt.text, [image])
    assert row["clip_full"] == pytest.approx(direct["full"][0], abs=1e-5)
    assert row["clip_min_object"] == pytest.approx(direct["min_object"][0], abs=1e-5)
    overall = res["results"]["clip_full"]["overall"]
    assert overall["mean"] == pytest.approx(np.mean([r["clip_full"] for r in res["per_image"]]))
    assert overall["n_prompts"] == 3 and overall["ci95"] is not None
    saved = json.loads((tmp_path / "a" / "scores.json").read_text())
    assert saved["results"].keys() == {"clip_full", "clip_min_object", "blip_caption"}
    assert "clip_full" in (tmp_path / "a" / "scores.md").read_text()

    _fake_run(tmp_path / "b", "ane:animals_objects", (0, 1), 3, method="ait2i")
    score_run(tmp_path / "b", ["clip"], {"clip": tiny_clip}, progress=False)
    table = compare_runs([tmp_path / "a", tmp_path / "b"])
    assert "none (a)" in table and "ait2i (b)" in table and "clip_min_object" in table
    with pytest.raises(ValueError, match="scores.json"):
        compare_runs([tmp_path / "a", tmp_path / "nothing"])


def test_score_reports_missing_images(tmp_path, tiny_clip):
    items = _fake_run(tmp_path / "r", "ane:animals", (0, 1), 2, skip=(1,))
    (tmp_path / "r" / items[2].path).write_bytes(b"not a png")
    with pytest.raises(ValueError, match="2 of 4") as e:
        score_run(tmp_path / "r", ["clip"], {"clip": tiny_clip}, progress=False)
    assert items[1].path in str(e.value) and items[2].path in str(e.value)
    assert not (tmp_path / "r" / "scores.json").exists()
    res = score_run(tmp_path / "r", ["clip"], {"clip": tiny_clip}, allow_missing=True, progress=False)
    assert sorted(res["missing"]) == sorted([items[1].path, items[2].path]) and len(res["per_image"]) == 2
    with pytest.raises(ValueError, match="do not apply"):
        score_run(tmp_path / "r", ["vqa"], {}, allow_missing=True, progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        score_run(tmp_path / "r", ["fid"], {}, allow_missing=True, progress=False)


@needs_cb
def test_score_compbench_vqa_is_product_of_question_probabilities(tmp_path, tiny_blip):
    items = _fake_run(tmp_path / "c", "t2i-compbench:color", (42, 43), 2, data_dir=CB_DIR)
    assert items[1].path == "samples/a green bench and a blue bowl_000001.png"
    _, vqa_model, proc = tiny_blip
    res = score_run(tmp_path / "c", None, {"vqa": (vqa_model, proc)}, data_dir=CB_DIR, progress=False)
    assert res["metrics"] == ["vqa"]
    row = next(r for r in res["per_image"] if r["path"] == items[1].path)
    image = Image.open(tmp_path / "c" / items[1].path).convert("RGB")
    p = M.vqa_yes(vqa_model, proc, [image, image], ["a green bench?", "a blue bowl?"])
    assert row["blip_vqa"] == pytest.approx(p[0] * p[1], abs=1e-5)


@needs_cb
def test_score_compbench_spatial_with_detector(tmp_path, tiny_owl, tiny_clip):
    _fake_run(tmp_path / "s", "t2i-compbench:spatial", (42,), 2, data_dir=CB_DIR)
    # the category folders of one run share a column in comparisons
    for cat in ("non_spatial", "numeracy"):
        _fake_run(tmp_path / "cb-none" / cat, f"t2i-compbench:{cat}", (42,), 2, data_dir=CB_DIR)
        score_run(tmp_path / "cb-none" / cat, ["clipscore"], {"clipscore": tiny_clip}, data_dir=CB_DIR, progress=False)
    table = compare_runs([tmp_path / "cb-none" / "non_spatial", tmp_path / "cb-none" / "numeracy"])
    assert "| metric | category | none (cb-none) |" in table
    assert "| clipscore | non_spatial |" in table and "| clipscore | numeracy |" in table
    res = score_run(tmp_path / "s", None, {"detect": tiny_owl}, data_dir=CB_DIR, detect_threshold=0.0, progress=False)
    assert res["metrics"] == ["detect"] and all(r["detect"] in (0.0, 1.0) for r in res["per_image"])
    assert any("NOT comparable" in n for n in res["notes"])
