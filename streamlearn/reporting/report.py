"""``streamlearn report JOB``: one self-contained HTML page about a job (no network, no
scripts: CSS inline, every plot an embedded PNG).

What it shows, when the job has it:

- the learning curve: the holdout metric against records applied, from the job's history
  (the linear learner: one line per packed model, the chosen one highlighted);
- throughput, lag and members over time (the history);
- per algorithm, from the newest snapshot: k-means' SSE against k solved from the summary
  (the elbow), PCA's scree plot, the topic model's top words per topic, DeepAR's forecasts of
  each series' last periods (held back from its stored context) with a quantile band against
  the actual values;
- drift over the monitored windows (``streamlearn monitor``): each feature's KS distance
  against the training profile, the windows that drifted marked;
- tables: the job's parameters, its data lineage (partitions' start, end and stored offsets,
  the parent snapshot, every snapshot's records and offsets) and the gate's decision on each
  snapshot (metadata field ``gate`` = ``{"status", "checks", "reason"}``).
"""
from __future__ import annotations

import base64
import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import redis

from streamlearn.algorithms.base import Model
from streamlearn.algorithms.deepar import History
from streamlearn.monitoring.gate import REJECTED
from streamlearn.runtime.history import read_history
from streamlearn.runtime.jobs import job_status, load_spec
from streamlearn.reporting import plots
from streamlearn.runtime.predict import load_job_model
from streamlearn.runtime.record import JobRecord
from streamlearn.snapshots.store import ModelStore

__all__ = ["build_report", "write_report"]

