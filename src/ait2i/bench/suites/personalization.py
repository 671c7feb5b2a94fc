"""Personalized concepts on ShapesWorld (``personalization`` suite): the shipped star and ring, alone, next to
ordinary objects and together, with and without guidance; every image read by the checker.

Categories are ``<concept set>-<kind>`` (:func:`categories`): concept sets ``star``, ``ring`` (:data:`
MEASURE_PROMPTS`, the concept alone or next to an ordinary object) and ``star+ring`` (:data:`MULTI_PROMPTS`, both
concepts loaded together); kinds ``ti`` (textual inversion: ``"a red <star>"``), ``lora`` (the plain word) and
``base`` (the shipped model with the plain word and nothing loaded: the reference, unguided only). The spec
``personalization:star-lora,star+ring-lora`` picks categories (comma-separated; default: all nine).

The suite prepares the pipeline of each item (:class:`ConceptPipelines`, the runner's ``Suite.prepare`` hook):
a copy of the runner's pipeline with the item's concepts loaded (:func:`ait2i.shapes.concept.load_concepts`;
two LoRAs as named adapters combined with ``set_adapters`` at one adapter weight). What was loaded is part of
the run's model identity (:func:`model_identity`: each concept file's SHA-256 and the adapter weight), so a
folder made with other concepts or another weight is refused, not mixed. :class:`PersonalizationScorer` fills
:data:`METRICS`; :func:`summary_table` and :func:`save_grid` make the tables and picture of
docs/results/personalization.md from the runner's rows, each image read again by the current checker.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...shapes import concept as C
from ...shapes import render as R
from .base import Item, Suite

#: The evaluation prompts of one concept, with ``"star"`` standing for the concept's shape (:func:`measure_prompts`
#: puts in the ring): objects as ``(colour, shape)`` in prompt order.
MEASURE_PROMPTS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("red", "star"),),
    (("cyan", "star"),),
    (("red", "star"), ("blue", "square")),
    (("green", "star"), ("purple", "circle")),
    (("blue", "star"), ("red", "triangle")),
    (("yellow", "star"), ("green", "square")),
    (("blue", "circle"), ("purple", "star")),
    (("cyan", "square"), ("yellow", "star")),
)
#: The multi-concept prompts: the two new shapes together (both LoRAs loaded), each first and second.
MULTI_PROMPTS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("red", "star"), ("blue", "ring")),
    (("green", "ring"), ("yellow", "star")),
    (("cyan", "star"), ("purple", "ring")),
    (("blue", "ring"), ("red", "star")),
)
MULTI = "star+ring"
#: What the suite measures: each concept alone and the two together.
CONCEPT_SETS = (*C.CONCEPT_SHAPES, MULTI)
#: ``kind``: ``ti`` (textual inversion), ``lora``, or ``base`` (the shipped model with the plain word: reference).
MEASURE_KINDS = ("ti", "lora", "base")
#: Per-image metrics (:func:`score_image`); ``concept_star``/``concept_ring``/``bleed`` are None where they do not
#: apply (no such concept in the prompt, one concept only).
METRICS = (
    "concept", "concept_star", "concept_ring", "concept_color", "any_concept", "others_exact", "bleed",
    "exact_binding", "clean_binding", "has_extra",
)  # fmt: skip
METRIC_NAMES = {
    "concept": "concept present (every concept, right colour)",
    "concept_star": "star present (right colour)",
    "concept_ring": "ring present (right colour)",
    "concept_color": "concept colour present (any shape)",
    "any_concept": "any star/ring",
    "others_exact": "other objects exact (1 - neglect/mis-binding)",
    "bleed": "bleed (a concept's shape in the other concept's colour)",
    "exact_binding": "exact binding",
    "clean_binding": "clean binding",
    "has_extra": "extra objects",
}


def measure_prompts(concept_set: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The prompts of a concept set: :data:`MEASURE_PROMPTS` with the star or the ring, or :data:`MULTI_PROMPTS`."""
    if concept_set == MULTI:
        return MULTI_PROMPTS
    C.check_shape(concept_set)
    return tuple(tuple((c, concept_set if s == "star" else s) for c, s in objs) for objs in MEASURE_PROMPTS)


