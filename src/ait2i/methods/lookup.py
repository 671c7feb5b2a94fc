"""One entry for a method argument: a registered name, a preset file or a config object (:func:`get_method`)."""

from __future__ import annotations

from .base import GuidanceConfig
from .presets import is_preset_path, load_preset
from .registry import registered


def get_method(method) -> GuidanceConfig:
    """A fresh config for a registered method name or a preset file (``*.toml``, :mod:`ait2i.methods.presets`), or
    a config object passed through.

    Raises:
        ValueError: an unknown name (the message lists the registered ones); a preset file that is missing,
            malformed, for an unregistered method or with unknown fields (the message names the file).
    """
    if isinstance(method, GuidanceConfig):
        return method
    if is_preset_path(method):
        return load_preset(method)
    return registered(method)
