"""Score a benchmark run folder with the published metrics, and put several runs side by side.

``score_run`` reads the folder's manifest, checks that every planned image is there (or lists the missing
ones), computes the requested metrics per image, and writes ``scores.json`` (per-image values, per-category and
overall means with 95% intervals) and ``scores.md`` (a table). Intervals are over prompts: the images of a prompt
are averaged first (they share the prompt, so they are not independent), then ``mean +/- 1.96 * sd / sqrt(n)`` of
the prompt means. The reported mean is the mean over all images, the published aggregate (equal to the mean of
prompt means when every prompt has the same number of seeds).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from . import metrics as M
from .generation import MANIFEST, WorkItem, png_is_valid, work_items, write_json_atomic
from .phrases import vqa_questions
from .suites import load_suite

#: Hub models used by default (each can be overridden).
DEFAULT_MODELS = {
    "clip": "openai/clip-vit-base-patch16",
    "blip": "Salesforce/blip-image-captioning-base",
    "vqa": "Salesforce/blip-vqa-base",
    "clipscore": "openai/clip-vit-base-patch32",
    "detect": "google/owlvit-base-patch32",
}
METRICS = tuple(DEFAULT_MODELS)
#: Result keys each metric produces.
KEYS = {
    "clip": ("clip_full", "clip_min_object"),
    "blip": ("blip_caption",),
    "vqa": ("blip_vqa",),
    "clipscore": ("clipscore",),
    "detect": ("detect",),
}
#: Which metrics apply to which suite category ("ane" covers its three sets).
APPLICABLE = {
    "ane": ("clip", "blip"),
    "color": ("vqa", "clipscore"),
    "shape": ("vqa", "clipscore"),
    "texture": ("vqa", "clipscore"),
    "spatial": ("detect", "clipscore"),
    "numeracy": ("detect", "clipscore"),
    "non_spatial": ("clipscore",),
    "complex": ("vqa", "clipscore"),
    "3d_spatial": ("clipscore",),
}
#: The published metric of each category (3d_spatial's UniDet + depth and complex's 3-in-1 are not reproduced).
DEFAULTS = {
    "ane": ("clip", "blip"),
    "color": ("vqa",),
    "shape": ("vqa",),
    "texture": ("vqa",),
    "spatial": ("detect",),
    "numeracy": ("detect",),
    "non_spatial": ("clipscore",),
    "complex": ("vqa", "clipscore"),
    "3d_spatial": (),
}


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """The manifest of a run folder (``ValueError`` if it is not one)."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{run_dir} has no {MANIFEST}; is it a folder written by `ait2i bench generate`?")
    return json.loads(path.read_text())


def planned_items(manifest: dict, data_dir=None) -> list[WorkItem]:
    """Every (prompt, seed) the manifest's plan asks for."""
    items: list[WorkItem] = []
    limits = manifest.get("prompt_limit") or {}
    for cat, seeds in manifest["plan"].items():
        if manifest["suite_family"] == "ane":
            suite = load_suite(f"ane:{cat}")
        else:
            suite = load_suite(f"t2i-compbench:{cat}", data_dir)
        items += work_items(suite.head(limits.get(cat)), seeds)
    return items


def choose_metrics(manifest: dict, metrics: Sequence[str] | None) -> tuple[str, ...]:
    """Validate the requested metrics against the run's suite (or pick the published ones)."""
    where = "ane" if manifest["suite_family"] == "ane" else manifest["category"]
    if not metrics:
        chosen = DEFAULTS[where]
        if not chosen:
            raise ValueError(
                f"no implemented metric reproduces T2I-CompBench's {where} score (UniDet + depth); "
                "ask for --metrics clipscore for an indicative number"
            )
        return chosen
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; expected some of {', '.join(METRICS)}")
    wrong = [m for m in metrics if m not in APPLICABLE[where]]
    if wrong:
        raise ValueError(f"metric(s) {wrong} do not apply to {where}; use {', '.join(APPLICABLE[where])}")
    return tuple(dict.fromkeys(metrics))


