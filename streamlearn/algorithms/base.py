"""The algorithm contract (the paper's initialize / update / finalize) and the Model base.

Parameters are the ``__init__`` signature (River / scikit-learn style): ``__init__`` only
stores them; :meth:`Algorithm.check_params` validates, so a bad ``--param`` gets a clear
error at ``job create`` rather than a traceback inside a worker.
"""
from __future__ import annotations

import inspect
import json
from typing import Any, ClassVar

import numpy as np

from streamlearn.batch import Batch
from streamlearn.statestore.base import State


class ParamError(ValueError):
    """A bad algorithm parameter: unknown name, wrong type or out-of-range value."""


class Algorithm:
    """Base class: subclasses set ``name`` and implement the three functions.

    ``update`` runs concurrently on many workers over disjoint parts of the stream, so
    it must only change the state through ``state.push`` (aggregated, never overwritten).
    """

    name: ClassVar[str] = ""
    #: True when the algorithm accepts :class:`~streamlearn.batch.SparseRows` input.
    accepts_sparse: ClassVar[bool] = False
    #: True when every training record must carry a label.
    needs_label: ClassVar[bool] = False
    #: The most examples a worker hands to one ``update`` (it splits what it consumed into
    #: steps of this size). SGD-style learners need many small steps; an algorithm whose
    #: result does not depend on the step size (sums) or that decides per mini-batch
    #: (k-means) sets more, because small steps are dominated by per-call overhead.
    #: ``STREAMLEARN_WORKER_UPDATE_ROWS`` overrides it for every algorithm.
    step_rows: ClassVar[int] = 500
    #: At most this many messages per window (one commit each); 0 = the worker's setting.
    #: An algorithm whose concurrent updates must not drift apart between commits (the
    #: topic model's summed optimizer steps) keeps its windows small.
    window_messages: ClassVar[int] = 0

    def initialize(self, state: State) -> None:
        raise NotImplementedError

    def update(self, state: State, batch: Batch) -> None:
        raise NotImplementedError

    def finalize(self, state: State) -> "Model":
        raise NotImplementedError

    def initialize_from(self, state: State, model: "Model") -> None:
        """Incremental training: declare the state like ``initialize`` but start from a
        published model (``job create --from-snapshot``). Algorithms that can continue
        from their model override this; the rest say so clearly."""
        raise ParamError(f"{self.name}: incremental training from a snapshot is not supported")

    # -- parameters -------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self.param_names()}

    def check_params(self) -> None:
        """Raise :class:`ParamError` for an invalid parameter. Subclasses extend this."""

    def row_rule(self):
        """The algorithm's own rule for input rows, checked at decode time like the data
        contract: a callable (CSR indptr, stored values) -> reason or None, or None for no
        rule. A message breaking it is dead-lettered with the reason (the topic model: each
        row must be a non-empty bag of whole, positive word counts)."""
        return None

    def n_features(self) -> int:
        """The input width every record must have (checked at decode time)."""
        return int(getattr(self, "n_features_", getattr(self, "dim", 1)))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Algorithm":
        """Build from user parameters, converting strings (``--param k=v``) by the
        type of each parameter's default, and validate."""
        sig = inspect.signature(cls.__init__)
        allowed = {n: p for n, p in sig.parameters.items() if n != "self"}
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ParamError(f"{cls.name}: unknown parameter(s) {unknown}; known: {sorted(allowed)}")
        kwargs = {k: _convert(cls.name, k, v, allowed[k].default) for k, v in params.items()}
        try:
            algo = cls(**kwargs)
        except TypeError as exc:  # a required parameter is missing
            raise ParamError(f"{cls.name}: {exc}") from None
        algo.check_params()
        return algo

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _convert(algo: str, name: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if default is None or default is inspect.Parameter.empty:
            return json.loads(value) if value[:1] in "[{0123456789-." or value in ("true", "false", "null") else value
        if isinstance(default, (list, tuple, dict)):
            return json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise ParamError(f"{algo}: parameter {name}={value[:80]!r} is not a valid {type(default).__name__}") from None
    return value


def require(condition: bool, algo: str, message: str) -> None:
    """Raise a :class:`ParamError` naming the algorithm unless ``condition`` holds."""
    if not condition:
        raise ParamError(f"{algo}: {message}")


class Model:
    """An immutable trained model, rebuilt from a snapshot's arrays and attributes.

    ``to_arrays``/``from_arrays`` are the only serialization: numeric arrays plus a
    JSON-able dict, which is what makes snapshots safe to load (no pickle, no code).
    """

    algorithm: ClassVar[str] = ""

    def evaluate(self, batch: Batch) -> np.ndarray:
        raise NotImplementedError

    def score(self, batch: Batch, metric: str | None = None) -> float:
        raise NotImplementedError

    def predict_records(self, batch: Batch) -> list[dict[str, Any]]:
        """One JSON-able dict per example, e.g. ``{"prediction": 1, "score": 0.93}``."""
        return [{"prediction": _jsonable(v)} for v in self.evaluate(batch)]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "Model":
        raise NotImplementedError


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
