"""``streamlearn monitor JOB --topic LIVE``: live windows against the job's training profile.

The reference is the job's published snapshot: its profile (``metadata["profile"]``) and
its holdout score. The live topic is read in windows of ``window`` records (``once``: what
it holds now, from its low to its high watermarks; else what arrives from now on). Each
window is compared feature by feature (:mod:`streamlearn.monitoring.drift`); with a labels
topic (labelled records), each of its windows is scored with the published model and the
score compared with the holdout score. Every report goes to the topic
``streamlearn.monitoring`` (key = job) and the latest one to the job's record
(``monitor status``).

``on_drift="retrain"``: a drifted window creates an incremental job from the published
snapshot over the recent data (the labels topic when given, else the live topic: what it
retains), with the job's own gate, and starts one worker for it (it exits when the bounded
job ends). One retrain at a time: none is started while the previous one is running.
When the retrain ends with a snapshot its gate passed, the monitor promotes that model to
the monitored job (``runtime.finalize.promote``: the job's next version, through the job's
own gate), so the job's subscribers receive it, and compares the following windows with it.
The monitor waits for the retrain at most ``retrain_timeout_s`` (``once``: after its last
window; else while it reads on); past that the retrain is left running, unpromoted, and the
report says so. The outcome (``promotion``) is added to the retrain's entry and to the next
report (``once``: the last one, reported again).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import redis
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from streamlearn.algorithms import _metrics as metrics
from streamlearn.batch import Batch, SparseRows
from streamlearn.errors import UserError
from streamlearn.monitoring.drift import DriftPolicy, compare
from streamlearn.config import Settings
from streamlearn.monitoring.gate import REJECTED, holdout_scores
from streamlearn.monitoring.gate_data import offsets_text
from streamlearn.monitoring.profile import Profile
from streamlearn.runtime.finalize import promote
from streamlearn.runtime.jobs import JobSpec, create_job, load_spec
from streamlearn.runtime.record import ENDED, JobRecord
from streamlearn.snapshots.format import decode_snapshot, load_model
from streamlearn.snapshots.store import ModelStore
from streamlearn.streams.topics import consumer_conf, ensure_topic, watermarks
from streamlearn.wire.decode import decode_messages

log = logging.getLogger("streamlearn.monitor")

MONITORING_TOPIC = "streamlearn.monitoring"
#: window summaries a job keeps for the report's drift plot
WINDOWS_KEPT = 1000
#: a live score worse than the holdout's by more than this counts as degraded
SCORE_TOLERANCE = 0.05


class MonitorError(UserError):
    """A job that cannot be monitored (nothing published, no profile), or a bad option."""


@dataclass
class Reference:
    """What live data is compared with: the published snapshot of the job."""

    spec: JobSpec
    version: int
    profile: Profile
    model: Any
    metric: str | None  # the holdout metric live scores are compared with
    holdout: float | None

    @classmethod
    def load(cls, client: redis.Redis, job: str) -> "Reference":
        spec = load_spec(client, job)
        _, version = JobRecord(client, job).snapshot_versions()
        if version is None:
            raise MonitorError(f"job {job!r} has no published snapshot to monitor against")
        snapshot = decode_snapshot(ModelStore(client).get(job, version))
        if "profile" not in snapshot.metadata:
            raise MonitorError(f"{job}@{version} carries no training profile (written before profiles, or by an "
                               f"algorithm with its own record type)")
        attrs = snapshot.metadata.get("model_attrs") or {}
        metric = attrs.get("validation_metric")
        holdout = holdout_scores(attrs).get(metric) if metric else None
        return cls(spec, version, Profile.from_metadata(snapshot.metadata["profile"]), load_model(snapshot),
                   metric, holdout)

    def sketches(self) -> dict[str, Any]:
        p = self.profile
        if p.kind == "dense":
            return {f"x{j}": s for j, s in enumerate(p.sketches)}
        return {"values": p.sketches[0], "nnz_per_row": p.sketches[1]}

    def columns(self, batch: Batch) -> dict[str, np.ndarray]:
        if isinstance(batch.X, SparseRows):
            return {"values": batch.X.values, "nnz_per_row": np.diff(batch.X.indptr).astype(np.float32)}
        X = np.asarray(batch.X)
        return {f"x{j}": X[:, j] for j in range(min(X.shape[1], len(self.profile.sketches)))}


@dataclass
class Windows:
    """Consecutive windows of ``size`` decoded records of one topic."""

    kafka_conf: dict
    topic: str
    size: int
    n_features: int
    sparse: bool
    labelled: bool
    once: bool
    _rows: list[Batch] = field(default_factory=list)
    _ends: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        marks = watermarks(self.kafka_conf, self.topic)  # raises for a missing topic
        self._consumer = Consumer({**consumer_conf(self.kafka_conf), "group.id": f"streamlearn-monitor-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False})
        if self.once:
            self._ends = {p: hi for p, (lo, hi) in marks.items() if hi > lo}
            self._consumer.assign([TopicPartition(self.topic, p, marks[p][0]) for p in self._ends])
        else:
            self._consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in marks])

    @property
    def exhausted(self) -> bool:
        return self.once and not self._ends

    def poll(self, timeout: float = 0.5) -> list[Batch]:
        """The windows completed by what arrived (``once``: the last, partial one too when
        it is the only one)."""
        values = []
        for m in self._consumer.consume(num_messages=500, timeout=timeout):
            if m.error() is not None:
                continue
            p = m.partition()
            if self.once:
                if p not in self._ends or m.offset() >= self._ends[p]:
                    continue
                if m.offset() >= self._ends[p] - 1:
                    del self._ends[p]
            values.append(m.value() or b"")
        if values:
            result = decode_messages(values, self.n_features, self.sparse, self.labelled)
            if result.n_records:
                self._rows.append(result.batch)
        return self._cut()

    def _cut(self) -> list[Batch]:
        have = sum(len(b) for b in self._rows)
        if have < self.size and not (self.exhausted and have):
            return []
        whole = _concat(self._rows)
        n_full = len(whole) // self.size
        if self.exhausted and n_full == 0:
            self._rows = []
            return [whole]
        out = [whole.take(np.arange(i * self.size, (i + 1) * self.size)) for i in range(n_full)]
        rest = np.arange(n_full * self.size, len(whole))
        self._rows = [whole.take(rest)] if len(rest) else []
        return out

    def close(self) -> None:
        self._consumer.close()


def _concat(batches: list[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    ys = [b.y for b in batches]
    y = None if any(v is None for v in ys) else np.concatenate(ys)
    if any(b.is_sparse for b in batches):
        rows = [b.X if isinstance(b.X, SparseRows) else _sparse(b.X) for b in batches]
        offsets = np.cumsum([0] + [len(r.values) for r in rows[:-1]])
        indptr = np.concatenate([[0]] + [r.indptr[1:] + o for r, o in zip(rows, offsets)])
        X: Any = SparseRows(indptr.astype(np.int64), np.concatenate([r.indices for r in rows]),
                            np.concatenate([r.values for r in rows]), rows[0].n_features)
    else:
        X = np.concatenate([np.asarray(b.X) for b in batches])
    return Batch(X, y)


def _sparse(X: np.ndarray) -> SparseRows:
    rows, cols = np.nonzero(X)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(X)))])
    return SparseRows(indptr.astype(np.int64), cols.astype(np.int64), X[rows, cols].astype(np.float32), X.shape[1])


@dataclass(frozen=True)
class MonitorOptions:
    topic: str
    labels_topic: str | None = None
    window: int = 1000
    on_drift: str | None = None  # None or "retrain"
    once: bool = False
    policy: DriftPolicy = DriftPolicy()
    score_tolerance: float = SCORE_TOLERANCE
    timeout_s: float = 120.0  # once: how long reading what the topics hold may take
    retrain_timeout_s: float = 600.0  # how long a retrain may take before it is left unpromoted


def monitor(settings: Settings, client: redis.Redis, job: str, options: MonitorOptions,
            emit: Callable[[dict], None] = lambda report: None) -> list[dict]:
    """Watch ``options.topic`` for ``job``; ``emit`` each window's report as it is made.
    Returns the reports (``once``: all of them; else it runs until interrupted)."""
    kafka_conf = settings.kafka_client_conf()
    if options.window < 10:
        raise MonitorError(f"--window must be at least 10 records, got {options.window}")
    if not options.retrain_timeout_s > 0:
        raise MonitorError(f"--retrain-timeout must be a positive number of seconds, got {options.retrain_timeout_s}")
    if options.on_drift not in (None, "retrain"):
        raise MonitorError(f"--on-drift takes 'retrain', not {options.on_drift!r}")
    ref = Reference.load(client, job)
    algo = ref.spec.algorithm_instance()
    n_features, sparse = algo.n_features(), algo.accepts_sparse
    live = Windows(kafka_conf, options.topic, options.window, n_features, sparse, False, options.once)
    labels = (Windows(kafka_conf, options.labels_topic, options.window, n_features, sparse, True, options.once)
              if options.labels_topic else None)
    ensure_topic(kafka_conf, MONITORING_TOPIC, partitions=1)
    producer = Producer({k: v for k, v in kafka_conf.items()})
    reports: list[dict] = []
    retrain: dict | None = None
    pending = Promotion(settings, client, job, options.retrain_timeout_s)
    deadline = time.monotonic() + options.timeout_s

    def send(report: dict) -> None:
        producer.produce(MONITORING_TOPIC, key=job.encode(), value=json.dumps(report, sort_keys=True).encode())
        producer.poll(0)
        emit(report)

    try:
        for window, scored in _windows(live, labels, options.once, deadline, pending.poll):
            if pending.settled is not None:
                ref = pending.reference(ref)
            report = _report(ref, options, len(reports), window, scored)
            report["promotion"] = pending.take()
            if report["drift"] and options.on_drift == "retrain":
                retrain = _retrain(client, kafka_conf, ref, options, retrain)
                report["retrain"] = retrain
                pending.watch(retrain)
            reports.append(report)
            JobRecord(client, job).add_monitor_report(json.dumps(report, sort_keys=True),
                                                      json.dumps(window_summary(report)), WINDOWS_KEPT)
            send(report)
        if options.once and pending.wait() and reports:
            reports[-1]["promotion"] = pending.take()
            JobRecord(client, job).replace_monitor_report(json.dumps(reports[-1], sort_keys=True))
            send(reports[-1])
    finally:
        producer.flush(10)
        live.close()
        if labels is not None:
            labels.close()
    return reports


def _windows(live: Windows, labels: Windows | None, once: bool, deadline: float,
             tick: Callable[[], object] = lambda: None) -> Iterator[tuple[Batch, Batch | None]]:
    """(live window, the labelled window that arrived with it or None), in order; ``tick``
    runs at every poll (a waiting retrain is checked while no window completes)."""
    pending_live: list[Batch] = []
    pending_labels: list[Batch] = []
    while True:
        tick()
        pending_live += live.poll()
        if labels is not None:
            pending_labels += labels.poll(0.05)
        waiting_labels = labels is not None and not labels.exhausted
        while pending_live and (not once or not waiting_labels or pending_labels):
            yield pending_live.pop(0), (pending_labels.pop(0) if pending_labels else None)
        if once and live.exhausted and not pending_live and not waiting_labels:
            return
        if once and time.monotonic() > deadline:
            raise MonitorError(f"topic {live.topic}: not read to its end within the timeout")


def _report(ref: Reference, options: MonitorOptions, index: int, window: Batch, scored: Batch | None) -> dict:
    features = compare(ref.columns(window), ref.sketches(), ref.profile.sketched_rows, options.policy)
    drifted = sorted((name for name, f in features.items() if f["drift"]), key=lambda n: -features[n]["ks"])
    score = _score(ref, scored, options.score_tolerance) if scored is not None else None
    return {"job": ref.spec.name, "version": ref.version, "topic": options.topic, "window": index,
            "rows": len(window), "at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "drift": bool(drifted) or bool(score and score["degraded"]), "drifted_features": drifted,
            "features": features, "score": score, "retrain": None}


def window_summary(report: dict) -> dict:
    """What the report draws of a window: when, its verdict and each feature's KS distance."""
    return {"window": report["window"], "at": report["at"], "version": report["version"], "drift": report["drift"],
            "ks": {name: f["ks"] for name, f in report["features"].items()}}


