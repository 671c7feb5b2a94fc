"""Scorers: what reads a generated image and gives it numbers, one row of values per image.

Every scorer has the same small contract: ``name``, the row ``keys`` it fills, ``score(images, item) -> list of
dicts`` (one per image of one prompt; ``item`` is the suite's :class:`~ait2i.bench.suites.Item`, so a scorer can
read per-item data such as the requested objects or boxes), and ``info()`` (the checkpoint and any deviation
from the original, recorded in ``scores.json``). The models are passed in, so tests run every scorer on tiny
random models; :func:`load_scorers` loads the public checkpoints of ``docs/benchmarks.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...shapes.check import check, match
from .. import metrics as M
from ..chunks import shipped_table, vqa_questions
from .layout import KEYS as LAYOUT_KEYS
from .layout import LayoutScorer

#: Hub checkpoints loaded by default (each can be overridden with ``--<name>-model``).
DEFAULT_MODELS = {
    "clip": "openai/clip-vit-base-patch16",
    "blip": "Salesforce/blip-image-captioning-base",
    "vqa": "Salesforce/blip-vqa-base",
    "clipscore": "openai/clip-vit-base-patch32",
    "detect": "google/owlvit-base-patch32",
    "shapes": None,
    "layout": None,
}
#: Row keys each scorer fills; the first key of a scorer is its headline.
KEYS = {
    "clip": ("clip_full", "clip_min_object"),
    "blip": ("blip_caption",),
    "vqa": ("blip_vqa",),
    "clipscore": ("clipscore",),
    "detect": ("detect",),
    "shapes": ("clean_binding", "exact_binding", "all_present", "object_recall", "extra_objects"),
    "layout": LAYOUT_KEYS,
}
SCORERS = tuple(KEYS)


def _model_name(model) -> str:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__


class ClipScorer:
    """AnE's CLIP full-prompt and minimum-object similarities (ViT-B/16, 80 ImageNet templates)."""

    name, keys = "clip", KEYS["clip"]

    def __init__(self, clip: M.ClipEmbedder):
        self.clip = clip

    def score(self, images, item) -> list[dict]:
        s = M.ane_clip(self.clip, item.prompt, images)
        return [{"clip_full": f, "clip_min_object": m} for f, m in zip(s["full"], s["min_object"])]

    def info(self) -> dict:
        return {"model": _model_name(self.clip.model)}


class BlipCaptionScorer:
    """AnE's caption similarity: a BLIP caption (3 beams, 10-30 tokens) against the templated prompt in CLIP."""

    name, keys = "blip", KEYS["blip"]

    def __init__(self, model, processor, clip: M.ClipEmbedder, **caption_kwargs):
        self.model, self.processor, self.clip, self.kwargs = model, processor, clip, caption_kwargs

    def score(self, images, item) -> list[dict]:
        caps = M.blip_captions(self.model, self.processor, images, **self.kwargs)
        sims = M.caption_similarity(self.clip, item.prompt, caps)
        return [{"blip_caption": s, "caption": c} for s, c in zip(sims, caps)]

    def info(self) -> dict:
        return {"model": _model_name(self.model), "clip": _model_name(self.clip.model)}


class VqaScorer:
    """T2I-CompBench's BLIP-VQA: one "<noun chunk>?" per spaCy chunk, the product of P(yes) over them."""

    name, keys = "vqa", KEYS["vqa"]

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        tok = processor.tokenizer
        enc = tok.convert_tokens_to_ids("[ENC]")
        self.has_enc = isinstance(enc, int) and enc != tok.unk_token_id

    def score(self, images, item) -> list[dict]:
        qs = vqa_questions(item.prompt)
        flat = M.vqa_yes(self.model, self.processor, [im for im in images for _ in qs], qs * len(images)) if qs else []
        return [
            {"blip_vqa": M.binding_score(flat[i * len(qs) : (i + 1) * len(qs)]), "questions": len(qs)}
            for i in range(len(images))
        ]

    def info(self) -> dict:
        enc = (
            "question encoder starts with [ENC], as BLIP was trained"
            if self.has_enc
            else "FALLBACK: the tokenizer has no [ENC] token; questions start with its [CLS] token instead"
        )
        return {"model": _model_name(self.model), "enc_token": enc, "noun_chunks": shipped_table()["provenance"]}


