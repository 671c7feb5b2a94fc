"""Summaries and tables of scored runs: every method per category with its interval, the paired differences
against a reference method, and ``compare`` across run folders (refused when their protocols differ)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..io import write_atomic
from . import stats


def summarize(rows: Sequence[dict], keys: Sequence[str], reference: str | None = None) -> dict:
    """Per-method scores and paired differences of scored rows.

    Returns:
        `dict`: ``{"methods": {label: {key: {category or "all": stats.summarize}}}, "paired": {label: {key:
        {category or "all": stats.paired}}}, "reference": label, "images": per method, "prompts": per method,
        "left_out": {label: images}}``.

    With several methods, every table covers only the (item, seed) images every method has (an item is one prompt
    of one category, or one layout of a prompt), so no method's mean rests on images the others lack; the images
    left out are counted per method in ``left_out``. ``reference`` defaults to the first method.

    Raises:
        `ValueError`: the methods have no image in common.
    """
    methods = list(dict.fromkeys(r["method"] for r in rows))

    def image(r):
        return r["category"], r.get("index"), r["prompt"], r["seed"]

    left_out: dict = {}
    if len(methods) > 1:
        have = {m: {image(r) for r in rows if r["method"] == m} for m in methods}
        common = set.intersection(*have.values())
        if not common:
            raise ValueError(
                f"the methods {methods} have no (prompt, seed) image in common; summarise them one at a time"
            )
        left_out = {m: len(have[m] - common) for m in methods if have[m] - common}
        rows = [r for r in rows if image(r) in common]
    cats = list(dict.fromkeys(r["category"] for r in rows))
    vals: dict = {}
    for r in rows:
        unit = (r["category"], r.get("index"), r["prompt"])  # the bootstrap's cluster: one item (prompts may repeat)
        for k in keys:
            if r.get(k) is not None:
                vals.setdefault((r["method"], k, r["category"]), {})[(unit, r["seed"])] = float(r[k])
    images = {image(r) for r in rows}
    out: dict = {
        "methods": {},
        "paired": {},
        "reference": None,
        "images": len(images),
        "prompts": len({i[:3] for i in images}),
        "left_out": left_out,
    }

    def pooled(m, k):
        return {key: v for c in cats for key, v in vals.get((m, k, c), {}).items()}

    for m in methods:
        out["methods"][m] = {
            k: {
                **{c: stats.summarize(vals[(m, k, c)]) for c in cats if (m, k, c) in vals},
                "all": stats.summarize(pooled(m, k)),
            }
            for k in keys
        }
    if len(methods) > 1:
        ref = reference or methods[0]
        if ref not in methods:
            raise ValueError(f"reference method {ref!r} has no results here; methods present: {methods}")
        out["reference"] = ref
        for m in methods:
            if m != ref:
                out["paired"][m] = {
                    k: {
                        **{c: stats.paired(vals.get((m, k, c), {}), vals.get((ref, k, c), {})) for c in cats},
                        "all": stats.paired(pooled(m, k), pooled(ref, k)),
                    }
                    for k in keys
                }
    return out


def protocol_line(manifest: dict) -> str:
    p = manifest["protocol"]
    over = f" (overridden: {', '.join(p['overrides'])})" if p.get("overrides") else ""
    seeds = manifest["seeds"]
    span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))
    return (
        f"Protocol `{p['name']}`{over}: {p['scheduler']} scheduler, {p['num_inference_steps']} steps, guidance "
        f"{p['guidance_scale']}, {p['dtype']}, seeds {span}, model `{manifest['model']}`, suite `{manifest['suite']}`"
        + (f" (first {manifest['limit']} prompts per category)" if manifest.get("limit") else "")
        + "."
    )


def _cell(s: dict) -> str:
    return f"{s['mean']:.4f} [{s['low']:.4f}, {s['high']:.4f}]"


def _dcell(s: dict) -> str:
    text = f"{s['delta']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}]"
    return f"**{text}**" if s["low"] > 0 or s["high"] < 0 else text


def coverage_line(summ: dict) -> str:
    """What the tables cover: the images per method, and those left out because not every method has them."""
    n = len(summ["methods"])
    text = f"The tables cover {summ['images']} images (prompts: {summ['prompts']}, with their seeds)" + (
        f", the same images for each of the {n} methods" if n > 1 else ""
    )
    if summ.get("left_out"):
        text += "; left out because not every method has them: " + ", ".join(
            f"{m} {k} images" for m, k in summ["left_out"].items()
        )
    return text + "."


def markdown(scores: dict) -> str:
    """A scored run (``scores.json`` content) as markdown: protocol line, coverage, scores, paired differences."""
    summ, keys = scores["summary"], scores["keys"]
    lines = [protocol_line(scores["manifest"])]
    if "images" in summ:  # scores.json files written before coverage was recorded lack it
        lines.append(coverage_line(summ))
    lines += ["", "| metric | category | method | images | mean [95% CI] |"]
    lines.append("|---|---|---|---|---|")
    for k in keys:
        for m, per in summ["methods"].items():
            for c, s in per[k].items():
                lines.append(f"| {k} | {c} | {m} | {s['n_images']} | {_cell(s)} |")
    if summ["paired"]:
        lines += [
            "",
            f"| metric | category | method − {summ['reference']} | pairs | Δ [95% CI] |",
            "|---|---|---|---|---|",
        ]
        for m, per in summ["paired"].items():
            for k in keys:
                for c, s in per[k].items():
                    lines.append(f"| {k} | {c} | {m} | {s['n_pairs']} | {_dcell(s)} |")
    lines += [
        "",
        "Mean over images; 95% interval from a two-level bootstrap over items (prompts; layouts in the layout "
        "suite) and seeds (paired seeds for differences; bold: the interval excludes 0).",
    ]
    lines += [f"- {n}" for n in scores.get("notes", [])]
    if scores.get("missing"):
        lines.append(f"- {len(scores['missing'])} planned images missing")
    return "\n".join(lines) + "\n"


def mismatches(manifests: Sequence[dict]) -> list[str]:
    """What differs between runs that should be compared: protocol, seeds, prompt limit, model, suite family."""
    first = manifests[0]
    out = []
    for m in manifests[1:]:
        for k in ("protocol", "seeds", "limit", "model"):
            a, b = first.get(k), m.get(k)
            if k == "protocol":
                a, b = ({x: y for x, y in d.items() if x != "overrides"} for d in (a, b))
            if a != b:
                out.append(f"{k}: {a!r} vs {b!r}")
        if first["suite"].partition(":")[0] != m["suite"].partition(":")[0]:
            out.append(f"suite: {first['suite']!r} vs {m['suite']!r}")
    return out


def compare(run_dirs: Sequence[str | os.PathLike], allow_mismatch: bool = False) -> str:
    """Markdown of several scored runs side by side: one column per (method, folder), one row per
    (metric, category); refused when protocols, seeds or limits differ unless ``allow_mismatch``."""
    dicts = []
    for d in run_dirs:
        path = Path(d) / "scores.json"
        if not path.is_file():
            raise ValueError(f"{d} has no scores.json; run `ait2i bench score {d}` first")
        dicts.append(json.loads(path.read_text()))
    diff = mismatches([d["manifest"] for d in dicts])
    if diff and not allow_mismatch:
        raise ValueError(
            "the runs were not made the same way: " + "; ".join(diff) + ". Pass --allow-mismatch to "
            "compare them anyway (the table then says so)."
        )
    cols, rows = [], {}
    for d in dicts:
        name = Path(d["run"]).name
        for m, per in d["summary"]["methods"].items():
            col = f"{m} ({name})"
            cols.append(col)
            for k in d["keys"]:
                for c, s in per[k].items():
                    rows.setdefault((k, c), {})[col] = _cell(s)
    head = "| metric | category | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols) + "\n"
    body = "".join(
        f"| {k} | {c} | " + " | ".join(v.get(col, "") for col in cols) + " |\n" for (k, c), v in rows.items()
    )
    proto = "\n".join(f"- {Path(d['run']).name}: {protocol_line(d['manifest'])}" for d in dicts)
    warn = ("\n**Not made the same way:** " + "; ".join(diff) + "\n") if diff else ""
    return head + body + "\n" + proto + "\n" + warn


def write_scores(out: Path, rows: Sequence[dict], manifest: dict, scorers: dict, missing=(), reference=None) -> dict:
    """Summarise ``rows`` and write ``scores.json`` and ``scores.md`` into the run folder; returns the dict."""
    keys = list(dict.fromkeys(k for s in scorers.values() for k in s.keys))  # shapes and layout share two keys
    info = {n: s.info() for n, s in scorers.items()}
    notes = []
    if "detect" in scorers:
        notes.append(
            "detect: an open-vocabulary detector standing in for UniDet; NOT comparable with published "
            "T2I-CompBench spatial/numeracy numbers"
        )
    if "vqa" in scorers and not scorers["vqa"].has_enc:
        notes.append("vqa: " + info["vqa"]["enc_token"])
    if manifest["suite"] == "t2i-compbench:complex":
        notes.append("complex: BLIP-VQA and CLIPScore reported separately; the published 3-in-1 score is not computed")
    scores = {
        "run": str(out),
        "manifest": manifest,
        "keys": keys,
        "scorers": info,
        "summary": summarize(rows, keys, reference),
        "missing": list(missing),
        "notes": notes,
        "per_image": list(rows),
    }
    write_atomic(out / "scores.json", json.dumps(scores, indent=1))
    write_atomic(out / "scores.md", markdown(scores))
    return scores
