"""A run's images as a framed PNG grid (``ait2i bench shapes --grid``): one row per (prompt, method), one column per
seed, each image framed by what the ShapesWorld checker found in it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_path
from ..viz import new_figure
from .rundir import load_rows


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
        out_dir: a benchmark folder (its ``rows.jsonl`` and images).
        path: the PNG to write (its folder must exist; written atomically).
        methods (`Sequence[str]`, *optional*): method labels, in row order (default: all, in run order).
        prompts (`Sequence[str]`, *optional*): prompt texts (default: the first prompt of every category).
        seeds (`Sequence[int]`, *optional*): columns (default 0-7).
        dpi (`int`, *optional*, defaults to 100): resolution of the PNG.
        names (`dict[str, str]`, *optional*): shorter names for method labels in the row titles.

    Raises:
        `ValueError`: if a requested method, prompt or seed has no image in the folder.
    """
    out = Path(out_dir)
    rows = load_rows(out)
    if not rows:
        raise ValueError(f"{out} holds no rows.jsonl rows; run the benchmark first")
    by_key = {(r["method"], r["prompt"], r["seed"]): r for r in rows}
    methods = list(methods) if methods else list(dict.fromkeys(r["method"] for r in rows))
    if not prompts:
        first: dict[str, str] = {}
        for r in rows:
            first.setdefault(r["category"], r["prompt"])
        prompts = list(first.values())
    seeds = list(seeds)
    missing = [(m, p, sd) for p in prompts for m in methods for sd in seeds if (m, p, sd) not in by_key]
    if missing:
        shown = "; ".join(f"{m} / {p!r} / seed {sd}" for m, p, sd in missing[:5])
        raise ValueError(f"{len(missing)} requested image(s) are not in {out}, e.g. {shown}")
    colours = {"exact": "#2ca02c", "colour": "#ff7f0e", "missing": "#d62728"}
    n_rows, n_cols = len(prompts) * len(methods), len(seeds)
    fig = new_figure(figsize=(1.0 * n_cols + 3.2, 1.0 * n_rows + 0.3), layout="constrained")
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
            if r["extra_objects"]:
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