class ClipScoreScorer:
    """T2I-CompBench's CLIPScore: image-prompt cosine with ViT-B/32, no templates, no rescaling."""

    name, keys = "clipscore", KEYS["clipscore"]

    def __init__(self, clip: M.ClipEmbedder):
        self.clip = clip

    def score(self, images, item) -> list[dict]:
        return [{"clipscore": v} for v in M.clipscore(self.clip, item.prompt, images)]

    def info(self) -> dict:
        return {"model": _model_name(self.clip.model)}


class DetectScorer:
    """Spatial and numeracy with an open-vocabulary detector standing in for UniDet (not comparable)."""

    name, keys = "detect", KEYS["detect"]

    def __init__(self, model, processor, threshold: float = 0.1, plurals: dict | None = None):
        self.model, self.processor, self.threshold, self.plurals = model, processor, threshold, plurals or {}

    def score(self, images, item) -> list[dict]:
        out = []
        for im in images:
            if item.category == "spatial":
                obj1, rel, obj2 = M.parse_spatial(item.prompt)
                dets = M.detect(self.model, self.processor, im, [obj1, obj2], self.threshold)
                out.append({"detect": M.spatial_score(dets, obj1, obj2, rel)})
            else:
                counts = M.parse_counts(item.prompt, self.plurals)
                dets = M.detect(self.model, self.processor, im, [o for _, o in counts], self.threshold)
                out.append({"detect": M.numeracy_score(dets, counts)})
        return out

    def info(self) -> dict:
        return {"model": _model_name(self.model), "threshold": self.threshold, "note": "UniDet stand-in"}


class ShapesScorer:
    """The ShapesWorld checker: which requested objects are present with their colour and shape, and extras."""

    name, keys = "shapes", KEYS["shapes"]
    #: summaries read every image again (:func:`~ait2i.bench.runner.rescore_rows`): cheap and deterministic
    rescore = True

    def __init__(self, checker=None):
        self.checker = checker or check

    def score(self, images, item) -> list[dict]:
        out = []
        for im in images:
            found = self.checker(im)
            m = match(found, item.data["objects"])
            out.append(
                {
                    "clean_binding": float(m["clean_binding"]),
                    "exact_binding": float(m["exact_binding"]),
                    "all_present": float(m["all_present"]),
                    "object_recall": float(m["recall"]),
                    "extra_objects": float(m["has_extra"]),
                    "detections": [d.to_dict() for d in found],
                }
            )
        return out

    def info(self) -> dict:
        return {"model": "ait2i.shapes.check (deterministic)"}


def load_scorers(
    names: Sequence[str],
    device=None,
    model_names: dict | None = None,
    *,
    data_dir=None,
    detect_threshold: float = 0.1,
) -> dict:
    """Load the scorers ``names`` with their public checkpoints (see :data:`DEFAULT_MODELS`)."""
    import torch
    import transformers as T

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = {**DEFAULT_MODELS, **(model_names or {})}
    clips: dict[str, M.ClipEmbedder] = {}

    def clip(name):
        if name not in clips:
            proc = T.CLIPProcessor.from_pretrained(name)
            clips[name] = M.ClipEmbedder(
                T.CLIPModel.from_pretrained(name).to(device), proc.tokenizer, proc.image_processor
            )
        return clips[name]

    out = {}
    for n in names:
        name = models[n]
        try:
            if n == "clip":
                out[n] = ClipScorer(clip(name))
            elif n == "clipscore":
                out[n] = ClipScoreScorer(clip(name))
            elif n == "blip":
                model = T.BlipForConditionalGeneration.from_pretrained(name).to(device).eval()
                out[n] = BlipCaptionScorer(model, T.BlipProcessor.from_pretrained(name), clip(models["clip"]))
            elif n == "vqa":
                model = T.BlipForQuestionAnswering.from_pretrained(name).to(device).eval()
                out[n] = VqaScorer(model, T.BlipProcessor.from_pretrained(name))
            elif n == "detect":
                from ..suites.compbench import plural_nouns

                model = T.AutoModelForZeroShotObjectDetection.from_pretrained(name).to(device).eval()
                plurals = plural_nouns(data_dir)
                out[n] = DetectScorer(model, T.AutoProcessor.from_pretrained(name), detect_threshold, plurals)
            elif n == "shapes":
                out[n] = ShapesScorer()
            elif n == "layout":
                out[n] = LayoutScorer()
            else:
                raise ValueError(f"unknown scorer {n!r}; expected some of {', '.join(SCORERS)}")
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - any loading failure gets the same clear message
            raise ValueError(f"could not load the {n} model {name!r}: {type(e).__name__}: {e}") from None
    return out
