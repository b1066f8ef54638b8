"""Probabilistic forecast metrics (GluonTS ``Evaluator`` / M4 definitions), one home for the
model's ``score`` and the benchmark.

``y`` (n, H) true values, ``paths`` (n, S, H) sample paths, ``insample`` the values before
the forecast per series (for the seasonal error of MASE and MSIS). Point metrics use the
median forecast, as GluonTS does; MASE and MSIS are medians over series (their means are
dominated by a few series with a tiny seasonal error), sMAPE is the mean.
"""
from __future__ import annotations

import numpy as np

QUANTILES = tuple(round(0.1 * k, 1) for k in range(1, 10))


def seasonal_error(insample: np.ndarray, m: int) -> float:
    x = np.asarray(insample, dtype=np.float64)
    x = x[~np.isnan(x)]
    m = m if len(x) > m else 1
    return float(np.mean(np.abs(x[m:] - x[:-m]))) if len(x) > m else float("nan")


def weighted_quantile_loss(y: np.ndarray, forecast_q: np.ndarray, q: float) -> float:
    """2 sum |(y - f_q)(1{y <= f_q} - q)| / sum |y| over every series and step."""
    ok = ~np.isnan(y)
    y, f = y[ok], forecast_q[ok]
    return float(2 * np.sum(np.abs((y - f) * ((y <= f) - q))) / max(np.sum(np.abs(y)), 1e-12))


def mean_wql(y: np.ndarray, quantile_forecasts: dict[float, np.ndarray]) -> float:
    return float(np.mean([weighted_quantile_loss(y, quantile_forecasts[q], q) for q in QUANTILES]))


def mase(y: np.ndarray, point: np.ndarray, errors: np.ndarray) -> np.ndarray:
    return np.nanmean(np.abs(y - point), axis=1) / errors


def smape(y: np.ndarray, point: np.ndarray) -> np.ndarray:
    den = np.abs(y) + np.abs(point)
    r = np.where(den > 0, 2 * np.abs(y - point) / np.where(den > 0, den, 1), 0.0)
    return np.nanmean(r, axis=1)


def msis(y: np.ndarray, lower: np.ndarray, upper: np.ndarray, errors: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    pen = (upper - lower) + 2 / alpha * (lower - y) * (y < lower) + 2 / alpha * (y - upper) * (y > upper)
    return np.nanmean(pen, axis=1) / errors


def quantile_forecasts(paths: np.ndarray, qs=QUANTILES) -> dict[float, np.ndarray]:
    return {q: v for q, v in zip(qs, np.quantile(paths, qs, axis=1))}


def all_metrics(y: np.ndarray, qf: dict[float, np.ndarray], insample: list[np.ndarray], m: int,
                mean: np.ndarray | None = None) -> dict[str, float]:
    """Every metric from quantile forecasts (``qf`` must hold 0.1..0.9, 0.025 and 0.975)."""
    errors = np.array([seasonal_error(x, m) for x in insample])
    ok = np.isfinite(errors) & (errors > 0)
    errors = np.where(ok, errors, np.nan)  # a constant history has no scale: left out of MASE and MSIS
    point = qf[0.5]
    return {"mean_wQuantileLoss": mean_wql(y, qf),
            "MASE": float(np.nanmedian(mase(y, point, errors))),
            "sMAPE": float(np.nanmean(smape(y, point))),
            "MSIS": float(np.nanmedian(msis(y, qf[0.025], qf[0.975], errors))),
            "RMSE": float(np.sqrt(np.nanmean((y - (point if mean is None else mean)) ** 2)))}


def score(metric: str, y: np.ndarray, paths: np.ndarray, insample: list[np.ndarray], m: int) -> float:
    qf = quantile_forecasts(paths, QUANTILES + (0.025, 0.975))
    return all_metrics(y, qf, insample, m, paths.mean(1))[metric]


__all__ = ["QUANTILES", "all_metrics", "mase", "mean_wql", "msis", "quantile_forecasts", "score", "seasonal_error",
           "smape", "weighted_quantile_loss"]
