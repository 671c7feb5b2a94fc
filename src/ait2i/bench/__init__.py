"""Benchmarks: one runner for the public benchmarks (AnE, T2I-CompBench++) and ShapesWorld (binding and layout).

``suites`` (items: prompts, subjects, per-item data; image paths), ``runner`` (plan -> shard -> lock -> resume
-> manifest -> images -> rows), ``rundir`` (a run folder: manifest, locks, rows tied to PNGs), ``scorers`` (CLIP,
BLIP captions, BLIP-VQA, CLIPScore, detection, the ShapesWorld checker and its box scores), ``stats`` (the
two-level bootstrap), ``report`` (tables, compare), ``grid`` (a run's images as a PNG grid) and ``chunks`` (noun
chunks of T2I-CompBench prompts, table in ``data/``). The command is :mod:`ait2i.cli.bench` (``ait2i bench``).
See ``docs/benchmarks.md``.
"""

from .suites import Item, Suite, load_suite

__all__ = ["Item", "Suite", "load_suite"]
