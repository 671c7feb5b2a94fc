"""What a suite is: a named list of :class:`Item` (prompt, subjects, per-item data) with the way its image paths
are named, its generation protocol and its scorers. Every suite module builds one; :mod:`ait2i.bench.suites` names
them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


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
            (e.g. regional adapters); JSON values only: they are recorded in each image's PNG parameters and an
            image made with others is refused.
        methods (`tuple[str, ...]`, *optional*): registry names of the only methods this item runs with (e.g.
            ``("none",)`` for a reference item); every method of the run by default.
    """

    category: str
    index: int
    prompt: str
    subjects: tuple = ()
    data: Mapping = field(default_factory=dict)
    generate_kwargs: Mapping = field(default_factory=dict)
    methods: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Suite:
    """A named list of items with the naming of its image paths, its generation protocol and scorers.

    Args:
        name (`str`): e.g. ``"ane"``, ``"t2i-compbench:color"``.
        items (`tuple[Item, ...]`): in the fixed order every process agrees on.
        paths (`str`): how image paths are named: ``"prompt"``, ``"compbench"``, ``"slug"`` or ``"item"`` (see
            :mod:`ait2i.bench.suites`).
        protocol (`str`): the default generation protocol (:data:`ait2i.bench.runner.PROTOCOLS`).
        scorers (`tuple[str, ...]`): the published metrics (:mod:`ait2i.bench.scorers`).
        applicable (`tuple[str, ...]`): every scorer that makes sense on it.
        limit (`int`, *optional*): only the first ``limit`` prompts of each category are kept (``--limit``).
        seeds (`str`, *optional*): the suite's default seeds (else the protocol's).
        prepare (`Callable`, *optional*): ``(pipe, item) -> pipeline`` the runner generates ``item`` with (e.g. a
            copy with the item's concepts loaded, :mod:`.personalization`); ``pipe`` itself by default.
    """

    name: str
    items: tuple[Item, ...]
    paths: str
    protocol: str
    scorers: tuple[str, ...]
    applicable: tuple[str, ...]
    limit: int | None = None
    seeds: str | None = None
    prepare: Callable | None = field(default=None, compare=False)

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
        return dataclasses.replace(self, items=items, limit=n)

    def image_path(self, item: Item, seed: int, seeds: tuple[int, ...]) -> str:
        """Path of the image of (``item``, ``seed``) inside a method's folder (``/``-separated)."""
        if self.paths == "prompt":
            return f"{item.prompt}/{seed}.png"
        if self.paths == "compbench":
            return f"samples/{item.prompt}_{item.index * len(seeds) + seeds.index(seed):06d}.png"
        if self.paths == "item":
            return f"{item.category}/{item.index:03d}_{slug(item.prompt)}/{seed}.png"
        return f"{slug(item.prompt)}/{seed}.png"


def slug(text: str) -> str:
    """``"a red circle and a blue square"`` -> ``"a_red_circle_and_a_blue_square"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
