"""Queries over the registry: models (filtered by job, algorithm, scores, time, gate status),
a model's lineage (parents, training data, evaluations, children) and the comparison of two
models (parameters; scores on the same evaluation data)."""
from __future__ import annotations

import datetime as _dt
from typing import Any

from streamlearn.errors import UserError
from streamlearn.registry.records import ModelNotFound, Registry, model_name, parse_ref
from streamlearn.registry.times import instant_ms
from streamlearn.registry.where import parse_where
from streamlearn.snapshots.format import decode_snapshot, load_model

#: gate decisions a model can carry (no ``gate`` in its metadata: blessed, as before gates)
STATUSES = ("blessed", "rejected", "forced")
#: registry fields ``--where`` may test besides scores
NUMERIC_FIELDS = ("records_applied", "records_dead_lettered", "version")


class MetricNotReported(UserError, ValueError):
    """A metric that the models in question do not report."""


def status_of(entry: dict[str, Any]) -> str:
    gate = entry.get("gate")
    return str(gate.get("status", "blessed")) if isinstance(gate, dict) else "blessed"


def holdout_scores(entry: dict[str, Any]) -> dict[str, float]:
    """The scores a snapshot carries from training: its ``scores``/``metrics``, the selected
    packed model's holdout metrics (linear learner), the held-out perplexity (topic model)."""
    out: dict[str, float] = {}
    attrs = entry.get("model_attrs") or {}
    packed = attrs.get("models")
    if isinstance(packed, list) and isinstance(attrs.get("selected_model"), int) and packed:
        chosen = packed[attrs["selected_model"]]
        out.update({k: v for k, v in chosen.items() if k not in ("learning_rate", "l1", "l2")})
    if attrs.get("heldout_perplexity") is not None:
        out["perplexity"] = attrs["heldout_perplexity"]
    for field in ("metrics", "scores"):
        if isinstance(entry.get(field), dict):
            out.update(entry[field])
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _name(entry: dict[str, Any]) -> str:
    return model_name(entry["job"], entry["version"])


def _link(ref: Any, job: str) -> str | None:
    """A ``parent``/``trained_from`` link as ``JOB@VERSION``."""
    if isinstance(ref, dict) and isinstance(ref.get("version"), int):
        return model_name(ref.get("job", job), ref["version"])
    if isinstance(ref, int) and not isinstance(ref, bool):
        return model_name(job, ref)
    return None


