"""Method specs, the one override syntax of ``ait2i bench``: ``name`` or ``name:key=value,key=value``.

``--methods none,attend-and-excite,ait2i:w_isolation=0`` names registered methods (:func:`ait2i.methods.
get_method`) and variants of them; ``--set key=value`` (repeatable) applies to every guided method that has the
setting and does not set it itself. Values are read by the config field's type: numbers, ``cosine``, ``none``,
dicts such as ``refinement={0:0.05,10:0.5,20:0.8}``, tuples as ``from_where=up+down`` or
``scale_range=(1.0,0.5)``. A label names the method's folder (:func:`method_dir`) and its row in every table; it
is written from the parsed values (:func:`canonical_value`, keys in the config's field order), so one config has
one label and one folder whatever its spelling (``scale_range=(1,0.5)``, ``[1,0.5]`` and ``1+0.5`` alike).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence

from ..methods import GuidanceConfig, get_method
from ..parsing import parse_settings, read_setting

#: Attend-and-Excite with its windows as fractions of the run: at 50 steps this is exactly the preset (guided
#: steps 0-24, refinement at steps 0, 10, 20); at 20 steps it guides steps 0-9 and refines at 0, 4 and 8.
AE_SCALED = "attend-and-excite:max_guided_steps=0.5,refinement={0:0.05,0.2:0.5,0.4:0.8}"
#: Named method sets for ``--methods``.
METHOD_SETS = {
    "default": ("none", AE_SCALED, "ait2i"),
    "ablation": (
        "ait2i",
        "ait2i:w_isolation=0",
        "ait2i:w_aggregation=0",
        "ait2i:w_attribute=0",
        "ait2i:w_presence=0",
        "ait2i:aggregation_metric=euclidean",
        "ait2i:isolation_metric=cosine",
        "ait2i:refinement={0:0.05,0.2:0.5,0.4:0.8}",  # A&E's steps 0, 10, 20 of 50, as fractions
    ),
    "layout": ("none", "layout-guidance", "boxdiff", "ait2i-layout"),  # the layout suite's default
}


def _split_top(spec: str, sep: str = ",") -> list[str]:
    """Splits on ``sep`` outside brackets (``{0:0.05,10:0.5}`` stays whole)."""
    parts, depth, cur = [], 0, ""
    for ch in spec:
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in {spec!r}")
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"unbalanced brackets in {spec!r}")
    return parts + [cur]


def _number(x, trim: bool) -> str:
    """``x`` as written in a label: an ``int`` as is; a ``float`` by ``repr``, whole numbers without ``.0`` where
    the field takes only floats (``trim``), so ``0`` and ``0.0`` agree while ``10`` (steps) and ``1.0`` (a
    fraction) of an ``int | float`` field stay apart."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if trim and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


def canonical_value(value, annotation: str) -> str:
    """The one spelling of a parsed setting in a label, read back to the same value by :func:`parse_method`.

    ``none``; ``true``/``false``; numbers (:func:`_number`); strings as they are; tuples of strings joined by
    ``+``; tuples of numbers as ``(a,b)``; dicts as ``{k:v,...}`` by increasing key.
    """
    only_float = "int" not in annotation
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: float(kv[0]))
        return "{" + ",".join(f"{_number(k, False)}:{_number(v, True)}" for k, v in items) + "}"
    if isinstance(value, (tuple, list)):
        if value and all(isinstance(x, str) for x in value):
            return "+".join(value)
        return "(" + ",".join(_number(x, only_float) for x in value) + ")"
    if isinstance(value, (int, float)):
        return _number(value, annotation == "float")
    return str(value)


