"""``streamlearn forecast``: quantile forecasts of a time-series job from its snapshot's stored
context (no training data needed), one JSON line per series."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import redis

from streamlearn.algorithms.base import ParamError
from streamlearn.runtime.predict import load_job_model


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
    out = open(output, "w") if output else sys.stdout
    n = 0
    try:
        for a in range(0, len(names), 256):  # bounded memory: samples x horizon per series
            for rec in model.forecast(names[a:a + 256], horizon, tuple(quantiles), samples, seed):
                out.write(json.dumps(rec) + "\n")
                n += 1
    finally:
        if output:
            out.close()
    return n
