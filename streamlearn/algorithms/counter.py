"""A pure counting algorithm: exact sufficient statistics, for invariants (chaos tests).

State (all sum-aggregated): ``n`` (records), ``sum`` (Σx, shape (d,)), ``xtx`` (XᵀX,
shape (d, d)) and, when ``n_ids > 0``, ``hits``: how many times each record id (the
integer value of feature ``id_column``) was applied. With integer-valued features the
float64 sums are exact whatever the order of the commits, so a finished job can be
compared *exactly* with numpy on the produced data, and ``hits`` names every lost
(0) or duplicated (> 1) record. ``dim`` is the record width. The id column is left out of ``sum``/``xtx``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from streamlearn.algorithms import register
from streamlearn.algorithms.base import Algorithm, Model, require
from streamlearn.algorithms.params import Interval, Param
from streamlearn.batch import Batch
from streamlearn.statestore.base import State

_MAX_IDS = 50_000_000


class Counter(Algorithm):
    name = "counter"
    param_spec = {
        "dim": Param("features per record", Interval(int, 1, 4096)),
        "n_ids": Param("record ids to count hits for (0 = none)", Interval(int, 0, _MAX_IDS)),
        "id_column": Param("feature holding the record id (-1 = none)", Interval(int, -1, None)),
    }

    def __init__(self, dim: int = 1, n_ids: int = 0, id_column: int = -1):
        self.dim = dim
        self.n_ids = n_ids
        self.id_column = id_column

    def check_params(self) -> None:
        super().check_params()
        require(self.id_column < self.dim, self.name, "id_column must be -1 (none) or a feature index")
        require(self.n_ids == 0 or self.id_column >= 0, self.name, "n_ids needs an id_column")

    def _value_columns(self) -> list[int]:
        return [c for c in range(self.dim) if c != self.id_column]

    def initialize(self, state: State) -> None:
        d = len(self._value_columns())
        state.initialize("n", 0.0)
        state.initialize("sum", np.zeros(d))
        state.initialize("xtx", np.zeros((d, d)))
        if self.n_ids:
            state.initialize("hits", np.zeros(self.n_ids), chunk_rows=4096)

    def update(self, state: State, batch: Batch) -> None:
        X = batch.dense().astype(np.float64)
        V = X[:, self._value_columns()]
        state.push("n", float(len(X)))
        state.push("sum", V.sum(axis=0))
        state.push("xtx", V.T @ V)
        if self.n_ids:
            ids = X[:, self.id_column].astype(np.int64)
            ok = (ids >= 0) & (ids < self.n_ids)
            if ok.any():
                state.push("hits", np.ones(int(ok.sum())), rows=ids[ok])

    def finalize(self, state: State) -> "CounterModel":
        return CounterModel(float(state.pull("n")), np.array(state.pull("sum")), np.array(state.pull("xtx")))


class CounterModel(Model):
    algorithm = "counter"

    def __init__(self, n: float, sum_: np.ndarray, xtx: np.ndarray):
        self.n = n
        self.sum_ = sum_
        self.xtx_ = xtx

    @property
    def mean(self) -> np.ndarray:
        return self.sum_ / max(self.n, 1.0)

    def evaluate(self, batch: Batch) -> np.ndarray:
        """The squared distance of each example's value columns from the mean."""
        X = batch.dense().astype(np.float64)
        if X.shape[1] != len(self.sum_):
            X = X[:, -len(self.sum_):] if len(self.sum_) else X[:, :0]
        return ((X - self.mean) ** 2).sum(axis=1)

    def metric_names(self) -> tuple[str, ...]:
        return ("mse",)

    def score(self, batch: Batch, metric: str | None = None) -> float:
        if metric not in (None, "mse"):
            raise ValueError(f"counter: unknown metric {metric!r}; use 'mse'")
        return float(np.mean(self.evaluate(batch))) if len(batch) else 0.0

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"sum": self.sum_, "xtx": self.xtx_}, {"n": self.n}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "CounterModel":
        return cls(float(attrs["n"]), np.asarray(arrays["sum"], dtype=np.float64),
                   np.asarray(arrays["xtx"], dtype=np.float64))


register(Counter, CounterModel)