def _score(ref: Reference, batch: Batch, tolerance: float) -> dict | None:
    if ref.metric is None or ref.holdout is None or batch.y is None:
        return None
    live = float(ref.model.score(batch, ref.metric))
    worse = ref.holdout - live if metrics.higher_is_better(ref.metric) else live - ref.holdout
    return {"metric": ref.metric, "live": live, "holdout": ref.holdout, "rows": len(batch),
            "degraded": bool(math.isfinite(live) and worse > tolerance or not math.isfinite(live))}


def _retrain(client: redis.Redis, kafka_conf: dict, ref: Reference, options: MonitorOptions,
             last: dict | None) -> dict:
    """Create (and start one worker for) an incremental job from the published snapshot,
    unless the previous retrain is still running."""
    if last is not None and JobRecord(client, last["job"]).status() not in ENDED:
        return {**last, "started": False}
    name = f"{ref.spec.name}-retrain-{int(time.time())}"
    topic = options.labels_topic or options.topic
    try:
        create_job(client, kafka_conf, name, ref.spec.algorithm, topic, from_snapshot=f"{ref.spec.name}@{ref.version}",
                   gate=ref.spec.gate, gate_min_records=ref.spec.gate_min_records, epochs=1,
                   gate_topic=ref.spec.gate_topic, gate_offsets=offsets_text(ref.spec.gate_offsets))
    except UserError as exc:  # e.g. the recent data is the job's gate data: the gate would not be held out
        log.warning("drift: cannot retrain %s on %s: %s", ref.spec.name, topic, exc)
        return {"job": name, "from": f"{ref.spec.name}@{ref.version}", "topic": topic, "started": False,
                "error": str(exc)}
    worker = subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", name], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    log.warning("drift: started retrain job %s from %s@%d on %s (worker pid %d)", name, ref.spec.name, ref.version,
                topic, worker.pid)
    return {"job": name, "from": f"{ref.spec.name}@{ref.version}", "topic": topic, "worker_pid": worker.pid,
            "started": True}


