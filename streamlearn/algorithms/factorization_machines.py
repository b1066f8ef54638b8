"""Factorization machines (Rendle 2010) trained by mini-batch SGD or Adagrad.

    y_hat(x) = w0 + sum_j w_j x_j + 1/2 sum_f [ (sum_j v_jf x_j)^2 - sum_j v_jf^2 x_j^2 ]

State (all ``sum``-aggregated deltas, so concurrent workers add up exactly):
``w0`` (), ``w`` (d,), ``v`` (d, k) and their Adagrad accumulators ``g2_w0``, ``g2_w``,
``g2_v``; ``n`` examples seen; for regression ``y_n/y_sum/y_sq`` (label standardization).
Per-feature keys use ``chunk_rows = SPARSE_CHUNK_ROWS`` (float32 when
``n_features >= BIG_FEATURES``); an update pulls and pushes only the rows of the columns
the batch touched (``rows=``), l2 regularization acts lazily on those rows. ``v`` starts as
seeded N(0, init_sigma) noise written at ``initialize``.
Dense input is accepted and treated as rows with every column present.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from streamlearn.algorithms import register
from streamlearn.algorithms import _metrics as metrics
from streamlearn.algorithms._common import check_features_and_type
from streamlearn.algorithms._common import (NUMPY_BACKEND, backend_of, check_backend, csr_local, feature_count,
                                            sigmoid, sparse_matmul)
from streamlearn.algorithms.base import Algorithm, Model, require
from streamlearn.batch import Batch, SparseRows
from streamlearn.statestore.base import State

SPARSE_CHUNK_ROWS = 256
BIG_FEATURES = 1 << 16
PREDICTOR_TYPES = ("binary_classifier", "regressor")
SCORE_METRICS = {"binary_classifier": ("accuracy", "log_loss", "auc"), "regressor": ("mse", "rmse", "mae", "r2")}


def _to_sparse(X) -> SparseRows:
    if isinstance(X, SparseRows):
        return X
    X = np.asarray(X, dtype=np.float32)
    n, d = X.shape
    return SparseRows(np.arange(0, n * d + 1, d, dtype=np.int64), np.tile(np.arange(d, dtype=np.int64), n),
                      X.ravel(), d)


class FactorizationMachines(Algorithm):
    name = "factorization_machines"
    accepts_sparse = True
    needs_label = True

    def __init__(self, n_features: int, predictor_type: str = "binary_classifier", num_factors: int = 8,
                 optimizer: str = "adagrad", learning_rate: float = 0.1, bias_l2: float = 0.0,
                 linear_l2: float = 1e-5, factors_l2: float = 1e-5, init_sigma: float = 0.05, seed: int = 0,
                 backend: str = "numpy", device: str = "cpu"):
        self.n_features = feature_count(n_features)
        self.predictor_type = predictor_type
        self.num_factors = num_factors
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.bias_l2 = bias_l2
        self.linear_l2 = linear_l2
        self.factors_l2 = factors_l2
        self.init_sigma = init_sigma
        self.seed = seed
        self.backend = backend
        self.device = device

    def check_params(self) -> None:
        n = self.name
        check_features_and_type(self, PREDICTOR_TYPES)
        require(isinstance(self.num_factors, (int, np.integer)) and self.num_factors >= 1, n,
                "num_factors must be an integer >= 1")
        require(self.optimizer in ("adagrad", "sgd"), n, "optimizer must be 'adagrad' or 'sgd'")
        require(np.isfinite(self.learning_rate) and self.learning_rate > 0, n, "learning_rate must be > 0")
        for p in ("bias_l2", "linear_l2", "factors_l2", "init_sigma"):
            require(np.isfinite(getattr(self, p)) and getattr(self, p) >= 0, n, f"{p} must be >= 0")
        check_backend(self)

    def _keyargs(self) -> dict:
        d = int(self.n_features)
        return {"chunk_rows": SPARSE_CHUNK_ROWS, "dtype": "float32" if d >= BIG_FEATURES else "float64"}

    def initialize(self, state: State) -> None:
        d, k = int(self.n_features), int(self.num_factors)
        rng = np.random.default_rng([int(self.seed), 0xF4])
        kw = self._keyargs()
        state.initialize("w0", 0.0)
        state.initialize("g2_w0", 0.0)
        state.initialize("w", np.zeros(d), **kw)
        state.initialize("g2_w", np.zeros(d), **kw)
        # drawn in the key's dtype: float64 normals for a 2^20 x 8 key were 0.1 s per job
        v = rng.standard_normal((d, k), dtype=np.dtype(kw["dtype"]).type) * np.dtype(kw["dtype"]).type(self.init_sigma)
        state.initialize("v", v, **kw)
        state.initialize("g2_v", np.zeros((d, k)), **kw)
        state.initialize("n", 0.0)
        if self.predictor_type == "regressor":
            for key in ("y_n", "y_sum", "y_sq"):
                state.initialize(key, 0.0)

    def update(self, state: State, batch: Batch) -> None:
        if len(batch) == 0:
            return
        X = _to_sparse(batch.X)
        y = np.asarray(batch.y, dtype=np.float64)
        sw = batch.weights * np.isfinite(y)
        y = np.where(np.isfinite(y), y, 0.0)
        wsum = float(sw.sum())
        if wsum <= 0:
            return
        tau = float(state.pull("n"))
        rows, local, _ = csr_local(X)
        # arithmetic on the backend (numpy: the arrays themselves); state and pushes stay numpy
        bk = backend_of(self)
        xp, dev = bk.xp, bk.asarray
        A = bk.csr(X.indptr, local, X.values, len(rows))
        w0 = float(state.pull("w0"))
        w = dev(state.pull("w", rows=rows).astype(np.float64))
        v = dev(state.pull("v", rows=rows).astype(np.float64))
        if self.predictor_type == "regressor":
            state.push("y_n", wsum)
            state.push("y_sum", float(sw @ y))
            state.push("y_sq", float(sw @ (y * y)))
            mu, sd = _label_moments(state)
            t = (y - mu) / sd
        z, s = _forward_on(bk, A, X.values, w0, w, v)
        r = (sigmoid(z, xp) - dev(y)) if self.predictor_type == "binary_classifier" else (z - dev(t))
        r = r * dev(sw) / wsum  # d mean-loss / d z
        vals = A.data
        rv = r[A.rows] * vals  # per stored value
        g_w0 = float(bk.to_numpy(r.sum())) + float(self.bias_l2) * w0
        g_w = bk.group_sum(A, rv) + float(self.linear_l2) * w
        # d z / d v_jf = x_j (s_f - v_jf x_j)
        g_v = bk.group_sum(A, rv[:, None] * (s[A.rows] - v[A.cols] * vals[:, None]))
        g_v += float(self.factors_l2) * v
        self._step(state, NUMPY_BACKEND, "w0", np.float64(w0), np.float64(g_w0), None, tau)
        self._step(state, bk, "w", w, g_w, rows, tau)
        self._step(state, bk, "v", v, g_v, rows, tau)
        state.push("n", wsum)

    def _step(self, state: State, bk, key: str, P, g, rows, tau: float) -> None:
        lr = float(self.learning_rate)
        if self.optimizer == "adagrad":
            g2 = g * g
            G = bk.asarray(state.pull("g2_" + key, rows=rows) if rows is not None else state.pull("g2_" + key)) + g2
            state.push("g2_" + key, bk.to_numpy(g2), rows=rows)
            delta = -lr * g / (bk.xp.sqrt(G) + 1e-8)
        else:
            delta = -lr / np.sqrt(1.0 + tau / 10_000.0) * g
        state.push(key, bk.to_numpy(delta), rows=rows)

    def finalize(self, state: State) -> "FMModel":
        mu, sd = _label_moments(state) if self.predictor_type == "regressor" else (0.0, 1.0)
        attrs = {"predictor_type": self.predictor_type, "n_features": int(self.n_features),
                 "num_factors": int(self.num_factors), "label_mean": mu, "label_std": sd,
                 "examples_seen": float(state.pull("n"))}
        return FMModel(float(state.pull("w0")), state.pull("w"), state.pull("v"), attrs)


def _forward_on(bk, A, values: np.ndarray, w0, w, v):
    """``_forward`` on a backend: ``A`` the batch prepared by ``bk.csr``."""
    s = bk.spmm(A, v)
    sq = bk.spmm(bk.csr_data(A, values * values), v * v)
    z = w0 + bk.spmm(A, w) + 0.5 * ((s * s).sum(1) - sq.sum(1))
    return z, s


def _forward(X: SparseRows, local, w0, w, v) -> tuple[np.ndarray, np.ndarray]:
    """(z, s) with s = X v (n, k) for every row; ``w``/``v`` hold the batch's columns."""
    s = sparse_matmul(X, local, v)
    sq = sparse_matmul(X.__class__(X.indptr, X.indices, X.values * X.values, X.n_features), local, v * v)
    z = w0 + sparse_matmul(X, local, w) + 0.5 * ((s * s).sum(1) - sq.sum(1))
    return z, s


