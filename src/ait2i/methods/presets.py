"""Preset files: a method config with its provenance, as TOML, loadable wherever a method name is.

A preset names a registered method, the fields that differ from that method's defaults, and where the values come
from (written by ``ait2i tune``: model identity, study, trials, seeds, the held-out result with intervals,
library versions)::

    method = "ait2i"
    none_fields = []                # fields set to None (TOML has no null)

    [config]
    scale_factor = 31.2
    from_where = ["down"]
    refinement = { "0" = 0.05, "0.2" = 0.5 }   # keys: step index (int) or step fraction (float)

    [provenance]
    study = "ait2i-shapes"
    ...

``ait2i.get_method("tuned.toml")``, ``ait2i generate --method tuned.toml`` and ``ait2i bench --methods
tuned.toml`` load it (:func:`load_preset`). A file that is not TOML, names an unregistered method, or sets a field
the method does not have (or a value it refuses) is an error naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_path
from ..parsing import read_setting
from .registry import available_methods, registered

#: Top-level keys of a preset file.
KEYS = ("method", "none_fields", "config", "provenance")


@dataclass
class Preset:
    """A preset as read from a file: the method name, its full config and the provenance table."""

    method: str
    config: Any
    provenance: dict = field(default_factory=dict)
    path: str | None = None


def is_preset_path(method) -> bool:
    """A method argument that names a preset file (``*.toml``) rather than a registered method."""
    return isinstance(method, (str, os.PathLike)) and str(method).lower().endswith(".toml")


# -- writing -------------------------------------------------------------------------------------------------------
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k) -> str:
    k = str(k)
    return k if _BARE.match(k) else json.dumps(k)


def _value(v) -> str:
    """A TOML value for the simple types a config and a provenance hold."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(_dict_key(k))} = {_value(x)}" for k, x in v.items()) + " }"
    if v is None:
        raise ValueError("None cannot be written as a TOML value (use none_fields)")
    raise ValueError(f"cannot write {type(v).__name__} {v!r} as a TOML value")


def _dict_key(k) -> str:
    """Dict keys keep their type through the file: ``0`` -> ``"0"``, ``0.2`` -> ``"0.2"`` (read back by
    :func:`_read_key`)."""
    if isinstance(k, bool) or not isinstance(k, (int, float, str)):
        raise ValueError(f"cannot write a dict key of type {type(k).__name__} ({k!r})")
    return repr(k) if isinstance(k, float) else str(k)


def _read_key(k: str):
    if re.fullmatch(r"-?\d+", k):
        return int(k)
    try:
        return float(k)
    except ValueError:
        return k


def _table(lines: list[str], name: str, table: Mapping) -> None:
    """Scalars and inline values of ``table`` under ``[name]``, then its sub-tables (dicts of dicts)."""
    simple = {k: v for k, v in table.items() if v is not None and not (isinstance(v, Mapping) and _nested(v))}
    lines.append(f"\n[{name}]")
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in simple.items())
    for k, v in table.items():
        if isinstance(v, Mapping) and _nested(v):
            _table(lines, f"{name}.{_key(k)}", v)


def _nested(v: Mapping) -> bool:
    return any(isinstance(x, Mapping) for x in v.values()) or all(isinstance(k, str) for k in v) and len(v) > 4


def dumps(method: str, fields: Mapping[str, Any], provenance: Mapping | None = None) -> str:
    """The TOML text of a preset (``fields``: config values; ``None`` values go to ``none_fields``)."""
    lines = ["# ait2i preset (load with --method <this file>)", f"method = {_value(method)}"]
    lines.append(f"none_fields = {_value(sorted(k for k, v in fields.items() if v is None))}")
    lines.append("\n[config]")
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in fields.items() if v is not None)
    if provenance:
        _table(lines, "provenance", _plain(provenance))
    return "\n".join(lines) + "\n"


def _plain(v):
    """Provenance as TOML-writable values: None dropped, tuples as lists."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v if x is not None]
    return v


def changed_fields(cfg) -> dict[str, Any]:
    """The fields of ``cfg`` that differ from its registered method's defaults (``cfg.name``)."""
    base = registered(cfg.name)
    if type(base) is not type(cfg):
        raise ValueError(f"method {cfg.name!r} is registered as {type(base).__name__}, not {type(cfg).__name__}")
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name != "name" and getattr(cfg, f.name) != getattr(base, f.name)
    }