class Promotion:
    """The retrain a drift started, until its model is promoted to the monitored job, its
    gate or job failed, or ``timeout_s`` passed; ``settled``: that outcome, until taken."""

    def __init__(self, settings: Settings, client: redis.Redis, job: str, timeout_s: float):
        self.settings, self.client, self.job, self.timeout_s = settings, client, job, timeout_s
        self.retrain: dict | None = None
        self.deadline = 0.0
        self.settled: dict | None = None

    def watch(self, retrain: dict) -> None:
        if retrain.get("started"):
            self.retrain, self.deadline = retrain, time.monotonic() + self.timeout_s

    def poll(self) -> bool:
        """Settle the retrain if it ended (or timed out); whether an outcome is waiting."""
        if self.retrain is not None:
            state = JobRecord(self.client, self.retrain["job"]).status()
            if state in ENDED or time.monotonic() >= self.deadline:
                self.settled = self._outcome(state)
                self.retrain["promotion"] = self.settled
                self.retrain = None
        return self.settled is not None

    def wait(self) -> bool:
        """Poll until the retrain settles (at most until its deadline)."""
        while self.retrain is not None and not self.poll():
            time.sleep(0.5)
        return self.settled is not None

    def take(self) -> dict | None:
        settled, self.settled = self.settled, None
        return settled

    def reference(self, ref: Reference) -> Reference:
        """The reference to compare with from now on: the promoted model when it was published."""
        return Reference.load(self.client, self.job) if (self.settled or {}).get("published") else ref

    def _outcome(self, state: str | None) -> dict:
        name = self.retrain["job"]
        out = {"job": name, "state": state, "model": None, "status": None, "published": False}
        if state not in ENDED:
            return {**out, "state": "timeout", "detail": (
                f"{name} still {state} after {self.timeout_s:.0f} s: not promoted; it keeps running "
                f"(`streamlearn promote {name} --to {self.job}` once it finishes)")}
        record = JobRecord(self.client, name)
        if state != "finished":
            return {**out, "detail": f"{name} {state}: {record.read_status().reason}"}
        blessed, _ = record.snapshot_versions()
        if blessed is None:
            newest, _ = record.snapshot_versions(stored=True)
            gate = ModelStore(self.client).metadata(name, newest).get("gate") or {} if newest else {}
            return {**out, "detail": f"{name}'s gate passed no snapshot: {gate.get('reason')}"}
        version = promote(self.settings, self.client, f"{name}@{blessed}", self.job)
        gate = ModelStore(self.client).metadata(self.job, version)["gate"]
        log.warning("drift: promoted %s@%d to %s@%d (gate: %s)", name, blessed, self.job, version, gate["status"])
        return {**out, "model": f"{self.job}@{version}", "from": f"{name}@{blessed}", "status": gate["status"],
                "published": gate["status"] != REJECTED, "detail": gate["reason"]}


