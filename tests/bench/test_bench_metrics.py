"""Benchmark metrics: arithmetic against hand-computed values, tiny random CLIP/BLIP/OWL-ViT models, scoring."""

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ait2i.bench import metrics as M
from ait2i.boxes import xyxy_iou

CB_DIR = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "t2i-compbench"
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
    assert M.__name__ and __import__("ait2i.bench.chunks", fromlist=["x"]).vqa_questions(
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
    assert xyxy_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)


def test_numeracy_parsing_and_score():
    assert M.parse_counts("three lamps and two trains") == [(3, "lamp"), (2, "train")]
    assert M.parse_counts("one turtle") == [(1, "turtle")]
    assert M.parse_counts("three fish", {"fish": "fish"}) == [(3, "fish")]
    dets = {"lamp": [(0.9, [0, 0, 1, 1])] * 3, "train": [(0.9, [0, 0, 1, 1])]}
    assert M.numeracy_score(dets, [(3, "lamp"), (2, "train")]) == 0.5


@needs_cb
def test_rules_parse_every_real_spatial_and_numeracy_prompt():
    from ait2i.bench.suites.compbench import compbench_prompts, plural_nouns

    for _, p, _ in compbench_prompts("spatial", CB_DIR):
        obj1, rel, obj2 = M.parse_spatial(p)
        assert obj1 and obj2 and rel in M.SPATIAL_RELATIONS and " " not in obj1.strip("'"), p
    plurals = plural_nouns(CB_DIR)
    for _, p, _ in compbench_prompts("numeracy", CB_DIR):
        counts = M.parse_counts(p, plurals)
        assert counts and all(n >= 1 for n, _ in counts), p
    assert M.parse_counts("two boys", plurals) == [(2, "boy")]


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
    assert all(xyxy_iou(a, b) <= 0.5 for i, a in enumerate(boxes) for b in boxes[i + 1 :])
