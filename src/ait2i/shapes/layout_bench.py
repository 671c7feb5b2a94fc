"""ShapesWorld layout benchmark: do the objects land in their boxes? Every image read by the checker.

    python -m ait2i.shapes.layout_bench --out runs/layout --seeds 0-7 \\
        --methods none,layout-guidance,boxdiff,ait2i-layout

Items (:func:`layout_items`, fixed lists): prompts of two and three objects whose boxes are taken from scenes the
renderer draws (so every layout is drawable), several layouts per prompt, and a ``corners`` category of two small
objects in opposite corners (a layout against the model's habit of large, central objects). Per image
(:func:`score_layout`): for each requested object, the detected object of its colour and shape with the best IoU
against its box: the IoU (0 when there is none), whether its centre falls in the box; and the checker's exact and
clean binding. Summaries per category and method with 95% intervals, and paired differences against the first
method, both from a two-level bootstrap over layouts and seeds (seeds are paired across methods).

Rows are appended to ``rows.jsonl`` per image (a rerun skips what is there); ``summary.json`` and ``summary.md``
are written at the end. Vanilla (``none``) runs on the same prompts without boxes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..layout import Box
from . import render as R
from .check import check, match

IMAGE_SIZE = 32
CATEGORIES = ("two", "three", "corners")


@dataclass(frozen=True)
class LayoutItem:
    """One prompt with one layout: ``objects`` are ``(colour, shape, Box)`` in prompt order."""

    category: str
    prompt: str
    objects: tuple[tuple[str, str, Box], ...]
    layout_id: str

    def subjects(self, with_boxes: bool = True) -> list[str]:
        """Subject specs for :func:`ait2i.generate` (``"red circle@x0,y0,x1,y1"``)."""
        return [f"{c} {s}@{b}" if with_boxes else f"{c} {s}" for c, s, b in self.objects]


def _box_of(spec: R.ShapeSpec) -> Box:
    half = spec.size / 2
    clip = lambda v: min(max(v / IMAGE_SIZE, 0.0), 1.0)  # noqa: E731
    return Box(clip(spec.cx - half), clip(spec.cy - half), clip(spec.cx + half), clip(spec.cy + half))


def layout_items(prompts_per_category: int = 4, layouts_per_prompt: int = 3, seed: int = 0) -> list[LayoutItem]:
    """The fixed item list: per category, ``prompts_per_category`` prompts x ``layouts_per_prompt`` layouts."""
    rng = np.random.default_rng(seed)
    items: list[LayoutItem] = []
    for category in CATEGORIES:
        n = 3 if category == "three" else 2
        for p in range(prompts_per_category):
            colors = [str(c) for c in rng.choice(list(R.COLORS), size=n, replace=False)]
            shapes = [str(R.SHAPES[i]) for i in rng.integers(0, len(R.SHAPES), size=n)]
            prompt = R.caption_of([f"{c} {s}" for c, s in zip(colors, shapes)])
            for k in range(layouts_per_prompt):
                if category == "corners":
                    size = float(rng.uniform(8.0, 10.0))
                    lo, hi = 1.0 + size / 2, IMAGE_SIZE - 1.0 - size / 2
                    corners = [(lo, lo), (hi, hi)] if (p + k) % 2 == 0 else [(hi, lo), (lo, hi)]
                    if k % 3 == 2:
                        corners = corners[::-1]
                    specs = [R.ShapeSpec(c, s, x, y, size) for (c, s), (x, y) in zip(zip(colors, shapes), corners)]
                else:
                    specs = R.sample_scene(rng, n, colors=colors, shapes=shapes).objects
                objects = tuple((sp.color, sp.shape, _box_of(sp)) for sp in specs)
                items.append(LayoutItem(category, prompt, objects, f"{category}-{p}-{k}"))
    return items


def score_layout(image, item: LayoutItem) -> dict:
    """Box and binding scores of one generated image for ``item`` (see the module docstring)."""
    found = [d for d in check(image) if not d.is_noise]
    ious, inside = [], []
    for color, shape, box in item.objects:
        best_iou, best_in = 0.0, False
        for d in found:
            if d.mixed or (d.color, d.shape) != (color, shape):
                continue
            x0, y0, x1, y1 = (v / IMAGE_SIZE for v in d.bbox)
            iw = max(0.0, min(x1, box.x1) - max(x0, box.x0))
            ih = max(0.0, min(y1, box.y1) - max(y0, box.y0))
            inter = iw * ih
            iou = inter / ((x1 - x0) * (y1 - y0) + box.area - inter)
            if iou > best_iou or (best_iou == 0.0 and not best_in):
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                best_iou, best_in = max(iou, best_iou), box.x0 <= cx <= box.x1 and box.y0 <= cy <= box.y1
        ious.append(best_iou)
        inside.append(best_in)
    m = match(found, [(c, s) for c, s, _ in item.objects])
    return {
        "iou": float(np.mean(ious)),
        "centre_in_box": float(np.mean(inside)),
        "all_in_box": all(inside),
        "exact_binding": m["exact_binding"],
        "clean_binding": m["clean_binding"],
    }


METRICS = ("iou", "centre_in_box", "all_in_box", "exact_binding", "clean_binding")


def _two_level(groups: list[np.ndarray], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    from .bench import _cluster_bootstrap

    return _cluster_bootstrap(groups, resamples, seed)


def summarize(rows: Sequence[dict], reference: str) -> dict:
    """Per (method, category) means with 95% intervals, and paired differences against ``reference``."""
    out: dict = {"methods": {}, "differences": {}}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cats = [*CATEGORIES, "all"]
    by = {(r["method"], r["layout_id"], r["seed"]): r for r in rows}
    for method in methods:
        out["methods"][method] = {}
        for cat in cats:
            mine = [r for r in rows if r["method"] == method and (cat == "all" or r["category"] == cat)]
            if not mine:
                continue
            cell = {"n": len(mine)}
            for k in METRICS:
                groups = _groups(mine, k)
                cell[k] = {"mean": float(np.mean([float(r[k]) for r in mine])), "ci": list(_two_level(groups))}
            out["methods"][method][cat] = cell
        if method == reference:
            continue
        out["differences"][method] = {}
        for cat in cats:
            pairs = [
                (r, by.get((reference, r["layout_id"], r["seed"])))
                for r in rows
                if r["method"] == method and (cat == "all" or r["category"] == cat)
            ]
            pairs = [(a, b) for a, b in pairs if b is not None]
            if not pairs:
                continue
            cell = {"n": len(pairs)}
            for k in METRICS:
                diffs = [{"layout_id": a["layout_id"], k: float(a[k]) - float(b[k])} for a, b in pairs]
                cell[k] = {"delta": float(np.mean([d[k] for d in diffs])), "ci": list(_two_level(_groups(diffs, k)))}
            out["differences"][method][cat] = cell
    return out


def _groups(rows: Sequence[dict], key: str) -> list[np.ndarray]:
    """Values of ``key`` grouped by layout (the first level of the bootstrap; seeds within a layout the second)."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["layout_id"], []).append(float(r[key]))
    return [np.asarray(v) for v in groups.values()]


