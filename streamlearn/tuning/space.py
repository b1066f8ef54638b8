"""A study's search space: parameter name -> Optuna distribution, from a JSON file or from
``--param-range NAME=LOW:HIGH[:log][:int]`` / ``--param-choice NAME=A,B,…``, checked
against the algorithm's declared parameters before anything is created."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json, json_to_distribution)

from streamlearn.algorithms import algorithm_class, make_algorithm
from streamlearn.errors import UserError


class SpaceError(UserError, ValueError):
    """A search space that cannot be searched: unknown parameter, empty range, bad syntax."""


def parse_range(text: str) -> tuple[str, BaseDistribution]:
    """``NAME=LOW:HIGH[:log][:int]`` -> (name, distribution)."""
    name, sep, spec = text.partition("=")
    parts = spec.split(":")
    flags = {p.strip() for p in parts[2:]}
    if not sep or not name.strip() or len(parts) < 2 or flags - {"log", "int"}:
        raise SpaceError(f"--param-range takes NAME=LOW:HIGH[:log][:int], got {text!r}")
    try:
        low, high = (int(p) if "int" in flags else float(p) for p in parts[:2])
    except ValueError:
        raise SpaceError(f"--param-range {text!r}: LOW and HIGH must be {'integers' if 'int' in flags else 'numbers'}")
    return name.strip(), _range(name.strip(), low, high, "log" in flags, "int" in flags)


def parse_choice(text: str) -> tuple[str, BaseDistribution]:
    """``NAME=A,B,…`` -> (name, categorical distribution); values are kept as text and
    converted by the parameter's declared type when a trial's job is created."""
    name, sep, spec = text.partition("=")
    choices = [c.strip() for c in spec.split(",") if c.strip()]
    if not sep or not name.strip() or not choices:
        raise SpaceError(f"--param-choice takes NAME=A,B,..., got {text!r}")
    return name.strip(), CategoricalDistribution(choices)


def _range(name: str, low, high, log: bool, integer: bool) -> BaseDistribution:
    if not low < high:
        raise SpaceError(f"parameter {name}: the range {low}:{high} is empty (LOW must be below HIGH)")
    if log and low <= 0:
        raise SpaceError(f"parameter {name}: a log range needs LOW > 0, got {low}")
    return IntDistribution(int(low), int(high), log=log) if integer else FloatDistribution(float(low), float(high),
                                                                                            log=log)


def load_space_file(path: Path) -> dict[str, BaseDistribution]:
    """``{"NAME": {"low": L, "high": H, "log": bool, "int": bool} | {"choices": [...]} | [...]}``"""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SpaceError(f"--space {path}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"--space {path}: a JSON object of parameter -> range or choices")
    space = {}
    for name, spec in raw.items():
        if isinstance(spec, list):
            spec = {"choices": spec}
        if not isinstance(spec, dict):
            raise SpaceError(f"--space {path}: parameter {name}: a {{low, high}} range or a list of choices")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise SpaceError(f"--space {path}: parameter {name}: choices must be a non-empty list")
            space[name] = CategoricalDistribution(spec["choices"])
        elif "low" in spec and "high" in spec:
            integer = bool(spec.get("int", False))
            try:
                low, high = (int(spec[k]) if integer else float(spec[k]) for k in ("low", "high"))
            except (TypeError, ValueError):
                raise SpaceError(f"--space {path}: parameter {name}: low and high must be numbers") from None
            space[name] = _range(name, low, high, bool(spec.get("log", False)), integer)
        else:
            raise SpaceError(f"--space {path}: parameter {name}: a {{low, high}} range or a list of choices")
    return space


def build_space(space_file: Path | None, ranges: Sequence[str], choices: Sequence[str]) -> dict[str, BaseDistribution]:
    space = load_space_file(space_file) if space_file else {}
    for name, dist in [*map(parse_range, ranges or []), *map(parse_choice, choices or [])]:
        if name in space:
            raise SpaceError(f"parameter {name} is given twice in the search space")
        space[name] = dist
    if not space:
        raise SpaceError("a study needs a search space: --space FILE.json, --param-range or --param-choice")
    return space


def check_space(algorithm: str, space: dict[str, BaseDistribution], fixed: dict[str, Any]) -> None:
    """Every searched parameter is one the algorithm declares, not also fixed, and both ends
    of its range (every choice) are valid values with the fixed parameters."""
    known = set(algorithm_class(algorithm).param_names())
    unknown = sorted(set(space) - known)
    if unknown:
        raise SpaceError(f"{algorithm}: unknown parameter(s) {unknown} in the search space; known: {sorted(known)}")
    both = sorted(set(space) & set(fixed))
    if both:
        raise SpaceError(f"parameter(s) {both} are both searched and fixed (--param)")
    for name, dist in space.items():
        values = dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)
        for value in values:
            make_algorithm(algorithm, {**fixed, name: value})  # ParamError: one line, exit 2


def space_to_json(space: dict[str, BaseDistribution]) -> dict[str, str]:
    return {name: distribution_to_json(dist) for name, dist in sorted(space.items())}


def space_from_json(raw: dict[str, str]) -> dict[str, BaseDistribution]:
    return {name: json_to_distribution(text) for name, text in raw.items()}
