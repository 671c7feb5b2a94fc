"""The ShapesWorld benchmark: guidance methods compared on the shipped model, every image read by the checker.

``ait2i bench shapes --methods none,attend-and-excite,ait2i --seeds 0-31 --out runs/shapes`` (or
``python -m ait2i.shapes.bench ...``) generates every (method, prompt, seed), reads each image with
:func:`ait2i.shapes.check.check`, and reports per category and method, with 95% intervals:

- **object recall**: the fraction of requested objects whose shape is found (one-to-one);
- **all present** (1 - neglect): every requested shape is found;
- **exact binding**: every requested object is found with its own colour and shape;
- **extra objects**: the image holds more objects than requested;
- **clean binding** (the headline): every requested object is there with its own colour and shape, and nothing
  else (exact binding and no extra object).

Rates get Wilson intervals, the mean recall a percentile bootstrap; both treat images as independent. Prompt
categories (fixed lists, :func:`shapes_prompts`): ``single``, ``two`` (distinct shapes and colours),
``same_shape`` (binding is all colour), ``held_out`` (two objects, one a colour-shape pair kept out of training),
``three``, ``three_same_shape`` (one shape in three colours) and ``three_held_out`` (a held-out pair joined by two
seen pairs).

Work runs seed batch by seed batch, categories interleaved, so a run cut short covers every category and
method with fewer seeds. The run is resumable: one JSON line per (method, prompt, seed) is appended to
``results.jsonl`` after its image is saved (``<out>/<method>/<prompt>/<seed>.png``, written to a temporary file
and renamed); a rerun skips every line already there. ``manifest.json`` records the model, sampling settings and
each method's full config; a folder made with other settings, or a method label bound to another config, is
refused unless ``force``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import GuidanceConfig, get_config
from .check import check, match
from .render import COLORS, HELD_OUT, SHAPES, caption_of

#: Prompt categories. New ones go at the end: a category's prompt list is drawn from its position.
CATEGORIES = ("single", "two", "same_shape", "held_out", "three", "three_same_shape", "three_held_out")
#: Attend-and-Excite with its windows as fractions of the run: at 50 steps this is exactly the preset (guided
#: steps 0-24, refinement at steps 0, 10, 20); at 20 steps it guides steps 0-9 and refines at 0, 4 and 8.
AE_SCALED = "attend-and-excite:max_guided_steps=0.5,refinement={0:0.05,0.2:0.5,0.4:0.8}"
DEFAULT_METHODS = "default"
#: Named method sets for ``--methods``.
METHOD_SETS = {
    "default": ("none", AE_SCALED, "ait2i"),
    "ablation": (
        "ait2i",
        "ait2i:w_isolation=0",
        "ait2i:w_aggregation=0",
        "ait2i:w_attribute=0",
        "ait2i:w_presence=0",
        "ait2i:aggregation_metric=euclidean",
        "ait2i:isolation_metric=cosine",
        "ait2i:refinement={0:0.05,0.2:0.5,0.4:0.8}",  # A&E's steps 0, 10, 20 of 50, as fractions
    ),
}
RESULTS = "results.jsonl"
MANIFEST = "manifest.json"
METRICS = ("object_recall", "all_present", "exact_binding", "extra_objects", "clean_binding")
_PROMPT_SEED = 20_261_129  # fixes the prompt lists


# -- prompts ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesPrompt:
    """One benchmark prompt: its category, text and the requested ``(colour, shape)`` objects in prompt order."""

    category: str
    text: str
    objects: tuple[tuple[str, str], ...]

    @property
    def subjects(self) -> list[str]:
        """The subject phrases handed to the guidance (``["red circle", "blue square"]``)."""
        return [f"{c} {s}" for c, s in self.objects]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.text.lower()).strip("_")


def _pairs(held_out: bool) -> list[tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES if ((c, s) in HELD_OUT) == held_out]


def _prompt(category: str, objects) -> ShapesPrompt:
    objects = tuple((str(c), str(s)) for c, s in objects)
    return ShapesPrompt(category, caption_of([f"{c} {s}" for c, s in objects]), objects)


def shapes_prompts(categories: Sequence[str] | None = None, per_category: int = 8) -> list[ShapesPrompt]:
    """The fixed prompt lists: the first ``per_category`` prompts of each category (12 at most).

    Every list is drawn once from a fixed seed; only seen colour-shape pairs are used, except in ``held_out``,
    where each prompt pairs one :data:`~ait2i.shapes.HELD_OUT` pair with a seen pair of another colour and
    shape (held-out object first in half of the prompts), and ``three_held_out``, where one held-out pair joins
    two seen pairs (its position rotates through first, second and third). ``three_same_shape`` asks for one shape
    in three colours (binding is all colour). Colours within a prompt are distinct.

    Args:
        categories (`Sequence[str]`, *optional*): a subset of :data:`CATEGORIES` (all by default).
        per_category (`int`, *optional*, defaults to 8): prompts per category, 1-12.
    """
    cats = tuple(categories) if categories else CATEGORIES
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise ValueError(f"unknown categories {bad}; expected a subset of {list(CATEGORIES)}")
    if not 1 <= per_category <= 12:
        raise ValueError(f"per_category must be in 1..12, got {per_category}")
    seen, held = _pairs(False), _pairs(True)
    out = []
    for cat in cats:
        rng = np.random.default_rng([_PROMPT_SEED, CATEGORIES.index(cat)])
        chosen: list[tuple[tuple[str, str], ...]] = []
        attempts = 0
        while len(chosen) < 12:
            attempts += 1
            if attempts > 100_000:  # pragma: no cover - the pools are large enough
                raise RuntimeError(f"could not draw 12 distinct prompts for {cat!r}")
            if cat == "single":
                objs = (seen[rng.integers(len(seen))],)
            elif cat == "held_out":
                h = held[len(chosen) % len(held)]
                partners = [p for p in seen if p[0] != h[0] and p[1] != h[1]]
                p = partners[rng.integers(len(partners))]
                objs = (h, p) if len(chosen) % 2 == 0 else (p, h)
            elif cat == "three_held_out":
                h = held[len(chosen) % len(held)]
                partners = [p for p in seen if p[0] != h[0]]
                a, b = (partners[i] for i in rng.choice(len(partners), size=2, replace=False))
                if a[0] == b[0]:
                    continue
                objs = [a, b]
                objs.insert(len(chosen) % 3, h)
                objs = tuple(objs)
            else:
                n = 3 if cat.startswith("three") else 2
                idx = rng.choice(len(seen), size=n, replace=False)
                objs = tuple(seen[i] for i in idx)
                colors = {c for c, _ in objs}
                shapes = {s for _, s in objs}
                if len(colors) != n:
                    continue
                if cat == "two" and len(shapes) != 2:
                    continue
                if cat in ("same_shape", "three_same_shape") and len(shapes) != 1:
                    continue
            if objs not in chosen:
                chosen.append(objs)
        out += [_prompt(cat, objs) for objs in chosen[:per_category]]
    return out


# -- methods ----------------------------------------------------------------------------------------------------


def _split_top(spec: str, sep: str = ",") -> list[str]:
    """Splits on ``sep`` outside brackets (``{0:0.05,10:0.5}`` stays whole)."""
    parts, depth, cur = [], 0, ""
    for ch in spec:
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in {spec!r}")
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"unbalanced brackets in {spec!r}")
    return parts + [cur]


def _convert(cfg: GuidanceConfig, key: str, raw: str):
    """Reads an override value according to the config field's annotated type."""
    ann = str({f.name: f.type for f in dataclasses.fields(cfg)}[key])
    raw = raw.strip()
    low = raw.lower()
    try:
        if "dict" in ann:
            if low in ("none", "off", "{}"):
                return None if low != "{}" else {}
            v = ast.literal_eval(raw)
            if not isinstance(v, dict):
                raise ValueError
            return v
        if ann.startswith("tuple"):
            if raw[:1] in "([":
                v = ast.literal_eval(raw)
                if not isinstance(v, (tuple, list)):
                    raise ValueError
                return tuple(v)
            items = [x.strip() for x in raw.split("+")]
            return tuple(float(x) for x in items) if "float" in ann else tuple(items)
        if ann == "bool":
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if "None" in ann and low == "none":
            return None
        if "int" in ann and "float" in ann:
            v = ast.literal_eval(raw)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError
            return v
        if "int" in ann:
            return int(raw)
        if "float" in ann:
            return float(raw)
        if "str" in ann:
            return raw.strip("'\"")
    except (ValueError, SyntaxError):
        pass
    raise ValueError(f"cannot read {key}={raw!r}: expected a value of type {ann}")


