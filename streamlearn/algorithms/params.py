"""Declared algorithm parameters: each algorithm says once what its parameters are.

An algorithm's parameters are its ``__init__`` signature (type from the annotation, default
from the signature); the class adds the rest as data in ``param_spec`` (as scikit-learn's
``_parameter_constraints``)::

    param_spec = {
        "k": Param("clusters in the model", Interval(int, 1, None)),
        "optimizer": Param("update rule", Options("adagrad", "sgd")),
        "n_features": Param("record width", Interval(int, 1, None), Options("auto")),
        "classes": Param("label of each class", ListOf(str, int), None),
    }

A value is valid when it satisfies ANY of a parameter's constraints. A constraint is an
:class:`Interval`, :class:`Options`, :class:`Span`, :class:`ListOf`, a type (``bool``,
``str``: an instance of it) or ``None`` (the value ``None``). From these one place derives
the conversion of ``--param NAME=TEXT`` strings (by the annotated type, never by guessing
from the text), the validation with its error message, and the parameter table that
``streamlearn algorithms describe NAME`` prints.
"""
from __future__ import annotations

import inspect
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Param", "Interval", "Options", "Span", "ListOf", "ParamInfo", "param_infos", "convert", "violations"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("none", "null")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(float(v))


@dataclass(frozen=True)
class Interval:
    """A finite ``int`` or ``float`` (ints accepted for floats) between ``low`` and ``high``
    (``None``: unbounded); ``closed`` says which ends are included."""

    type: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # "both", "left", "right" or "neither"

    def accepts(self, v: Any) -> bool:
        if not (_is_int(v) if self.type is int else _is_real(v)):
            return False
        lo_ok = self.low is None or (v >= self.low if self.closed in ("both", "left") else v > self.low)
        hi_ok = self.high is None or (v <= self.high if self.closed in ("both", "right") else v < self.high)
        return bool(lo_ok and hi_ok)

    def describe(self) -> str:
        what = "an integer" if self.type is int else "a number"
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            return f"{what} in {'[' if left else '('}{self.low}, {self.high}{']' if right else ')'}"
        if self.low is not None:
            return f"{what} {'>=' if left else '>'} {self.low}"
        if self.high is not None:
            return f"{what} {'<=' if right else '<'} {self.high}"
        return what


class Options:
    """One of the given values (strings, usually)."""

    def __init__(self, *values: Any):
        self.values = values

    def accepts(self, v: Any) -> bool:
        return isinstance(v, str) and v in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def __repr__(self) -> str:
        return f"Options{self.values!r}"


@dataclass(frozen=True)
class Span:
    """A number within ``bound``, or a ``[low, high]`` range of two such numbers (low <= high)."""

    bound: Interval

    def accepts(self, v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return len(v) == 2 and all(self.bound.accepts(x) for x in v) and v[0] <= v[1]
        return self.bound.accepts(v)

    def describe(self) -> str:
        return f"{self.bound.describe()}, or a [low, high] range of such numbers"


class ListOf:
    """A non-empty list (or tuple) of values of the given types, distinct unless
    ``distinct=False`` (layer widths may repeat; class labels may not)."""

    def __init__(self, *item_types: type, distinct: bool = True):
        self.item_types = item_types
        self.distinct = distinct

    def accepts(self, v: Any) -> bool:
        if not isinstance(v, (list, tuple)) or not v:
            return False
        if not all(isinstance(x, self.item_types) and not isinstance(x, bool) for x in v):
            return False
        return not self.distinct or len(set(v)) == len(v)

    def describe(self) -> str:
        kind = "distinct " if self.distinct else ""
        return f"a list of {kind}" + " or ".join(t.__name__ for t in self.item_types) + " values"

    def __repr__(self) -> str:
        return f"ListOf{self.item_types!r}"


Constraint = "Interval | Options | Span | ListOf | type | None"


class Param:
    """One parameter's meaning (a line for the help table) and its constraints (any of)."""

    def __init__(self, meaning: str, *constraints: Any):
        if not constraints:
            raise TypeError("a Param needs at least one constraint")
        self.meaning = meaning
        self.constraints = constraints

    def accepts(self, value: Any) -> bool:
        return any(_accepts(c, value) for c in self.constraints)

    def describe(self) -> str:
        return " or ".join(_describe(c) for c in self.constraints)

    def __repr__(self) -> str:
        return f"Param({self.meaning!r}, {', '.join(map(repr, self.constraints))})"


def _accepts(constraint: Any, value: Any) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, type):
        if constraint is bool:
            return isinstance(value, (bool, np.bool_))
        return isinstance(value, constraint)
    return constraint.accepts(value)


def _describe(constraint: Any) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return {"bool": "true or false", "str": "a string"}.get(constraint.__name__, f"a {constraint.__name__}")
    return constraint.describe()


