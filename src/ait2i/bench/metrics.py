"""The published metrics of AnE and T2I-CompBench++, on transformers models passed in by the caller.

AnE (Chefer et al., 2023), CLIP ViT-B/16:

* **full-prompt similarity**: cosine between the image embedding and the prompt's text embedding averaged over
  the 80 ImageNet templates (each template embedding normalised, averaged, normalised again);
* **minimum-object similarity**: the prompt split at its first ``" and "`` (else ``" with "``) into two
  sub-prompts ("a cat", "a red bench"), each embedded the same way; per image, the smaller of the two
  similarities;
* **caption similarity**: a BLIP caption of the image (beam search, 3 beams, 10-30 tokens, prompt "a picture of
  " removed) embedded by CLIP without templates, cosine with the templated prompt embedding.

T2I-CompBench++ (Huang et al., 2023/2025):

* **BLIP-VQA** (colour, shape, texture): for each noun phrase of the prompt, the question ``"<phrase>?"``;
  ``P(yes) / (P(yes) + P(no))`` from the answer decoder's first-token distribution; the image's score is the
  product over its questions;
* **CLIPScore** (non-spatial): cosine between the CLIP ViT-B/32 image and (untemplated) prompt embeddings;
* **detection** (spatial, numeracy): the original uses UniDet; here an open-vocabulary detector from transformers
  (OWL-ViT by default) stands in, with the relation and counting rules written below. Its numbers are **not
  comparable** with the published UniDet numbers.

Every function takes the models as arguments, so tests run them on tiny random models built from configs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from ..boxes import xyxy_iou
from .chunks import chunks_of

# fmt: off
#: The 80 prompt templates of CLIP's ImageNet zero-shot evaluation, in their published order.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
# fmt: on
#: BLIP captioning settings of the AnE evaluation (LAVIS ``blip_caption``/``base_coco`` defaults).
CAPTION_PROMPT = "a picture of "
CAPTION_KWARGS = {"num_beams": 3, "max_length": 30, "min_length": 10, "repetition_penalty": 1.0}


# -- text handling ------------------------------------------------------------------------------------------------
def template_texts(text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> list[str]:
    """``template.format(text)`` for each template, then the AnE evaluation's article clean-up: every ``"a a"``
    becomes ``"a"``, then every ``"the a"`` becomes ``"a"`` (plain substring replacement, as published)."""
    return [t.format(text).replace("a a", "a").replace("the a", "a") for t in templates]


def split_prompt(prompt: str) -> tuple[str, str]:
    """The two sub-prompts of the minimum-object metric: split at ``" and "`` if present, else ``" with "``;
    the first two parts are kept."""
    for sep in (" and ", " with "):
        if sep in prompt:
            parts = prompt.split(sep)
            return parts[0], parts[1]
    raise ValueError(f"cannot split {prompt!r} into two objects: it has neither ' and ' nor ' with '")


def ensemble(embeddings: torch.Tensor) -> torch.Tensor:
    """Template ensembling: normalise each row of ``embeddings`` (T, D), average, normalise -> (D,)."""
    e = embeddings.float()
    e = e / e.norm(dim=-1, keepdim=True)  # (T, D)
    m = e.mean(dim=0)  # (D,)
    return m / m.norm()


def _features(out) -> torch.Tensor:
    """Projected features from ``get_text_features``/``get_image_features`` (a tensor, or an output whose
    ``pooler_output`` holds them, depending on the transformers version)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# -- CLIP ----------------------------------------------------------------------------------------------------------
