"""The one interval policy of every benchmark table: a two-level bootstrap over prompts and seeds.

Images of one prompt are not independent draws (they share the prompt), so a resample draws prompts with
replacement, then seeds with replacement within each drawn prompt (Field & Welsh, 2007: the two-stage cluster
bootstrap). A method's score gets the 95% percentile interval of the pooled mean; a difference between two
methods is taken pair by pair on the (prompt, seed) images both have (the seeds are paired: the same seed gives
the same start latents), and its interval comes from the same bootstrap of the per-pair differences. Resamples
use a fixed seed, so a table is the same every time it is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RESAMPLES = 2000


def cluster_bootstrap(groups: Sequence[Sequence[float]], resamples: int = RESAMPLES, seed: int = 0):
    """95% interval of the pooled mean of ``groups`` (one sequence of per-seed values per prompt).

    Returns:
        `tuple[float, float]`: ``(low, high)``; ``(nan, nan)`` without values.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan")
    sizes = np.array([len(g) for g in groups])
    width = int(sizes.max())
    table = np.zeros((len(groups), width))  # (P, S): prompts x seeds, zero-padded
    for i, g in enumerate(groups):
        table[i, : len(g)] = g
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(resamples, len(groups)))  # (R, P) prompts drawn
    n = sizes[pick]  # (R, P) seeds each drawn prompt has
    cols = np.floor(rng.random((resamples, len(groups), width)) * n[..., None]).astype(np.int64)  # (R, P, S)
    valid = np.arange(width)[None, None, :] < n[..., None]  # (R, P, S)
    stats = (table[pick[..., None], cols] * valid).sum(axis=(1, 2)) / valid.sum(axis=(1, 2))  # (R,)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def _by_prompt(values: Mapping[tuple, float]) -> dict:
    out: dict = {}
    for (prompt, _seed), v in values.items():
        out.setdefault(prompt, []).append(float(v))
    return out


def summarize(values: Mapping[tuple, float]) -> dict:
    """Mean over images with its interval. ``values`` maps ``(prompt, seed)`` to a number.

    Returns:
        `dict`: ``{"mean", "low", "high", "n_images", "n_prompts"}``.
    """
    groups = _by_prompt(values)
    flat = [v for g in groups.values() for v in g]
    lo, hi = cluster_bootstrap(list(groups.values()))
    return {
        "mean": float(np.mean(flat)) if flat else float("nan"),
        "low": lo,
        "high": hi,
        "n_images": len(flat),
        "n_prompts": len(groups),
    }


def paired(values: Mapping[tuple, float], reference: Mapping[tuple, float]) -> dict:
    """``values - reference`` on their common ``(prompt, seed)`` keys, with the paired interval.

    Returns:
        `dict`: ``{"delta", "low", "high", "n_pairs", "n_prompts", "better", "worse"}``; ``better``/``worse``
        count the pairs where the method's value is larger / smaller.
    """
    common = [k for k in values if k in reference]
    diffs = {k: float(values[k]) - float(reference[k]) for k in common}
    s = summarize(diffs)
    return {
        "delta": s["mean"],
        "low": s["low"],
        "high": s["high"],
        "n_pairs": s["n_images"],
        "n_prompts": s["n_prompts"],
        "better": sum(d > 0 for d in diffs.values()),
        "worse": sum(d < 0 for d in diffs.values()),
    }