def model_row(entry: dict[str, Any], evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    """One line of ``streamlearn models``: identity, status, data counts, holdout scores and
    each metric's newest evaluation score."""
    newest: dict[str, float] = {}
    for e in evaluations:  # oldest first: later ones overwrite
        newest.update({k: v for k, v in (e.get("scores") or {}).items() if v is not None})
    return {"model": _name(entry), "job": entry["job"], "version": entry["version"],
            "algorithm": entry.get("algorithm"), "created_at": entry.get("created_at"), "status": status_of(entry),
            "final": entry.get("final"), "topic": entry.get("topic"), "records_applied": entry.get("records_applied"),
            "parent": _link(entry.get("parent"), entry["job"]), "params": entry.get("params") or {},
            "holdout": holdout_scores(entry), "evaluated": newest, "evaluations": len(evaluations)}


def _where_values(row: dict[str, Any]) -> dict[str, Any]:
    """What ``--where`` tests: a metric's newest evaluation score, else its holdout score."""
    return {**{f: row.get(f) for f in NUMERIC_FIELDS}, **row["holdout"], **row["evaluated"]}


def list_models(registry: Registry, job: str | None = None, algorithm: str | None = None,
                where: str | None = None, since: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """The registry's models, filtered (every filter must hold), ordered by (job, version)."""
    conditions = parse_where(where) if where is not None else []
    if status is not None and status not in STATUSES:
        raise UserError(f"--status must be one of {list(STATUSES)}, got {status!r}")
    since_ms = instant_ms(since, "--since") if since is not None else None
    if job is not None:
        parse_ref(job)
    rows = []
    for name in [job] if job is not None else registry.names():
        evaluations = registry.evaluations(name)
        for entry in registry.entries(name):
            if algorithm is not None and entry.get("algorithm") != algorithm:
                continue
            rows.append(model_row(entry, [e for e in evaluations if e.get("version") == entry["version"]]))
    _check_reported(registry, rows, [c.metric for c in conditions])
    out = []
    for row in rows:
        if status is not None and row["status"] != status:
            continue
        if since_ms is not None and _created_ms(row) < since_ms:
            continue
        values = _where_values(row)
        if all(c.holds(values) for c in conditions):
            out.append(row)
    return out


def _created_ms(row: dict[str, Any]) -> int:
    try:
        return int(_dt.datetime.fromisoformat(str(row["created_at"]).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def _check_reported(registry: Registry, rows: list[dict[str, Any]], metrics: list[str]) -> None:
    """Every metric of ``--where`` must be one the candidate models report (score, holdout or a
    numeric field); one newest model per algorithm is loaded to ask."""
    if not metrics or not rows:
        return
    known = set(NUMERIC_FIELDS)
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        known |= set(row["holdout"]) | set(row["evaluated"])
        newest[row["algorithm"]] = row
    for row in newest.values():
        model = load_model(decode_snapshot(registry.store.get(row["job"], row["version"])))
        known |= set(model.metric_names())
    missing = sorted(set(metrics) - known)
    if missing:
        algorithms = ", ".join(sorted(newest))
        raise MetricNotReported(f"--where: {algorithms} models do not report {missing}; they report "
                                f"{sorted(known - set(NUMERIC_FIELDS))} (and {list(NUMERIC_FIELDS)})")


def children(registry: Registry, name: str) -> list[str]:
    """Models whose parent (previous snapshot or the snapshot they were trained from) is ``name``."""
    out = []
    for job in registry.names():
        for entry in registry.entries(job):
            links = {_link(entry.get("parent"), job), _link(entry.get("trained_from"), job)}
            if name in links and _name(entry) != name:
                out.append(_name(entry))
    return out


def lineage(registry: Registry, ref: str) -> dict[str, Any]:
    """Everything the registry knows of a model: who/what made it, its parents, the data it and
    they were trained on, its evaluations and its children."""
    entry = registry.resolve(ref)
    job, version = entry["job"], entry["version"]
    chain = registry.store.lineage(job, version)
    job_entry = registry.job_entry(job)
    parents = [{"model": _name(e), "algorithm": e.get("algorithm"), "created_at": e.get("created_at"),
                "status": status_of(e),
                "link": ("previous snapshot" if e["job"] == chain[i]["job"] else
                         "promoted from" if chain[i].get("promoted_from") else "trained from")}
               for i, e in enumerate(chain[1:])]
    return {
        "model": _name(entry), "algorithm": entry.get("algorithm"), "params": entry.get("params") or {},
        "created_at": entry.get("created_at"), "status": status_of(entry), "gate": entry.get("gate"),
        "provenance": entry.get("provenance"), "job": job_entry, "backtest": entry.get("backtest"),
        "holdout": holdout_scores(entry),
        "parents": parents,
        "training_data": [{"model": _name(e), **(e.get("data") or {"topic": e.get("topic"),
                                                                       "offsets": e.get("offsets"),
                                                                       "records_applied": e.get("records_applied")})}
                          for e in chain],
        "evaluations": registry.evaluations(job, version),
        "children": children(registry, _name(entry)),
    }


def compare(registry: Registry, ref_a: str, ref_b: str) -> dict[str, Any]:
    """Parameter differences, holdout scores, and scores on every evaluation data set both
    models were evaluated on (newest evaluation of each per data set)."""
    a, b = registry.resolve(ref_a), registry.resolve(ref_b)
    pa, pb = a.get("params") or {}, b.get("params") or {}
    params = {k: {"a": pa.get(k), "b": pb.get(k)} for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)}
    ha, hb = holdout_scores(a), holdout_scores(b)
    same_data = []
    ea, eb = _by_data(registry, a), _by_data(registry, b)
    for key in sorted(set(ea) & set(eb)):
        x, y = ea[key], eb[key]
        same_data.append({"data": x["data"], "a": x["id"], "b": y["id"],
                          "scores": _diff(x.get("scores") or {}, y.get("scores") or {})})
    return {"a": _name(a), "b": _name(b), "algorithms": {"a": a.get("algorithm"), "b": b.get("algorithm")},
            "params": params, "holdout": _diff(ha, hb), "same_data": same_data}


def _by_data(registry: Registry, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["data"]["key"]: e for e in registry.evaluations(entry["job"], entry["version"])}


def _diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        out[k] = {"a": x, "b": y, "diff": None if x is None or y is None else y - x}
    return out


__all__ = ["MetricNotReported", "ModelNotFound", "STATUSES", "compare", "holdout_scores", "lineage", "list_models",
           "status_of"]
