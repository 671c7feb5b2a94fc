"""The method registry: every method name the API, the CLI and the benchmarks accept.

One table ``name -> factory`` (a factory returns a fresh config, a :class:`~ait2i.methods.base.GuidanceConfig`
subclass that implements ``loss``). The built-in methods are registered in :mod:`ait2i.methods` (one line each); a
third-party package registers its own without editing ait2i, either by calling :func:`register_method` at import,
or through the ``ait2i.methods`` entry-point group (``name = "pkg.mod:factory"``), read the first time a name is
looked up. :func:`ait2i.methods.get_method` also reads preset files (:mod:`ait2i.methods.presets`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib import metadata

from .base import GuidanceConfig

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


def registered(name: str) -> GuidanceConfig:
    """A fresh config of the method registered as ``name`` (installed packages' entry points included).

    Raises:
        ValueError: an unknown name (the message lists the registered ones), or a method whose package failed
            to load.
    """
    if isinstance(name, str):
        _load_entry_points()
        if name in _REGISTRY:
            return _REGISTRY[name]()
        if name in _entry_point_errors:
            raise ValueError(f"method {name!r} failed to load from its package ({_entry_point_errors[name]})")
    raise ValueError(
        f"unknown method {name!r}; expected one of {available_methods()}, a preset file (.toml) or a GuidanceConfig"
    )


def box_methods() -> list[str]:
    """Names of the registered methods that read per-subject boxes."""
    return [n for n in available_methods() if registered(n).uses_boxes]
