"""Benchmark suites: which prompts, which subjects, which seeds, and where each image goes.

A suite is named ``<family>[:<category>]``: ``ane`` (all 276 AnE prompts), ``ane:animals``, ``ane:animals_objects``,
``ane:objects``; ``t2i-compbench:<category>`` (one category per output folder, as the official metric scripts
expect). File layouts are those the original metric scripts read:

* AnE: ``<prompt>/<seed>.png``;
* T2I-CompBench: ``samples/<prompt>_<index:06d>.png``, ``index = prompt position * number of seeds + seed
  position`` (the scripts sort images by that index and read the prompt from the name).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import ane, compbench

FAMILIES = ("ane", "t2i-compbench")
DEFAULT_SEEDS = {"ane": tuple(range(64)), "t2i-compbench": tuple(range(42, 52))}


@dataclass(frozen=True)
class BenchPrompt:
    """One prompt of a suite.

    Args:
        text (`str`): the prompt as published.
        subjects (`tuple[str, ...]`): the phrases guidance binds ("red bench"), resolvable by
            :func:`ait2i.subjects.resolve_subjects`.
        category (`str`): the prompt set it belongs to ("animals_objects", "color", ...).
        index (`int`): its position in its category's published list (0-based).
    """

    text: str
    subjects: tuple[str, ...]
    category: str
    index: int


@dataclass(frozen=True)
class Suite:
    """A named list of prompts with its file layout."""

    family: str
    category: str | None
    prompts: tuple[BenchPrompt, ...]
    #: Only the first ``limit`` prompts of each category are kept (see :meth:`head`); None: all.
    limit: int | None = None

    @property
    def name(self) -> str:
        return self.family if self.category is None else f"{self.family}:{self.category}"

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.category for p in self.prompts))

    def head(self, n: int | None) -> Suite:
        """The same suite with only the first ``n`` prompts of each category (all when ``n`` is None)."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"the prompt limit must be >= 1, got {n}")
        return Suite(self.family, self.category, tuple(p for p in self.prompts if p.index < n), n)

    def image_path(self, prompt: BenchPrompt, seed: int, seeds: tuple[int, ...]) -> str:
        """Path of the image of (``prompt``, ``seed``) relative to the output folder (``/``-separated)."""
        if self.family == "ane":
            return f"{prompt.text}/{seed}.png"
        return f"samples/{prompt.text}_{prompt.index * len(seeds) + seeds.index(seed):06d}.png"


def parse_suite(spec: str) -> tuple[str, str | None]:
    """Split ``"family[:category]"`` and check both parts; returns ``(family, category or None)``."""
    family, _, category = spec.partition(":")
    family = family.strip().lower()
    if family not in FAMILIES:
        raise ValueError(f"unknown suite {spec!r}; expected one of {', '.join(FAMILIES)} (optionally ':<category>')")
    cats = ane.CATEGORIES if family == "ane" else compbench.CATEGORIES
    if category and category not in cats:
        raise ValueError(f"unknown category {category!r} of suite {family!r}; expected one of {', '.join(cats)}")
    if family == "t2i-compbench" and not category:
        raise ValueError(
            "t2i-compbench needs one category per output folder: " + ", ".join(f"t2i-compbench:{c}" for c in cats)
        )
    return family, category or None


def load_suite(spec: str, data_dir: str | os.PathLike | None = None) -> Suite:
    """Build the suite named ``spec`` (see the module docstring).

    Args:
        spec (`str`): e.g. ``"ane"``, ``"ane:objects"``, ``"t2i-compbench:color"``.
        data_dir (`str` or `os.PathLike`, *optional*): folder of the fetched T2I-CompBench files
            (:func:`ait2i.bench.compbench.default_dir` when omitted); unused for AnE.
    """
    family, category = parse_suite(spec)
    if family == "ane":
        rows = ane.ane_prompts(category)
    else:
        rows = compbench.compbench_prompts(category, data_dir)
    prompts, seen = [], {}
    for cat, text, subjects in rows:
        k = seen.get(cat, 0)
        seen[cat] = k + 1
        prompts.append(BenchPrompt(text, tuple(subjects), cat, k))
    return Suite(family, category, tuple(prompts))


def parse_seeds(spec: str) -> tuple[int, ...]:
    """Seeds from ``"0-63"``, ``"42,43,50-51"`` or ``"7"``: sorted, without duplicates."""
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                out.update(range(lo_i, hi_i + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"bad seed range {part!r} in {spec!r}; write e.g. 0-63 or 42,43,50-51") from None
    if not out or min(out) < 0:
        raise ValueError(f"seeds {spec!r} must name at least one seed, all >= 0")
    return tuple(sorted(out))
