"""Metrics shared by every model's ``score`` (one implementation, used everywhere).

Each metric takes arrays (labels, predictions, probabilities or scores) and optional
example weights and returns one float. ``higher_is_better(name)`` tells model selection
(linear learner's packed models, HPO) which way to sort.
"""
from __future__ import annotations

import numpy as np

from streamlearn.backends import nearest

_EPS = 1e-15


def _w(w, n):
    return np.ones(n, dtype=np.float64) if w is None else np.asarray(w, dtype=np.float64)


def _mean(v, w):
    w = _w(w, len(v))
    return float(np.sum(v * w) / max(np.sum(w), _EPS))


def accuracy(y, pred, w=None) -> float:
    return _mean((np.asarray(pred) == np.asarray(y)).astype(np.float64), w)


def log_loss(y, proba, w=None) -> float:
    """Binary (``proba`` of class 1, shape (n,)) or multiclass (shape (n, C), ``y`` in 0..C-1)."""
    y = np.asarray(y)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        p = np.clip(p, _EPS, 1 - _EPS)
        ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    else:
        ll = -np.log(np.clip(p[np.arange(len(y)), y.astype(np.int64)], _EPS, 1.0))
    return _mean(ll, w)


def auc(y, score, w=None) -> float:
    """Area under the ROC curve (rank statistic, ties averaged, weighted)."""
    y = np.asarray(y) > 0.5
    s = np.asarray(score, dtype=np.float64)
    w = _w(w, len(s))
    order = np.argsort(s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    # weighted mid-ranks over groups of tied scores
    cw = np.cumsum(w)
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    last = first + counts - 1
    before = np.where(first > 0, cw[first - 1], 0.0)
    mid = before + (cw[last] - before + 0.0) / 2.0
    ranks = np.repeat(mid, counts)
    wp, wn = np.sum(w[y]), np.sum(w[~y])
    if wp == 0 or wn == 0:
        return float("nan")
    # sum over positives of the (weighted) number of negatives ranked below
    pos_rank = np.sum(w[y] * ranks[y])
    return float((pos_rank - wp * wp / 2.0) / (wp * wn) - 0.0)


def mse(y, pred, w=None) -> float:
    return _mean((np.asarray(y, np.float64) - np.asarray(pred, np.float64)) ** 2, w)


def rmse(y, pred, w=None) -> float:
    return float(np.sqrt(mse(y, pred, w)))


def mae(y, pred, w=None) -> float:
    return _mean(np.abs(np.asarray(y, np.float64) - np.asarray(pred, np.float64)), w)


def r2(y, pred, w=None) -> float:
    y = np.asarray(y, np.float64)
    mu = _mean(y, w)
    den = _mean((y - mu) ** 2, w)
    return float(1.0 - mse(y, pred, w) / den) if den > 0 else float("nan")


def hinge(y, margin, w=None) -> float:
    s = 2.0 * np.asarray(y, np.float64) - 1.0
    return _mean(np.maximum(0.0, 1.0 - s * np.asarray(margin, np.float64)), w)


def sse(X, centers, w=None) -> float:
    """Sum of (weighted) squared distances to the nearest center (k-means objective)."""
    d2 = nearest(np.asarray(X, np.float64), np.asarray(centers, np.float64))[1]
    return float(np.sum(d2 * _w(w, len(d2))))


_HIGHER = {"accuracy": True, "auc": True, "r2": True, "log_loss": False, "mse": False, "rmse": False,
           "mae": False, "hinge": False, "sse": False, "mean_sse": False, "reconstruction_error": False,
           "explained_variance_ratio": True}


def higher_is_better(name: str) -> bool:
    return _HIGHER[name]


def check_metric(algorithm: str, metric: str, allowed: tuple[str, ...]) -> str:
    if metric not in allowed:
        raise ValueError(f"{algorithm}: unknown metric {metric!r}; use one of {list(allowed)}")
    return metric
