"""``streamlearn forecast``: quantile forecasts of a time-series job from its snapshot's stored
context (no training data needed), one JSON line per series."""
from __future__ import annotations

from pathlib import Path

import redis

from streamlearn.algorithms.base import ParamError
from streamlearn.runtime.predict import load_job_model, write_json_lines


def forecast_job(client: redis.Redis, job: str, series: list[str] | None = None, horizon: int | None = None,
                 quantiles: list[float] | None = None, samples: int = 200, output: Path | None = None,
                 version: int | None = None, seed: int | None = None) -> int:
    """Write ``{"series", "start", "mean", "quantiles"}`` lines for ``series`` (default: all)."""
    quantiles = list(quantiles or [0.1, 0.5, 0.9])
    if not quantiles or not all(0.0 < q < 1.0 for q in quantiles):
        raise ParamError(f"quantiles must lie in (0, 1), got {quantiles}")
    if horizon is not None and horizon < 1 or samples < 1:
        raise ParamError("--horizon and --samples must be >= 1")
    model = load_job_model(client, job, version)
    if not hasattr(model, "forecast"):
        raise ParamError(f"job {job!r} ({model.algorithm}) does not forecast; use `streamlearn predict`")
    names = model.series if series is None else series
    # 256 series at a time: memory bounded by samples x horizon per series
    records = (rec for a in range(0, len(names), 256)
               for rec in model.forecast(names[a:a + 256], horizon, tuple(quantiles), samples, seed))
    return write_json_lines(records, output)
