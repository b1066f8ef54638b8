"""The validation gate between finalize and subscribers.

Every snapshot gets a decision, recorded in its metadata as ``gate``::

    {"status": "blessed" | "rejected" | "forced",
     "checks": [{"expr": str, "passed": bool, "value": float | None, "detail": str}, ...],
     "reason": str | None}        # why it was rejected, or the reason given to --force

The default checks always hold: every array of the model is finite, and the state applied
at least ``min_records`` records. The job's ``--gate`` expressions compare a holdout metric
with a number or with the same metric of the currently published version (of this job;
before the first one, of the snapshot the job was continued from). A relative check with
nothing to compare with passes, and says so. A rejected snapshot is stored but never
produced to the snapshot topic (``runtime.finalize``).

A job with a gate topic (``--gate-topic``, :mod:`streamlearn.monitoring.gate_data`) scores
its expressions' metrics on that data instead, for the candidate and for the version it is
compared with alike (:class:`OnData`); the decision then also carries ``data`` (topic,
ranges, records, the scores of both, leakage) and a ``held_out`` check.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamlearn.algorithms.base import Algorithm, Model
from streamlearn.algorithms.linear_learner import VAL_METRICS
from streamlearn.monitoring.gate_expr import RECORDS, GateExpr, parse_gate

BLESSED, REJECTED, FORCED = "blessed", "rejected", "forced"


def holdout_metric_names(algo: Algorithm) -> tuple[str, ...]:
    """Metrics the algorithm's models score on their own holdout (what a gate can compare):
    the linear learner's two validation metrics (and rmse beside mse)."""
    if algo.name != "linear_learner":
        return ()
    names = VAL_METRICS[algo.predictor_type]
    return names + (("rmse",) if "mse" in names else ())


def gate_metric_names(algo: Algorithm) -> tuple[str, ...]:
    return holdout_metric_names(algo) + (RECORDS,)


@dataclass(frozen=True)
class OnData:
    """The gate's metrics on its validation data: of the candidate, of the version it is
    compared with (None: nothing to compare with), what the decision records of the data,
    and the data's own checks (held out from the candidate's training data; readable)."""

    candidate: dict[str, float]
    published: dict[str, float] | None
    data: dict[str, Any]
    checks: list[dict[str, Any]]


def holdout_scores(attrs: dict[str, Any]) -> dict[str, float]:
    """The holdout metrics of a model, from its attributes (the packed model it selected)."""
    models, selected = attrs.get("models"), attrs.get("selected_model")
    if not isinstance(models, list) or not isinstance(selected, int) or not 0 <= selected < len(models):
        return {}
    chosen = models[selected] if isinstance(models[selected], dict) else {}
    scores = {k: float(v) for k, v in chosen.items() if isinstance(v, (int, float)) and k not in
              ("learning_rate", "l1", "l2")}
    if "mse" in scores:
        scores["rmse"] = math.sqrt(scores["mse"]) if scores["mse"] >= 0 else math.nan
    return scores


def _finite_check(model: Model) -> dict[str, Any]:
    arrays, _ = model.to_arrays()
    bad = sorted(name for name, a in arrays.items()
                 if np.asarray(a).dtype.kind == "f" and not np.isfinite(np.asarray(a)).all())
    return {"expr": "finite", "passed": not bad, "value": None,
            "detail": f"non-finite values in {bad}" if bad else "every array is finite"}


def _check(expr: GateExpr, scores: dict[str, float], published: dict[str, float] | None,
           published_name: str) -> dict[str, Any]:
    value = scores.get(expr.metric)
    row: dict[str, Any] = {"expr": str(expr), "value": value}
    if value is None or not math.isfinite(value):
        return {**row, "value": None, "passed": False,
                "detail": f"{expr.metric} is not measured yet (no holdout records)" if value is None
                else f"{expr.metric} is not finite"}
    if expr.relative and (published is None or not math.isfinite(published.get(expr.metric, math.nan))):
        return {**row, "passed": True, "detail": f"nothing published to compare {expr.metric} with"}
    bound = expr.bound(None if published is None else published[expr.metric])
    passed = expr.holds(value, bound)
    against = f" ({published_name}: {published[expr.metric]:.6g})" if expr.relative and published else ""
    return {**row, "passed": passed, "detail": f"{expr.metric}={value:.6g} {expr.op} {bound:.6g}{against}"}


def decide(model: Model, records_applied: int, gates: list[str], min_records: int,
           published_attrs: dict[str, Any] | None, published_name: str = "published",
           force_reason: str | None = None, on_data: OnData | None = None) -> dict[str, Any]:
    """The gate entry of a snapshot of ``model`` (see the module doc). ``published_attrs``:
    the model attributes of the version a relative check compares with (None: none);
    ``on_data``: the metrics on the gate topic, which replace the holdout's."""
    checks = [_finite_check(model),
              {"expr": f"{RECORDS}>={min_records}", "passed": records_applied >= min_records,
               "value": float(records_applied), "detail": f"{records_applied} records applied"}]
    if on_data is None:
        scores = {**holdout_scores(getattr(model, "attrs", None) or {}), RECORDS: float(records_applied)}
        published = None if published_attrs is None else holdout_scores(published_attrs)
    else:
        scores, published = {**on_data.candidate, RECORDS: float(records_applied)}, on_data.published
        checks += on_data.checks
    checks += [_check(parse_gate(text), scores, published, published_name) for text in gates]
    failed = [c for c in checks if not c["passed"]]
    data = {} if on_data is None else {"data": on_data.data}
    if force_reason is not None:
        return {"status": FORCED, "checks": checks, "reason": force_reason, **data}
    if failed:
        return {"status": REJECTED, "checks": checks, "reason": "; ".join(f"{c['expr']}: {c['detail']}" for c in failed),
                **data}
    return {"status": BLESSED, "checks": checks, "reason": None, **data}


def status_of(metadata: dict[str, Any]) -> str | None:
    """A stored snapshot's gate status (None: written before the gate existed)."""
    gate = metadata.get("gate")
    return gate.get("status") if isinstance(gate, dict) else None
