"""Shadow evaluation: how often a candidate model agrees with the model being served.

A row agrees when the two outputs are equal within a relative tolerance (``np.isclose``:
class labels and cluster ids must match exactly; a regression value within 1 %; a vector
output in every component). The counts belong to one (current, candidate) pair: a new
candidate or a promotion starts them again.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["ShadowStats"]

RTOL = 0.01
ATOL = 1e-9


class ShadowStats:
    """Agreement between the served model's and a candidate's outputs on the same inputs."""

    def __init__(self, current: int | None = None, candidate: int | None = None):
        self.current, self.candidate = current, candidate
        self._lock = threading.Lock()
        self.rows = self.agreeing = self.errors = 0
        self._abs_diff = 0.0

    def observe(self, served: Any, shadow: Any) -> None:
        a, b = np.asarray(served), np.asarray(shadow)
        if a.shape != b.shape or not len(a):
            return
        rows = len(a)
        numeric = a.dtype.kind in "biuf" and b.dtype.kind in "biuf"
        same = np.isclose(a, b, rtol=RTOL, atol=ATOL) if numeric else a == b
        agree = int(same.reshape(rows, -1).all(axis=1).sum())
        diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).sum()) if numeric else 0.0
        with self._lock:
            self.rows += rows
            self.agreeing += agree
            self._abs_diff += diff / max(a.size // rows, 1)

    def failed(self) -> None:
        with self._lock:
            self.errors += 1

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {"current": self.current, "candidate": self.candidate, "rows": self.rows,
                    "agreement": self.agreeing / self.rows if self.rows else None,
                    "mean_abs_diff": self._abs_diff / self.rows if self.rows else None,
                    "candidate_errors": self.errors}
