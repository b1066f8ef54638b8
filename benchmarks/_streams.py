"""Data sets, topics, raw consumption and real jobs (worker processes) for the cases.

Everything is memoized on the :class:`~benchmarks._core.Context`, so a run that asks for
several cases produces each data set to Kafka once and every ratio compares figures
measured on the same topic in the same run.
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from benchmarks._core import Context, fmt_s


# -- data sets --------------------------------------------------------------------------------
def dense(ctx: Context):
    """The linear learner's reference set: (Xtr, ytr, Xte, yte), 80/20 by position."""
    def make():
        from streamlearn import datasets

        ctx.log(f"generating dense_classification({ctx.p['dense_rows']}, {ctx.p['dense_d']})")
        X, y = datasets.dense_classification(ctx.p["dense_rows"], ctx.p["dense_d"])
        return datasets.split(X, y)
    return ctx.memo("data:dense", make)


def median_data(ctx: Context):
    def make():
        rng = np.random.default_rng(7)
        return rng.lognormal(0.0, 1.0, (ctx.p["median_rows"], 1)).astype(np.float32)  # true median 1.0
    return ctx.memo("data:median", make)


def sparse(ctx: Context):
    """Hashed sparse set (2**20 features in the full profile): (Xtr, ytr, Xte, yte)."""
    def make():
        from streamlearn import datasets

        ctx.log(f"generating sparse_classification({ctx.p['sparse_rows']}, 2**{int(np.log2(ctx.p['sparse_features']))})")
        X, y = datasets.sparse_classification(ctx.p["sparse_rows"], ctx.p["sparse_features"])
        return datasets.split(X, y)
    return ctx.memo("data:sparse", make)


# -- topics -----------------------------------------------------------------------------------
@dataclass
class Produced:
    topic: str
    records: int
    messages: int
    seconds: float  # send_batch + flush (every message acknowledged by the broker)
    n_features: int


def produce(ctx: Context, key: str, X, y=None, message_rows: int | None = None) -> Produced:
    """Produce a data set once per run to a fresh topic (timed: the producer leg of e2e), in
    messages of ``message_rows`` rows (default: the profile's)."""
    rows = message_rows or ctx.p["message_rows"]

    def make():
        from streamlearn.streams.producer import Producer
        from streamlearn.streams.topics import ensure_topic

        s = ctx.settings
        topic = ctx.name(key)
        ensure_topic(s.kafka_client_conf(), topic, partitions=ctx.p["partitions"])
        n = X.shape[0]
        ctx.log(f"producing {n} rows to {topic} ({ctx.p['partitions']} partitions, {rows} rows/message)")
        t0 = time.perf_counter()
        with Producer(s.kafka, s.kafka_conf) as p:
            p.send_batch(topic, X, y, batch_size=rows)
            msgs = p.messages_sent
        dt = time.perf_counter() - t0
        ctx.log(f"produced in {dt:.1f} s")
        return Produced(topic, n, msgs, dt, int(X.shape[1]))
    return ctx.memo(("topic", key), make)


def raw_consume(ctx: Context, prod: Produced) -> dict:
    """The ingest limit: one confluent-kafka consumer (the worker's fetch settings) reads
    the whole topic and turns every message's dense feature block into numpy
    (``np.frombuffer`` at the block's offset, then one concatenation per consume call, as
    the worker's decode does). No validation, no training, no Redis."""
    def make():
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from streamlearn.runtime.worker import FETCH_CONF
        from streamlearn.wire.serde import read_long as avro_long
        from streamlearn.wire.serde import HEADER_LEN
        from streamlearn.streams.topics import watermarks

        s = ctx.settings
        marks = watermarks(s.kafka_client_conf(), prod.topic)
        c = Consumer(s.kafka_client_conf(**{
            "group.id": ctx.name("raw-" + prod.topic), "enable.auto.commit": False,
            "auto.offset.reset": "earliest", **FETCH_CONF}))
        c.assign([TopicPartition(prod.topic, p, OFFSET_BEGINNING) for p in marks])
        remaining = {p: hi for p, (lo, hi) in marks.items() if hi > lo}
        left = sum(hi - lo for lo, hi in marks.values())  # ask for no more than is left: no tail wait
        rows = nbytes = 0
        t0 = time.perf_counter()
        while remaining:
            msgs = c.consume(num_messages=max(1, min(500, left)), timeout=1.0)
            parts = []
            for m in msgs:
                if m.error():
                    continue
                v = m.value()
                n_rows, pos = avro_long(v, HEADER_LEN)
                d, pos = avro_long(v, pos)
                pos += 1  # union branch of "dense"
                length, pos = avro_long(v, pos)
                parts.append(np.frombuffer(v, dtype="<f4", count=n_rows * d, offset=pos).reshape(n_rows, d))
                nbytes += len(v)
                left -= 1
                p = m.partition()
                if p in remaining and m.offset() + 1 >= remaining[p]:
                    del remaining[p]
            if parts:
                X = np.concatenate(parts)
                rows += X.shape[0]
            if time.perf_counter() - t0 > ctx.p["case_timeout_s"]:
                raise TimeoutError("raw consume did not finish")
        dt = time.perf_counter() - t0
        c.close()
        return {"rows": rows, "seconds": dt, "rate": rows / dt, "bytes_per_s": nbytes / dt}
    return ctx.memo(("raw", prod.topic), make)


