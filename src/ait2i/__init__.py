"""ait2i: Aggregating-and-Isolating cross-attention guidance (AI-T2I) for diffusers text-to-image pipelines.

The public API. The package is layered (docs/method.md, section 7; ``tests/test_import_graph.py`` keeps it so): this
module re-exports the library's names; the command line (``ait2i.cli``) and the demo (``ait2i.demo``) sit above it.
"""

from .boxes import Box
from .engine import Diagnostics, GuidanceEngine
from .generate import generate, guided_output_class
from .hosts import Host, host_for, register_host, supported_pipelines
from .methods import (
    AIT2IConfig,
    AIT2ILayoutConfig,
    AttendExciteConfig,
    BoxDiffConfig,
    GuidanceConfig,
    LayoutGuidanceConfig,
    NoGuidanceConfig,
    available_methods,
    box_methods,
    get_method,
    register_method,
)
from .subjects import Subject, prompt_tokens, resolve_subjects
from .version import __version__

#: The name of :func:`get_method` in 0.1, kept for its users.
get_config = get_method


def __getattr__(name: str):
    """``ait2i.tune`` (:func:`ait2i.tuning.tune`) is loaded on first use: tuning pulls in the benchmark runner, which
    ``import ait2i`` alone does not need."""
    if name == "tune":
        from .tuning import tune

        return tune
    raise AttributeError(f"module 'ait2i' has no attribute {name!r}")


__all__ = [
    "AIT2IConfig",
    "AIT2ILayoutConfig",
    "AttendExciteConfig",
    "Box",
    "BoxDiffConfig",
    "Diagnostics",
    "GuidanceConfig",
    "GuidanceEngine",
    "Host",
    "LayoutGuidanceConfig",
    "NoGuidanceConfig",
    "Subject",
    "__version__",
    "available_methods",
    "box_methods",
    "generate",
    "get_config",
    "get_method",
    "guided_output_class",
    "host_for",
    "prompt_tokens",
    "register_host",
    "register_method",
    "resolve_subjects",
    "supported_pipelines",
    "tune",
]
