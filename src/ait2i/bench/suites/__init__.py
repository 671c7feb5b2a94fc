"""Benchmark suites: which prompts, with which subjects and per-item data, and where each image goes.

A suite is named ``<family>[:<category>]``: ``ane`` (the 276 Attend-and-Excite prompts) or ``ane:<set>``;
``t2i-compbench:<category>``; ``shapes`` or ``shapes:<category>[+<category>...]`` (ShapesWorld, scored by the
ground-truth checker); ``layout`` or ``layout:<category>[+<category>...]`` (ShapesWorld prompts with a box per
object, :mod:`.layout`). A suite is a list of :class:`Item`; an item carries what the runner hands to
:func:`ait2i.generate` (prompt, subjects, extra keyword arguments) and what scorers read (``data``: the requested
objects, boxes, ...), so a layout or personalization suite is another list of items, not another runner.
Subjects may carry boxes (``"red circle@x0,y0,x1,y1"``); the runner gives them to methods that read boxes
(``uses_boxes``) and drops them for the others (:func:`ait2i.bench.runner.method_subjects`).

Image paths (relative to a method's folder) are those the original metric scripts read:

* ``prompt``: ``<prompt>/<seed>.png`` (AnE);
* ``compbench``: ``samples/<prompt>_<index:06d>.png``, ``index = prompt position * number of seeds + seed
  position`` (T2I-CompBench sorts images by that index and reads the prompt from the name);
* ``slug``: ``<prompt as a slug>/<seed>.png`` (ShapesWorld);
* ``item``: ``<category>/<index:03d>_<prompt as a slug>/<seed>.png`` (one folder per item, for suites whose
  prompts repeat with other per-item data, such as layouts).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

FAMILIES = ("ane", "t2i-compbench", "shapes", "layout")


@dataclass(frozen=True)
class Item:
    """One prompt of a suite.

    Args:
        category (`str`): the prompt set it belongs to ("animals_objects", "color", "two", ...).
        index (`int`): its position in its category's published list (0-based).
        prompt (`str`): the prompt as published.
        subjects (`tuple`): what guidance binds, as :func:`ait2i.subjects.resolve_subjects` takes it
            ("red bench", or a ``{"subject": ..., "box": ...}`` mapping for a layout suite).
        data (`Mapping`, *optional*): per-item data for scorers and reports (requested objects, boxes, ...).
        generate_kwargs (`Mapping`, *optional*): extra keyword arguments of :func:`ait2i.generate` for this item
            (e.g. a ControlNet image or a LoRA scale); recorded with each image.
    """

    category: str
    index: int
    prompt: str
    subjects: tuple = ()
    data: Mapping = field(default_factory=dict)
    generate_kwargs: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """A named list of items with its file layout, generation protocol and scorers.

    Args:
        name (`str`): e.g. ``"ane"``, ``"t2i-compbench:color"``.
        items (`tuple[Item, ...]`): in the fixed order every process agrees on.
        layout (`str`): ``"prompt"``, ``"compbench"``, ``"slug"`` or ``"item"`` (see the module docstring).
        protocol (`str`): the default generation protocol (:data:`ait2i.bench.runner.PROTOCOLS`).
        scorers (`tuple[str, ...]`): the published metrics (:mod:`ait2i.bench.scorers`).
        applicable (`tuple[str, ...]`): every scorer that makes sense on it.
        limit (`int`, *optional*): only the first ``limit`` prompts of each category are kept (``--limit``).
        seeds (`str`, *optional*): the suite's default seeds (else the protocol's).
    """

    name: str
    items: tuple[Item, ...]
    layout: str
    protocol: str
    scorers: tuple[str, ...]
    applicable: tuple[str, ...]
    limit: int | None = None
    seeds: str | None = None

    @property
    def family(self) -> str:
        return self.name.partition(":")[0]

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(it.category for it in self.items))

    def head(self, n: int | None) -> Suite:
        """The same suite with only the first ``n`` prompts of each category (all when ``n`` is None)."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"the prompt limit must be >= 1, got {n}")
        items = tuple(it for it in self.items if it.index < n)
        return Suite(self.name, items, self.layout, self.protocol, self.scorers, self.applicable, n, self.seeds)

    def image_path(self, item: Item, seed: int, seeds: tuple[int, ...]) -> str:
        """Path of the image of (``item``, ``seed``) inside a method's folder (``/``-separated)."""
        if self.layout == "prompt":
            return f"{item.prompt}/{seed}.png"
        if self.layout == "compbench":
            return f"samples/{item.prompt}_{item.index * len(seeds) + seeds.index(seed):06d}.png"
        if self.layout == "item":
            return f"{item.category}/{item.index:03d}_{slug(item.prompt)}/{seed}.png"
        return f"{slug(item.prompt)}/{seed}.png"


def slug(text: str) -> str:
    """``"a red circle and a blue square"`` -> ``"a_red_circle_and_a_blue_square"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def load_suite(spec: str, data_dir: str | os.PathLike | None = None) -> Suite:
    """Build the suite named ``spec`` (see the module docstring).

    Args:
        spec (`str`): e.g. ``"ane"``, ``"ane:objects"``, ``"t2i-compbench:color"``, ``"shapes:two+three"``,
            ``"layout:corners"``.
        data_dir (`str` or `os.PathLike`, *optional*): folder of the fetched T2I-CompBench files.
    """
    family, _, category = spec.strip().partition(":")
    family = family.lower()
    if family == "ane":
        from .ane import suite
    elif family == "t2i-compbench":
        from .compbench import suite
    elif family == "shapes":
        from .shapes import suite
    elif family == "layout":
        from .layout import suite
    else:
        raise ValueError(f"unknown suite {spec!r}; expected one of {', '.join(FAMILIES)} (optionally ':<category>')")
    return suite(category or None, data_dir)


def parse_seeds(spec: str) -> tuple[int, ...]:
    """Seeds from ``"0-63"``, ``"42,43,50-51"`` or ``"7"``, read as every ait2i command line reads them
    (:func:`ait2i.cliparse.parse_seeds`: a seed named twice is refused), sorted."""
    from ...cliparse import parse_seeds as parse

    return tuple(sorted(parse(spec, option="--seeds")))
