"""Benchmark suites: which prompts, with which subjects and per-item data, and where each image goes.

A suite is named ``<family>[:<category>]``: ``ane`` (the 276 Attend-and-Excite prompts) or ``ane:<set>``;
``t2i-compbench:<category>``; ``shapes`` or ``shapes:<category>[+<category>...]`` (ShapesWorld, scored by the
ground-truth checker); ``layout`` or ``layout:<category>[+<category>...]`` (ShapesWorld prompts with a box per
object, :mod:`.layout`). A suite is a list of :class:`Item`; an item carries what the runner hands to
:func:`ait2i.generate` (prompt, subjects, extra keyword arguments) and what scorers read (``data``: the requested
objects, boxes, ...), so a layout or personalization suite is another list of items, not another runner.
Subjects may carry boxes (``"red circle@x0,y0,x1,y1"``); the runner gives them to methods that read boxes
(``uses_boxes``) and drops them for the others (:func:`ait2i.bench.runner.method_subjects`).

Image paths (relative to a method's folder; :attr:`Suite.paths`) are those the original metric scripts read:

* ``prompt``: ``<prompt>/<seed>.png`` (AnE);
* ``compbench``: ``samples/<prompt>_<index:06d>.png``, ``index = prompt position * number of seeds + seed
  position`` (T2I-CompBench sorts images by that index and reads the prompt from the name);
* ``slug``: ``<prompt as a slug>/<seed>.png`` (ShapesWorld);
* ``item``: ``<category>/<index:03d>_<prompt as a slug>/<seed>.png`` (one folder per item, for suites whose
  prompts repeat with other per-item data, such as layouts).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from . import ane, compbench, layout, personalization, shapes
from .base import Item, Suite, slug

#: Suite families by name: each builds its :class:`Suite` from an optional category and the data folder. A new
#: suite is one module and one line here.
SUITES: dict[str, Callable[..., Suite]] = {
    "ane": ane.suite,
    "t2i-compbench": compbench.suite,
    "shapes": shapes.suite,
    "layout": layout.suite,
    "personalization": personalization.suite,
}
FAMILIES = tuple(SUITES)

__all__ = ["FAMILIES", "SUITES", "Item", "Suite", "load_suite", "slug"]


def load_suite(spec: str, data_dir: str | os.PathLike | None = None) -> Suite:
    """Build the suite named ``spec`` (see the module docstring).

    Args:
        spec (`str`): e.g. ``"ane"``, ``"ane:objects"``, ``"t2i-compbench:color"``, ``"shapes:two+three"``,
            ``"layout:corners"``.
        data_dir (`str` or `os.PathLike`, *optional*): folder of the fetched T2I-CompBench files.
    """
    family, _, category = spec.strip().partition(":")
    family = family.lower()
    if family not in SUITES:
        raise ValueError(f"unknown suite {spec!r}; expected one of {', '.join(FAMILIES)} (optionally ':<category>')")
    return SUITES[family](category or None, data_dir)
