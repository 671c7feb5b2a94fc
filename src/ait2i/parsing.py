"""The one reader of seeds, ``FIELD=VALUE`` settings and subject arguments, for every command line and the
benchmarks: ``ait2i generate --seed/--set``, ``ait2i bench --seeds/--set`` and method specs
(``ait2i:scale_factor=30``), ``ait2i tune``, the demo's advanced panel. The same input is read the same way and
refused with the same message everywhere.

* Seeds: ``"7"``, ``"0-3"``, ``"0,2,5-7"``; integers from 0 to ``2**64 - 1`` (what ``torch.Generator.manual_seed``
  accepts), each at most once, at most :data:`MAX_SEEDS` of them.
* Settings: a value is read by the type of the config field it sets: numbers, ``cosine``, ``none``, dicts such as
  ``refinement={0:0.05,10:0.5,20:0.8}``, tuples as ``from_where=up+down`` or ``scale_range=(1.0,0.5)``.
* Subjects: token indices (``"5"``, ``"5,6"``) or a phrase of the prompt (``"red car"``).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Sequence
from typing import Any

#: The largest seed: ``torch.Generator.manual_seed`` takes 64-bit values (``2**64`` overflows).
MAX_SEED = 2**64 - 1
#: The most seeds one command line may name (a typo such as ``0-400000`` is refused, not started).
MAX_SEEDS = 100_000
_SEED_PART = re.compile(r"(\d+)(?:-(\d+))?")


def parse_seeds(text: str, option: str = "--seed", max_count: int = MAX_SEEDS) -> list[int]:
    """Seeds from ``"7"``, ``"0-3"`` or ``"0,2,5-7"``, in the order given.

    The count is checked before any seed is listed and repeats are found by sorting the ranges, so any text is
    answered at once.

    Args:
        text (`str`): comma-separated seeds and ``lo-hi`` ranges (both ends included).
        option (`str`, *optional*, defaults to `"--seed"`): the option named in error messages.
        max_count (`int`, *optional*, defaults to :data:`MAX_SEEDS`): the most seeds accepted.

    Raises:
        `ValueError`: a part that is not a seed or a range, a seed above :data:`MAX_SEED`, a range written high to
        low, a seed named twice (its images would overwrite each other) or more than ``max_count`` seeds.
    """
    ranges: list[tuple[int, int]] = []
    for part in str(text).split(","):
        part = part.strip()
        m = _SEED_PART.fullmatch(part)
        if not m:
            raise ValueError(
                f"{option} {text!r}: cannot read seed {part!r}; write seeds from 0 to {MAX_SEED}, e.g. 0, 0-3 or "
                "0,2,5-7"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi > MAX_SEED:
            raise ValueError(f"{option} {text!r}: seed {hi} is out of range; seeds go from 0 to {MAX_SEED} (2**64-1)")
        if hi < lo:
            raise ValueError(f"{option} {text!r}: empty seed range {part!r}; write the smaller seed first (e.g. 0-3)")
        ranges.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > max_count:
        raise ValueError(
            f"{option} {text!r} names {count} seeds; at most {max_count} per run (split the run into several commands)"
        )
    top = -1
    for lo, hi in sorted(ranges):
        if lo <= top:
            raise ValueError(
                f"{option} {text!r} names seed {lo} twice; name each seed once (repeats would give the same "
                "image under one name)"
            )
        top = max(top, hi)
    return [s for lo, hi in ranges for s in range(lo, hi + 1)]


def read_setting(cfg, key: str, raw: str) -> Any:
    """The value of ``key=raw`` for the config ``cfg``, read by the type annotated on the field.

    Args:
        cfg (`GuidanceConfig`): the method's config (any dataclass whose fields are annotated).
        key (`str`): a field of ``cfg``.
        raw (`str`): the text after ``=``: ``30``, ``cosine``, ``none``, ``up+down``, ``(1.0,0.5)``,
            ``{0:0.05,10:0.5}``, ``true``.

    Raises:
        `ValueError`: naming the field, the text and the type expected.
    """
    ann = str({f.name: f.type for f in dataclasses.fields(cfg)}[key])
    raw = raw.strip()
    low = raw.lower()
    try:
        if "dict" in ann:
            if low in ("none", "off", "{}"):
                return None if low != "{}" else {}
            v = ast.literal_eval(raw)
            if not isinstance(v, dict):
                raise ValueError
            return v
        if ann.startswith("tuple"):
            if raw[:1] in "([":
                v = ast.literal_eval(raw)
                if not isinstance(v, (tuple, list)):
                    raise ValueError
                return tuple(v)
            items = [x.strip() for x in raw.split("+")]
            return tuple(float(x) for x in items) if "float" in ann else tuple(items)
        if ann == "bool":
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if "None" in ann and low == "none":
            return None
        if "int" in ann and "float" in ann:
            v = ast.literal_eval(raw)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError
            return v
        if "int" in ann:
            return int(raw)
        if "float" in ann:
            return float(raw)
        if "str" in ann:
            return raw.strip("'\"")
    except (ValueError, SyntaxError):
        pass
    raise ValueError(f"cannot read {key}={raw!r}: expected a value of type {ann}")


def parse_settings(cfg, items: Sequence[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["scale_factor=30", "from_where=up+down"]`` -> ``{"scale_factor": 30.0, "from_where": ("up", "down")}``.

    The one reader of config settings: ``--set`` (generate, bench, tune), the overrides of a bench method spec
    (``ait2i:scale_factor=30``) and the demo's advanced fields.

    Args:
        cfg (`GuidanceConfig`): the config the settings apply to (values are read by its field types).
        items (`Sequence[str]`, *optional*): ``FIELD=VALUE`` texts.
        option (`str`, *optional*, defaults to `"--set"`): where the settings come from, named in error messages.

    Raises:
        `ValueError`: an item that is not ``FIELD=VALUE``, a field the config does not have (the message lists its
        fields), a field given twice, or a value of the wrong type.
    """
    fields = [f.name for f in dataclasses.fields(cfg) if f.name != "name"]
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option}: {item!r} is not key=value; write FIELD=VALUE, e.g. scale_factor=30")
        if key not in fields:
            raise ValueError(f"{option}: {cfg.name} has no field {key!r}; its fields are {', '.join(fields)}")
        if key in out:
            raise ValueError(f"{option}: {key!r} given twice")
        out[key] = read_setting(cfg, key, raw)
    return out


def parse_subject(text: str) -> str | list[int]:
    """A subject argument: token indices (``"5"``, ``"5,6"``) or a phrase of the prompt (``"red car"``)."""
    if re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", text):
        return [int(x) for x in text.split(",")]
    return text