def warm_broker(ctx: Context) -> None:
    """Produce and consume ``broker_warmup_rows`` dense rows once, untimed, then delete the
    topic: a freshly started broker JVM interprets its produce path until the JIT has seen a
    few hundred MB (broker CPU per 160 MB fell 0.53 -> 0.27 s over the first 1 GB), and every
    figure here (the limits included) should describe a warm broker, as Spark's fits are
    measured after a warm-up fit."""
    n = ctx.p["broker_warmup_rows"]
    if n <= 0:
        return
    from confluent_kafka.admin import AdminClient

    ctx.log(f"warming the broker up: {n} rows produced and consumed, not timed")
    X = np.random.default_rng(1).random((n, ctx.p["dense_d"]), dtype=np.float32)
    prod = produce(ctx, "warmup", X)
    raw_consume(ctx, prod)
    admin = AdminClient(ctx.settings.kafka_client_conf())  # alive until the futures resolve
    for f in admin.delete_topics([prod.topic], operation_timeout=30).values():
        f.result(timeout=60)


# -- jobs with real worker processes -----------------------------------------------------------
@dataclass
class JobRun:
    job: str
    workers: int
    seconds: float  # create_job -> job finished with its snapshot stored
    records: int
    model: object
    status: dict


def _start_workers(ctx: Context, job: str, workers: int, env: dict | None) -> list[subprocess.Popen]:
    full_env = {**ctx.worker_env(), **(env or {})}
    logs = ctx.tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", job], env=full_env,
                             stdout=open(logs / f"{job}-{i}.log", "w"), stderr=subprocess.STDOUT)
            for i in range(workers)]


def _wait(ctx: Context, job: str, procs: list[subprocess.Popen], done, what: str) -> dict:
    """Poll the job's status every 20 ms until ``done(status)``; fail on a dead worker or timeout."""
    from streamlearn.runtime.jobs import job_status

    client = ctx.settings.redis_client()
    deadline = time.monotonic() + ctx.p["case_timeout_s"]
    while True:
        st = job_status(client, job)
        if done(st):
            return st
        dead = [p for p in procs if p.poll() not in (None, 0)]
        if dead:
            raise RuntimeError(f"worker exited with {dead[0].returncode}; see {ctx.tmp / 'logs' / job}-*.log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job}: {what} not reached after {ctx.p['case_timeout_s']} s "
                               f"({st.get('records_applied')} records applied)")
        time.sleep(0.02)


def _stop(procs: list[subprocess.Popen], signal_first: bool) -> None:
    for p in procs:
        if signal_first and p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class LiveRun:
    job: str
    workers: int
    records: int
    seconds: float  # first send -> a snapshot covering every record is stored
    produce_seconds: float  # first send -> flush returned (producer and workers overlap)
    snapshot_seconds: float  # last record applied -> snapshot stored
    model: object

    def timeline(self) -> str:
        return (f"first send -> snapshot stored {fmt_s(self.seconds)} (producer done at "
                f"{fmt_s(self.produce_seconds)}, snapshot {fmt_s(self.snapshot_seconds)} after the last record)")


