"""Public benchmarks for real checkpoints: the Attend-and-Excite prompts and T2I-CompBench++.

``suites`` (prompts, subjects, file layout), ``generation`` (sharded, resumable image generation), ``metrics``
(CLIP, BLIP captioning, BLIP-VQA, CLIPScore, an open-vocabulary detector), ``scoring`` (score a run folder,
compare runs) and ``cli`` (the ``ait2i bench`` command). See ``docs/benchmarks.md``.
"""

from .suites import BenchPrompt, Suite, load_suite, parse_seeds

__all__ = ["BenchPrompt", "Suite", "load_suite", "parse_seeds"]
