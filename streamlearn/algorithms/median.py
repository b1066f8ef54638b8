"""The paper's Algorithm 1: the median of a stream by SGD on sum |x - z|.

State: ``median`` (the current guess) and ``n`` (items seen), both sum-aggregated, so
any number of workers can push their batch's step concurrently. The step is the
paper's ``inc / sqrt(n + batch_size)`` times ``learning_rate`` (1.0 = the paper).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from streamlearn.algorithms import register
from streamlearn.algorithms.base import Algorithm, Model
from streamlearn.algorithms.params import Interval, Param
from streamlearn.batch import Batch
from streamlearn.statestore.base import State


class Median(Algorithm):
    name = "median"
    param_spec = {
        "learning_rate": Param("step size multiplier (1.0 = the paper's inc / sqrt(n))",
                               Interval(float, 0, None, closed="neither")),
        "initial_guess": Param("the estimate before the first record", Interval(float)),
        "synchronized": Param("every worker waits for the others after each step (state.barrier)", bool),
    }

    def __init__(self, learning_rate: float = 1.0, initial_guess: float = 0.0, synchronized: bool = False):
        self.learning_rate = learning_rate
        self.initial_guess = initial_guess
        self.synchronized = synchronized

    def n_features(self) -> int:
        return 1

    def initialize(self, state: State) -> None:
        state.initialize("median", float(self.initial_guess))
        state.initialize("n", 0.0)

    def initialize_from(self, state: State, model: Model, training_state: dict[str, np.ndarray] | None = None) -> None:
        """Continue from a published estimate: the guess and the count carry over, so the
        step size goes on shrinking as if the old data had been part of this stream. The
        model is the whole state, so a snapshot without the state (format 1) continues too."""
        if training_state:
            super().initialize_from(state, model, training_state)
            return
        state.initialize("median", float(model.median))
        state.initialize("n", float(model.n))

    def check_continuable(self, model: Model, training_state: dict[str, np.ndarray] | None) -> None:
        if training_state:
            super().check_continuable(model, training_state)

    def update(self, state: State, batch: Batch) -> None:
        x = batch.dense()[:, 0]
        current = float(state.pull("median"))
        n = float(state.pull("n"))
        inc = 2.0 * np.count_nonzero(x > current) - len(x)  # sum of sign(x - z), ties counted as -1
        state.push("n", float(len(x)))
        state.push("median", self.learning_rate * inc / np.sqrt(n + len(x)))
        if self.synchronized:
            state.barrier()

    def finalize(self, state: State) -> "MedianModel":
        return MedianModel(float(state.pull("median")), int(state.pull("n")))


class MedianModel(Model):
    algorithm = "median"

    def __init__(self, median: float, n: int):
        self.median = median
        self.n = n

    def evaluate(self, batch: Batch) -> np.ndarray:
        """The median estimate, once per example (a constant predictor)."""
        return np.full(len(batch), self.median)

    def metric_names(self) -> tuple[str, ...]:
        return ("mae",)

    def score(self, batch: Batch, metric: str | None = None) -> float:
        """Mean absolute deviation from the estimate (the objective the SGD minimizes)."""
        if metric not in (None, "mae"):
            raise ValueError(f"median: unknown metric {metric!r}; use 'mae'")
        return float(np.mean(np.abs(batch.dense()[:, 0] - self.median)))

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"median": np.array([self.median])}, {"n": self.n}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "MedianModel":
        return cls(float(arrays["median"][0]), int(attrs["n"]))


register(Median, MedianModel)