def write_preset(path: str | os.PathLike, cfg, provenance: Mapping | None = None) -> Path:
    """Write ``cfg`` (its changes from the registered defaults) and ``provenance`` to ``path`` (atomically)."""
    path = Path(path)
    if not is_preset_path(path):
        raise ValueError(f"a preset file ends in .toml, got {str(path)!r}")
    text = dumps(cfg.name, changed_fields(cfg), provenance)
    if load_text(text, str(path)).config != cfg:  # never write a file that would load as another config
        raise ValueError(f"{path}: the config does not survive the TOML round trip: {cfg}")
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


# -- reading -------------------------------------------------------------------------------------------------------
def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def load_text(text: str, where: str = "<preset>") -> Preset:
    """Parse and check a preset's text (``where`` names it in errors)."""
    tomllib = _toml()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"preset {where} is not valid TOML ({e})") from None
    extra = sorted(set(data) - set(KEYS))
    if extra:
        raise ValueError(f"preset {where}: unknown top-level key(s) {extra}; a preset has {list(KEYS)}")
    method = data.get("method")
    if not isinstance(method, str) or is_preset_path(method):
        raise ValueError(f"preset {where}: 'method' must name a registered method, got {method!r}")
    if method not in available_methods():
        raise ValueError(
            f"preset {where} is for the method {method!r}, which is not registered here; registered: "
            f"{available_methods()} (install the package that provides it)"
        )
    cfg = registered(method)
    config, nones = data.get("config", {}), data.get("none_fields", [])
    if not isinstance(config, dict) or not isinstance(nones, list):
        raise ValueError(f"preset {where}: [config] must be a table and none_fields a list")
    types = {f.name: str(f.type) for f in dataclasses.fields(cfg) if f.name != "name"}
    unknown = sorted((set(config) | set(nones)) - set(types))
    if unknown:
        raise ValueError(f"preset {where}: {method} has no field(s) {unknown}; its fields are {list(types)}")
    values: dict[str, Any] = {k: None for k in nones}
    for k, v in config.items():
        ann = types[k]
        if isinstance(v, dict):
            v = {_read_key(str(key)): x for key, x in v.items()}
        elif isinstance(v, list) and ann.startswith("tuple"):
            v = tuple(v)
        elif isinstance(v, int) and not isinstance(v, bool) and "float" in ann and "int" not in ann:
            v = float(v)
        elif isinstance(v, str) and "str" not in ann:
            v = read_setting(cfg, k, v)
        values[k] = v
    try:
        cfg = cfg.replace(**values)
    except (ValueError, TypeError) as e:
        raise ValueError(f"preset {where}: {e}") from None
    prov = data.get("provenance", {})
    return Preset(method, cfg, prov if isinstance(prov, dict) else {}, where)


def read_preset(path: str | os.PathLike) -> Preset:
    """A preset file: method, config (checked by the method's own validation) and provenance."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"preset file {str(path)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"preset {str(path)!r} cannot be read ({e})") from None
    return load_text(text, str(path))


def load_preset(path: str | os.PathLike):
    """The config of a preset file (what ``get_method("tuned.toml")`` returns)."""
    return read_preset(path).config


#: The folder of the tuned presets shipped with the package (``<registered name>.toml``, each written by ``ait2i
#: tune`` and confirmed on fresh seeds in ``docs/results/tuning.md``).
TUNED_DIR = Path(__file__).resolve().parent / "tuned"


def tuned_presets() -> dict[str, Path]:
    """``{name: file}`` of the shipped tuned presets (registered under their file name)."""
    return {p.stem: p for p in sorted(TUNED_DIR.glob("*.toml"))}


def preset_factory(path: Path):
    """A registry factory that reads the preset file ``path`` afresh on every lookup."""

    def factory():
        return load_preset(path)

    factory.__name__ = f"preset_{path.stem.replace('-', '_')}"
    return factory