def concept_shapes(concept_set: str) -> tuple[str, ...]:
    """The concept shapes of a concept set: ``("star",)``, ``("ring",)`` or both."""
    return C.CONCEPT_SHAPES if concept_set == MULTI else (concept_set,)


def concept_word(shape: str, kind: str) -> str:
    """How a concept is spelled in a prompt: ``"<star>"`` for textual inversion, the plain word otherwise."""
    return C.placeholder(shape) if kind == "ti" else shape


def measure_prompt(objects, kind_or_word: str = "lora") -> tuple[str, list[str]]:
    """The prompt text and its subjects (``"red <star>"``, ``"blue square"``) for ``objects``: concept shapes are
    spelled for ``kind_or_word`` (a kind, or ``"<star>"`` for the textual-inversion spelling)."""
    if kind_or_word in MEASURE_KINDS:
        spell = {s: concept_word(s, kind_or_word) for s in C.CONCEPT_SHAPES}
    elif kind_or_word.startswith("<"):
        spell = {s: C.placeholder(s) for s in C.CONCEPT_SHAPES}
    else:
        spell = {s: s for s in C.CONCEPT_SHAPES}
    phrases = [f"{c} {spell.get(s, s)}" for c, s in objects]
    return R.caption_of(phrases), phrases


def score_image(image, objects) -> dict:
    """Per-image metrics, from :func:`ait2i.shapes.check.check`:

    - ``concept``: every concept object (star, ring) of the prompt is there, one-colour, in its requested colour;
    - ``concept_star`` / ``concept_ring``: that one concept is (None when the prompt has no such concept);
    - ``concept_color``: an object of each concept's colour, any shape (the concept words were not neglected);
    - ``any_concept``: a star or a ring anywhere;
    - ``others_exact``: fraction of the ordinary objects found with their colour and shape (None without any);
    - ``bleed`` (two concepts only, else None): a concept's shape in the *other* concept's colour (a star where
      the ring should be, or a ring in the star's colour);
    - ``exact_binding``, ``clean_binding``, ``has_extra``: the ShapesWorld benchmark's.
    """
    from ...shapes.check import check, match

    det = check(image)
    objs = [d for d in det if not d.is_noise]
    objects = [tuple(o) for o in objects]
    concepts = [o for o in objects if o[1] in C.CONCEPT_SHAPES]
    if not concepts:
        raise ValueError(f"{objects} holds no concept shape ({list(C.CONCEPT_SHAPES)})")
    others = [o for o in objects if o[1] not in C.CONCEPT_SHAPES]
    m = match(det, objects)
    mc = match(det, concepts)
    out = {
        "concept": mc["exact_binding"],
        "concept_color": mc["color_present"] == len(concepts),
        "any_concept": any(d.shape in C.CONCEPT_SHAPES for d in objs),
        "others_exact": match(det, others)["exact"] / len(others) if others else None,
        "bleed": None,
        "exact_binding": m["exact_binding"],
        "clean_binding": m["clean_binding"],
        "has_extra": m["has_extra"],
        "detected": [f"{d.color} {d.shape}" + ("*" if d.mixed else "") for d in objs],
    }
    for shape in C.CONCEPT_SHAPES:
        mine = [o for o in concepts if o[1] == shape]
        out[f"concept_{shape}"] = match(det, mine)["exact_binding"] if mine else None
    if len({s for _, s in concepts}) > 1:
        out["bleed"] = any(
            d.shape == sa and d.color == cb and (cb, sa) not in concepts
            for d in objs
            for ca, sa in concepts
            for cb, sb in concepts
            if sa != sb
        )
    return out


# -- the suite ---------------------------------------------------------------------------------------------------


def categories(sets: Sequence[str] = CONCEPT_SETS, kinds: Sequence[str] = MEASURE_KINDS) -> tuple[str, ...]:
    """The categories ``<set>-<kind>`` of ``sets`` x ``kinds``, set-major."""
    bad = [s for s in sets if s not in CONCEPT_SETS] + [k for k in kinds if k not in MEASURE_KINDS]
    if bad:
        raise ValueError(
            f"unknown concept sets or kinds {bad}; expected sets of {list(CONCEPT_SETS)} and kinds of "
            f"{list(MEASURE_KINDS)}"
        )
    return tuple(f"{s}-{k}" for s in dict.fromkeys(sets) for k in dict.fromkeys(kinds))


