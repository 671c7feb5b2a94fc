"""Benchmarks: one runner for the public benchmarks (AnE, T2I-CompBench++) and ShapesWorld (binding and layout).

``suites`` (items: prompts, subjects, per-item data; file layouts), ``runner`` (plan -> shard -> lock -> resume
-> manifest -> images -> rows), ``scorers`` (CLIP, BLIP captions, BLIP-VQA, CLIPScore, detection, the ShapesWorld
checker and its box scores), ``stats`` (the two-level bootstrap), ``report`` (tables, compare) and ``cli``
(``ait2i bench``). See ``docs/benchmarks.md``.
"""

from .suites import Item, Suite, load_suite, parse_seeds

__all__ = ["Item", "Suite", "load_suite", "parse_seeds"]