@dataclass(frozen=True)
class ParamInfo:
    """Everything known about one parameter of an algorithm (what ``describe`` prints)."""

    name: str
    type: Any  # the evaluated annotation (``int``, ``float | tuple[float, float]``…), or None
    type_text: str  # the annotation as written
    default: Any  # inspect.Parameter.empty when required
    spec: Param | None

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def as_dict(self) -> dict[str, Any]:
        default = None if self.required else (list(self.default) if isinstance(self.default, tuple) else self.default)
        return {"name": self.name, "type": self.type_text, "required": self.required, "default": default,
                "valid": self.spec.describe() if self.spec else "", "meaning": self.spec.meaning if self.spec else ""}


def param_infos(cls: type) -> list[ParamInfo]:
    """The parameters of algorithm class ``cls``, in signature order."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not evaluate: convert by the default instead
        hints = {}
    spec: dict[str, Param] = getattr(cls, "param_spec", {})
    out = []
    for name, p in sig.parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = p.annotation
        text = "" if ann is inspect.Parameter.empty else (ann if isinstance(ann, str) else _type_text(ann))
        out.append(ParamInfo(name, hints.get(name), text, p.default, spec.get(name)))
    return out


def _type_text(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


# -- conversion of CLI strings ------------------------------------------------------------
def convert(text: str, info: ParamInfo) -> Any:
    """``text`` (``--param NAME=TEXT``) as the parameter's declared type. Raises ValueError.

    Union members are tried in order, ``None`` first (the words ``none``/``null``) and ``str``
    last, so ``int | str`` reads ``"5"`` as 5 and ``"auto"`` as ``"auto"``. Without an annotation the default's type decides; a parameter
    with neither keeps the string."""
    tp = info.type
    if tp is None:
        tp = type(info.default) if info.default not in (None, inspect.Parameter.empty) else str
    return _convert(text, tp)


def _convert(text: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if _is_union(tp):
        members = typing.get_args(tp)
        for member in sorted(members, key=lambda m: (m is not type(None), m is str)):
            try:
                return _convert(text, member)
            except (ValueError, TypeError):
                continue
        raise ValueError(text)
    if tp is type(None):
        if text.strip().lower() in _NONE:
            return None
        raise ValueError(text)
    if tp is bool:
        word = text.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError(text)
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp is str or tp is Any:
        return text
    if origin in (list, tuple) or tp in (list, tuple):
        return _convert_sequence(text, tuple if tp is tuple or origin is tuple else list, typing.get_args(tp))
    raise TypeError(f"no conversion from text to {tp!r}")


def _convert_sequence(text: str, kind: type, args: tuple) -> list | tuple:
    """A JSON array (``[0.1, 2]``, ``["a", "b"]``) or comma-separated items (``0.1,2``, ``a,b``),
    each item converted by the declared item type (``tuple[float, float]``, ``list[str]``)."""
    text = text.strip()
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError(text)
    else:
        items = [part.strip() for part in text.split(",")] if text else []
    if kind is tuple and args and Ellipsis not in args:
        item_types = args
    else:
        item_types = (args[0] if args else Any,) * len(items)
    if len(item_types) != len(items):
        raise ValueError(text)
    return kind(_item(v, t) for v, t in zip(items, item_types))


def _item(value: Any, tp: Any) -> Any:
    """One sequence item: a string is converted like a parameter; a JSON number, bool or
    null must already be one of the item type's members."""
    if isinstance(value, str):
        return _convert(value, tp)
    members = typing.get_args(tp) if _is_union(tp) else (tp,)
    for member in members:
        if member is Any:
            return value
        if member is bool and isinstance(value, bool):
            return value
        if member is int and _is_int(value):
            return int(value)
        if member is float and _is_real(value):
            return float(value)
        if member is type(None) and value is None:
            return None
    raise ValueError(repr(value))


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType))


# -- validation ---------------------------------------------------------------------------
def violations(algo: Any) -> list[str]:
    """``"NAME must be …, got …"`` for every declared parameter of ``algo`` whose value
    satisfies none of its constraints (empty when all are valid)."""
    out = []
    for info in param_infos(type(algo)):
        if info.spec is None:
            continue
        value = getattr(algo, info.name)
        if not info.spec.accepts(value):
            out.append(f"{info.name} must be {info.spec.describe()}, got {_short(value)}")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def params_table(infos: list[ParamInfo]) -> str:
    """The parameters as a text table: name, type, default, valid values, meaning."""
    header = ("parameter", "type", "default", "valid values", "meaning")
    rows = [header] + [(i.name, i.type_text, "(required)" if i.required else _default_text(i.default),
                        i.spec.describe() if i.spec else "", i.spec.meaning if i.spec else "") for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def _default_text(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)
