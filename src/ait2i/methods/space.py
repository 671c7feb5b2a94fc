"""Search spaces: which fields of a method's config ``ait2i tune`` searches, over which ranges and scales.

Each method declares its space, ``{field: spec}``, read through ``GuidanceConfig.search_space()``: a spec is a
:class:`FloatRange` (``low``, ``high``, optional ``log`` scale), an :class:`IntRange` or a :class:`Choice` of
values (strings, numbers, tuples such as ``from_where=("down",)``, dicts such as a refinement schedule, ``None``).
Each built-in method's file declares its space next to its config (:data:`SPACES`, keyed by config class; a
subclass inherits the nearest declared ancestor's space); a third-party method declares its own the same way, with
:func:`declare_space`, or by overriding the classmethod::

    ait2i.methods.declare_space(CentreBias, {"scale_factor": FloatRange(5, 60, log=True),
                                             "w_centre": FloatRange(0, 4)})

A user narrows or widens a space from the command line (:func:`customize`): ``--space FIELD=LOW:HIGH[:log]``
(a range; ``0.1:1.0`` is a float range, ``1:3`` an int range for an int field), ``--space FIELD=a|b|c`` (choices,
each value read by the field's type as ``--set`` reads it: ``from_where=down|up+down``,
``refinement=none|{0:0.05,0.2:0.5}``), ``--fix FIELD=VALUE`` (taken out of the space, set to that value) and
``--only FIELD,...`` (keep only these declared fields). Every field is checked against the config: an unknown one
is an error naming the config's fields, and a range whose ends the config refuses is an error before any trial.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..parsing import read_setting


@dataclass(frozen=True)
class FloatRange:
    """A float field searched in ``[low, high]`` (``log``: uniform in the logarithm, ``low > 0``)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"a float range needs finite low <= high, got {self.low}:{self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def ends(self) -> list:
        return [float(self.low), float(self.high)]

    def describe(self) -> str:
        return f"float {self.low:g}..{self.high:g}" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class IntRange:
    """An int field searched in ``[low, high]`` (``log``: uniform in the logarithm, ``low >= 1``)."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)):
            raise ValueError(f"an int range needs int ends, got {self.low!r}:{self.high!r}")
        if self.low > self.high or (self.log and self.low < 1):
            raise ValueError(
                f"an int range needs low <= high (and low >= 1 on a log scale), got {self.low}:{self.high}"
            )

    def suggest(self, trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def ends(self) -> list:
        return [self.low, self.high]

    def describe(self) -> str:
        return f"int {self.low}..{self.high}" + (" (log)" if self.log else "")


def value_label(value: Any) -> str:
    """How a choice is named in the study (Optuna stores only plain scalars): ``("up", "down")`` -> ``"up+down"``,
    ``None`` and an empty dict (no refinement either way) -> ``"none"``, a dict -> its JSON with sorted keys, a
    string or number as it is."""
    if value is None or (isinstance(value, dict) and not value):
        return "none"
    if isinstance(value, (tuple, list)):
        return "+".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps({str(k): v for k, v in sorted(value.items())}, sort_keys=True)
    return str(value)


@dataclass(frozen=True)
class Choice:
    """A field searched over ``values`` (any values the field takes; stored in the study by :func:`value_label`)."""

    values: tuple

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        labels = [value_label(v) for v in self.values]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"choices must be distinct and at least one, got {list(self.values)!r}")

    def suggest(self, trial, name: str) -> Any:
        labels = [value_label(v) for v in self.values]
        return self.values[labels.index(trial.suggest_categorical(name, labels))]

    def decode(self, label: str) -> Any:
        """The value of a label stored in the study."""
        for v in self.values:
            if value_label(v) == label:
                return v
        raise ValueError(f"{label!r} is none of the choices {[value_label(v) for v in self.values]}")

    def ends(self) -> list:
        return list(self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(value_label(v) for v in self.values)


Spec = FloatRange | IntRange | Choice

#: Declared spaces by config class (each built-in method's file declares its own with :func:`declare_space`).
SPACES: dict[type, dict[str, Spec]] = {}


def declare_space(cls: type, space: Mapping[str, Spec]) -> None:
    """Declare the search space of the method config class ``cls`` (replaces an earlier declaration).

    Raises:
        ValueError: a field the class does not have, or a spec whose ends the class refuses.
    """
    check_space(cls(), space)
    SPACES[cls] = dict(space)


def declared_space(cls: type) -> dict[str, Spec]:
    """The space declared for ``cls`` or its nearest declared ancestor (empty if none)."""
    for klass in cls.__mro__:
        if klass in SPACES:
            return dict(SPACES[klass])
    return {}


def check_space(cfg, space: Mapping[str, Spec]) -> None:
    """Refuse a space with an unknown field, a spec of another kind, or ends ``cfg``'s validation refuses."""
    fields = tunable_fields(cfg)
    unknown = sorted(set(space) - set(fields))
    if unknown:
        raise ValueError(f"{cfg.name} has no field(s) {unknown}; its fields are {fields}")
    for name, spec in space.items():
        if not isinstance(spec, (FloatRange, IntRange, Choice)):
            raise ValueError(f"{name}: a space entry must be FloatRange, IntRange or Choice, got {spec!r}")
        for v in spec.ends():
            try:
                cfg.replace(**{name: v})
            except (ValueError, TypeError) as e:
                raise ValueError(f"{cfg.name}: {name}={value_label(v)} is not a valid setting ({e})") from None