def parse_method(spec: str) -> tuple[str, GuidanceConfig]:
    """One method: a preset name, or ``name:key=value,key=value`` (overrides of that preset's config).

    Values are read by the field's type: numbers, ``cosine``/``euclidean``, ``none``, dicts such as
    ``refinement={0:0.05,10:0.5,20:0.8}``, tuples as ``from_where=up+down`` or ``scale_range=(1.0,0.5)``.

    Returns:
        `tuple[str, GuidanceConfig]`: the canonical label (``name:key=value,...``, keys in the given order)
        and the config.
    """
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    name = name.strip()
    cfg = get_config(name)  # ValueError naming the presets
    if not rest.strip():
        if ":" in spec:
            raise ValueError(f"method {spec!r}: nothing after ':'; write e.g. {name}:w_isolation=0")
        return name, cfg
    fields = [f.name for f in dataclasses.fields(cfg) if f.name != "name"]
    overrides, labels = {}, []
    for item in _split_top(rest):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"method {spec!r}: override {item!r} is not key=value")
        if key not in fields:
            raise ValueError(f"method {spec!r}: {name} has no setting {key!r}; valid settings: {', '.join(fields)}")
        if key in overrides:
            raise ValueError(f"method {spec!r}: {key!r} given twice")
        overrides[key] = _convert(cfg, key, raw)
        labels.append(f"{key}={raw.strip()}")
    try:
        cfg = cfg.replace(**overrides)
    except (ValueError, TypeError) as e:
        raise ValueError(f"method {spec!r}: {e}") from None
    return f"{name}:{','.join(labels)}", cfg


