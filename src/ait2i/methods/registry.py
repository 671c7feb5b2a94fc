"""The method protocol and registry: every method the API, the CLI and the benchmarks accept.

A method is a :class:`~ait2i.config.GuidanceConfig` subclass (a dataclass, validated in ``__post_init__``) that
implements ``loss(raw, subjects, eot_index) -> (loss (B,), terms, max_att (B, G))``. The schedule (which steps are
guided, step sizes, refinement, where attention is read) comes with the base class; a method overrides it only if
it needs to. Two class attributes describe it to the engine and to ``generate``: ``guides`` (``False`` only for
``"none"``) and ``uses_boxes`` (it reads ``Subject.box``).

Methods are looked up by name in one registry. The built-in ones are ``"ait2i"``, ``"ait2i-paper"``,
``"attend-and-excite"`` and ``"none"``. A third-party package registers its own without editing ait2i, either by
calling :func:`register_method` at import, or through the ``ait2i.methods`` entry-point group (``name = "pkg.mod:
factory"``), which is read the first time a name is looked up::

    @dataclass
    class CentreBias(ait2i.GuidanceConfig):
        name: str = field(default="centre-bias", repr=False)

        def loss(self, raw, subjects, eot_index):
            ...

    ait2i.register_method("centre-bias", CentreBias)
    ait2i.generate(pipe, prompt, subjects, method="centre-bias")
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib import metadata

from .config import AIT2IConfig, AttendExciteConfig, GuidanceConfig, NoGuidanceConfig

#: Entry-point group through which installed packages register methods (``name -> factory``).
ENTRY_POINT_GROUP = "ait2i.methods"

_REGISTRY: dict[str, Callable[[], GuidanceConfig]] = {}
_entry_points_loaded = False


def register_method(name: str, factory: Callable[[], GuidanceConfig] | None = None, *, replace: bool = False):
    """Register a method under ``name``; usable as a decorator on a config class.

    Args:
        name (`str`): the name users pass as ``method=`` and ``--method``.
        factory (`callable`): returns a fresh config object (a `GuidanceConfig` subclass with ``loss``); a config
            class itself works.
        replace (`bool`, *optional*, defaults to `False`): allow replacing an existing registration.

    Raises:
        ValueError: the name is empty or taken (unless ``replace``).
        TypeError: the factory does not build a `GuidanceConfig` that implements ``loss``.
    """
    if factory is None:
        return lambda f: register_method(name, f, replace=replace) or f
    if not isinstance(name, str) or not name.strip() or ":" in name or "," in name:
        raise ValueError(f"method name must be a non-empty string without ':' or ',', got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"method {name!r} is already registered; pass replace=True to replace it")
    probe = factory()
    if not isinstance(probe, GuidanceConfig):
        raise TypeError(f"method {name!r}: the factory must return a GuidanceConfig subclass, got {type(probe)}")
    if type(probe).loss is GuidanceConfig.loss:
        raise TypeError(f"method {name!r}: {type(probe).__name__} does not implement loss(raw, subjects, eot_index)")
    _REGISTRY[name] = factory
    return factory


_entry_point_errors: dict[str, str] = {}


def _load_entry_points() -> None:
    """Register the installed packages' methods once; a broken one is reported when its name is asked for."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            warnings.warn(f"entry point {ep.value!r} would replace the method {ep.name!r}; ignored", stacklevel=3)
            continue
        try:
            register_method(ep.name, ep.load())
        except Exception as e:  # noqa: BLE001 - any plugin fault is reported on use, not at every lookup
            _entry_point_errors[ep.name] = f"{ep.value}: {type(e).__name__}: {e}"


def available_methods() -> list[str]:
    """Names of every registered method (built-in and third-party), sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_method(method) -> GuidanceConfig:
    """A fresh config for a registered method name or a preset file (``*.toml``, :mod:`ait2i.presets`), or a
    config object passed through.

    Raises:
        ValueError: an unknown name (the message lists the registered ones); a preset file that is missing,
            malformed, for an unregistered method or with unknown fields (the message names the file).
    """
    if isinstance(method, GuidanceConfig):
        return method
    from .presets import is_preset_path, load_preset

    if is_preset_path(method):
        return load_preset(method)
    if isinstance(method, str):
        _load_entry_points()
        if method in _REGISTRY:
            return _REGISTRY[method]()
        if method in _entry_point_errors:
            raise ValueError(f"method {method!r} failed to load from its package ({_entry_point_errors[method]})")
    raise ValueError(
        f"unknown method {method!r}; expected one of {available_methods()}, a preset file (.toml) or a GuidanceConfig"
    )


#: Alias kept for the names used across the package and by users of 0.1.
get_config = get_method


def box_methods() -> list[str]:
    """Names of the registered methods that read per-subject boxes."""
    return [n for n in available_methods() if get_method(n).uses_boxes]


# The authors' released configuration, kept whatever our defaults become.
register_method(
    "ait2i-paper",
    lambda: AIT2IConfig(
        name="ait2i-paper",
        max_guided_steps=25,
        isolation_metric="euclidean",
        aggregation_metric="euclidean",
        attribute_metric="euclidean",
    ),
)
# Our default: the paper preset with the first half of the steps guided and cosine aggregation, as the ShapesWorld
# ablation chose (docs/method.md).
register_method("ait2i", AIT2IConfig)
register_method("attend-and-excite", AttendExciteConfig)
register_method("none", NoGuidanceConfig)

# Layout methods (every subject carries a box): AI-T2I with boxes and the two baselines.
from .layout_methods import AIT2ILayoutConfig, BoxDiffConfig, LayoutGuidanceConfig  # noqa: E402

register_method("ait2i-layout", AIT2ILayoutConfig)
register_method("layout-guidance", LayoutGuidanceConfig)
register_method("boxdiff", BoxDiffConfig)
