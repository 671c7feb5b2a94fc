"""Methods: every method the API, the CLI and the benchmarks accept, one file per built-in method.

A method is a :class:`GuidanceConfig` subclass (a dataclass, validated in ``__post_init__``, :mod:`.base`) that
implements ``loss(raw, subjects, eot_index) -> (loss (B,), terms, max_att (B, G))`` with the pure terms of
:mod:`ait2i.losses`, and declares the space ``ait2i tune`` searches (:mod:`.space`). The schedule (which steps are
guided, step sizes, refinement, where attention is read) comes with the base class; a method overrides it only if
it needs to. Two class attributes describe it to the engine and to ``generate``: ``guides`` (``False`` only for
``"none"``) and ``uses_boxes`` (it reads ``Subject.box``).

Methods are looked up by name in one registry (:mod:`.registry`); :func:`get_method` also reads preset files
(:mod:`.presets`). A built-in method is one file here and one registration line below. A third-party package
registers its own without editing ait2i, either by calling :func:`register_method` at import, or through the
``ait2i.methods`` entry-point group (``name = "pkg.mod:factory"``), which is read the first time a name is looked
up::

    @dataclass
    class CentreBias(ait2i.GuidanceConfig):
        name: str = field(default="centre-bias", repr=False)

        def loss(self, raw, subjects, eot_index):
            ...

    ait2i.register_method("centre-bias", CentreBias)
    ait2i.generate(pipe, prompt, subjects, method="centre-bias")
"""

from .ait2i import AIT2IConfig, paper
from .ait2i_layout import AIT2ILayoutConfig
from .attend_excite import AttendExciteConfig
from .base import GuidanceConfig
from .boxdiff import BoxDiffConfig
from .layout_guidance import LayoutGuidanceConfig
from .lookup import get_method
from .none import NoGuidanceConfig
from .presets import preset_factory, tuned_presets
from .registry import ENTRY_POINT_GROUP, available_methods, box_methods, register_method
from .space import declare_space

# The built-in methods, one line each.
register_method("ait2i-paper", paper)  # the authors' released configuration
register_method("ait2i", AIT2IConfig)  # ours: guides the first half of the steps, cosine aggregation
register_method("attend-and-excite", AttendExciteConfig)
register_method("none", NoGuidanceConfig)
register_method("ait2i-layout", AIT2ILayoutConfig)
register_method("layout-guidance", LayoutGuidanceConfig)
register_method("boxdiff", BoxDiffConfig)
# Tuned presets shipped with the package (methods/tuned/<name>.toml; provenance and held-out results inside).
for _name, _file in tuned_presets().items():
    register_method(_name, preset_factory(_file))

__all__ = [
    "ENTRY_POINT_GROUP",
    "AIT2IConfig",
    "AIT2ILayoutConfig",
    "AttendExciteConfig",
    "BoxDiffConfig",
    "GuidanceConfig",
    "LayoutGuidanceConfig",
    "NoGuidanceConfig",
    "available_methods",
    "box_methods",
    "declare_space",
    "get_method",
    "register_method",
]