def run_live(ctx: Context, key: str, X, y, algorithm: str, params: dict, workers: int = 1) -> LiveRun:
    """Producer and training at once, as a streaming deployment runs: an unbounded job
    (``until=never``) whose workers have joined the group and own every partition before
    the first record is sent. Timed from the first ``send_batch`` call until every record
    is applied and a snapshot of that state is stored (``streamlearn snapshot``'s path).
    Worker start-up is not in the figure (a live job's workers are already running), nor is
    the producer's (it has fetched the topic's metadata and its idempotent producer id with
    one record sent to a side topic: a fresh broker's "coordinator load in progress" had
    added 0.1-0.6 s to the first send); the producer, broker, workers and Redis share the
    machine's cores throughout."""
    from streamlearn.runtime.jobs import create_job, load_spec
    from streamlearn.runtime.finalize import publish
    from streamlearn.snapshots.format import decode_snapshot, load_model
    from streamlearn.snapshots.publisher import ensure_snapshot_topic
    from streamlearn.snapshots.store import ModelStore
    from streamlearn.statestore.keys import StoreKeys
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    s = ctx.settings
    client = s.redis_client()
    topic = ctx.name(f"{key}-live-w{workers}")
    parts = ctx.p["partitions"]
    ensure_topic(s.kafka_client_conf(), topic, partitions=parts)
    job = ctx.name(f"{algorithm}-{key}-live-w{workers}")
    create_job(client, s.kafka_client_conf(), job, algorithm, topic, params, until="never")
    # a deployment's snapshot topic exists (its first publish, or `streamlearn snapshot-topic
    # setup`, made it); created by the publish, a new topic's leader election would be timed
    ensure_snapshot_topic(s.kafka_client_conf())
    procs = _start_workers(ctx, job, workers, None)
    try:
        epochs = StoreKeys(job).epochs
        _wait(ctx, job, procs, lambda st: len(st.get("members", [])) >= workers and client.hlen(epochs) >= parts,
              "every worker joined and every partition assigned")
        time.sleep(1.0)  # let a last rebalance settle: no partition may be moving when the clock starts
        n = X.shape[0]
        warm = ctx.name("producer-warm-up")
        ensure_topic(s.kafka_client_conf(), warm, partitions=1)
        with Producer(s.kafka, s.kafka_conf) as p:
            p.n_partitions(topic)
            p.send_record(warm, [0.0])
            p.flush()
            t0 = time.perf_counter()
            p.send_batch(topic, X, y, batch_size=ctx.p["message_rows"])
            p.flush()
            t_prod = time.perf_counter() - t0
        _wait(ctx, job, procs, lambda st: st.get("records_applied", 0) >= n, "every record applied")
        t_applied = time.perf_counter()
        version = publish(s, client, load_spec(client, job), final=False)
        dt = time.perf_counter() - t0
    finally:
        _stop(procs, signal_first=True)
    model = load_model(decode_snapshot(ModelStore(client).get(job, version)))
    return LiveRun(job, workers, n, dt, t_prod, t0 + dt - t_applied, model)


def run_job(ctx: Context, prod: Produced, algorithm: str, params: dict, workers: int = 1,
            env: dict | None = None, tag: str = "", together: bool = False) -> JobRun:
    """create_job (bounded: until the end offsets at creation), start ``workers``
    ``python -m streamlearn worker`` processes, wait until the job is finished and its
    final snapshot stored; load the model from the snapshot store. ``together``: the job is
    paused until every worker has joined (and the group has settled), so that all of them
    train concurrently from the first record (a small job is otherwise done by the first
    worker to join); the time counts from the resume."""
    from streamlearn.runtime.jobs import create_job, set_paused
    from streamlearn.snapshots.format import decode_snapshot, load_model
    from streamlearn.snapshots.store import ModelStore

    s = ctx.settings
    client = s.redis_client()
    job = ctx.name(f"{algorithm}-{tag or prod.topic.split('-')[1]}-w{workers}")
    t0 = time.perf_counter()
    create_job(client, s.kafka_client_conf(), job, algorithm, prod.topic, params, until="end")
    if together:
        set_paused(client, job, True)
    procs = _start_workers(ctx, job, workers, env)
    try:
        if together:
            _wait(ctx, job, procs, lambda st: len(st.get("members", ())) >= workers, f"{workers} members")
            time.sleep(ctx.p["group_settle_s"])  # the consumer group's last rebalance hands out the partitions
            set_paused(client, job, False)
            t0 = time.perf_counter()
        st = _wait(ctx, job, procs, lambda st: st.get("state") == "finished" and st.get("snapshot_version") is not None,
                   "finished with its snapshot")
        dt = time.perf_counter() - t0
    finally:
        _stop(procs, signal_first=False)
    model = load_model(decode_snapshot(ModelStore(client).get(job)))
    return JobRun(job, workers, dt, int(st.get("records_applied", 0)), model, st)
