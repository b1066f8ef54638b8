"""Job specs and control: create, pause, resume, status, list.

A job is a named training run: an algorithm with its parameters over a topic. Its spec,
status, state and offsets live in Redis under ``sl:{job}:*`` (see :mod:`streamlearn.runtime.record`).
``initialize`` runs here, once, at creation; workers only ever update.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from streamlearn.algorithms import Algorithm, algorithm_class, make_algorithm
from streamlearn.errors import UserError
from streamlearn.monitoring.gate import gate_metric_names
from streamlearn.monitoring.gate_data import (GateData, check_held_out, gate_metrics, planned_training_data,
                                              read_gate_data)
from streamlearn.monitoring.gate_expr import RECORDS, GateError, parse_gate, parse_gates
from streamlearn.monitoring.profile import sample_fraction
from streamlearn.registry.provenance import provenance
from streamlearn.registry.data import parse_offsets, ranges_to_json
from streamlearn.registry.records import Registry, lineage_data
from streamlearn.runtime.contract import TopicSample, default_epochs, infer_params, sample_topic
from streamlearn.runtime.local import sample_model
from streamlearn.runtime.record import ENDED, JobRecord
from streamlearn.snapshots.format import load_model
from streamlearn.snapshots.publisher import SnapshotPublishError, ensure_snapshot_topic
from streamlearn.snapshots.store import ModelStore
from streamlearn.snapshots.verified import stored_snapshot
from streamlearn.statestore.redis_state import now_ms
from streamlearn.statestore.sharded import is_cluster
from streamlearn.streams.text import with_topic_vocabulary
from streamlearn.streams.access import KafkaAccessRefused
from streamlearn.streams.topics import delete_group, dlq_topic, ensure_topic, watermarks

log = logging.getLogger("streamlearn.jobs")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class JobError(UserError, RuntimeError):
    """A job command that cannot be done: unknown job, name taken, missing topic..."""


@dataclass
class JobSpec:
    name: str
    algorithm: str
    topic: str
    params: dict[str, Any] = field(default_factory=dict)
    until: str = "end"  # "end": finish at the end offsets recorded at creation; "never": unbounded
    snapshot_every: float | None = None  # seconds between periodic snapshots (unbounded jobs)
    parent: dict[str, Any] | None = None  # {"job", "version"} of the snapshot it was trained from
    start_offsets: dict[int, int] = field(default_factory=dict)
    end_offsets: dict[int, int] = field(default_factory=dict)
    created_at: float = 0.0
    epochs: int = 1  # bounded jobs: passes over [start_offsets, end_offsets)
    gate: list[str] = field(default_factory=list)  # --gate expressions (monitoring.gate_expr)
    gate_min_records: int = 1  # the default gate: at least this many records applied
    profile_sample: float = 1.0  # share of the applied rows the profile's quantile sketches see
    gate_topic: str | None = None  # the gate scores its metrics on this topic's records (monitoring.gate_data)
    gate_offsets: dict[str, list[list[int]]] = field(default_factory=dict)  # their ranges, fixed at creation
    snapshot_topic: str | None = None  # its own snapshot topic (None: $STREAMLEARN_SNAPSHOT_TOPIC or the default)

    @property
    def dlq_topic(self) -> str:
        return dlq_topic(self.topic)

    @property
    def group_id(self) -> str:
        return f"streamlearn.{self.name}"

    def algorithm_instance(self) -> Algorithm:
        return make_algorithm(self.algorithm, self.params)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str) -> "JobSpec":
        d = json.loads(text)
        d["start_offsets"] = {int(p): int(o) for p, o in d["start_offsets"].items()}
        d["end_offsets"] = {int(p): int(o) for p, o in d["end_offsets"].items()}
        return cls(**d)


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name or ""):
        raise JobError(f"invalid job name {name!r}: use letters, digits, '.', '_' or '-' (at most 100), starting with a letter or digit")


def load_spec(client: redis.Redis, name: str) -> JobSpec:
    check_name(name)
    raw = JobRecord(client, name).spec_json()
    if raw is None:
        raise JobError(f"unknown job {name!r}; `streamlearn job list` shows the jobs")
    return JobSpec.from_json(raw)


def create_job(client: redis.Redis, kafka_conf: dict, name: str, algorithm: str, topic: str,
               params: dict[str, Any] | None = None, until: str = "end",
               snapshot_every: float | None = None, from_snapshot: str | None = None,
               epochs: int | None = None, gate: list[str] | None = None,
               gate_min_records: int = 1, origin: dict[str, Any] | None = None,
               gate_topic: str | None = None, gate_offsets: str | None = None,
               snapshot_topic: str | None = None) -> JobSpec:
    """Validate, record the topic's offsets, run ``initialize`` once and mark the job running.

    ``from_snapshot`` ("JOB" or "JOB@VERSION") trains incrementally: the state starts from
    that snapshot's training state (``Algorithm.initialize_from``) and the lineage records it.
    ``epochs`` (or ``params["epochs"]`` when the algorithm has no such parameter): a bounded
    job reads its topic range that many times. ``gate``: ``--gate`` expressions every snapshot
    must pass to be published, besides the default gate (finite arrays, at least
    ``gate_min_records`` records applied). ``gate_topic`` (``gate_offsets`` ``"P:A-B,…"``):
    the expressions' metrics are scored on those records (``Model.score``: any metric the
    algorithm's models report), which must not be training data of the job or its parent.
    ``origin``: what started the job, recorded in its lineage (a tuning trial: ``{"study", "trial"}``).
    ``snapshot_topic``: the job's own snapshot topic (e.g. one per tenant, for Kafka ACLs).
    """
    check_name(name)
    if snapshot_topic is not None and not _TOPIC.fullmatch(snapshot_topic):
        raise JobError(f"invalid snapshot topic {snapshot_topic!r}: letters, digits, '.', '_' or '-' (at most 249)")
    if gate_min_records < 1:
        raise GateError(f"--gate-min-records must be at least 1, got {gate_min_records}")
    for text in gate or []:  # malformed: refused before anything is read or written
        parse_gate(text)
    if gate_offsets is not None and gate_topic is None:
        raise GateError("--gate-offsets goes with --gate-topic")
    if until not in ("end", "never"):
        raise JobError(f"--until must be 'end' or 'never', not {until!r}")
    if snapshot_every is not None and not snapshot_every > 0:
        raise JobError("--snapshot-every must be a positive number of seconds")
    parent, parent_model, parent_state, parent_params = (_parent_model(client, from_snapshot, algorithm)
                                                         if from_snapshot else (None, None, None, {}))
    # a continued job keeps its parent's parameters unless told otherwise (they size the state)
    params, epochs = _job_epochs(algorithm, {**parent_params, **(params or {})}, epochs, until)
    algo = make_algorithm(algorithm, with_topic_vocabulary(client, algorithm_class(algorithm), topic, params))
    if algo.synchronous and is_cluster(client):  # its rounds' check-and-set needs one atomic cut
        raise JobError(f"{algorithm} with aggregation=sync needs a single-node Redis, not a Redis Cluster")
    marks = watermarks(kafka_conf, topic)  # raises for a missing topic
    if "partitions" in algo.param_names():  # the algorithm stripes its state by partition (deepar)
        algo = make_algorithm(algorithm, {**algo.get_params(), "partitions": len(marks)})
    algo, sample = with_data_contract(kafka_conf, topic, marks, algo, bounded=until == "end")
    n_records = sample.n_records
    if parent_model is not None:
        algo.check_continuable(parent_model, parent_state)
    if epochs is None:  # enough passes for small bounded data, where the learner gains from them
        epochs = default_epochs(n_records) if until == "end" and algo.multi_pass else 1
    gates = (parse_gates(gate, gate_metric_names(algo), " (--gate-topic T scores any metric its models report)")
             if gate_topic is None else parse_gates(gate, sample_model(algo).metric_names() + (RECORDS,)))
    gate_data = (_gate_data(client, kafka_conf, name, algo, topic, marks, until == "end", parent, gate_topic,
                            gate_offsets, gates) if gate_topic is not None else None)
    spec = JobSpec(name=name, algorithm=algorithm, topic=topic, params=algo.get_params(), until=until,
                   snapshot_every=snapshot_every, parent=parent, start_offsets={p: lo for p, (lo, _) in marks.items()},
                   end_offsets={p: hi for p, (_, hi) in marks.items()} if until == "end" else {},
                   created_at=time.time(), epochs=epochs, gate=gates, gate_min_records=gate_min_records,
                   profile_sample=sample_fraction(_expected_rows(n_records, marks, epochs) if until == "end" else None),
                   gate_topic=gate_topic, gate_offsets=ranges_to_json(gate_data.ranges) if gate_data else {},
                   snapshot_topic=snapshot_topic)
    ensure_topic(kafka_conf, spec.dlq_topic, partitions=1)
    _prepare_snapshot_topic(kafka_conf, spec)
    record = JobRecord(client, name)
    if not record.claim(spec.to_json()):
        raise JobError(f"job {name!r} already exists")
    registry = Registry(client)
    try:  # all or nothing: a failure (a refused write, an outage) leaves no half-created job
        registry.record_job(name, job_lineage(spec, sample, origin))
        state = record.state()
        if parent_model is None:
            algo.initialize(state)
        else:
            algo.initialize_from(state, parent_model, parent_state)
        state.commit()
        record.start(spec.start_offsets)
        registry.store.register_job(name)
        record.enlist()
    except BaseException:
        registry.forget_job(name)
        record.undo_claim()
        raise
    return spec


def _prepare_snapshot_topic(kafka_conf: dict, spec: JobSpec) -> None:
    """Create the job's snapshot topic now when it is missing, so that its first snapshot does
    not wait for it (on a fresh local stack: 0.2 s to create it, and the first 38 MB produce to
    the new topic 0.44 s). A topic that cannot be created now is left to the first snapshot,
    which creates it or reports why not, as before."""
    try:
        ensure_snapshot_topic(kafka_conf, spec.snapshot_topic)
    except (SnapshotPublishError, KafkaAccessRefused) as exc:
        log.info("job %s: snapshot topic not prepared at create (%s); its first snapshot creates it", spec.name, exc)


def _gate_data(client: redis.Redis, kafka_conf: dict, name: str, algo: Algorithm, topic: str, marks: dict,
               bounded: bool, parent: dict[str, Any] | None, gate_topic: str, gate_offsets: str | None,
               gates: list[str]) -> GateData:
    """The ``--gate-topic`` records, read now: they fit the model, a ``--gate`` scores a
    metric on them, and none is a training record of this job or of its ancestors."""
    if not gate_metrics(gates):
        raise GateError("--gate-topic needs a --gate on a metric the data is scored with (e.g. 'auc>=published-0.005')")
    data = read_gate_data(client, kafka_conf, algo, gate_topic, parse_offsets(gate_offsets) if gate_offsets else None)
    own = planned_training_data(f"{name} (this job)", topic, {p: lo for p, (lo, _) in marks.items()},
                                {p: hi for p, (_, hi) in marks.items()}, bounded)
    ancestors = lineage_data(Registry(client), parent["job"], parent["version"]) if parent else []
    check_held_out(data, [own, *ancestors])
    return data


def _expected_rows(n_records: int, marks: dict, epochs: int) -> int:
    """Rows a bounded job will apply, for the profile's sample rate: the data contract's count,
    or, when it did not sample the topic, its messages (at least one record each: a lower
    bound, so the sketches see at least their target number of rows)."""
    return (n_records or sum(hi - lo for lo, hi in marks.values())) * epochs


def with_data_contract(kafka_conf: dict, topic: str, marks: dict, algo: Algorithm,
                        bounded: bool) -> tuple[Algorithm, TopicSample]:
    """(the algorithm with its "auto" parameters inferred from the topic's records, after
    checking its explicit ones against them; the topic's sample, empty when not sampled:
    ``n_records`` in the topic range, writer ``schemas``) — streamlearn/runtime/contract.py."""
    params = algo.get_params()
    if not ({"n_features", "classes", "mini_batch_size"} & set(params)):
        return algo, TopicSample(topic)
    sample = sample_topic(kafka_conf, topic, marks)
    inferred = infer_params(algo, sample, bounded)
    return (make_algorithm(algo.name, {**params, **inferred}) if inferred else algo), sample


def job_lineage(spec: JobSpec, sample: TopicSample, origin: dict[str, Any] | None) -> dict[str, Any]:
    """What the registry records of a job at creation: its spec, what started it, the data
    it is given (offset ranges, sampled record count, writer schemas) and who/what created it."""
    return {"job": spec.name, "algorithm": spec.algorithm, "params": spec.params, "topic": spec.topic,
            "until": spec.until, "epochs": spec.epochs, "parent": spec.parent, "origin": origin,
            "created_at": _dt.datetime.fromtimestamp(spec.created_at, _dt.timezone.utc).isoformat(),
            "start_offsets": {str(p): o for p, o in sorted(spec.start_offsets.items())},
            "end_offsets": {str(p): o for p, o in sorted(spec.end_offsets.items())},
            "records": sample.n_records, "schemas": sorted(sample.schemas), **provenance()}


def _job_epochs(algorithm: str, params: dict[str, Any], epochs: int | None,
                until: str) -> tuple[dict[str, Any], int | None]:
    """(the algorithm's params, the job's epochs; None: not given, sized from the data): ``epochs``
    is a job parameter, also accepted as ``--param epochs=E`` unless the algorithm declares a
    parameter of that name."""
    if "epochs" in params and "epochs" not in algorithm_class(algorithm).param_names():
        given = params.pop("epochs")
        if epochs is not None and str(epochs) != str(given).strip():
            raise JobError(f"--epochs {epochs} and --param epochs={given} disagree")
        epochs = given
    if epochs is None or str(epochs).strip() == "auto":
        return params, None
    try:
        value = int(str(epochs).strip())
    except ValueError:
        raise JobError(f"epochs must be a positive integer, got {epochs!r}") from None
    if value < 1:
        raise JobError(f"epochs must be a positive integer, got {epochs!r}")
    if value > 1 and until != "end":
        raise JobError("epochs > 1 needs a bounded job (--until end): an unbounded stream has no end to start over from")
    if value > 1 and algorithm_class(algorithm).single_pass:
        raise JobError(f"{algorithm} reads its records once: epochs must be 1, got {value} "
                       "(a second pass over the same points would look like time going backwards)")
    return params, value


def _parent_model(client: redis.Redis, ref: str, algorithm: str):
    """Resolve "JOB[@VERSION]" to (lineage link, verified model, its training state, its
    parameters) for incremental training."""
    job, _, version_text = ref.partition("@")
    check_name(job)
    store = ModelStore(client)
    try:
        version = int(version_text) if version_text else store.latest_version(job)
    except ValueError:
        raise JobError(f"--from-snapshot takes JOB or JOB@VERSION, got {ref!r}") from None
    if version is None:
        raise JobError(f"--from-snapshot: job {job!r} has no snapshot")
    snapshot = stored_snapshot(store, job, version, with_state=True)
    if snapshot.metadata.get("algorithm") != algorithm:
        raise JobError(f"--from-snapshot: {ref} is a {snapshot.metadata.get('algorithm')} model, not {algorithm}")
    parent_params = snapshot.metadata.get("params") or {}
    return {"job": job, "version": version}, load_model(snapshot), dict(snapshot.state), dict(parent_params)


def set_paused(client: redis.Redis, name: str, paused: bool) -> str:
    """Pause or resume. Workers stay in the group but stop consuming; resume continues
    from the stored offsets (``initialize`` is never called again). A barrier: every batch
    commit checks the status in its own transaction, so none is applied once this returns."""
    load_spec(client, name)
    wanted = "paused" if paused else "running"
    before = JobRecord(client, name).change_status(wanted)
    if before in ENDED:
        raise JobError(f"job {name!r} is {before}; it cannot be paused or resumed")
    return wanted


def job_status(client: redis.Redis, name: str) -> dict[str, Any]:
    """What ``streamlearn job status`` prints (nothing secret: no settings, no URLs)."""
    spec = load_spec(client, name)
    view = JobRecord(client, name).read_status()
    counters, partitions = view.counters, view.offsets
    partition_epochs = {p: view.data_epochs.get(p, 0) for p in sorted(partitions)}
    state = view.status or "unknown"
    return {
        "job": name,
        "algorithm": spec.algorithm,
        "topic": spec.topic,
        "params": spec.params,
        "until": spec.until,
        "state": state,
        "reason": view.reason,
        "epochs": spec.epochs,
        "epoch": min(partition_epochs.values(), default=0),
        "partition_epochs": {str(p): e for p, e in partition_epochs.items()},
        "records_applied": counters.get("records_applied", 0),
        "records_dead_lettered": counters.get("records_dead_lettered", 0),
        "initialize_calls": counters.get("initialize_calls", 0),
        "finalize_calls": counters.get("finalize_calls", 0),
        "commits": counters.get("commits", 0),
        "partitions": {str(p): o for p, o in sorted(partitions.items())},
        "end_offsets": {str(p): o for p, o in sorted(spec.end_offsets.items())},
        "members": view.members,
        "snapshot_version": view.snapshot_version,
        "records_per_second": _rate(view.rate) if state == "running" else 0.0,
    }


#: how far back ``records_per_second`` looks: the current rate, not the job's average
RATE_WINDOW_MS = 5_000


def _rate(samples: list[bytes], now: int | None = None) -> float:
    """Records per second over the commits of the last ``RATE_WINDOW_MS`` (the list holds
    ``ms:records``, newest first; a job that started within the window is measured from its
    first commit, whose own records came before it)."""
    now = now_ms() if now is None else now
    parsed = [tuple(int(x) for x in s.decode().split(":")) for s in samples]
    recent = [(t, n) for t, n in parsed if t > now - RATE_WINDOW_MS]
    if not recent:
        return 0.0
    if len(recent) < len(parsed):
        return round(sum(n for _, n in recent) / (RATE_WINDOW_MS / 1000.0), 1)
    span = now - recent[-1][0]
    if len(recent) < 2 or span <= 0:
        return 0.0
    return round(sum(n for _, n in recent[:-1]) / (span / 1000.0), 1)


def fail_job(client: redis.Redis, name: str, reason: str) -> bool:
    """Mark the job ``failed`` with ``reason`` (one line) unless it already ended; returns
    whether this call failed it. Workers see it and exit non-zero."""
    return JobRecord(client, name).change_status("failed", reason) not in ENDED


def delete_job(client: redis.Redis, kafka_conf: dict, name: str, force: bool = False,
               timeout_s: float = 60.0) -> None:
    """Remove the job: its Redis keys, its entry in the jobs set and its Kafka consumer group.

    A job with live workers needs ``force``: its status becomes ``deleting``, its workers
    see it within a control interval, commit nothing more (the commit checks the status) and
    exit 0; this waits up to ``timeout_s`` for them to leave. Published snapshots stay in the
    model store: they are models, with their own lineage, not the job's training state.
    """
    spec = load_spec(client, name)
    record = JobRecord(client, name)
    members = record.live_members()
    if members and not force:
        raise JobError(f"job {name!r} has {len(members)} running worker(s); stop them or use --force")
    if members:
        record.set_status("deleting")
        deadline = time.monotonic() + timeout_s
        while record.live_members():
            if time.monotonic() > deadline:
                raise JobError(f"job {name!r}: workers still running after {timeout_s:.0f} s; nothing deleted "
                               f"(the job stays 'deleting': run `job delete --force` again)")
            time.sleep(0.2)
    record.delete()
    delete_group(kafka_conf, spec.group_id)


def list_jobs(client: redis.Redis) -> list[dict[str, Any]]:
    out = []
    for name in JobRecord.names(client):
        record = JobRecord(client, name)
        status, spec = record.status(), record.spec_json()
        if spec is None:
            continue
        s = JobSpec.from_json(spec)
        out.append({"job": name, "algorithm": s.algorithm, "topic": s.topic, "state": status or "?"})
    return out


def is_complete(spec: JobSpec, offsets: dict[int, int]) -> bool:
    """A bounded job is complete when every partition's stored offset reached its end."""
    return spec.until == "end" and all(offsets.get(p, -1) >= end for p, end in spec.end_offsets.items())