class ClipEmbedder:
    """Normalised CLIP embeddings of texts and images.

    Args:
        model (`transformers.CLIPModel`): e.g. ``openai/clip-vit-base-patch16`` (AnE) or ``-patch32`` (CLIPScore).
        tokenizer: its tokenizer (``CLIPTokenizer``).
        image_processor: its image processor (``CLIPImageProcessor``).
        device (*optional*): where the model is; defaults to the model's device.
    """

    def __init__(self, model, tokenizer, image_processor, device=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = device or next(model.parameters()).device
        self._prompts: dict[tuple, torch.Tensor] = {}  # template-ensembled embeddings, computed once per text

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit-norm text embeddings (77 tokens at most, as CLIP's context)."""
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        e = _features(self.model.get_text_features(**tok)).float()  # (N, D)
        return e / e.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def images(self, images: Sequence) -> torch.Tensor:
        """(N, D) unit-norm image embeddings."""
        px = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
        px = px.to(self.device, dtype=next(self.model.parameters()).dtype)
        e = _features(self.model.get_image_features(pixel_values=px)).float()  # (N, D)
        return e / e.norm(dim=-1, keepdim=True)

    def prompt(self, text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
        """(D,) template-ensembled embedding of ``text`` (cached)."""
        key = (text, tuple(templates))
        if key not in self._prompts:
            self._prompts[key] = ensemble(self.texts(template_texts(text, templates)))
        return self._prompts[key]


def ane_clip_scores(image_emb: torch.Tensor, full: torch.Tensor, first: torch.Tensor, second: torch.Tensor):
    """AnE CLIP scores of N images.

    Args:
        image_emb (`torch.Tensor`): (N, D) unit-norm image embeddings.
        full, first, second (`torch.Tensor`): (D,) ensembled embeddings of the prompt and its two sub-prompts.

    Returns:
        `dict[str, torch.Tensor]`: ``full``, ``first``, ``second`` and ``min_object`` = min(first, second), each (N,).
    """
    img = image_emb.float()
    s_full, s1, s2 = img @ full.float(), img @ first.float(), img @ second.float()  # (N,)
    return {"full": s_full, "first": s1, "second": s2, "min_object": torch.minimum(s1, s2)}


def ane_clip(clip: ClipEmbedder, prompt: str, images: Sequence) -> dict[str, list[float]]:
    """Full-prompt and minimum-object similarities of ``images`` made for ``prompt``."""
    first, second = split_prompt(prompt)
    scores = ane_clip_scores(clip.images(images), clip.prompt(prompt), clip.prompt(first), clip.prompt(second))
    return {k: v.tolist() for k, v in scores.items()}


# -- BLIP captions -------------------------------------------------------------------------------------------------
@torch.no_grad()
def blip_captions(model, processor, images: Sequence, prompt: str = CAPTION_PROMPT, **generate_kwargs) -> list[str]:
    """BLIP captions conditioned on ``prompt``, with the prompt removed from the text.

    Args:
        model (`transformers.BlipForConditionalGeneration`): e.g. ``Salesforce/blip-image-captioning-base``.
        processor (`transformers.BlipProcessor`): its processor.
        images (`Sequence[PIL.Image.Image]`): the images.
        prompt (`str`, *optional*, defaults to ``"a picture of "``): the text the decoder starts from.
        **generate_kwargs: override :data:`CAPTION_KWARGS` (3 beams, 10-30 tokens counting the prompt).
    """
    device = next(model.parameters()).device
    inputs = processor(
        images=[im.convert("RGB") for im in images], text=[prompt.strip()] * len(images), return_tensors="pt"
    )
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    ids = model.generate(**inputs, **{**CAPTION_KWARGS, **generate_kwargs})
    texts = processor.batch_decode(ids, skip_special_tokens=True)
    head = prompt.strip().lower()
    return [t.strip()[len(head) :].strip() if t.strip().lower().startswith(head) else t.strip() for t in texts]


def caption_similarity(clip: ClipEmbedder, prompt: str, captions: Sequence[str]) -> list[float]:
    """Cosine between each caption's CLIP embedding (no templates) and the template-ensembled prompt."""
    p = clip.prompt(prompt)  # (D,)
    return (clip.texts(list(captions)) @ p).tolist()


# -- BLIP-VQA ------------------------------------------------------------------------------------------------------
def yes_probability(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """``P(yes) / (P(yes) + P(no))`` from the answer decoder's first-token logits.

    Args:
        logits (`torch.Tensor`): (N, V) logits of the first answer token.
        yes_id, no_id (`int`): vocabulary ids of "yes" and "no".

    Returns:
        `torch.Tensor`: (N,) in [0, 1]; the softmax runs over the whole vocabulary first, as published (the
        ratio equals a softmax over the two logits).
    """
    p = torch.softmax(logits.float(), dim=-1)  # (N, V)
    return p[:, yes_id] / (p[:, yes_id] + p[:, no_id])


def binding_score(answers: Sequence[float]) -> float:
    """Attribute-binding score of one image: the product of its questions' yes-probabilities (1 with none)."""
    return math.prod(float(a) for a in answers)


@torch.no_grad()
def vqa_yes(model, processor, images: Sequence, questions: Sequence[str]) -> list[float]:
    """Yes-probability of each (image, question) pair with a BLIP VQA model.

    Args:
        model (`transformers.BlipForQuestionAnswering`): e.g. ``Salesforce/blip-vqa-base``.
        processor (`transformers.BlipProcessor`): its processor.
        images, questions: equally long sequences.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    if not questions:
        return []
    device = next(model.parameters()).device
    tok = processor.tokenizer
    inputs = processor(
        images=[im.convert("RGB") for im in images],
        text=list(questions),
        padding="longest",
        truncation=True,
        max_length=35,
        return_tensors="pt",
    )
    input_ids = inputs["input_ids"].to(device)
    mask = inputs["attention_mask"].to(device)
    enc_id = tok.convert_tokens_to_ids("[ENC]")
    if isinstance(enc_id, int) and enc_id != tok.unk_token_id:
        input_ids = input_ids.clone()
        input_ids[:, 0] = enc_id  # BLIP's question encoder starts with [ENC], as in its training
    px = inputs["pixel_values"].to(device, dtype=next(model.parameters()).dtype)
    image_embeds = model.vision_model(pixel_values=px)[0]  # (N, P, C)
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
    q = model.text_encoder(
        input_ids=input_ids,
        attention_mask=mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_mask,
        return_dict=False,
    )[0]  # (N, L, C)
    bos = torch.full((q.shape[0], 1), model.decoder_start_token_id, dtype=torch.long, device=device)
    out = model.text_decoder(input_ids=bos, encoder_hidden_states=q, encoder_attention_mask=mask, return_dict=True)
    logits = out.logits[:, 0, :]  # (N, V)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    return yes_probability(logits, yes, no).tolist()


# -- CLIPScore -----------------------------------------------------------------------------------------------------
def clipscore(clip: ClipEmbedder, prompt: str, images: Sequence) -> list[float]:
    """T2I-CompBench's CLIPScore: cosine between image and prompt embeddings (no templates, no rescaling)."""
    return (clip.images(images) @ clip.texts([prompt])[0]).tolist()


# -- detection stand-in (spatial, numeracy) ------------------------------------------------------------------------
SPATIAL_RELATIONS = (
    "on the left of",
    "on the right of",
    "on the top of",
    "on the bottom of",
    "next to",
    "near",
    "on side of",
)
_NUMBERS = {
    w: k for k, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))
}
_NUMBERS.update({"a": 1, "an": 1})


def parse_spatial(prompt: str) -> tuple[str, str, str]:
    """``"a dog on the left of a cat"`` -> ``("dog", "on the left of", "cat")``."""
    for rel in SPATIAL_RELATIONS:
        head, sep, tail = prompt.partition(f" {rel} ")
        if sep:
            strip = re.compile(r"^(a|an|the)\s+", re.IGNORECASE)
            return strip.sub("", head.strip()), rel, strip.sub("", tail.strip().rstrip("."))
    raise ValueError(f"no spatial relation of {SPATIAL_RELATIONS} in {prompt!r}")


def relation_holds(box1: Sequence[float], box2: Sequence[float], relation: str, near: float = 0.3) -> bool:
    """Whether object 1 (``box1``) stands in ``relation`` to object 2 (``box2``); boxes are xyxy in image-size
    units (0-1, y pointing down).

    Left/right/top/bottom: the centres differ more along that axis than along the other, in that direction.
    "next to", "near", "on side of": the centres are closer than ``near`` (0.3 of the image side, about the
    150 px of T2I-CompBench's rule at 512 px).
    """
    cx1, cy1 = (box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2
    cx2, cy2 = (box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2
    dx, dy = cx2 - cx1, cy2 - cy1  # from object 1 to object 2
    if relation == "on the left of":
        return dx > 0 and abs(dx) > abs(dy)
    if relation == "on the right of":
        return dx < 0 and abs(dx) > abs(dy)
    if relation == "on the top of":
        return dy > 0 and abs(dy) > abs(dx)
    if relation == "on the bottom of":
        return dy < 0 and abs(dy) > abs(dx)
    if relation in ("next to", "near", "on side of"):
        return math.hypot(dx, dy) < near
    raise ValueError(f"unknown relation {relation!r}; expected one of {SPATIAL_RELATIONS}")


def nms(boxes: Sequence[Sequence[float]], scores: Sequence[float], iou: float = 0.5) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    keep: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(xyxy_iou(boxes[i], boxes[j]) <= iou for j in keep):
            keep.append(i)
    return keep


@torch.no_grad()
def detect(model, processor, image, labels: Sequence[str], threshold: float = 0.1) -> dict[str, list[tuple]]:
    """Open-vocabulary detections of ``labels`` in ``image``: ``{label: [(score, xyxy box), ...]}``, best first,
    boxes in image-size units (0-1), duplicates removed by per-label NMS (IoU 0.5).

    Args:
        model: a transformers zero-shot detector (``OwlViTForObjectDetection``, ``Owlv2ForObjectDetection``).
        processor: its processor.
        labels (`Sequence[str]`): object names; each is queried as "a photo of a <label>".
        threshold (`float`, *optional*, defaults to 0.1): minimum detection score.
    """
    device = next(model.parameters()).device
    queries = [[f"a photo of a {label}" for label in labels]]
    inputs = processor(text=queries, images=image.convert("RGB"), return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    outputs = model(**inputs)
    size = torch.tensor([[image.height, image.width]], device=device)
    post = getattr(processor, "post_process_grounded_object_detection", None) or processor.post_process_object_detection
    res = post(outputs=outputs, threshold=threshold, target_sizes=size)[0]
    out: dict[str, list[tuple]] = {label: [] for label in labels}
    for score, lab, box in zip(res["scores"].tolist(), res["labels"].tolist(), res["boxes"].tolist()):
        w, h = image.width, image.height
        out[labels[int(lab)]].append((score, [box[0] / w, box[1] / h, box[2] / w, box[3] / h]))
    for label, found in out.items():
        keep = nms([b for _, b in found], [s for s, _ in found])
        out[label] = [found[k] for k in keep]
    return out


def spatial_score(detections: dict[str, list[tuple]], obj1: str, obj2: str, relation: str) -> float:
    """1 if both objects are detected and their best boxes satisfy ``relation``, else 0."""
    if not detections.get(obj1) or not detections.get(obj2):
        return 0.0
    return float(relation_holds(detections[obj1][0][1], detections[obj2][0][1], relation))


def parse_counts(prompt: str, plural_to_singular: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """``"three lamps and two trains"`` -> ``[(3, "lamp"), (2, "train")]``: the noun chunks (spaCy, see
    :mod:`ait2i.bench.chunks`) that start with a number word."""
    table = plural_to_singular or {}
    out = []
    for text, *_ in chunks_of(prompt):
        words = text.split()
        n = _NUMBERS.get(words[0].lower())
        if n is None or len(words) < 2:
            continue
        noun = words[-1].lower()
        singular = table.get(noun) or (noun[:-1] if n != 1 and noun.endswith("s") and not noun.endswith("ss") else noun)
        out.append((n, " ".join([*words[1:-1], singular])))
    return out


def numeracy_score(detections: dict[str, list[tuple]], counts: Sequence[tuple[int, str]]) -> float:
    """Fraction of the prompt's (count, object) pairs whose detected count is exactly right."""
    if not counts:
        raise ValueError("the prompt names no counted object")
    return sum(len(detections.get(obj, [])) == n for n, obj in counts) / len(counts)
