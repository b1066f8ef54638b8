"""Principal component analysis, exact (O(d^2) state) or randomized (O(k d) state).

``mode="exact"``: state ``n``, ``sum`` (d,), ``xtx`` (d, d), all ``sum``-aggregated, so any
number of workers add their batches' moments exactly and a resumed job continues the
same sums. finalize forms the covariance ``(xtx - n mu mu^T) / (n - 1)`` (float64 raw
moments: precise unless |mean| / std exceeds ~1e5) and takes its eigendecomposition.

``mode="randomized"``: a single-pass, sum-mergeable Nystrom sketch. With a fixed seeded
Gaussian test matrix Omega (d x l, l = n_components + oversampling, oversampling 0 = auto =
max(20, 2 * n_components), regenerated from the
seed, never stored) the state keeps ``y = sum_i x_i (x_i^T Omega)`` (d x l), ``sum`` (d,),
``sumsq`` (d,) and ``n``. Because ``y`` is linear in the data, pushes from any number of
workers add up exactly (unlike Frequent Directions, whose merge is not a sum). At finalize
``Y = C Omega`` for the centered covariance C is exact (``Y = (y - n mu (mu^T Omega)) /
(n - 1)``), and the fixed-rank PSD approximation ``C ~ Y (Omega^T Y)^+ Y^T`` (Tropp, Yurtsever,
Udell, Cevher 2017, stabilized with a small shift) gives the top components. Its error is
that of a randomized range finder with one power step: with oversampling p the expected
error is within a factor ~(1 + k/(p-1)) of the best rank-k approximation's tail energy, so
components whose eigenvalues are clearly separated from the tail (a spectral gap) are
recovered almost exactly, and eigenvalues are slight underestimates. ``sumsq`` gives the
exact total variance, so explained-variance ratios use the true denominator.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from streamlearn.algorithms import register
from streamlearn.algorithms import _metrics as metrics
from streamlearn.algorithms._common import feature_count
from streamlearn.algorithms.base import AUTO, Algorithm, Model, require
from streamlearn.algorithms.params import Interval, Options, Param
from streamlearn.batch import Batch, SparseRows
from streamlearn.statestore.base import State


class PCA(Algorithm):
    name = "pca"
    accepts_sparse = True
    needs_label = False
    param_spec = {
        "n_features": Param("features per record (the input width); auto = inferred from the topic at job create",
                            Interval(int, 1, None), Options("auto")),
        "n_components": Param("principal components kept (at most n_features)", Interval(int, 1, None)),
        "mode": Param("exact: d x d moments (n_features <= 20000); randomized: a mergeable O(k d) sketch",
                      Options("exact", "randomized")),
        "oversampling": Param("randomized mode: extra sketch columns (0 = max(20, 2 * n_components))",
                              Interval(int, 0, None)),
        "seed": Param("seed of the randomized sketch's test matrix", Interval(int, 0, None)),
    }

    def __init__(self, n_features: int | str = AUTO, n_components: int = 10, mode: str = "exact",
                 oversampling: int = 0, seed: int = 0):
        self.n_features = feature_count(n_features)
        self.n_components = n_components
        self.mode = mode
        self.oversampling = oversampling
        self.seed = seed

    def check_params(self) -> None:
        n = self.name
        super().check_params()
        require(self.n_features == AUTO or self.n_components <= self.n_features, n,
                f"n_components ({self.n_components}) must be <= n_features ({self.n_features})")
        require(self.mode == "randomized" or self.n_features == AUTO or self.n_features <= 20_000, n,
                "mode='exact' keeps a d x d matrix; use mode='randomized' for n_features > 20000")

    @property
    def sketch_size(self) -> int:
        k, d = int(self.n_components), int(self.n_features)
        p = int(self.oversampling) or max(20, 2 * k)
        return min(d, k + p)

    def omega(self) -> np.ndarray:
        """The fixed test matrix (d x l), the same on every worker and at finalize."""
        cache = self.__dict__.get("_omega")
        shape = (int(self.n_features), self.sketch_size)
        if cache is None or cache[0] != (shape, self.seed):
            om = np.random.default_rng([int(self.seed), 0x9CA]).standard_normal(shape)
            cache = ((shape, self.seed), om)
            self.__dict__["_omega"] = cache
        return cache[1]

    def initialize(self, state: State) -> None:
        d = int(self.n_features)
        state.initialize("n", 0.0)
        state.initialize("sum", np.zeros(d))
        if self.mode == "exact":
            state.initialize("xtx", np.zeros((d, d)))
        else:
            state.initialize("sumsq", np.zeros(d))
            state.initialize("y", np.zeros((d, self.sketch_size)))

    def update(self, state: State, batch: Batch) -> None:
        if len(batch) == 0:
            return
        w = batch.weights
        X = batch.X
        if isinstance(X, SparseRows) and self.mode == "exact":
            X = X.to_dense()
        if isinstance(X, SparseRows):
            vals = X.values.astype(np.float64) * w[X.row_ids()]
            state.push("n", float(w.sum()))
            state.push("sum", np.bincount(X.indices, weights=vals, minlength=X.n_features))
            state.push("sumsq", np.bincount(X.indices, weights=vals * X.values, minlength=X.n_features))
            proj = X.dot(self.omega()) * w[:, None]  # (n, l)
            contrib = X.values[:, None].astype(np.float64) * proj[X.row_ids()]
            y = np.zeros((X.n_features, self.sketch_size))
            np.add.at(y, X.indices, contrib)
            state.push("y", y)
            return
        X = np.asarray(X, dtype=np.float64)
        Xw = X * w[:, None]
        state.push("n", float(w.sum()))
        state.push("sum", Xw.sum(0))
        if self.mode == "exact":
            state.push("xtx", Xw.T @ X)
        else:
            state.push("sumsq", (Xw * X).sum(0))
            state.push("y", Xw.T @ (X @ self.omega()))

    def finalize(self, state: State) -> "PCAModel":
        n = float(state.pull("n"))
        d, k = int(self.n_features), int(self.n_components)
        mean = state.pull("sum") / max(n, 1.0)
        denom = max(n - 1.0, 1.0)
        if self.mode == "exact":
            cov = (state.pull("xtx") - n * np.outer(mean, mean)) / denom
            cov = (cov + cov.T) / 2.0
            evals, evecs = np.linalg.eigh(cov)
            order = np.argsort(evals)[::-1]
            evals, evecs = np.maximum(evals[order], 0.0), evecs[:, order]
            total = float(np.trace(cov))
        else:
            om = self.omega()
            Y = (state.pull("y") - n * np.outer(mean, mean @ om)) / denom
            evals, evecs = _nystrom(Y, om)
            total = float(np.sum(state.pull("sumsq") / denom - n * mean * mean / denom))
        comps = evecs[:, :k].T
        # deterministic signs: the largest-magnitude entry of each component is positive
        signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
        comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
        ev = evals[:k]
        attrs = {"mode": self.mode, "n_components": k, "n_features": d, "examples_seen": n,
                 "total_variance": total}
        return PCAModel(comps, ev, mean, attrs)


def _nystrom(Y: np.ndarray, om: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the PSD Nystrom approximation ``Y (Omega^T Y)^+ Y^T`` (Tropp et al. 2017)."""
    nu = np.finfo(np.float64).eps * max(np.linalg.norm(Y), 1e-300) * np.sqrt(Y.shape[0])
    Yn = Y + nu * om
    B = om.T @ Yn
    B = (B + B.T) / 2.0
    try:
        L = np.linalg.cholesky(B)
        E = np.linalg.solve(L, Yn.T).T  # Yn L^{-T}
    except np.linalg.LinAlgError:  # fall back to an eigen-based square root
        s, V = np.linalg.eigh(B)
        keep = s > s.max() * 1e-12
        E = Yn @ (V[:, keep] / np.sqrt(s[keep]))
    U, sv, _ = np.linalg.svd(E, full_matrices=False)
    return np.maximum(sv * sv - nu, 0.0), U


