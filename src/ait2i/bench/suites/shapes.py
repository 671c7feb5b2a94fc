"""ShapesWorld prompts: fixed lists of coloured-shape prompts, every image read by the ground-truth checker.

Categories (:data:`CATEGORIES`): ``single``, ``two`` (distinct shapes and colours), ``same_shape`` (binding is
all colour), ``held_out`` (two objects, one a colour-shape pair kept out of training), ``three``,
``three_same_shape`` (one shape in three colours) and ``three_held_out`` (a held-out pair joined by two seen
pairs). Each item's ``data["objects"]`` lists the requested ``(colour, shape)`` pairs the checker looks for.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...shapes.render import COLORS, HELD_OUT, SHAPES, caption_of
from .base import Item, Suite

#: Prompt categories. New ones go at the end: a category's prompt list is drawn from its position.
CATEGORIES = ("single", "two", "same_shape", "held_out", "three", "three_same_shape", "three_held_out")
_PROMPT_SEED = 20_261_129  # fixes the prompt lists


def _draw(cat: str, seen: list, held: list) -> list[tuple[tuple[str, str], ...]]:
    rng = np.random.default_rng([_PROMPT_SEED, CATEGORIES.index(cat)])
    chosen: list[tuple[tuple[str, str], ...]] = []
    while len(chosen) < 12:
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
            objs = tuple(seen[i] for i in rng.choice(len(seen), size=n, replace=False))
            shapes = {s for _, s in objs}
            if len({c for c, _ in objs}) != n:
                continue
            if cat == "two" and len(shapes) != 2:
                continue
            if cat in ("same_shape", "three_same_shape") and len(shapes) != 1:
                continue
        if objs not in chosen:
            chosen.append(objs)
    return chosen


def shapes_items(categories: Sequence[str] | None = None, per_category: int = 8):
    """The fixed prompt lists: the first ``per_category`` prompts of each category (12 at most).

    Every list is drawn once from a fixed seed; only seen colour-shape pairs are used, except in ``held_out``
    (one :data:`~ait2i.shapes.HELD_OUT` pair with a seen pair of another colour and shape, held-out object first
    in half of the prompts) and ``three_held_out`` (one held-out pair joins two seen pairs; its position
    rotates). Colours within a prompt are distinct.

    Returns:
        `list[Item]`: subjects ``["red circle", ...]``, ``data["objects"]`` the ``(colour, shape)`` pairs.
    """

    cats = tuple(categories) if categories else CATEGORIES
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise ValueError(f"unknown categories {bad}; expected a subset of {list(CATEGORIES)}")
    if not 1 <= per_category <= 12:
        raise ValueError(f"per_category must be in 1..12, got {per_category}")
    seen = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT]
    held = [(c, s) for c in COLORS for s in SHAPES if (c, s) in HELD_OUT]
    out = []
    for cat in cats:
        for k, objs in enumerate(_draw(cat, seen, held)[:per_category]):
            objs = tuple((str(c), str(s)) for c, s in objs)
            subjects = tuple(f"{c} {s}" for c, s in objs)
            out.append(Item(cat, k, caption_of(list(subjects)), subjects, {"objects": objs}))
    return out


def suite(category: str | None = None, data_dir=None, per_category: int = 12):
    """``shapes`` (every category) or ``shapes:two+three``; protocol ``shapes``, scored by the checker."""

    cats = [c for c in (category or "").split("+") if c] or None
    name = "shapes" if not cats else "shapes:" + "+".join(cats)
    return Suite(name, tuple(shapes_items(cats, per_category)), "slug", "shapes", ("shapes",), ("shapes",))