def split_category(category: str) -> tuple[str, str]:
    """``"star+ring-lora"`` -> ``("star+ring", "lora")``."""
    concept_set, _, kind = category.rpartition("-")
    if concept_set not in CONCEPT_SETS or kind not in MEASURE_KINDS:
        raise ValueError(
            f"unknown personalization category {category!r}; expected <set>-<kind> with set one of "
            f"{list(CONCEPT_SETS)} and kind one of {list(MEASURE_KINDS)}, e.g. star-lora or star+ring-ti"
        )
    return concept_set, kind


def items(cats: Sequence[str], regional: bool = False) -> list:
    """The runner items of ``cats``: one per prompt of each category's concept set, spelled for its kind;
    ``data``: ``objects`` (the requested ``(colour, shape)`` pairs), ``concept_set`` and ``kind``. ``base`` items
    run unguided only (``methods=("none",)``). ``regional``: the two-LoRA items place each adapter on its subject
    (``generate(..., regional_adapters={"star-lora": "red star", ...})``, :mod:`ait2i.regional`)."""
    out = []
    for cat in cats:
        concept_set, kind = split_category(cat)
        for i, objs in enumerate(measure_prompts(concept_set)):
            prompt, subjects = measure_prompt(objs, kind)
            data = {"objects": objs, "concept_set": concept_set, "kind": kind}
            extra = {}
            if regional and kind == "lora" and concept_set == MULTI:
                pairs = zip(objs, subjects)
                extra = {"regional_adapters": {f"{s}-lora": p for (_, s), p in pairs if s in C.CONCEPT_SHAPES}}
            methods = ("none",) if kind == "base" else None
            out.append(Item(cat, i, prompt, tuple(subjects), data, generate_kwargs=extra, methods=methods))
    return out


class ConceptPipelines:
    """The runner's ``prepare`` hook of this suite: ``(pipe, item) -> pipeline`` with the item's concepts loaded.

    ``base`` items get ``pipe`` itself; the others a copy of it (device, dtype and scheduler as the runner set
    them) with the concepts of their set and kind loaded from ``folder`` (default: the shipped), LoRAs at
    ``adapter_weight``. The last prepared pipeline is kept, so the items of one category load their concepts once.
    """

    def __init__(self, folder: str | os.PathLike | None = None, adapter_weight: float = 1.0):
        self.folder = Path(folder) if folder is not None else None
        self.adapter_weight = adapter_weight
        self._base = self._key = self._pipe = None

    def __call__(self, pipe, item):
        concept_set, kind = item.data["concept_set"], item.data["kind"]
        if kind == "base":
            return pipe
        if pipe is not self._base or (concept_set, kind) != self._key:
            self._base = self._key = self._pipe = None  # free the previous copy before making the next
            loaded = copy.deepcopy(pipe)
            C.load_concepts(loaded, concept_shapes(concept_set), kind, self.folder, self.adapter_weight)
            self._base, self._key, self._pipe = pipe, (concept_set, kind), loaded
        return self._pipe