def parse_methods(spec: str | Sequence[str], common: str | None = None) -> list[tuple[str, GuidanceConfig]]:
    """Methods from ``--methods``: comma-separated names, variants and named sets (:data:`METHOD_SETS`).

    Inside one variant, further ``key=value`` items after a comma belong to it
    (``ait2i:w_isolation=0,w_presence=0`` is one method); a name without ``=`` starts the next method.

    Args:
        spec (`str` or `Sequence[str]`): the method list.
        common (`str`, *optional*): ``key=value,...`` applied to every guided method (not ``none``) that has the
            setting and does not set it itself, e.g. ``max_guided_steps=0.5`` to guide the first half of the
            steps at any step count. The labels stay as given; the configs (recorded in the manifest and the
            summary) carry the change.
    """
    items = _split_top(spec) if isinstance(spec, str) else [str(s) for s in spec]
    groups: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if "=" in item and ":" not in item.split("=", 1)[0]:
            if not groups or ":" not in groups[-1]:
                raise ValueError(f"override {item!r} must follow a method name, e.g. ait2i:{item}")
            groups[-1] += "," + item
        else:
            groups.append(item)
    shared: dict[str, str] = {}
    for item in _split_top(common) if common and common.strip() else []:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"common override {item!r} is not key=value")
        shared[key.strip()] = raw.strip()
    used: set[str] = set()
    out: list[tuple[str, GuidanceConfig]] = []
    for g in groups:
        for s in METHOD_SETS.get(g, (g,)):
            label, cfg = parse_method(s)
            own = {x.partition("=")[0].strip() for x in _split_top(label.partition(":")[2])} if ":" in label else set()
            names = {f.name for f in dataclasses.fields(cfg)} - {"name"}
            extra = {k: v for k, v in shared.items() if k in names and k not in own and cfg.name != "none"}
            if extra:
                try:
                    cfg = cfg.replace(**{k: _convert(cfg, k, v) for k, v in extra.items()})
                except (ValueError, TypeError) as e:
                    raise ValueError(f"common override on {label!r}: {e}") from None
                used.update(extra)
            if label in [lab for lab, _ in out]:
                raise ValueError(f"method {label!r} listed twice")
            out.append((label, cfg))
    if not out:
        raise ValueError("no method given; e.g. --methods none,attend-and-excite,ait2i")
    unused = sorted(set(shared) - used)
    if unused:
        raise ValueError(f"common overrides {unused} apply to none of the guided methods {[m for m, _ in out]}")
    return out


def method_dir(label: str) -> str:
    """A folder name for a method label (``ait2i:w_isolation=0`` -> ``ait2i+w_isolation=0``)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label.replace(":", "+").replace(",", "+"))


def parse_seeds(spec: str) -> list[int]:
    """Seeds from ``"0-31"``, ``"0,5,10-12"`` or ``"7"`` (sorted, unique, >= 0)."""
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"bad seed range {part!r} in {spec!r}; write e.g. 0-31 or 0,5,10-12")
        out.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    if not out:
        raise ValueError(f"no seeds in {spec!r}; write e.g. 0-31")
    return sorted(out)


# -- statistics -------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial rate (95% for ``z = 1.96``); ``(0, 1)`` when ``n == 0``."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of a mean (fixed seed, so reruns give the same numbers)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return 0.0, 1.0
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(rows: Sequence[dict]) -> dict:
    """Per-method, per-category metrics with 95% intervals; category ``"all"`` pools every row of a method.

    Returns:
        `dict`: ``{method: {category: {"n": int, metric: {"value", "low", "high"} ...}}}``, metrics
        :data:`METRICS`.
    """
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mrows = [r for r in rows if r["method"] == method]
        cats = [c for c in CATEGORIES if any(r["category"] == c for r in mrows)] + ["all"]
        out[method] = {}
        for cat in cats:
            rs = mrows if cat == "all" else [r for r in mrows if r["category"] == cat]
            n = len(rs)
            recall = [r["recall"] for r in rs]
            entry: dict = {"n": n}
            lo, hi = bootstrap_interval(recall)
            entry["object_recall"] = {"value": float(np.mean(recall)) if n else 0.0, "low": lo, "high": hi}
            for name, key in (
                ("all_present", "all_present"),
                ("exact_binding", "exact_binding"),
                ("extra_objects", "has_extra"),
                ("clean_binding", "clean_binding"),
            ):
                k = sum(bool(_flag(r, key)) for r in rs)
                lo, hi = wilson_interval(k, n)
                entry[name] = {"value": k / n if n else 0.0, "low": lo, "high": hi, "count": k}
            out[method][cat] = entry
    return out


def markdown_table(summary: dict) -> str:
    """The summary as a markdown table: one row per (category, method), value [95% interval]."""
    head = "| category | method | n | object recall | all present | exact binding | extra objects | clean binding |"
    lines = [head, "|" + "---|" * 8]
    cats = list(dict.fromkeys(c for m in summary.values() for c in m))
    for cat in cats:
        for method, per in summary.items():
            if cat not in per:
                continue
            e = per[cat]
            cells = [f"{e[k]['value']:.3f} [{e[k]['low']:.3f}, {e[k]['high']:.3f}]" for k in METRICS]
            lines.append(f"| {cat} | {method} | {e['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Row field behind each metric.
_ROW_KEYS = {
    "object_recall": "recall",
    "all_present": "all_present",
    "exact_binding": "exact_binding",
    "extra_objects": "has_extra",
    "clean_binding": "clean_binding",
}


def _flag(row: dict, key: str):
    """A row's value for ``key``; ``clean_binding`` of rows written before it existed is exact and no extra."""
    if key == "clean_binding" and key not in row:
        return bool(row["exact_binding"]) and not bool(row["has_extra"])
    return row[key]