def markdown(summary: dict, reference: str) -> str:
    """Tables: per-method means (95% CI) per category, then paired differences against the reference."""
    lines = [
        "| method | category | n | mean IoU | centre in box | all in box | exact binding | clean binding |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, cats in summary["methods"].items():
        for cat, cell in cats.items():
            vals = [f"{cell[k]['mean']:.3f} [{cell[k]['ci'][0]:.3f}, {cell[k]['ci'][1]:.3f}]" for k in METRICS]
            lines.append(f"| {method} | {cat} | {cell['n']} | " + " | ".join(vals) + " |")
    lines += [
        "",
        f"Paired differences against `{reference}` (same prompt, layout and seed); bold where the 95% interval "
        "excludes 0.",
        "",
        "| method | category | pairs | Δ IoU | Δ centre in box | Δ all in box | Δ exact binding | Δ clean binding |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, cats in summary["differences"].items():
        for cat, cell in cats.items():
            vals = []
            for k in METRICS:
                d, (lo, hi) = cell[k]["delta"], cell[k]["ci"]
                text = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                vals.append(f"**{text}**" if lo > 0 or hi < 0 else text)
            lines.append(f"| {method} | {cat} | {cell['n']} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    """Generate and score every (method, item, seed) not yet in ``rows.jsonl``; write the summaries."""
    import torch
    from tqdm import tqdm

    from ..guided import generate
    from ..metadata import atomic_path
    from .bench import parse_seeds
    from .model import load_pipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = parse_seeds(args.seeds)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    items = layout_items(args.prompts_per_category, args.layouts_per_prompt)
    rows_path = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {(r["method"], r["layout_id"], r["seed"]) for r in rows}
    settings = {
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seeds": seeds,
        "methods": methods,
        "prompts_per_category": args.prompts_per_category,
        "layouts_per_prompt": args.layouts_per_prompt,
    }
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) != settings:
        raise ValueError(f"{out} holds a run with other settings ({manifest}); use another --out")
    manifest.write_text(json.dumps(settings, indent=2))
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    todo = [(m, it) for it in items for m in methods if any((m, it.layout_id, s) not in done for s in seeds)]
    with rows_path.open("a") as f:
        for method, item in tqdm(todo, desc="layout bench", disable=args.quiet):
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            result = generate(
                pipe, item.prompt, item.subjects(with_boxes=method != "none"), method, generator=gens,
                num_images_per_prompt=len(seeds), num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale, output_type="pil",
            )  # fmt: skip
            for seed, image in zip(seeds, result.images):
                if (method, item.layout_id, seed) in done:
                    continue
                row = {"method": method, "category": item.category, "prompt": item.prompt,
                       "layout_id": item.layout_id, "seed": seed, **score_layout(image, item)}  # fmt: skip
                f.write(json.dumps(row) + "\n")
                f.flush()
                rows.append(row)
    summary = summarize(rows, methods[0])
    with atomic_path(out / "summary.json", suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2))
    with atomic_path(out / "summary.md", suffix=".md") as tmp:
        Path(tmp).write_text(markdown(summary, methods[0]))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0-7")
    p.add_argument("--methods", default="none,layout-guidance,boxdiff,ait2i-layout")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--prompts-per-category", type=int, default=4)
    p.add_argument("--layouts-per-prompt", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        summary = run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(summary, args.methods.split(",")[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
