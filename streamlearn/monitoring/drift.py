"""One live window against a training profile: PSI and a sketch-based KS distance per feature.

KS: the largest gap between the live window's empirical CDF (exact: its values are in
memory) and the profile's CDF (its KLL sketch). PSI: over the profile's deciles,
``sum((live - train) * ln(live / train))``.

Thresholds that do not fire on sample size alone: each statistic must beat both

- its sampling noise at the window's size ``n`` and the profile's (sampled) size ``m`` —
  the two-sample KS critical value ``c(a) * sqrt((n + m) / (n m))`` plus the sketch's rank
  error, and for PSI the chi-square quantile over ``n m / (n + m)`` (n PSI is ~ chi2 with
  bins - 1 degrees of freedom when nothing changed) — at ``a = alpha / (2 x features)``, so
  that a window of many features raises a false alarm with probability about ``alpha``;
- a minimum effect size (``min_ks``, ``min_psi``), so that an enormous window does not
  flag a shift too small to matter just because it is measurable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from datasketches import kll_floats_sketch

#: profile deciles as PSI bins
PSI_BINS = 10


@dataclass(frozen=True)
class DriftPolicy:
    """When a feature counts as drifted (a small policy object, see the module doc)."""

    alpha: float = 0.01  # false-alarm probability of one window, over all its features
    min_ks: float = 0.1  # a KS distance below this never counts, however large the window
    min_psi: float = 0.1  # the customary "moderate shift" level of PSI

    def ks_threshold(self, n: int, m: int, tests: int, rank_error: float) -> float:
        a = self.alpha / max(2 * tests, 1)
        noise = math.sqrt(-0.5 * math.log(a / 2)) * math.sqrt((n + m) / (n * m)) + rank_error
        return max(noise, self.min_ks)

    def psi_threshold(self, n: int, m: int, tests: int, bins: int) -> float:
        a = self.alpha / max(2 * tests, 1)
        return max(_chi2_quantile(1 - a, bins - 1) * (n + m) / (n * m), self.min_psi)


def _chi2_quantile(p: float, k: int) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (good to ~1 % for k >= 3)."""
    z = NormalDist().inv_cdf(p)
    h = 2.0 / (9.0 * k)
    return k * (1.0 - h + z * math.sqrt(h)) ** 3


def ks_distance(sketch: kll_floats_sketch, values: np.ndarray) -> float:
    """sup |F_live - F_profile|: between two live values the live CDF is flat and the
    profile's rises, so the gap is largest at an end of each interval."""
    v = np.sort(values[np.isfinite(values)].astype(np.float32))
    if not len(v) or sketch.is_empty():
        return 0.0
    points = np.unique(v)
    at = np.asarray(sketch.get_cdf(points.tolist(), inclusive=True)[:-1])  # P(X <= point)
    before = np.asarray(sketch.get_cdf(points.tolist(), inclusive=False)[:-1])  # P(X < point)
    live = np.searchsorted(v, points, side="right") / len(v)  # live CDF on [point, next point)
    live_before = np.concatenate([[0.0], live[:-1]])  # live CDF just before each point
    return float(max(np.abs(live - at).max(), np.abs(live_before - before).max()))


def psi(sketch: kll_floats_sketch, values: np.ndarray, bins: int = PSI_BINS) -> tuple[float, int]:
    """(PSI of the live values against the profile's quantile bins, the number of bins)."""
    v = values[np.isfinite(values)]
    if not len(v) or sketch.is_empty():
        return 0.0, 1
    edges = np.unique(np.asarray(sketch.get_quantiles([i / bins for i in range(1, bins)]), dtype=np.float64))
    train = np.diff(np.concatenate([[0.0], sketch.get_cdf(edges.tolist()), ])) if len(edges) else np.array([1.0])
    live = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1) / len(v)
    k = len(edges) + 1
    eps = 0.5 / (len(v) + k)  # a bin empty on one side must not make PSI infinite
    t, lv = np.maximum(train, eps), np.maximum(live, eps)
    return float(np.sum((lv - t) * np.log(lv / t))), k


def compare(columns: dict[str, np.ndarray], sketches: dict[str, kll_floats_sketch], profile_rows: int,
            policy: DriftPolicy) -> dict[str, dict[str, Any]]:
    """Per column: KS and PSI of the live ``columns`` against the profile's ``sketches`` (of
    ``profile_rows`` sampled rows), their thresholds and whether the column drifted."""
    tests = len(columns)
    out = {}
    for name, values in columns.items():
        sketch = sketches[name]
        n, m = int(np.isfinite(values).sum()), max(int(sketch.n), 1)
        if n == 0 or sketch.is_empty():
            out[name] = {"rows": n, "ks": None, "psi": None, "drift": False}
            continue
        ks = ks_distance(sketch, values)
        value, bins = psi(sketch, values)
        ks_t = policy.ks_threshold(n, m, tests, sketch.normalized_rank_error(False))
        psi_t = policy.psi_threshold(n, m, tests, bins)
        out[name] = {"rows": n, "ks": round(ks, 5), "ks_threshold": round(ks_t, 5), "psi": round(value, 5),
                     "psi_threshold": round(psi_t, 5), "drift": bool(ks > ks_t or value > psi_t)}
    return out