def monitor_status(client: redis.Redis, job: str) -> dict:
    load_spec(client, job)
    raw = JobRecord(client, job).monitor_report()
    if raw is None:
        raise MonitorError(f"job {job!r} has not been monitored yet (`streamlearn monitor {job} --topic LIVE`)")
    return json.loads(raw)


def describe(report: dict) -> str:
    """One line of a report for people."""
    head = f"{report['job']}@{report['version']} window {report['window']} ({report['rows']} rows): "
    parts = []
    for name in report["drifted_features"][:5]:
        f = report["features"][name]
        parts.append(f"{name} ks={f['ks']:.3f}>{f['ks_threshold']:.3f} psi={f['psi']:.3f}>{f['psi_threshold']:.3f}")
    more = len(report["drifted_features"]) - 5
    text = ("DRIFT " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")) if parts else "no feature drift"
    if report.get("score"):
        s = report["score"]
        text += f"; {s['metric']} live {s['live']:.4g} vs holdout {s['holdout']:.4g}" + (" DEGRADED" if s["degraded"] else "")
    if report.get("retrain"):
        r = report["retrain"]
        text += f"; retrain job {r['job']}" + (" started" if r["started"] else
                                               f" not started: {r['error']}" if r.get("error") else " still running")
    if report.get("promotion"):
        p = report["promotion"]
        text += (f"; retrain {p['from']} promoted to {p['model']} ({p['status']})" if p["model"]
                 else f"; retrain not promoted: {p['detail']}")
    return head + text