class PCAModel(Model):
    algorithm = "pca"

    def __init__(self, components: np.ndarray, explained_variance: np.ndarray, mean: np.ndarray,
                 attrs: dict[str, Any]):
        self.components = np.asarray(components, dtype=np.float64)  # (k, d), rows orthonormal
        self.explained_variance = np.asarray(explained_variance, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.attrs = attrs

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        total = float(self.attrs.get("total_variance") or 0.0)
        return self.explained_variance / total if total > 0 else np.full_like(self.explained_variance, np.nan)

    def evaluate(self, batch: Batch) -> np.ndarray:
        """The projection of every example onto the components, (n, k)."""
        return (np.asarray(batch.dense(), np.float64) - self.mean) @ self.components.T

    def metric_names(self) -> tuple[str, ...]:
        return ("reconstruction_error", "explained_variance_ratio")

    def score(self, batch: Batch, metric: str | None = None) -> float:
        """``reconstruction_error`` (default: mean squared distance to the projection) or
        ``explained_variance_ratio`` (variance of the batch captured by the components)."""
        metric = metrics.check_metric(self.algorithm, metric or "reconstruction_error", self.metric_names())
        Xc = np.asarray(batch.dense(), np.float64) - self.mean
        Z = Xc @ self.components.T
        w = batch.weights
        resid = (Xc * Xc).sum(1) - (Z * Z).sum(1)
        if metric == "reconstruction_error":
            return float(np.maximum(resid, 0.0) @ w / max(w.sum(), 1e-300))
        return float(((Z * Z).sum(1) @ w) / max(((Xc * Xc).sum(1) @ w), 1e-300))

    def predict_records(self, batch: Batch) -> list[dict[str, Any]]:
        return [{"prediction": row} for row in self.evaluate(batch).tolist()]  # the projection

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"components": self.components.copy(), "explained_variance": self.explained_variance.copy(),
                 "mean": self.mean.copy()}, dict(self.attrs))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> "PCAModel":
        return cls(np.array(arrays["components"]), np.array(arrays["explained_variance"]), np.array(arrays["mean"]),
                   dict(attrs))


register(PCA, PCAModel)