def tunable_fields(cfg) -> list[str]:
    """The config's fields (``name`` apart)."""
    return [f.name for f in dataclasses.fields(cfg) if f.name != "name"]


def suggest(trial, space: Mapping[str, Spec]) -> dict[str, Any]:
    """One config's values for ``space``, asked of an Optuna trial (field order as declared)."""
    return {name: spec.suggest(trial, name) for name, spec in space.items()}


def decode_params(space: Mapping[str, Spec], params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's stored parameters as config values (choice labels back to their values)."""
    out = {}
    for name, v in params.items():
        spec = space.get(name)
        out[name] = spec.decode(v) if isinstance(spec, Choice) else v
    return out


def encode_params(space: Mapping[str, Spec], values: Mapping[str, Any]) -> dict[str, Any]:
    """Config values as a trial's parameters (for enqueueing a config); values outside the space are left out."""
    out = {}
    for name, spec in space.items():
        if name not in values:
            continue
        v = values[name]
        if isinstance(spec, Choice):
            if value_label(v) in [value_label(c) for c in spec.values]:
                out[name] = value_label(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and spec.low <= v <= spec.high:
            out[name] = int(v) if isinstance(spec, IntRange) else float(v)
    return out


# -- command-line narrowing and widening ---------------------------------------------------------------------------
def _split_assignment(item: str, what: str) -> tuple[str, str]:
    key, eq, raw = item.partition("=")
    if not eq or not key.strip() or not raw.strip():
        raise ValueError(f"cannot read {what} {item!r}; write FIELD=VALUE")
    return key.strip(), raw.strip()


def parse_spec(cfg, name: str, raw: str) -> Spec:
    """``LOW:HIGH[:log]`` or ``a|b|c`` for field ``name`` of ``cfg`` (values read by the field's type)."""
    ann = str({f.name: f.type for f in dataclasses.fields(cfg)}[name])
    parts = raw.split(":")
    numeric = ("int" in ann or "float" in ann) and not any(t in ann for t in ("dict", "tuple", "str"))
    if numeric and "|" not in raw and len(parts) in (2, 3):
        log = len(parts) == 3
        if log and parts[2].strip().lower() != "log":
            raise ValueError(f"--space {name}={raw}: the third part may only be 'log'")
        lo, hi = parts[0].strip(), parts[1].strip()
        as_float = "float" in ann and ("int" not in ann or any(c in lo + hi for c in ".eE"))
        try:
            return FloatRange(float(lo), float(hi), log) if as_float else IntRange(int(lo), int(hi), log)
        except ValueError as e:
            raise ValueError(f"--space {name}={raw}: {e}") from None
    return Choice(tuple(read_setting(cfg, name, v) for v in raw.split("|")))


def customize(
    cfg,
    space: Mapping[str, Spec],
    spaces: Sequence[str] = (),
    fixes: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> tuple[dict[str, Spec], dict[str, Any]]:
    """The method's declared ``space`` narrowed or widened from the command line.

    Args:
        cfg: the method's starting config (its fields are the valid names).
        space: the declared space.
        spaces: ``FIELD=LOW:HIGH[:log]`` or ``FIELD=a|b|c`` items (replace or add a field).
        fixes: ``FIELD=VALUE`` items (removed from the space; the value is set on every trial).
        only: keep only these fields of the declared space (``--space`` fields are kept too).

    Returns:
        `(space, fixed)`: the space to search and the fixed values.
    """
    fields = tunable_fields(cfg)

    def known(name: str, what: str) -> str:
        if name not in fields:
            raise ValueError(f"{what}: {cfg.name} has no field {name!r}; its fields are {fields}")
        return name

    out = dict(space)
    if only is not None:
        for name in only:
            known(name, "--only")
        out = {k: v for k, v in out.items() if k in only}
    for item in spaces:
        name, raw = _split_assignment(item, "--space")
        out[known(name, "--space")] = parse_spec(cfg, known(name, "--space"), raw)
    fixed: dict[str, Any] = {}
    for item in fixes:
        name, raw = _split_assignment(item, "--fix")
        fixed[name] = read_setting(cfg, known(name, "--fix"), raw)
        out.pop(name, None)
    check_space(cfg, out)
    try:
        cfg.replace(**fixed)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--fix: {e}") from None
    return out, fixed


def describe(space: Mapping[str, Spec]) -> list[str]:
    """One line per field, for messages and docs."""
    return [f"{name}: {spec.describe()}" for name, spec in space.items()]


# -- choices shared by the built-in methods' spaces -----------------------------------------------------------
#: Read layers at the read resolution: down only, down + mid, down + up (the AI-T2I default), all, up only.
READ_LAYERS = Choice((("down",), ("down", "mid"), ("up", "down"), ("up", "down", "mid"), ("up",)))
#: Attend-and-Excite's refinement at steps 0, 10, 20 of 50 as fractions of the run, or none.
REFINEMENT = Choice((None, {0: 0.05, 0.2: 0.5, 0.4: 0.8}))
METRIC = Choice(("euclidean", "cosine"))
