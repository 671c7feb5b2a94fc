"""ShapesWorld layout prompts: do the objects land in their boxes? (``layout`` suite; every image read by the
checker through :class:`ait2i.bench.scorers.layout.LayoutScorer`.)

Items (:func:`layout_items`, fixed lists): prompts of two and three objects whose boxes are taken from scenes the
renderer draws (so every layout is drawable), several layouts per prompt, and a ``corners`` category of two small
objects in opposite corners (a layout against the model's habit of large, central objects).

As runner items (:func:`suite`) each layout is one item: subjects ``"red circle@x0,y0,x1,y1"`` (the runner drops
the boxes for methods that do not read them, ``uses_boxes``: ``none`` runs on the same prompts without boxes),
``data["objects"]`` the requested ``(colour, shape)`` pairs, ``data["boxes"]`` their boxes and
``data["layout_id"]`` (``"two-0-1"``: category, prompt, layout). ``index`` is ``prompt * layouts + layout``, so
``--limit N`` keeps the layouts of the first prompts. Default protocol ``shapes`` (DDIM, 20 steps), seeds 0-7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...boxes import Box
from ...shapes import render as R
from .base import Item, Suite

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


def _box_of(spec) -> Box:
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


def to_item(it: LayoutItem, index: int):
    """A :class:`LayoutItem` as the runner's :class:`~ait2i.bench.suites.Item`."""

    data = {
        "objects": tuple((c, s) for c, s, _ in it.objects),
        "boxes": tuple(b.as_tuple() for _, _, b in it.objects),
        "layout_id": it.layout_id,
    }
    return Item(it.category, index, it.prompt, tuple(it.subjects(with_boxes=True)), data)


def objects_of(item) -> list[tuple[str, str, Box]]:
    """``(colour, shape, Box)`` of a runner item of this suite (or of a :class:`LayoutItem`)."""
    if isinstance(item, LayoutItem):
        return list(item.objects)
    return [(c, s, Box(*b)) for (c, s), b in zip(item.data["objects"], item.data["boxes"])]


def suite(category: str | None = None, data_dir=None, prompts_per_category: int = 4, layouts_per_prompt: int = 3):
    """``layout`` (every category) or ``layout:two+corners``; protocol ``shapes``, seeds 0-7, scored by the
    layout scorer (box metrics and binding)."""

    cats = [c for c in (category or "").split("+") if c]
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise ValueError(f"unknown layout categories {bad}; expected a subset of {list(CATEGORIES)}")
    counters: dict[str, int] = {}
    items = []
    for it in layout_items(prompts_per_category, layouts_per_prompt):
        k = counters.get(it.category, 0)
        counters[it.category] = k + 1
        if not cats or it.category in cats:
            items.append(to_item(it, k))
    name = "layout" if not cats else "layout:" + "+".join(cats)
    return Suite(name, tuple(items), "item", "shapes", ("layout",), ("layout", "shapes"), seeds="0-7")