def load_models(metrics: Sequence[str], device=None, names: dict[str, str] | None = None) -> dict:
    """Load the transformers models the metrics need from the Hub (or local folders).

    Args:
        metrics (`Sequence[str]`): names from :data:`METRICS`.
        device (*optional*): defaults to CUDA when available.
        names (`dict[str, str]`, *optional*): model id per metric, overriding :data:`DEFAULT_MODELS`.
    """
    import torch
    import transformers as T

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = {**DEFAULT_MODELS, **(names or {})}
    out = {}
    for m in dict.fromkeys([*metrics, *(["clip"] if "blip" in metrics else [])]):
        name = names[m]
        try:
            if m in ("clip", "clipscore"):
                model = T.CLIPModel.from_pretrained(name).to(device)
                proc = T.CLIPProcessor.from_pretrained(name)
                out[m] = M.ClipEmbedder(model, proc.tokenizer, proc.image_processor)
            elif m == "blip":
                out[m] = (
                    T.BlipForConditionalGeneration.from_pretrained(name).to(device).eval(),
                    T.BlipProcessor.from_pretrained(name),
                )
            elif m == "vqa":
                out[m] = (
                    T.BlipForQuestionAnswering.from_pretrained(name).to(device).eval(),
                    T.BlipProcessor.from_pretrained(name),
                )
            elif m == "detect":
                out[m] = (
                    T.AutoModelForZeroShotObjectDetection.from_pretrained(name).to(device).eval(),
                    T.AutoProcessor.from_pretrained(name),
                )
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"could not load the {m} model {name!r}: {type(e).__name__}: {e}") from None
    return out


def summarize(per_prompt: dict[str, list[float]]) -> dict:
    """Mean over images and a 95% interval over prompt means (see the module docstring)."""
    values = [v for vs in per_prompt.values() for v in vs]
    means = [statistics.fmean(vs) for vs in per_prompt.values() if vs]
    half = 1.96 * statistics.stdev(means) / math.sqrt(len(means)) if len(means) >= 2 else None
    mean = statistics.fmean(values) if values else float("nan")
    return {
        "mean": mean,
        "ci95": None if half is None else [mean - half, mean + half],
        "half_width": half,
        "n_images": len(values),
        "n_prompts": len(means),
    }