def parse_method(spec: str) -> tuple[str, GuidanceConfig]:
    """One method: a preset name, or ``name:key=value,key=value`` (overrides of that preset's config).

    Values are read by the field's type: numbers, ``cosine``/``euclidean``, ``none``, dicts such as
    ``refinement={0:0.05,10:0.5,20:0.8}``, tuples as ``from_where=up+down`` or ``scale_range=(1.0,0.5)``.

    Returns:
        `tuple[str, GuidanceConfig]`: the canonical label (``name:key=value,...``: keys in the config's field
        order, values as :func:`canonical_value` writes the config's parsed values) and the config.
    """
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    name = name.strip()
    cfg = get_method(name)  # ValueError naming the registered methods
    if not rest.strip():
        if ":" in spec:
            raise ValueError(f"method {spec!r}: nothing after ':'; write e.g. {name}:w_isolation=0")
        return name, cfg
    fields = [f.name for f in dataclasses.fields(cfg) if f.name != "name"]
    overrides = parse_settings(cfg, _split_top(rest), option=f"method {spec!r}")
    try:
        cfg = cfg.replace(**overrides)
    except (ValueError, TypeError) as e:
        raise ValueError(f"method {spec!r}: {e}") from None
    types = {f.name: str(f.type) for f in dataclasses.fields(cfg)}
    labels = [f"{k}={canonical_value(getattr(cfg, k), types[k])}" for k in fields if k in overrides]
    return f"{name}:{','.join(labels)}", cfg


def parse_methods(spec: str | Sequence[str], common: str | None = None) -> list[tuple[str, GuidanceConfig]]:
    """Methods from ``--methods``: comma-separated names, variants and named sets (:data:`METHOD_SETS`).

    Inside one variant, further ``key=value`` items after a comma belong to it
    (``ait2i:w_isolation=0,w_presence=0`` is one method); a name without ``=`` starts the next method.

    Args:
        spec (`str` or `Sequence[str]`): the method list.
        common (`str`, *optional*): ``key=value,...`` applied to every guided method (not ``none``) that has the
            setting and does not set it itself, e.g. ``max_guided_steps=0.5`` to guide the first half of the
            steps at any step count. The labels stay as given; the configs (recorded in the manifest and the
            summary) carry the change.
    """
    items = _split_top(spec) if isinstance(spec, str) else [str(s) for s in spec]
    groups: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if "=" in item and ":" not in item.split("=", 1)[0]:
            if not groups or ":" not in groups[-1]:
                raise ValueError(f"override {item!r} must follow a method name, e.g. ait2i:{item}")
            groups[-1] += "," + item
        else:
            groups.append(item)
    shared: dict[str, str] = {}
    for item in _split_top(common) if common and common.strip() else []:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"common override {item!r} is not key=value")
        shared[key.strip()] = raw.strip()
    used: set[str] = set()
    out: list[tuple[str, GuidanceConfig]] = []
    for g in groups:
        for s in METHOD_SETS.get(g, (g,)):
            label, cfg = parse_method(s)
            own = {x.partition("=")[0].strip() for x in _split_top(label.partition(":")[2])} if ":" in label else set()
            names = {f.name for f in dataclasses.fields(cfg)} - {"name"}
            extra = {k: v for k, v in shared.items() if k in names and k not in own and cfg.name != "none"}
            if extra:
                try:
                    cfg = cfg.replace(**{k: read_setting(cfg, k, v) for k, v in extra.items()})
                except (ValueError, TypeError) as e:
                    raise ValueError(f"common override on {label!r}: {e}") from None
                used.update(extra)
            if label in [lab for lab, _ in out]:
                raise ValueError(f"method {label!r} listed twice")
            same = [lab for lab, c in out if config_dict(c) == config_dict(cfg)]
            if same:
                raise ValueError(f"methods {same[0]!r} and {label!r} have the same config; list it once")
            clash = [lab for lab, _ in out if method_dir(lab) == method_dir(label)]
            if clash:
                raise ValueError(f"methods {clash[0]!r} and {label!r} would share the folder {method_dir(label)!r}")
            out.append((label, cfg))
    if not out:
        raise ValueError("no method given; e.g. --methods none,attend-and-excite,ait2i")
    unused = sorted(set(shared) - used)
    if unused:
        raise ValueError(f"common overrides {unused} apply to none of the guided methods {[m for m, _ in out]}")
    return out


def method_dir(label: str) -> str:
    """A folder name for a method label (``ait2i:w_isolation=0`` -> ``ait2i+w_isolation=0``)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label.replace(":", "+").replace(",", "+"))


def config_dict(cfg: GuidanceConfig) -> dict:
    """A method config as plain JSON (what the manifest and each PNG record)."""
    d = dataclasses.asdict(cfg)
    d["class"] = type(cfg).__name__
    return json.loads(json.dumps(d, default=str))  # keys of refinement dicts become strings