def concept_files(cats: Sequence[str], folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """``{"star-lora": weights file, ...}`` of every concept ``cats`` load.

    Raises:
        ValueError: a concept folder or file is missing or refused (:func:`ait2i.shapes.concept.concept_file`),
            naming the categories to drop.
    """
    base = Path(folder) if folder is not None else C.concepts_dir()
    out: dict[str, Path] = {}
    for cat in cats:
        concept_set, kind = split_category(cat)
        if kind == "base":
            continue
        for shape in concept_shapes(concept_set):
            name = f"{shape}-{kind}"
            if name not in out:
                if not (base / name).is_dir():
                    raise ValueError(
                        f"no {name} concept folder in {base}, which {cat} needs; train it (python -m "
                        f"ait2i.shapes.personalize train --kind {kind} --concept {shape}) or leave {cat} out"
                    )
                out[name] = C.concept_file(base / name, kind)
    return out


def model_identity(base: str, cats: Sequence[str], folder=None, adapter_weight: float = 1.0) -> str:
    """How the manifest and every PNG name the model of a personalization run: the base model's identity, each
    concept file's SHA-256 (16 hex digits) and the LoRA adapter weight (when a LoRA is loaded)."""
    files = concept_files(cats, folder)
    parts = [f"{n}:{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}" for n, p in sorted(files.items())]
    text = base + (" + concepts " + " ".join(parts) if parts else "")
    if any(n.endswith("-lora") for n in files):
        text += f" (LoRA adapter weight {adapter_weight:g})"
    return text


def suite(
    category: str | None = None, data_dir=None, concepts=None, adapter_weight: float = 1.0, regional: bool = False
):
    """``personalization`` (every category) or ``personalization:star-lora,star+ring-lora``; protocol ``shapes``
    (DDIM, 20 steps, CFG 7.5), seeds 0-15, concepts from ``concepts`` (default: the shipped) at
    ``adapter_weight``; ``regional``: see :func:`items`."""
    import math

    if not (math.isfinite(adapter_weight) and adapter_weight > 0):
        raise ValueError(f"the LoRA adapter weight must be a positive number, got {adapter_weight}")
    cats = {c.strip() for c in (category or "").split(",") if c.strip()}
    for c in cats:
        split_category(c)
    every = categories()
    cats = [c for c in every if c in cats] or list(every)  # one order (and one suite name) however spelled
    name = "personalization" if len(cats) == len(every) else "personalization:" + ",".join(cats)
    return Suite(
        name,
        tuple(items(cats, regional)),
        "item",
        "shapes",
        (),
        ("shapes",),
        seeds="0-15",
        prepare=ConceptPipelines(concepts, adapter_weight),
    )


class PersonalizationScorer:
    """The checker on concept prompts: :data:`METRICS` of :func:`score_image` (and what it detected)."""

    name, keys = "personalization", METRICS

    def score(self, images, item) -> list[dict]:
        return [score_image(im, item.data["objects"]) for im in images]

    def info(self) -> dict:
        return {"model": "ait2i.shapes.check (deterministic)"}


# -- tables and picture ------------------------------------------------------------------------------------------


def rescore(out: str | os.PathLike, rows: Sequence[dict]) -> list[dict]:
    """The runner's rows of a personalization folder with every metric read again from its PNG by the current
    checker (a checker change never leaves stale numbers), and ``concept_set``, ``kind``, ``prompt_index``."""
    from PIL import Image

    res = []
    for r in rows:
        concept_set, kind = split_category(r["category"])
        objs = measure_prompts(concept_set)[r["index"]]
        if measure_prompt(objs, kind)[0] != r["prompt"]:
            raise ValueError(f"{out}: row {r['image']} says prompt {r['prompt']!r}, not that of its index")
        with Image.open(Path(out) / r["image"]) as im:
            scores = score_image(im.convert("RGB"), objs)
        res.append({**r, **scores, "concept_set": concept_set, "kind": kind, "prompt_index": r["index"]})
    return res


def _names(rows: Sequence[dict], methods: dict | None) -> dict[str, str]:
    """Display name of each method label: its registry name when that is unique among the labels."""
    labels = list(dict.fromkeys(r["method"] for r in rows))
    if not methods:
        return {m: m for m in labels}
    names = {m: methods.get(m, {}).get("name", m) for m in labels}
    return {m: n if list(names.values()).count(n) == 1 else m for m, n in names.items()}


def summary_table(
    rows: Sequence[dict], methods: dict | None = None, adapter_weight: float | None = None, regional: bool = False
) -> str:
    """Markdown tables of :func:`rescore`'s rows, one section per concept set: each metric per kind and method
    (mean and 95% two-level bootstrap interval over prompts then seeds), the paired difference against ``none``
    of the same kind, and the concept rate per prompt. ``methods``: the manifest's ``{label: config}`` (tables
    name a method by its registry name where that is unambiguous)."""
    from ..stats import paired, summarize

    show = _names(rows, methods)
    labels = list(show)
    none = [m for m in labels if (methods or {}).get(m, {}).get("name", m) == "none"]
    lines = []
    for cs in CONCEPT_SETS:
        sub = [r for r in rows if r["concept_set"] == cs]
        if not sub:
            continue
        groups: dict = {}
        for r in sub:
            groups.setdefault((r["kind"], r["method"]), []).append(r)
        order = [(k, m) for k in MEASURE_KINDS for m in labels if (k, m) in groups]
        per_concept = ("concept_star", "concept_ring") if cs != MULTI else ()  # = "concept" with one concept
        metrics = [m for m in METRICS if m not in per_concept and any(r[m] is not None for r in sub)]

        def values(rs, metric):
            return {(r["prompt_index"], r["seed"]): float(r[metric]) for r in rs if r[metric] is not None}

        weight = f" (LoRA adapter weight {adapter_weight:g})" if adapter_weight not in (None, 1.0) else ""
        if regional and cs == MULTI:
            weight += " (regional adapters: each LoRA placed on its subject)"
        lora = any(r["kind"] == "lora" for r in sub)
        lines += [f"### {cs}" + (weight if lora else ""), ""]
        lines.append("images: prompts x seeds of the row; mean [95% interval].\n")
        head = "| kind | method | images | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " |"
        lines += [head, "|" + "---|" * (3 + len(metrics))]
        for k, m in order:
            cells = []
            for metric in metrics:
                v = values(groups[(k, m)], metric)
                if not v:
                    cells.append("-")
                    continue
                st = summarize(v)
                cells.append(f"{st['mean']:.3f} [{st['low']:.2f}, {st['high']:.2f}]")
            rs = groups[(k, m)]
            size = f"{len({r['prompt_index'] for r in rs})} x {len({r['seed'] for r in rs})}"
            lines.append(f"| {k} | {show[m]} | {size} | " + " | ".join(cells) + " |")
        ref = {k: n for k, n in ((k, next((x for x in none if (k, x) in groups), None)) for k in MEASURE_KINDS) if n}
        diffs = [(k, m) for k, m in order if k in ref and m != ref[k]]
        if diffs:
            lines += ["", "Paired differences vs `none` (same kind, same prompt and seed):", "", head]
            lines.append("|" + "---|" * (3 + len(metrics)))
            for k, m in diffs:
                cells = []
                for metric in metrics:
                    a, b = values(groups[(k, m)], metric), values(groups[(k, ref[k])], metric)
                    if not set(a) & set(b):
                        cells.append("-")
                        continue
                    d = paired(a, b)
                    cells.append(f"{d['delta']:+.3f} [{d['low']:+.2f}, {d['high']:+.2f}]")
                n = len(set(values(groups[(k, m)], "concept")) & set(values(groups[(k, ref[k])], "concept")))
                lines.append(f"| {k} | {show[m]} − none | {n} pairs | " + " | ".join(cells) + " |")
        sizes = sorted({len(measure_prompts(cs)[r["prompt_index"]]) for r in sub})
        if len(sizes) > 1:  # concept present on one-object and on two-object prompts apart
            lines += ["", "Concept present by number of objects in the prompt:", ""]
            lines.append("| kind | method | " + " | ".join(f"{n} object{'s' * (n > 1)}" for n in sizes) + " |")
            lines.append("|" + "---|" * (2 + len(sizes)))
            for k, m in order:
                cells = []
                for n in sizes:
                    rs = [r for r in groups[(k, m)] if len(measure_prompts(cs)[r["prompt_index"]]) == n]
                    st = summarize(values(rs, "concept"))
                    cells.append(f"{st['mean']:.3f} [{st['low']:.2f}, {st['high']:.2f}] ({len(rs)})")
                lines.append(f"| {k} | {show[m]} | " + " | ".join(cells) + " |")
        lines += ["", "Per prompt (concept present / exact binding, mean over seeds):", ""]
        lines.append("| prompt | " + " | ".join(f"{k} {show[m]}" for k, m in order) + " |")
        lines.append("|" + "---|" * (1 + len(order)))
        for pi, objs in enumerate(measure_prompts(cs)):
            cells = []
            for k, m in order:
                rs = [r for r in groups[(k, m)] if r["prompt_index"] == pi]
                cells.append(
                    f"{np.mean([r['concept'] for r in rs]):.2f} / {np.mean([r['exact_binding'] for r in rs]):.2f}"
                    if rs
                    else "-"
                )
            lines.append(f"| {measure_prompt(objs, 'lora')[0]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_summary(
    out: str | os.PathLike,
    rows: Sequence[dict],
    methods: dict,
    adapter_weight: float = 1.0,
    missing=(),
    regional: bool = False,
) -> str:
    """Write ``summary.md`` (atomically) into the run folder ``out`` from :func:`rescore`'s rows of its planned
    images on disk (the runner's ``matched_rows``); returns the markdown."""
    from ...io import write_atomic

    text = summary_table(rows, methods, adapter_weight, regional)
    if missing:
        text += f"\n{len(missing)} planned image(s) not made yet (rerun the same command to resume).\n"
    write_atomic(Path(out) / "summary.md", text)
    return text


def parse_picks(items_: Sequence[str]) -> list[tuple[str, int]]:
    """``["star:2", "star+ring:0"]`` -> ``[("star", 2), ("star+ring", 0)]`` (``--grid-prompts``)."""
    out = []
    for it in items_:
        cs, _, idx = it.rpartition(":")
        if cs not in CONCEPT_SETS or not idx.isdigit() or int(idx) >= len(measure_prompts(cs)):
            raise ValueError(f"--grid-prompts {it!r}: expected SET:INDEX with SET in {list(CONCEPT_SETS)}")
        out.append((cs, int(idx)))
    return out


def save_grid(
    out: str | os.PathLike,
    path: str | os.PathLike,
    rows: Sequence[dict],
    picks=None,
    seeds=range(8),
    scale: int = 2,
    kinds=None,
    methods: dict | None = None,
) -> tuple[Path, list[str]]:
    """A PNG (written atomically) of :func:`rescore`'s rows of a run folder ``out``: for each ``(concept set,
    prompt index)`` in ``picks`` (default: the first two-object prompt of each concept set measured), one row per
    (kind, method) (of ``kinds``, default all), one column per seed; frames: green exact binding, orange every
    concept of the right colour without exact binding, red not. Returns the path and a legend line per row."""
    from PIL import Image, ImageDraw

    from ...io import write_atomic

    show = _names(rows, methods)
    by = {(r["concept_set"], r["kind"], r["method"], r["prompt_index"], r["seed"]): r for r in rows}
    if picks is None:
        picks = [(cs, 0 if cs == MULTI else 2) for cs in CONCEPT_SETS if any(key[0] == cs for key in by)]
    seeds = list(seeds)
    lines = []
    for cs, pi in picks:
        for km in [(k, m) for k in (kinds or MEASURE_KINDS) for m in show]:
            if any(key[:4] == (cs, *km, pi) for key in by):
                lines.append((cs, pi, km))
    if not lines:
        raise ValueError(f"{out}: no rows for {picks}")
    cell = 32 * scale + 4
    grid = Image.new("RGB", (len(seeds) * cell, len(lines) * cell), (255, 255, 255))
    for i, (cs, pi, (k, m)) in enumerate(lines):
        for j, sd in enumerate(seeds):
            r = by.get((cs, k, m, pi, sd))
            if r is None:
                continue
            with Image.open(Path(out) / r["image"]) as src:
                im = src.convert("RGB").resize((32 * scale, 32 * scale), Image.NEAREST)
            colour = (44, 160, 44) if r["exact_binding"] else (255, 127, 14) if r["concept"] else (214, 39, 40)
            x, y = j * cell, i * cell
            ImageDraw.Draw(grid).rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)
            grid.paste(im, (x + 2, y + 2))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    path = Path(path)
    write_atomic(path, buf.getvalue())
    legend = [
        f"row {i + 1}: {measure_prompt(measure_prompts(cs)[pi], k)[0]!r} / {k} / {show[m]}"
        for i, (cs, pi, (k, m)) in enumerate(lines)
    ]
    return path, legend