def _open(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def score_run(
    run_dir: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    models: dict | None = None,
    *,
    data_dir=None,
    allow_missing: bool = False,
    batch_size: int = 16,
    detect_threshold: float = 0.1,
    progress: bool = True,
    write: bool = True,
    model_names: dict[str, str] | None = None,
    device=None,
    caption_kwargs: dict | None = None,
) -> dict:
    """Score every image of a run folder.

    Args:
        run_dir: a folder written by ``ait2i bench generate``.
        metrics (`Sequence[str]`, *optional*): from :data:`METRICS`; defaults to the published metrics of the
            suite (AnE: clip, blip; colour/shape/texture: vqa; spatial/numeracy: detect; non-spatial: clipscore).
        models (`dict`, *optional*): metric name -> loaded model(s): ``ClipEmbedder`` for "clip"/"clipscore",
            ``(model, processor)`` for "blip", "vqa", "detect" ("blip" also needs "clip"). Loaded from the Hub
            with :func:`load_models` when omitted.
        data_dir (*optional*): folder of the fetched T2I-CompBench files.
        allow_missing (`bool`, *optional*, defaults to `False`): score the images present and list the missing
            ones instead of refusing.
        batch_size (`int`, *optional*, defaults to 16): images per model call.
        detect_threshold (`float`, *optional*, defaults to 0.1): detection score threshold.
        write (`bool`, *optional*, defaults to `True`): write ``scores.json`` and ``scores.md`` into ``run_dir``.
        model_names (`dict[str, str]`, *optional*), device: passed to :func:`load_models` when ``models`` is None.
        caption_kwargs (`dict`, *optional*): overrides of the BLIP captioning settings (tests use short captions).

    Returns:
        `dict`: the content of ``scores.json``.
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    chosen = choose_metrics(manifest, metrics)
    items = planned_items(manifest, data_dir)
    missing = [it.path for it in items if not (run_dir / it.path).is_file() or not png_is_valid(run_dir / it.path)]
    if missing and not allow_missing:
        raise ValueError(
            f"{len(missing)} of {len(items)} planned images are missing or unreadable in {run_dir}: "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
            + ". Rerun the same `ait2i bench generate` command (it resumes), or pass --allow-missing."
        )
    present = [it for it in items if it.path not in set(missing)]
    if not present:
        raise ValueError(f"no images to score in {run_dir}")
    models = models if models is not None else load_models(chosen, device, model_names)
    need = set(chosen) | ({"clip"} if "blip" in chosen else set())
    lacking = [m for m in need if models.get(m) is None]
    if lacking:
        raise ValueError(f"models for {lacking} were not given")
    plurals = {}
    if "detect" in chosen and manifest["suite_family"] != "ane":
        from .compbench import plural_nouns

        plurals = plural_nouns(data_dir)

    by_prompt: dict[str, list[WorkItem]] = defaultdict(list)
    for it in present:
        by_prompt[it.prompt.text].append(it)
    rows = {
        it.path: {"path": it.path, "prompt": it.prompt.text, "category": it.prompt.category, "seed": it.seed}
        for it in present
    }
    bar = tqdm(total=len(present), unit="img", disable=not progress, desc=f"scoring {run_dir.name}")
    for prompt, its in by_prompt.items():
        for k in range(0, len(its), batch_size):
            chunk = its[k : k + batch_size]
            images = [_open(run_dir / it.path) for it in chunk]
            vals: dict[str, list] = {}
            if "clip" in chosen:
                s = M.ane_clip(models["clip"], prompt, images)
                vals["clip_full"], vals["clip_min_object"] = s["full"], s["min_object"]
            if "blip" in chosen:
                caps = M.blip_captions(*models["blip"], images, **(caption_kwargs or {}))
                vals["blip_caption"] = M.caption_similarity(models["clip"], prompt, caps)
                vals["caption"] = caps
            if "clipscore" in chosen:
                vals["clipscore"] = M.clipscore(models["clipscore"], prompt, images)
            if "vqa" in chosen:
                qs = vqa_questions(prompt)
                flat = M.vqa_yes(*models["vqa"], [im for im in images for _ in qs], qs * len(images)) if qs else []
                vals["blip_vqa"] = [M.binding_score(flat[i * len(qs) : (i + 1) * len(qs)]) for i in range(len(images))]
            if "detect" in chosen:
                vals["detect"] = [
                    _detect_score(models["detect"], im, chunk[0].prompt, plurals, detect_threshold) for im in images
                ]
            for j, it in enumerate(chunk):
                rows[it.path].update({key: v[j] for key, v in vals.items()})
            bar.update(len(chunk))
    bar.close()

    keys = [key for m in chosen for key in KEYS[m]]
    results: dict[str, dict] = {}
    for key in keys:
        per_cat: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        every: dict[str, list[float]] = defaultdict(list)
        for r in rows.values():
            per_cat[r["category"]][r["prompt"]].append(r[key])
            every[r["prompt"]].append(r[key])
        results[key] = {"overall": summarize(every), "per_category": {c: summarize(d) for c, d in per_cat.items()}}
    out = {
        "run": str(run_dir),
        "suite": manifest["suite_family"],
        "category": manifest.get("category"),
        "model": manifest.get("model"),
        "method": manifest.get("method"),
        "metrics": list(chosen),
        "metric_models": {m: _model_name(models.get(m)) for m in need},
        "results": results,
        "missing": missing,
        "per_image": list(rows.values()),
        "notes": _notes(chosen, manifest),
    }
    if write:
        write_json_atomic(run_dir / "scores.json", out)
        tmp = run_dir / ".scores.md.tmp"
        tmp.write_text(markdown([out]))
        os.replace(tmp, run_dir / "scores.md")
    return out


def _detect_score(model_and_proc, image, prompt, plurals, threshold) -> float:
    if prompt.category == "spatial":
        obj1, rel, obj2 = M.parse_spatial(prompt.text)
        dets = M.detect(*model_and_proc, image, [obj1, obj2], threshold)
        return M.spatial_score(dets, obj1, obj2, rel)
    counts = M.parse_counts(prompt.text, plurals)
    dets = M.detect(*model_and_proc, image, [obj for _, obj in counts], threshold)
    return M.numeracy_score(dets, counts)


def _model_name(m) -> str | None:
    if m is None:
        return None
    model = m.model if isinstance(m, M.ClipEmbedder) else m[0]
    return getattr(model.config, "_name_or_path", None) or type(model).__name__


def _notes(chosen, manifest) -> list[str]:
    notes = []
    if "detect" in chosen:
        notes.append(
            "detect: open-vocabulary detector standing in for UniDet; NOT comparable with published "
            "T2I-CompBench spatial/numeracy numbers"
        )
    if "vqa" in chosen or "blip" in chosen:
        notes.append("BLIP from transformers (Salesforce checkpoints), not LAVIS/the BLIP repo: close, not identical")
    if "vqa" in chosen:
        notes.append("BLIP-VQA noun phrases from ait2i's rule-based chunker, not spaCy en_core_web_sm")
    if manifest.get("category") == "complex":
        notes.append("complex: BLIP-VQA and CLIPScore reported separately; the published 3-in-1 score is not computed")
    return notes


def _fmt(s: dict) -> str:
    if s["half_width"] is None:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} ± {s['half_width']:.4f}"


def run_label(d: dict) -> str:
    """Column label of a scored run: its method and folder name; a T2I-CompBench category folder is named by its
    parent (``runs/cb-ait2i/color`` -> ``ait2i (cb-ait2i)``), so that the categories of one run share a column."""
    path = Path(d["run"])
    name = path.parent.name if d.get("category") and path.name == d["category"] else path.name
    return f"{d.get('method')} ({name})"


def markdown(score_dicts: Sequence[dict], labels: Sequence[str] | None = None) -> str:
    """A markdown table: one row per (metric, category) and an overall row per metric (when a run has several
    categories), one column per label (runs with the same label, e.g. the category folders of one
    T2I-CompBench run, share a column)."""
    labels = list(labels or [run_label(d) for d in score_dicts])
    columns = list(dict.fromkeys(labels))
    rows: dict[tuple[str, str], list[str]] = {}
    for label, d in zip(labels, score_dicts):
        k = columns.index(label)
        for key, res in d["results"].items():
            for cat, s in [*sorted(res["per_category"].items()), ("overall", res["overall"])]:
                if cat == "overall" and len(res["per_category"]) == 1:
                    continue
                row = rows.setdefault((key, cat), [""] * len(columns))
                if row[k]:
                    raise ValueError(f"two runs give {key}/{cat} for the column {label!r}; pass distinct folders")
                row[k] = _fmt(s)
    head = "| metric | category | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns) + "\n"
    body = "".join(f"| {key} | {cat} | " + " | ".join(v) + " |\n" for (key, cat), v in rows.items())
    notes = sorted({n for d in score_dicts for n in d.get("notes", [])})
    missing = [f"{d['run']}: {len(d['missing'])} missing images" for d in score_dicts if d.get("missing")]
    tail = "".join(f"\n- {n}" for n in [*notes, *missing])
    return head + body + ("\nMean over images ± 95% interval half-width over prompts." + tail + "\n")


def compare_runs(run_dirs: Sequence[str | os.PathLike]) -> str:
    """Markdown table of several scored runs side by side (each needs its ``scores.json``)."""
    dicts = []
    for d in run_dirs:
        path = Path(d) / "scores.json"
        if not path.is_file():
            raise ValueError(f"{d} has no scores.json; run `ait2i bench score {d}` first")
        dicts.append(json.loads(path.read_text()))
    return markdown(dicts)