def _label_moments(state: State) -> tuple[float, float]:
    n = max(float(state.pull("y_n")), 1.0)
    mu = float(state.pull("y_sum")) / n
    var = max(float(state.pull("y_sq")) / n - mu * mu, 0.0)
    return mu, (float(np.sqrt(var)) if var > 1e-12 else 1.0)


def _params(a) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


class FMModel(Model):
    algorithm = "factorization_machines"

    def __init__(self, w0: float, w: np.ndarray, v: np.ndarray, attrs: dict[str, Any]):
        self.w0 = float(w0)
        # float32 stays float32 (the state of a >= 2^16-feature model is float32): a 2^20 x 8
        # model is 38 MB instead of 75 MB, within what the snapshot topic carries (64 MiB)
        self.w = _params(w)
        self.v = _params(v)
        self.attrs = attrs

    def decision_function(self, batch: Batch) -> np.ndarray:
        X = _to_sparse(batch.X)
        local = X.indices
        z, _ = _forward(X, local, self.w0, self.w, self.v)
        if self.attrs["predictor_type"] == "regressor":
            return z * self.attrs["label_std"] + self.attrs["label_mean"]
        return z

    def evaluate(self, batch: Batch) -> np.ndarray:
        """Predicted class (classifier) or value (regressor) per example."""
        z = self.decision_function(batch)
        return (z > 0).astype(np.int64) if self.attrs["predictor_type"] == "binary_classifier" else z

    def score(self, batch: Batch, metric: str | None = None) -> float:
        pt = self.attrs["predictor_type"]
        metric = metrics.check_metric(self.algorithm, metric or SCORE_METRICS[pt][0 if pt == "regressor" else 1],
                                      SCORE_METRICS[pt])
        z = self.decision_function(batch)
        if metric == "log_loss":
            return metrics.log_loss(batch.y, sigmoid(z), batch.w)
        if metric == "auc":
            return metrics.auc(batch.y, z, batch.w)
        return getattr(metrics, metric)(batch.y, self.evaluate(batch), batch.w)

    def predict_records(self, batch: Batch) -> list[dict[str, Any]]:
        z = self.decision_function(batch)
        if self.attrs["predictor_type"] == "binary_classifier":
            return [{"prediction": int(v > 0), "score": float(p)} for v, p in zip(z.tolist(), sigmoid(z).tolist())]
        return [{"prediction": float(v)} for v in z.tolist()]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"w0": np.array([self.w0]), "w": self.w.copy(), "v": self.v.copy()}, dict(self.attrs)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "FMModel":
        return cls(float(np.asarray(arrays["w0"]).ravel()[0]), np.array(arrays["w"]), np.array(arrays["v"]),
                   dict(attrs))


register(FactorizationMachines, FMModel)
