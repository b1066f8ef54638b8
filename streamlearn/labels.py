"""The label part of a job's data contract: which label values a record may carry and how
they map to the classes an algorithm trains on.

A classifier trains on class indices 0..C-1; the user's labels may be coded otherwise
(1/2, -1/+1, 1..10). :class:`LabelCoding` holds the user's class values in class-index
order: the decoder dead-letters a record whose label is not one of them (with the reason
:meth:`LabelCoding.reason` gives), an update step maps labels to indices
(:meth:`LabelCoding.encode`) and a model maps its predicted indices back
(:meth:`LabelCoding.decode`), so predictions and scores are in the user's coding.
A regressor's coding accepts every finite number (NaN/inf are the decoder's own rules).
Labels are float64 on the wire (the record schemas' ``label: double``), so class values
are numbers; string labels must be coded as numbers by the producer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


class LabelError(ValueError):
    """Labels that break a coding (an update step handed a label outside the classes)."""


@dataclass(frozen=True)
class LabelCoding:
    """``classes``: the user's label value of every class index; ``None`` for a regressor."""

    classes: tuple[float, ...] | None = None

    @classmethod
    def of(cls, classes: Sequence[float] | None) -> "LabelCoding":
        return cls(None if classes is None else tuple(float(c) for c in classes))

    @classmethod
    def identity(cls, n_classes: int) -> "LabelCoding":
        """Class i is coded as the number i (binary 0/1, multiclass 0..C-1)."""
        return cls(tuple(float(i) for i in range(int(n_classes))))

    @property
    def is_identity(self) -> bool:
        return self.classes is None or self.classes == tuple(float(i) for i in range(len(self.classes)))

    def violations(self, y: np.ndarray) -> np.ndarray:
        """Mask of the labels outside the coding (NaN = no label is not a violation here)."""
        y = np.asarray(y, dtype=np.float64)
        if self.classes is None:
            return np.zeros(y.shape, dtype=bool)
        if self.is_identity:
            ok = (y >= 0) & (y < len(self.classes)) & (y == np.floor(y))
        else:
            ok = np.isin(y, np.asarray(self.classes))
        return ~ok & ~np.isnan(y)

    def reason(self, value: float) -> str:
        """The dead-letter reason for a label ``value`` outside the coding."""
        if self.is_identity and len(self.classes) > 2:
            return (f"label {value:g} is not a class: labels must be integers in [0, {len(self.classes)}) "
                    f"or mapped with --param classes=...")
        return f"label {value:g} is not one of the classes {self.describe()}"

    def first_violation(self, y: np.ndarray) -> str | None:
        """The reason for the first label outside the coding, or None when all are inside."""
        bad = self.violations(y)
        return self.reason(float(np.asarray(y)[bad][0])) if bad.any() else None

    def describe(self) -> str:
        return "[" + ", ".join(f"{c:g}" for c in self.classes) + "]" if self.classes is not None else "any number"

    def encode(self, y: np.ndarray) -> np.ndarray:
        """User labels -> class indices (float64; NaN stays NaN). :class:`LabelError` for a
        label outside the coding (the decoder has dead-lettered those before a worker's step)."""
        y = np.asarray(y, dtype=np.float64)
        if self.classes is None:
            return y
        bad = self.violations(y)
        if bad.any():
            raise LabelError(self.reason(float(y[bad][0])))
        if self.is_identity:
            return y
        values = np.asarray(self.classes)
        order = np.argsort(values)
        pos = np.searchsorted(values[order], np.where(np.isnan(y), values[order][0], y))
        return np.where(np.isnan(y), np.nan, order[pos].astype(np.float64))

    def decode(self, index: np.ndarray) -> np.ndarray:
        """Class indices -> the user's labels: int64 when every class value is an integer."""
        index = np.asarray(index, dtype=np.int64)
        if self.classes is None:
            return index
        values = np.asarray(self.classes)
        if np.all(values == np.floor(values)):
            values = values.astype(np.int64)
        return values[index]

    def to_json(self) -> list | None:
        """The classes as JSON numbers (integers where integral), for params and model attrs."""
        if self.classes is None:
            return None
        return [int(c) if c == int(c) else c for c in self.classes]


def parse_classes(value) -> list[float] | None:
    """A ``classes`` parameter (a list, a JSON list or ``"1,2"``) as a list of distinct numbers;
    ValueError when it is not one."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"class {item!r} is not a number")
        x = float(item.strip() if isinstance(item, str) else item)
        if not np.isfinite(x):
            raise ValueError(f"class {item!r} is not a finite number")
        out.append(x)
    if len(set(out)) != len(out):
        raise ValueError("classes must be distinct")
    return out


__all__ = ["LabelCoding", "LabelError", "parse_classes"]
