"""The Attend-and-Excite (AnE) evaluation prompts, built from their word lists and templates.

Chefer et al. (2023) evaluate on three prompt sets built from 12 animals, 12 objects and 11 colours:

* ``animals`` (66): "a {animal} and a {animal}", every unordered pair once;
* ``animals_objects`` (144): every (animal, object) pair once, as "a {animal} with a {object}" for the three
  wearable objects (36 prompts) and "a {animal} and a {colour} {object}" for the other nine (108 prompts);
* ``objects`` (66): "a {colour} {object} and a {colour} {object}", every unordered pair of objects once.

The colours were drawn at random once and the prompts published in a shuffled order (the file
``a.e_prompts.txt``, a JSON object with one list per set). The tables below record, for each published prompt in
its published order, which pair and which colours it uses, so that :func:`ane_prompts` reproduces the published
lists exactly (article quirks included: "a elephant", "a orange car", "a glasses").
"""

from __future__ import annotations

import itertools
import json

from .base import Item, Suite

# fmt: off
#: Word lists in the order of the paper; each pair is written first-in-this-order first.
ANIMALS = ("cat", "dog", "bird", "bear", "lion", "horse", "elephant", "monkey", "frog", "turtle", "rabbit", "mouse")
OBJECTS = (
    "backpack", "glasses", "crown", "suitcase", "chair", "balloon", "bow", "car", "bowl", "bench", "clock", "apple",
)
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray", "black", "white")
#: Objects an animal wears: "a {animal} with a {object}", no colour.
WEARABLES = ("glasses", "crown", "bow")
CATEGORIES = ("animals", "animals_objects", "objects")

TEMPLATE_AND = "a {} and a {}"
TEMPLATE_WITH = "a {} with a {}"

# Published order. animals: index into itertools.combinations(range(12), 2).
_ANIMALS_ORDER = (
    54, 17, 29, 56, 46, 27, 22, 40, 48, 25, 34, 35, 15, 14, 64, 8, 20, 5, 1, 16, 44, 30,
    24, 42, 11, 28, 53, 39, 9, 12, 19, 2, 23, 65, 21, 33, 47, 4, 61, 37, 58, 0, 41, 62,
    13, 43, 52, 60, 3, 49, 6, 36, 63, 51, 26, 38, 31, 32, 50, 18, 59, 7, 57, 45, 10, 55,
)
# animals_objects: (animal index, object index, colour index or -1 for a wearable).
_ANIMALS_OBJECTS_ORDER = (
    (5, 1, -1), (3, 1, -1), (7, 7, 0), (6, 6, -1), (8, 5, 5), (11, 6, -1), (2, 2, -1), (9, 8, 2),
    (10, 4, 8), (1, 11, 9), (10, 9, 10), (4, 10, 2), (9, 0, 8), (6, 5, 3), (7, 11, 1), (4, 7, 0),
    (4, 2, -1), (2, 9, 5), (10, 0, 1), (10, 11, 1), (7, 8, 3), (8, 3, 0), (7, 5, 3), (0, 1, -1),
    (3, 10, 4), (0, 9, 8), (3, 2, -1), (4, 6, -1), (3, 5, 0), (2, 0, 9), (5, 5, 6), (9, 7, 2),
    (4, 1, -1), (0, 5, 2), (5, 10, 2), (1, 1, -1), (5, 0, 4), (8, 6, -1), (6, 1, -1), (11, 9, 0),
    (2, 5, 7), (7, 0, 2), (9, 5, 6), (0, 11, 0), (7, 9, 7), (10, 1, -1), (3, 9, 8), (9, 10, 4),
    (7, 4, 4), (9, 4, 4), (1, 6, -1), (6, 4, 9), (11, 4, 5), (3, 7, 10), (4, 0, 9), (1, 2, -1),
    (5, 11, 3), (1, 10, 8), (1, 7, 5), (1, 8, 8), (7, 6, -1), (11, 10, 4), (2, 8, 9), (5, 7, 10),
    (11, 11, 6), (3, 0, 1), (6, 10, 2), (2, 4, 3), (11, 5, 9), (9, 9, 10), (2, 6, -1), (9, 2, -1),
    (2, 7, 2), (8, 7, 1), (1, 9, 6), (8, 2, -1), (8, 8, 3), (8, 9, 6), (5, 6, -1), (2, 11, 2),
    (7, 2, -1), (0, 0, 4), (9, 11, 6), (1, 4, 1), (5, 3, 3), (6, 2, -1), (7, 3, 1), (9, 3, 1),
    (4, 11, 8), (11, 2, -1), (11, 1, -1), (5, 8, 7), (7, 10, 2), (9, 6, -1), (1, 0, 7), (0, 8, 5),
    (4, 9, 10), (10, 8, 4), (4, 5, 7), (5, 4, 6), (6, 9, 3), (10, 5, 10), (6, 0, 6), (4, 3, 1),
    (6, 11, 1), (6, 3, 3), (5, 2, -1), (3, 6, -1), (10, 3, 2), (5, 9, 4), (1, 3, 3), (11, 7, 0),
    (0, 4, 9), (3, 3, 0), (10, 10, 8), (3, 11, 6), (4, 4, 10), (10, 2, -1), (11, 8, 5), (8, 11, 9),
    (10, 6, -1), (11, 3, 6), (4, 8, 6), (8, 4, 9), (8, 10, 3), (3, 4, 10), (6, 7, 7), (9, 1, -1),
    (0, 3, 9), (0, 7, 2), (8, 0, 2), (2, 3, 9), (0, 2, -1), (10, 7, 2), (0, 6, -1), (2, 10, 10),
    (0, 10, 3), (3, 8, 5), (7, 1, -1), (8, 1, -1), (6, 8, 3), (2, 1, -1), (1, 5, 4), (11, 0, 7),
)
# objects: (index into itertools.combinations(range(12), 2), colour of the first, colour of the second).
_OBJECTS_ORDER = (
    (24, 6, 5), (65, 4, 4), (48, 4, 1), (22, 6, 0), (43, 1, 4), (60, 5, 9), (11, 3, 9), (39, 5, 0),
    (16, 2, 9), (6, 1, 5), (50, 10, 10), (36, 7, 9), (3, 2, 5), (9, 8, 3), (23, 4, 0), (34, 8, 9),
    (46, 7, 6), (5, 9, 3), (45, 4, 4), (51, 10, 10), (62, 1, 5), (42, 7, 10), (21, 5, 4), (53, 2, 1),
    (15, 2, 7), (12, 0, 0), (55, 6, 8), (28, 8, 10), (58, 9, 10), (61, 7, 3), (1, 3, 2), (19, 1, 6),
    (41, 5, 1), (35, 1, 7), (14, 10, 1), (10, 2, 8), (64, 3, 0), (0, 8, 2), (13, 3, 2), (20, 10, 8),
    (32, 8, 7), (56, 10, 9), (59, 5, 6), (29, 8, 5), (57, 1, 0), (37, 0, 4), (7, 0, 2), (63, 0, 2),
    (4, 9, 6), (31, 4, 8), (17, 2, 8), (30, 10, 10), (27, 5, 4), (52, 2, 6), (2, 3, 7), (18, 3, 9),
    (54, 10, 9), (26, 0, 9), (40, 3, 5), (38, 10, 8), (44, 6, 8), (33, 2, 2), (8, 3, 5), (25, 9, 0),
    (47, 3, 6), (49, 5, 10),
)
# fmt: on

