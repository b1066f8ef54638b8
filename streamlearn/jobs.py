"""Job specs and control: create, pause, resume, status, list.

A job is a named training run: an algorithm with its parameters over a topic. Its spec,
status, state and offsets live in Redis under ``sl:{job}:*`` (see statestore/keys.py).
``initialize`` runs here, once, at creation; workers only ever update.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from streamlearn.algorithms import Algorithm, make_algorithm
from streamlearn.statestore.keys import JOBS, JobKeys
from streamlearn.statestore.redis_state import MEMBER_TIMEOUT_MS, RedisState, now_ms

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SNAPSHOT_TOPIC = "streamlearn.snapshots"


class JobError(RuntimeError):
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

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

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
    if not _NAME.match(name or ""):
        raise JobError(f"invalid job name {name!r}: use letters, digits, '.', '_' or '-' (at most 100), starting with a letter or digit")


def load_spec(client: redis.Redis, name: str) -> JobSpec:
    check_name(name)
    raw = client.get(JobKeys(name).spec)
    if raw is None:
        raise JobError(f"unknown job {name!r}; `streamlearn job list` shows the jobs")
    return JobSpec.from_json(raw)


def create_job(client: redis.Redis, kafka_conf: dict, name: str, algorithm: str, topic: str,
               params: dict[str, Any] | None = None, until: str = "end",
               snapshot_every: float | None = None, from_snapshot: str | None = None) -> JobSpec:
    """Validate, record the topic's offsets, run ``initialize`` once and mark the job running.

    ``from_snapshot`` ("JOB" or "JOB@VERSION") trains incrementally: the state starts from
    that snapshot's model (``Algorithm.initialize_from``) and the lineage records it.
    """
    from streamlearn.streams.topics import ensure_topic, watermarks

    check_name(name)
    if until not in ("end", "never"):
        raise JobError(f"--until must be 'end' or 'never', not {until!r}")
    if snapshot_every is not None and not snapshot_every > 0:
        raise JobError("--snapshot-every must be a positive number of seconds")
    from streamlearn.algorithms import algorithm_class
    from streamlearn.streams.text import with_topic_vocabulary

    algo = make_algorithm(algorithm, with_topic_vocabulary(client, algorithm_class(algorithm), topic, params or {}))
    parent, parent_model = _parent_model(client, from_snapshot, algorithm) if from_snapshot else (None, None)
    marks = watermarks(kafka_conf, topic)  # raises for a missing topic
    spec = JobSpec(name=name, algorithm=algorithm, topic=topic, params=algo.get_params(), until=until,
                   snapshot_every=snapshot_every, parent=parent, start_offsets={p: lo for p, (lo, _) in marks.items()},
                   end_offsets={p: hi for p, (_, hi) in marks.items()} if until == "end" else {},
                   created_at=time.time())
    keys = JobKeys(name)
    if not client.set(keys.spec, spec.to_json(), nx=True):
        raise JobError(f"job {name!r} already exists")
    client.sadd(JOBS, name)
    state = RedisState(client, name)
    if parent_model is None:
        algo.initialize(state)
    else:
        algo.initialize_from(state, parent_model)
    state.commit()
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.offsets, mapping={str(p): o for p, o in spec.start_offsets.items()})
    pipe.hset(keys.counters, mapping={"records_applied": 0, "records_dead_lettered": 0, "initialize_calls": 1,
                                      "finalize_calls": 0})
    pipe.set(keys.status, "running")
    pipe.execute()
    ensure_topic(kafka_conf, spec.dlq_topic, partitions=1)
    return spec


def _parent_model(client: redis.Redis, ref: str, algorithm: str):
    """Resolve "JOB[@VERSION]" to (lineage link, verified model) for incremental training."""
    from streamlearn.snapshots.format import decode_snapshot, load_model
    from streamlearn.snapshots.store import ModelStore

    job, _, version_text = ref.partition("@")
    check_name(job)
    store = ModelStore(client)
    try:
        version = int(version_text) if version_text else store.latest_version(job)
    except ValueError:
        raise JobError(f"--from-snapshot takes JOB or JOB@VERSION, got {ref!r}") from None
    if version is None:
        raise JobError(f"--from-snapshot: job {job!r} has no snapshot")
    snapshot = decode_snapshot(store.get(job, version))
    if snapshot.metadata.get("algorithm") != algorithm:
        raise JobError(f"--from-snapshot: {ref} is a {snapshot.metadata.get('algorithm')} model, not {algorithm}")
    return {"job": job, "version": version}, load_model(snapshot)


def set_paused(client: redis.Redis, name: str, paused: bool) -> str:
    """Pause or resume. Workers stay in the group but stop consuming; resume continues
    from the stored offsets (``initialize`` is never called again)."""
    load_spec(client, name)
    keys = JobKeys(name)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.status)
                status = (pipe.get(keys.status) or b"").decode()
                if status == "finished":
                    raise JobError(f"job {name!r} is finished; it cannot be paused or resumed")
                pipe.multi()
                pipe.set(keys.status, "paused" if paused else "running")
                pipe.execute()
                return "paused" if paused else "running"
            except redis.WatchError:
                continue


def job_status(client: redis.Redis, name: str) -> dict[str, Any]:
    """What ``streamlearn job status`` prints (nothing secret: no settings, no URLs)."""
    spec = load_spec(client, name)
    keys = JobKeys(name)
    pipe = client.pipeline(transaction=True)
    pipe.get(keys.status)
    pipe.hgetall(keys.counters)
    pipe.hgetall(keys.offsets)
    pipe.zrangebyscore(keys.members, now_ms() - MEMBER_TIMEOUT_MS, "+inf")
    pipe.lrange(keys.rate, 0, -1)
    pipe.hget(keys.counters, "snapshot_version")
    status, counters, offsets, members, rate, snapshot_version = pipe.execute()
    counters = {k.decode(): int(v) for k, v in counters.items()}
    partitions = {int(p): int(o) for p, o in offsets.items()}
    return {
        "job": name,
        "algorithm": spec.algorithm,
        "topic": spec.topic,
        "params": spec.params,
        "until": spec.until,
        "state": (status or b"unknown").decode(),
        "records_applied": counters.get("records_applied", 0),
        "records_dead_lettered": counters.get("records_dead_lettered", 0),
        "initialize_calls": counters.get("initialize_calls", 0),
        "finalize_calls": counters.get("finalize_calls", 0),
        "commits": counters.get("commits", 0),
        "partitions": {str(p): o for p, o in sorted(partitions.items())},
        "end_offsets": {str(p): o for p, o in sorted(spec.end_offsets.items())},
        "members": sorted(m.decode() for m in members),
        "snapshot_version": None if snapshot_version is None else int(snapshot_version),
        "records_per_second": _rate(rate),
    }


def _rate(samples: list[bytes]) -> float:
    """Records per second over the recent commits (the list holds ``ms:records``, newest first)."""
    if len(samples) < 2:
        return 0.0
    parsed = [tuple(int(x) for x in s.decode().split(":")) for s in samples]
    newest, oldest = parsed[0][0], parsed[-1][0]
    if now_ms() - newest > 10_000 or newest <= oldest:
        return 0.0
    return round(sum(n for _, n in parsed[:-1]) / ((newest - oldest) / 1000.0), 1)


def list_jobs(client: redis.Redis) -> list[dict[str, Any]]:
    out = []
    for raw in sorted(client.smembers(JOBS)):
        name = raw.decode()
        status = client.get(JobKeys(name).status)
        spec = client.get(JobKeys(name).spec)
        if spec is None:
            continue
        s = JobSpec.from_json(spec)
        out.append({"job": name, "algorithm": s.algorithm, "topic": s.topic, "state": (status or b"?").decode()})
    return out


def is_complete(spec: JobSpec, offsets: dict[int, int]) -> bool:
    """A bounded job is complete when every partition's stored offset reached its end."""
    return spec.until == "end" and all(offsets.get(p, -1) >= end for p, end in spec.end_offsets.items())