def _cluster_bootstrap(groups: Sequence[np.ndarray], resamples: int, seed: int) -> tuple[float, float]:
    """95% interval of the pooled mean of ``groups`` (one array per prompt) by a two-level bootstrap.

    Each resample draws prompts with replacement, then seeds with replacement within every drawn prompt, so
    the interval reflects that seeds of one prompt are not independent draws.
    """
    sizes = np.array([len(g) for g in groups])
    if sizes.sum() == 0:
        return 0.0, 0.0
    width = sizes.max()
    table = np.zeros((len(groups), width))
    for i, g in enumerate(groups):
        table[i, : len(g)] = g
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(resamples, len(groups)))
    n = sizes[pick]  # (R, P)
    cols = np.floor(rng.random((resamples, len(groups), width)) * n[..., None]).astype(np.int64)
    valid = np.arange(width)[None, None, :] < n[..., None]
    vals = table[pick[..., None], cols] * valid
    stats = vals.sum(axis=(1, 2)) / valid.sum(axis=(1, 2))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def paired_differences(rows: Sequence[dict], reference: str, resamples: int = 2000, seed: int = 0) -> dict:
    """Each method minus ``reference`` on the images both have (same prompt and seed), per category and overall.

    Returns:
        `dict`: ``{method: {category: {"n": pairs, "prompts": int, metric: {"delta", "low", "high"}, and for the
        yes/no metrics "better"/"worse": pairs where only the method / only the reference has it}}}``. The
        95% intervals come from :func:`_cluster_bootstrap` over prompts and seeds; ``extra_objects`` is a failure
        rate, so a negative delta is an improvement there.

    Raises:
        `ValueError`: if ``reference`` has no rows.
    """
    ref = {(r["prompt"], r["seed"]): r for r in rows if r["method"] == reference}
    if not ref:
        methods = sorted({r["method"] for r in rows})
        raise ValueError(f"reference method {reference!r} has no results here; methods present: {methods}")
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        if method == reference:
            continue
        pairs = [
            (r, ref[(r["prompt"], r["seed"])])
            for r in rows
            if r["method"] == method and (r["prompt"], r["seed"]) in ref
        ]
        cats = [c for c in CATEGORIES if any(r["category"] == c for r, _ in pairs)] + ["all"]
        out[method] = {}
        for cat in cats:
            ps = pairs if cat == "all" else [(a, b) for a, b in pairs if a["category"] == cat]
            prompts = list(dict.fromkeys(a["prompt"] for a, _ in ps))
            entry: dict = {"n": len(ps), "prompts": len(prompts)}
            for metric, key in _ROW_KEYS.items():
                d = {p: [] for p in prompts}
                for a, b in ps:
                    d[a["prompt"]].append(float(_flag(a, key)) - float(_flag(b, key)))
                groups = [np.asarray(v) for v in d.values()]
                delta = float(np.concatenate(groups).mean()) if ps else 0.0
                lo, hi = _cluster_bootstrap(groups, resamples, seed)
                entry[metric] = {"delta": delta, "low": lo, "high": hi}
                if metric != "object_recall":
                    entry[metric]["better"] = sum(bool(_flag(a, key)) and not bool(_flag(b, key)) for a, b in ps)
                    entry[metric]["worse"] = sum(bool(_flag(b, key)) and not bool(_flag(a, key)) for a, b in ps)
            out[method][cat] = entry
    return out


