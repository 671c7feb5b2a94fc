"""ShapesWorld layout benchmark: do the objects land in their boxes? ``python -m ait2i.shapes.layout_bench ...`` is
``ait2i bench layout ...``.

    python -m ait2i.shapes.layout_bench --out runs/layout --seeds 0-7 \\
        --methods none,layout-guidance,boxdiff,ait2i-layout

It is the one benchmark runner (:mod:`ait2i.bench.runner`) with the ``layout`` suite
(:mod:`ait2i.bench.suites.layout`: two- and three-object prompts whose boxes come from rendered scenes, several
layouts per prompt, and a ``corners`` category), the ``shapes`` protocol (DDIM, 20 steps; seeds 0-7) and the
layout scorer (:mod:`ait2i.bench.scorers.layout`: mean IoU, centre in box, all in box, exact and clean binding
per image). Box methods get the boxes; ``none`` runs on the same prompts without them. Summaries per category and
method and paired differences against the first method come from the runner's two-level bootstrap over layouts
and seeds (``scores.json``/``scores.md``; one row per image in ``rows.jsonl``). Folders written by this module's
earlier stand-alone driver have no format-2 manifest and are refused: use a new ``--out``.

This module keeps the names other code imports: :func:`layout_items`, :class:`LayoutItem`, :func:`score_layout`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..bench.scorers.layout import KEYS as METRICS
from ..bench.scorers.layout import score_boxes, score_layout
from ..bench.suites.layout import CATEGORIES, IMAGE_SIZE, LayoutItem, layout_items

__all__ = ["CATEGORIES", "IMAGE_SIZE", "METRICS", "LayoutItem", "layout_items", "main", "score_boxes", "score_layout"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ait2i.shapes.layout_bench ...`` = ``ait2i bench layout ...``."""
    from ..bench.cli import main as bench_main

    return bench_main(["layout", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