_PAIRS = tuple(itertools.combinations(range(12), 2))


def _animal_pair(k: int) -> tuple[str, tuple[str, ...]]:
    a, b = _PAIRS[k]
    return TEMPLATE_AND.format(ANIMALS[a], ANIMALS[b]), (ANIMALS[a], ANIMALS[b])


def _animal_object(a: int, o: int, c: int) -> tuple[str, tuple[str, ...]]:
    animal, obj = ANIMALS[a], OBJECTS[o]
    if c < 0:
        if obj not in WEARABLES:
            raise AssertionError(f"{obj} is not wearable")
        return TEMPLATE_WITH.format(animal, obj), (animal, obj)
    phrase = f"{COLORS[c]} {obj}"
    return TEMPLATE_AND.format(animal, phrase), (animal, phrase)


def _object_pair(k: int, c1: int, c2: int) -> tuple[str, tuple[str, ...]]:
    a, b = _PAIRS[k]
    p1, p2 = f"{COLORS[c1]} {OBJECTS[a]}", f"{COLORS[c2]} {OBJECTS[b]}"
    return TEMPLATE_AND.format(p1, p2), (p1, p2)


def ane_prompts(category: str | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
    """The AnE prompts as ``(category, prompt, subjects)`` in the published order.

    Args:
        category (`str`, *optional*): one of :data:`CATEGORIES`; ``None`` gives all three sets, in that order.

    Returns:
        `list[tuple[str, str, tuple[str, ...]]]`: e.g. ``("animals_objects", "a cat and a red bench",
        ("cat", "red bench"))``. Subjects are the noun phrases that guidance binds (colour + object).
    """
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown AnE category {category!r}; expected one of {', '.join(CATEGORIES)}")
    out = []
    for cat in CATEGORIES if category is None else (category,):
        if cat == "animals":
            rows = [_animal_pair(k) for k in _ANIMALS_ORDER]
        elif cat == "animals_objects":
            rows = [_animal_object(*r) for r in _ANIMALS_OBJECTS_ORDER]
        else:
            rows = [_object_pair(*r) for r in _OBJECTS_ORDER]
        out.extend((cat, p, s) for p, s in rows)
    return out


def ane_json() -> str:
    """The prompt file ``a.e_prompts.txt`` as published: ``json.dumps({set: [prompts]}, indent=4)``."""
    d: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    for cat, prompt, _ in ane_prompts():
        d[cat].append(prompt)
    return json.dumps(d, indent=4)


def suite(category: str | None = None, data_dir=None):
    """The AnE suite (all three sets, or one), protocol ``ane``, scored by CLIP and BLIP captions."""

    rows, seen = ane_prompts(category), {}
    items = []
    for cat, text, subjects in rows:
        seen[cat] = seen.get(cat, -1) + 1
        items.append(Item(cat, seen[cat], text, tuple(subjects)))
    name = "ane" if category is None else f"ane:{category}"
    return Suite(name, tuple(items), "prompt", "ane", ("clip", "blip"), ("clip", "blip", "clipscore"))