def differences_table(diffs: dict, reference: str) -> str:
    """:func:`paired_differences` as markdown; a delta whose interval excludes 0 is bold."""
    deltas = " | ".join(f"Δ {m.replace('_', ' ')}" for m in METRICS)
    head = f"| category | method − {reference} | pairs | {deltas} |"
    lines = [head, "|" + "---|" * 8]

    def cell(e):
        text = f"{e['delta']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"
        return f"**{text}**" if e["low"] > 0 or e["high"] < 0 else text

    cats = list(dict.fromkeys(c for m in diffs.values() for c in m))
    for cat in cats:
        for method, per in diffs.items():
            if cat in per:
                e = per[cat]
                lines.append(f"| {cat} | {method} | {e['n']} | " + " | ".join(cell(e[k]) for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


# -- files ------------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_png(image, path: Path) -> None:
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    _write_atomic(path, buf.getvalue())


def load_results(out_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``results.jsonl``. A truncated last line (a run killed mid-write) is dropped from the file."""
    path = Path(out_dir) / RESULTS
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON; the file is damaged, move it away") from None
            _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
            print(f"note: dropped a truncated last line from {path}", file=sys.stderr)
            return rows
    if text and not text.endswith("\n"):  # a complete last line without its newline: finish it
        with open(path, "a") as f:
            f.write("\n")
    return rows


def _append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Appends rows with one ``O_APPEND`` write, so that processes sharing a folder never interleave lines."""
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def paired_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows whose (prompt, seed) was run by every method present, so methods compare on the same images."""
    methods = set(r["method"] for r in rows)
    have: dict[tuple[str, int], set[str]] = {}
    for r in rows:
        have.setdefault((r["prompt"], r["seed"]), set()).add(r["method"])
    return [r for r in rows if have[(r["prompt"], r["seed"])] == methods]


def _config_dict(cfg: GuidanceConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["class"] = type(cfg).__name__
    return json.loads(json.dumps(d, default=str))  # keys of refinement dicts become strings, as in the file


def _check_manifest(out: Path, manifest: dict, force: bool) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return manifest
    old = json.loads(path.read_text())
    problems = [
        f"{k}: folder has {old.get(k)!r}, this run {manifest[k]!r}"
        for k in ("model", "num_inference_steps", "guidance_scale", "height", "width")
        if old.get(k) != manifest[k]
    ]
    for label, cfg in manifest["methods"].items():
        if label in old.get("methods", {}) and old["methods"][label] != cfg:
            problems.append(f"method {label!r} was run with another config: {old['methods'][label]}")
    if problems and not force:
        raise ValueError(
            f"{out} holds a run with other settings ({'; '.join(problems)}); use another --out folder, "
            "or force=True / --force to mix them"
        )
    merged = dict(old, **{k: v for k, v in manifest.items() if k != "methods"})
    merged["methods"] = {**old.get("methods", {}), **manifest["methods"]}
    return merged


# -- the run ----------------------------------------------------------------------------------------------------


def _losses(out, j: int) -> dict:
    """First and last guided loss of sample ``j`` from the diagnostics, if any."""
    steps = getattr(getattr(out, "diagnostics", None), "steps", None) or []
    losses = [s.loss[j] for s in steps if getattr(s, "loss", None) and j < len(s.loss)]
    return {"loss_first": losses[0], "loss_last": losses[-1]} if losses else {}


class _Run(NamedTuple):
    """A checked run: its methods, seeds, prompts, reference, folder and manifest."""

    resolved: list[tuple[str, GuidanceConfig]]
    seeds: list[int]
    prompts: list[ShapesPrompt]
    reference: str | None
    out: Path
    manifest: dict

    def wanted(self) -> set[tuple[str, str, int]]:
        """Every (method, prompt, seed) of the run."""
        return {(lab, p.text, s) for lab, _ in self.resolved for p in self.prompts for s in self.seeds}


def _prepare_run(
    methods,
    seeds,
    out_dir,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int,
    categories: Sequence[str] | None,
    prompts_per_category: int,
    height: int | None,
    width: int | None,
    model: str,
    override: str | None,
    force: bool,
    reference: str | None,
) -> _Run:
    """Checks a run's settings and writes (or merges into) the folder's manifest; raises ``ValueError`` first."""
    resolved = parse_methods(methods, override)
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else sorted({int(s) for s in seeds})
    if not seed_list or min(seed_list) < 0:
        raise ValueError("seeds must hold at least one integer >= 0")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    prompts = shapes_prompts(categories, prompts_per_category)
    labels = [label for label, _ in resolved]
    if reference is not None and reference not in labels:
        raise ValueError(f"reference {reference!r} is not among the methods {labels}")
    if reference is None and len(labels) > 1:
        reference = labels[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "benchmark": "shapesworld",
        "model": model,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "height": height,
        "width": width,
        "override": override or "",
        "methods": {label: _config_dict(cfg) for label, cfg in resolved},
    }
    _write_atomic(out / MANIFEST, json.dumps(_check_manifest(out, manifest, force), indent=1).encode())
    return _Run(resolved, seed_list, prompts, reference, out, manifest)


def run_benchmark(
    pipe,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    seeds: str | Sequence[int] = "0-31",
    out_dir: str | os.PathLike = "runs/shapes",
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    batch_size: int = 32,
    categories: Sequence[str] | None = None,
    prompts_per_category: int = 8,
    height: int | None = None,
    width: int | None = None,
    model: str = "",
    override: str | None = None,
    force: bool = False,
    shard: tuple[int, int] | None = None,
    reference: str | None = None,
    progress: bool = True,
    generate: bool = True,
    paired: bool = True,
    generate_fn: Callable | None = None,
    checker: Callable = check,
) -> dict:
    """Runs (or resumes) the ShapesWorld benchmark and writes ``summary.json`` and ``summary.md``.

    Args:
        pipe (`StableDiffusionPipeline`): the model (the shipped ShapesWorld model for real numbers).
        methods (`str` or `Sequence[str]`, *optional*): see :func:`parse_methods`.
        seeds (`str` or `Sequence[int]`, *optional*, defaults to `"0-31"`): seeds per prompt.
        out_dir (`str` or `os.PathLike`, *optional*): output folder (created).
        num_inference_steps (`int`, *optional*, defaults to 20): sampler steps.
        guidance_scale (`float`, *optional*, defaults to 7.5): classifier-free guidance scale.
        batch_size (`int`, *optional*, defaults to 32): seeds generated together (one generator per seed, so an
            image does not depend on its batch).
        categories (`Sequence[str]`, *optional*): subset of :data:`CATEGORIES`.
        prompts_per_category (`int`, *optional*, defaults to 8): see :func:`shapes_prompts`.
        height, width (`int`, *optional*): image size; the pipeline's default if omitted.
        model (`str`, *optional*): the model's name or path, recorded in the manifest and compared on resume.
        override (`str`, *optional*): settings for every guided method, see :func:`parse_methods`.
        force (`bool`, *optional*, defaults to `False`): accept a folder made with other settings.
        shard (`tuple[int, int]`, *optional*): ``(i, n)`` generates only batches ``i, i + n, ...`` of the run's
            fixed batch order, so ``n`` processes sharing one folder split the work without overlap (rows are
            appended with one ``O_APPEND`` write each). The summary covers what the folder holds.
        reference (`str`, *optional*): the method the others are compared with, pair by pair
            (:func:`paired_differences`, written to ``summary.json`` and ``summary.md``); the first method by
            default, no comparison with one method.
        progress (`bool`, *optional*, defaults to `True`): progress bar on stderr.
        generate (`bool`, *optional*, defaults to `True`): `False` only summarises what the folder holds.
        paired (`bool`, *optional*, defaults to `True`): summarise only the (prompt, seed) pairs that every
            requested method has finished (all of them once the run is complete).
        generate_fn (`Callable`, *optional*): ``ait2i.generate`` by default (tests pass a fake).
        checker (`Callable`, *optional*): image -> detections, :func:`~ait2i.shapes.check.check` by default.

    Returns:
        `dict`: the summary (see :func:`summarize`) over the requested methods, prompts and seeds.
    """
    import torch

    if generate_fn is None:
        from ..guided import generate as generate_fn
    run = _prepare_run(
        methods,
        seeds,
        out_dir,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
        categories=categories,
        prompts_per_category=prompts_per_category,
        height=height,
        width=width,
        model=model,
        override=override,
        force=force,
        reference=reference,
    )
    resolved, seed_list, prompts, reference, out, manifest = run

    done = {(r["method"], r["prompt"], r["seed"]) for r in load_results(out)}
    # categories interleaved (round robin), so that a run cut short still covers every category
    by_cat = [[p for p in prompts if p.category == c] for c in dict.fromkeys(p.category for p in prompts)]
    order = [ps[i] for i in range(max(map(len, by_cat))) for ps in by_cat if i < len(ps)]
    todo = [
        (chunk, p, label, cfg)
        for chunk in (seed_list[i : i + batch_size] for i in range(0, len(seed_list), batch_size))
        for p in order
        for label, cfg in resolved
    ]
    if shard is not None:
        i, n = shard
        if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
        todo = todo[i::n]
    if not generate:
        todo = []
    total = sum(sum((lab, p.text, s) not in done for s in ch) for ch, p, lab, _ in todo)
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="shapes bench", unit="img")
    t0 = time.time()
    for chunk, p, label, cfg in todo:
        batch = [s for s in chunk if (label, p.text, s) not in done]
        if not batch:
            continue
        kwargs = {
            "generator": [torch.Generator("cpu").manual_seed(s) for s in batch],
            "num_images_per_prompt": len(batch),
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "output_type": "pil",
        }
        if height:
            kwargs["height"] = height
        if width:
            kwargs["width"] = width
        result = generate_fn(pipe, p.text, p.subjects, method=cfg, **kwargs)
        images = result.images
        if len(images) != len(batch):
            raise RuntimeError(f"expected {len(batch)} images for {p.text!r}, got {len(images)}")
        rows = []
        for j, (seed, img) in enumerate(zip(batch, images)):
            rel = Path(method_dir(label)) / p.slug / f"{seed}.png"
            _save_png(img, out / rel)
            found = checker(img)
            rows.append(
                {
                    "method": label,
                    "category": p.category,
                    "prompt": p.text,
                    "seed": seed,
                    "objects": [list(o) for o in p.objects],
                    "image": str(rel),
                    **match(found, p.objects),
                    "detections": [d.to_dict() for d in found],
                    **_losses(result, j),
                }
            )
        _append_rows(out / RESULTS, rows)
        done.update((label, p.text, s) for s in batch)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()

    wanted = run.wanted()
    rows = [r for r in load_results(out) if (r["method"], r["prompt"], r["seed"]) in wanted]
    finished = len(rows)
    if paired:
        rows = paired_rows(rows)
    summary = summarize(rows)
    diffs = paired_differences(rows, reference) if reference and any(r["method"] == reference for r in rows) else None
    report = {
        "settings": {k: v for k, v in manifest.items() if k != "methods"},
        "seeds": seed_list,
        "prompts": {
            c: [p.text for p in prompts if p.category == c] for c in dict.fromkeys(p.category for p in prompts)
        },
        "methods": manifest["methods"],
        "seconds_this_run": round(time.time() - t0, 1),
        "images": {"planned": len(wanted), "finished": finished, "summarised": len(rows), "paired": paired},
        "summary": summary,
    }
    md = markdown_table(summary)
    if diffs:
        report["paired_differences"] = {"reference": reference, "methods": diffs}
        md += "\n" + differences_table(diffs, reference)
    _write_atomic(out / "summary.json", json.dumps(report, indent=1).encode())
    _write_atomic(out / "summary.md", md.encode())
    return summary


# -- pictures ---------------------------------------------------------------------------------------------------


def save_grid(
    out_dir: str | os.PathLike,
    path: str | os.PathLike,
    methods: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] = tuple(range(8)),
    dpi: int = 100,
    names: dict[str, str] | None = None,
) -> Path:
    """Draws a run's images as a PNG grid: one row per (prompt, method), one column per seed.

    Each image is framed green when the checker found exact binding, orange when every object is there but a
    colour is wrong, red when an object is missing; ``+`` marks extra objects.

    Args:
        out_dir: a benchmark folder (its ``results.jsonl`` and images).
        path: the PNG to write (its folder must exist; written atomically).
        methods (`Sequence[str]`, *optional*): method labels, in row order (default: all, in run order).
        prompts (`Sequence[str]`, *optional*): prompt texts (default: the first prompt of every category).
        seeds (`Sequence[int]`, *optional*): columns (default 0-7).
        dpi (`int`, *optional*, defaults to 100): resolution of the PNG.
        names (`dict[str, str]`, *optional*): shorter names for method labels in the row titles.

    Raises:
        `ValueError`: if a requested method, prompt or seed has no image in the folder.
    """
    from PIL import Image

    from ..metadata import atomic_path
    from ..viz import _figure

    out = Path(out_dir)
    rows = load_results(out)
    if not rows:
        raise ValueError(f"{out} holds no results.jsonl rows; run the benchmark first")
    by_key = {(r["method"], r["prompt"], r["seed"]): r for r in rows}
    methods = list(methods) if methods else list(dict.fromkeys(r["method"] for r in rows))
    if not prompts:
        first: dict[str, str] = {}
        for r in rows:
            first.setdefault(r["category"], r["prompt"])
        prompts = [first[c] for c in CATEGORIES if c in first]
    seeds = list(seeds)
    missing = [(m, p, sd) for p in prompts for m in methods for sd in seeds if (m, p, sd) not in by_key]
    if missing:
        shown = "; ".join(f"{m} / {p!r} / seed {sd}" for m, p, sd in missing[:5])
        raise ValueError(f"{len(missing)} requested image(s) are not in {out}, e.g. {shown}")
    colours = {"exact": "#2ca02c", "colour": "#ff7f0e", "missing": "#d62728"}
    n_rows, n_cols = len(prompts) * len(methods), len(seeds)
    fig = _figure(figsize=(1.0 * n_cols + 3.2, 1.0 * n_rows + 0.3), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, (prompt, method) in enumerate((p, m) for p in prompts for m in methods):
        for j, seed in enumerate(seeds):
            r = by_key[(method, prompt, seed)]
            ax = axes[i, j]
            ax.imshow(np.asarray(Image.open(out / r["image"]).convert("RGB")))
            ax.set_xticks([])
            ax.set_yticks([])
            state = "exact" if r["exact_binding"] else "colour" if r["all_present"] else "missing"
            for side in ax.spines.values():
                side.set_edgecolor(colours[state])
                side.set_linewidth(3)
            if r["has_extra"]:
                ax.text(0.03, 0.97, "+", color="white", fontsize=9, va="top", transform=ax.transAxes)
            if i == 0:
                ax.set_title(f"seed {seed}", fontsize=7)
        name = (names or {}).get(method, method)
        name = name if len(name) <= 40 else name[:38] + "…"
        axes[i, 0].set_ylabel(f"{prompt}\n{name}", rotation=0, ha="right", va="center", fontsize=8)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
        with Image.open(tmp) as im:  # flat colours: a 256-colour palette keeps the picture at a third of the size
            small = im.convert("RGB").quantize(colors=256)
        small.save(tmp, format="PNG", optimize=True)
    return path


# -- command line -----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ait2i bench shapes``."""
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated presets, variants (ait2i:w_isolation=0,w_presence=0) or the named sets 'default' "
        f"(= none,{AE_SCALED},ait2i) and 'ablation' (default: {DEFAULT_METHODS})",
    )
    parser.add_argument(
        "--override",
        default=None,
        help="key=value,... applied to every guided method that has the setting, e.g. max_guided_steps=0.5",
    )
    parser.add_argument("--seeds", default="0-31", help="seeds per prompt, e.g. 0-31 or 0,5,10-12 (default 0-31)")
    parser.add_argument("--out", default="runs/shapes", help="output folder (resumable; default runs/shapes)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default 20; DDIM, the model's scheduler)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default 7.5)")
    parser.add_argument("--batch-size", type=int, default=32, help="seeds generated together (default 32)")
    parser.add_argument("--model", default=None, help="diffusers folder of a ShapesWorld model (default: shipped)")
    parser.add_argument("--scheduler", default="ddim", choices=("ddim", "pndm"), help="sampler (default ddim)")
    parser.add_argument(
        "--categories", default=",".join(CATEGORIES), help=f"comma-separated subset of {','.join(CATEGORIES)}"
    )
    parser.add_argument("--prompts-per-category", type=int, default=8, help="1-12 (default 8)")
    parser.add_argument(
        "--reference",
        default=None,
        help="method the others are compared with pair by pair (default: the first listed)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes generating in parallel into one folder (default: 2 where the machine has 2 or more "
        "cores, else 1); each gets cores/workers torch threads unless --threads is given",
    )
    parser.add_argument(
        "--shard", default=None, help="i/n: generate only this process's share (what --workers runs in each process)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--force", action="store_true", help="reuse a folder made with other settings")
    parser.add_argument(
        "--summarize-only", action="store_true", help="generate nothing; summarise what the folder holds"
    )
    parser.add_argument(
        "--grid",
        default=None,
        metavar="PNG",
        help="also draw the first prompt of each category, seeds 0-7, every method, as a framed image grid",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def model_id(folder: Path) -> str:
    """Names a diffusers folder by the SHA-256 of its weight files (so two copies of one model agree)."""
    import hashlib

    h = hashlib.sha256()
    files = sorted(folder.glob("*/*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no */*.safetensors weights")
    for f in files:
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return f"sha256:{h.hexdigest()[:16]}"


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "")
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard must be i/n with 0 <= i < n (e.g. 0/2), got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def _worker_argv(args: argparse.Namespace, i: int, n: int, threads: int) -> list[str]:
    """The command line of worker ``i`` of ``n``: this run's settings, its shard, one progress-less process."""
    cmd = [sys.executable, "-m", "ait2i.shapes.bench", "--methods", args.methods, "--seeds", args.seeds]
    cmd += ["--out", str(args.out), "--steps", str(args.steps), "--guidance-scale", repr(args.guidance_scale)]
    cmd += ["--batch-size", str(args.batch_size), "--scheduler", args.scheduler, "--categories", args.categories]
    cmd += ["--prompts-per-category", str(args.prompts_per_category)]
    if args.override:
        cmd += ["--override", args.override]
    if args.model:
        cmd += ["--model", str(args.model)]
    if args.force:
        cmd.append("--force")
    if args.reference:
        cmd += ["--reference", args.reference]
    return cmd + ["--shard", f"{i}/{n}", "--threads", str(threads), "--workers", "1", "--no-progress"]


def _run_workers(args: argparse.Namespace, workers: int, todo: set[tuple[str, str, int]]) -> None:
    """Runs ``workers`` processes on shards of the run; a bar follows the ``todo`` (method, prompt, seed) rows
    as they reach ``results.jsonl`` (other runs may share the folder). Raises if one worker fails."""
    import subprocess
    import tempfile

    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    out = Path(args.out)
    follow = _NewRows(out / RESULTS)
    left = set(todo)
    logs = [tempfile.TemporaryFile() for _ in range(workers)]
    procs = [
        subprocess.Popen(_worker_argv(args, i, workers, threads), stdout=logs[i], stderr=subprocess.STDOUT)
        for i in range(workers)
    ]
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(left), desc=f"shapes bench ({workers} workers)", unit="img")
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(2)
            if bar is not None:
                new = [k for k in follow.keys() if k in left]
                left.difference_update(new)
                bar.update(len(new))
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        if bar is not None:
            bar.close()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        i = failed[0]
        logs[i].seek(0)
        tail = logs[i].read().decode(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(
            f"worker {i}/{workers} exited with status {procs[i].returncode}; the folder keeps every finished image "
            "(rerun the same command to resume). Its last lines:\n" + "\n".join(tail)
        )


class _NewRows:
    """Reads the rows appended to a results file since the last call (complete lines only)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def keys(self) -> list[tuple[str, str, int]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        rows = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        return [(r["method"], r["prompt"], r["seed"]) for r in rows]


def run(args: argparse.Namespace) -> int:
    """Runs ``ait2i bench shapes`` from parsed arguments; prints the table. Returns the exit status.

    With more than one worker, this process checks the settings and writes the manifest, starts the workers
    (``python -m ait2i.shapes.bench ... --shard i/n``), follows them with a progress bar and summarises.
    """
    try:
        import torch

        from .model import load_pipeline, model_folder

        resolved = parse_methods(args.methods, args.override)  # fail on a bad method before loading anything
        cats = [c.strip() for c in args.categories.split(",") if c.strip()]
        prompts = shapes_prompts(cats, args.prompts_per_category)
        shard = parse_shard(args.shard) if args.shard is not None else None
        workers = args.workers if args.workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 1)
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if shard is not None or args.summarize_only:
            workers = 1
        folder = model_folder(args.model)
        pipe = None
        if workers == 1:  # with workers, only they load the model
            if args.threads:
                torch.set_num_threads(args.threads)
            pipe = load_pipeline(folder, scheduler=args.scheduler)
        model = model_id(folder)
        common = {
            "num_inference_steps": args.steps,
            "guidance_scale": args.guidance_scale,
            "batch_size": args.batch_size,
            "categories": cats,
            "override": args.override,
            "prompts_per_category": args.prompts_per_category,
            "model": model,
            "force": args.force,
            "reference": args.reference,
        }
        labels = [lab for lab, _ in resolved]
        if workers > 1:  # this process checks the settings and writes the manifest; the workers generate
            todo = _prepare_run(labels, args.seeds, args.out, height=None, width=None, **common).wanted()
            todo -= {(r["method"], r["prompt"], r["seed"]) for r in load_results(args.out)}
            _run_workers(args, workers, todo)
            run_benchmark(None, labels, args.seeds, args.out, progress=False, generate=False, **common)
        else:
            run_benchmark(
                pipe,
                labels,
                args.seeds,
                args.out,
                shard=shard,
                progress=not args.no_progress,
                generate=not args.summarize_only,
                **common,
            )
        if args.grid:
            seeds = parse_seeds(args.seeds)[:8]
            texts = list(dict.fromkeys(next(p.text for p in prompts if p.category == c) for c in cats))
            save_grid(args.out, args.grid, methods=labels, prompts=texts, seeds=seeds)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    print((Path(args.out) / "summary.md").read_text(), end="")
    print(f"results: {Path(args.out) / 'summary.json'}")
    if args.grid:
        print(f"grid: {args.grid}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ait2i.shapes.bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