#: k-means: at most this many values of k are solved for the elbow (each is a weighted k-means)
ELBOW_POINTS = 16
#: DeepAR: series drawn (the first ones of the model's context)
FORECAST_SERIES = 4
#: features drawn in the drift plot (those whose KS distance rose highest)
DRIFT_FEATURES_DRAWN = 8

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; } .figs figure { margin: 0; }
img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #2a7a2a; font-weight: bold; } .fail { color: #b22; font-weight: bold; }
.none { color: #888; font-style: italic; }
"""


def write_report(client: redis.Redis, job: str, output: Path) -> Path:
    output = Path(output)
    output.write_text(build_report(client, job), encoding="utf-8")
    return output


def build_report(client: redis.Redis, job: str) -> str:
    spec = load_spec(client, job)
    status = job_status(client, job)
    samples = read_history(client, job)
    snapshots = ModelStore(client).list_models(job=job)
    model = load_job_model(client, job) if snapshots else None

    body: list[str] = [f"<h1>{_e(job)}</h1>",
                       f"<p class='sub'>{_e(spec.algorithm)} on topic {_e(spec.topic)} &middot; {_e(status['state'])}"
                       f" &middot; report written {_e(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'))}</p>",
                       _table(["", ""], _summary_rows(status, samples, snapshots), header=False)]

    body.append("<h2>Training</h2>")
    figures = [_figure(plots.learning_curve(samples), "learning curve")] + _progress_figures(samples)
    body.append(_figures(figures, "no history samples yet (workers write one every few seconds)"))

    algorithm_html = _algorithm_section(model) if model is not None else ""
    if algorithm_html:
        body += [f"<h2>The model ({_e(model.algorithm)}, snapshot version {_e(snapshots[-1].get('version'))})</h2>",
                 algorithm_html]

    drift = _drift(JobRecord(client, job).monitor_windows())
    if drift is not None:
        body += ["<h2>Drift</h2>", _figures([_figure(drift, "drift of the monitored windows")], "")]

    body += ["<h2>Parameters</h2>",
             _table(["parameter", "value"], [(k, _json(v)) for k, v in sorted(spec.params.items())]),
             "<h2>Data lineage</h2>", _lineage(spec, status, snapshots),
             "<h2>Gate decisions</h2>", _gates(snapshots)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>streamlearn report: {_e(job)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# -- sections -------------------------------------------------------------------------------------
def _summary_rows(status: dict[str, Any], samples: list[dict], snapshots: list[dict]) -> list[tuple]:
    rows = [("state", status["state"] + (f" ({status['reason']})" if status.get("reason") else "")),
            ("records applied", f"{status['records_applied']:,}"),
            ("records dead-lettered", f"{status['records_dead_lettered']:,}"),
            ("epochs", status["epochs"]),
            ("snapshots", len(snapshots)),
            ("history samples", len(samples))]
    if len(samples) >= 2:
        rows.append(("history span", f"{samples[-1]['t'] - samples[0]['t']:.1f} s"))
    return rows


def _progress_figures(samples: list[dict]) -> list[str]:
    partitions = sorted({p for s in samples for p in s.get("lag", {})}, key=int)
    lag = {"all partitions": [sum(s.get("lag", {}).values()) for s in samples]}
    if 1 < len(partitions) <= 8:
        lag.update({f"partition {p}": [s.get("lag", {}).get(p, 0) for s in samples] for p in partitions})
    return [
        _figure(plots.over_time(samples, "throughput", "records per second",
                                {"records/s": [s["records_per_second"] for s in samples]}), "throughput"),
        _figure(plots.over_time(samples, "lag", "messages left", lag), "lag"),
        _figure(plots.over_time(samples, "members", "workers", {"members": [s["members"] for s in samples]},
                                step=True), "members"),
    ]


def _algorithm_section(model: Model) -> str:
    name = model.algorithm
    if name == "kmeans":
        return _kmeans(model)
    if name == "pca":
        ratios = model.explained_variance_ratio
        return _figures([_figure(plots.scree(ratios), "PCA scree plot")], "") + _table(
            ["component", "explained variance ratio", "cumulative"],
            [(i + 1, f"{r:.4f}", f"{c:.4f}") for i, (r, c) in enumerate(zip(ratios, np.cumsum(ratios)))])
    if name == "ntm":
        return _table(["topic", "top words"], [(k, " ".join(w)) for k, w in enumerate(model.topics(10))])
    if name == "deepar":
        return _figures([_figure(plots.forecasts(_deepar_panels(model)), "DeepAR forecasts")],
                        "the snapshot's context holds no series long enough to hold periods back")
    if name == "linear_learner":
        return _linear_learner(model)
    return ""


def _kmeans(model) -> str:
    k_max = int(model.attrs["k_max"])
    if len(model.summary_centers) == 0:
        return "<p class='none'>the summary is empty: nothing to solve</p>"
    ks = sorted({int(round(k)) for k in np.linspace(1, k_max, num=min(k_max, ELBOW_POINTS))} | {model.k})
    costs = [float(model.with_k(k).attrs["summary_cost"]) for k in ks]
    return _figures([_figure(plots.elbow(ks, costs, model.k), "k-means elbow")], "") + _table(
        ["k", "SSE (summary)"], [(k, f"{c:.6g}") for k, c in zip(ks, costs)])


def _linear_learner(model) -> str:
    attrs = model.attrs
    metrics = [m for m in attrs["models"][0] if m not in ("learning_rate", "l1", "l2")]
    rows = []
    for i, m in enumerate(attrs["models"]):
        mark = " (chosen)" if i == attrs["selected_model"] else ""
        rows.append((f"{i}{mark}", f"{m['learning_rate']:.4g}", f"{m['l1']:.3g}", f"{m['l2']:.3g}",
                     *[("-" if m.get(k) is None else f"{m[k]:.4f}") for k in metrics]))
    return (f"<p>{len(rows)} packed models; the holdout's {_e(attrs['validation_metric'])} chose model "
            f"{attrs['selected_model']}.</p>" + _table(["model", "learning rate", "l1", "l2", *metrics], rows))


def _deepar_panels(model) -> list[dict[str, Any]]:
    """Each drawn series' stored context with its last ``prediction_length`` periods held
    back, forecast from the rest (10-90 % band and median) and compared with them."""
    c = model.attrs
    H = int(c["prediction_length"])
    panels = []
    for name in model.series[:FORECAST_SERIES]:
        full = History.from_row(model.ctx[model.series.index(name)], c)
        observed = np.flatnonzero(full.mask)
        if full.last is None or len(observed) <= H + 1:
            continue
        cut = History(len(full.vals), full.feat.shape[1], len(full.cats))
        cut.vals = np.concatenate([np.zeros(H), full.vals[:-H]])
        cut.mask = np.concatenate([np.zeros(H), full.mask[:-H]])
        cut.feat = np.concatenate([np.zeros((H, full.feat.shape[1])), full.feat[:-H]])
        cut.last, cut.age, cut.last_ms, cut.cats = full.last - H, full.age - H, full.last_ms, full.cats
        future = full.feat[-H:][None] if c["num_dynamic_feat"] else None
        paths = model.sample_paths([cut], H, None, int(c["seed"]), future_feat=future)[0]
        low, median, high = np.quantile(paths, [0.1, 0.5, 0.9], axis=0)
        x = np.arange(len(full.vals)) - len(full.vals) + 1  # periods relative to the last stored one
        shown = x >= x[observed[0]]
        ctx_x, ctx_y = x[:-H][shown[:-H]], np.where(full.mask[:-H] > 0, full.vals[:-H], np.nan)[shown[:-H]]
        act_y = np.where(full.mask[-H:] > 0, full.vals[-H:], np.nan)
        panels.append({"series": name, "context": (ctx_x, ctx_y), "actual": (x[-H:], act_y), "x": x[-H:],
                       "median": median, "low": low, "high": high, "band": "10-90 % band"})
    return panels


def _drift(windows: list[dict]) -> bytes | None:
    """KS distance per feature over the monitored windows (the features that moved most)."""
    if not windows:
        return None
    names = sorted({n for w in windows for n, ks in w["ks"].items() if ks is not None},
                   key=lambda n: -max(w["ks"].get(n) or 0.0 for w in windows))
    index = [w["window"] for w in windows]
    return plots.drift(index, {n: [w["ks"].get(n) if w["ks"].get(n) is not None else math.nan for w in windows]
                               for n in names[:DRIFT_FEATURES_DRAWN]},
                       [w["window"] for w in windows if w["drift"]])


def _lineage(spec, status: dict[str, Any], snapshots: list[dict]) -> str:
    parts = sorted(set(spec.end_offsets) | {int(p) for p in status["partitions"]})
    out = [_table(["partition", "start offset", "end offset", "stored offset"],
                  [(p, spec.start_offsets.get(p, 0), spec.end_offsets.get(p, "-"),
                    status["partitions"].get(str(p), "-")) for p in parts])]
    if spec.parent:
        out.append(f"<p>trained from snapshot {_e(spec.parent.get('job'))}@{_e(spec.parent.get('version'))}</p>")
    out.append(_table(["version", "created", "final", "records applied", "dead-lettered", "offsets", "bytes"],
                      [(s.get("version"), s.get("created_at", ""), s.get("final"), s.get("records_applied"),
                        s.get("records_dead_lettered"), _json(s.get("offsets")), s.get("snapshot_bytes"))
                       for s in snapshots], empty="no snapshot yet"))
    return "\n".join(out)


def _gates(snapshots: list[dict]) -> str:
    rows = []
    for s in snapshots:
        gate = s.get("gate")
        if not isinstance(gate, dict):
            continue
        state = str(gate.get("status", ""))
        css = "fail" if state == REJECTED else "pass"  # blessed, or forced past the gate
        rows.append((s.get("version"), f"<span class='{css}'>{_e(state)}</span>", _e(gate.get("reason") or ""),
                     _checks(gate.get("checks"))))
    if not rows:
        return "<p class='none'>no gate decision recorded on this job's snapshots</p>"
    return _table(["version", "decision", "reason", "checks"], rows, escape=False)


def _checks(checks: Any) -> str:
    if isinstance(checks, list):
        return "<br>".join(_e(_json(c) if not isinstance(c, str) else c) for c in checks)
    if isinstance(checks, dict):
        return "<br>".join(f"{_e(k)}: {_e(_json(v))}" for k, v in checks.items())
    return _e(_json(checks)) if checks is not None else ""


# -- html -----------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _figure(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f"<figure><img alt='{_e(alt)}' src='data:image/png;base64,{data}'></figure>"


def _figures(figures: Iterable[str], empty: str) -> str:
    shown = [f for f in figures if f]
    if not shown:
        return f"<p class='none'>{_e(empty)}</p>" if empty else ""
    return "<div class='figs'>" + "".join(shown) + "</div>"


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], header: bool = True, escape: bool = True,
           empty: str = "none") -> str:
    rows = list(rows)
    if not rows:
        return f"<p class='none'>{_e(empty)}</p>"
    cell = _e if escape else str
    head = "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(
        (f"<th>{_e(v)}</th>" if not header and i == 0 else
         f"<td class='num'>{cell(v)}</td>" if isinstance(v, (int, float)) and not isinstance(v, bool) else
         f"<td>{cell(v)}</td>") for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"
