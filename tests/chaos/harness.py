"""Chaos harness: a bounded job on real processes while faults are injected, then invariants.

One run (:func:`run_chaos`):

1. produces ``records`` rows of integer-valued features to a fresh topic (column 0 is the
   record id 0..N-1), plus a few bad messages (garbage bytes, a NaN batch, a wrong-width
   batch) that must be dead-lettered, never applied;
2. creates a ``counter`` job (exact sums: ``n``, Σx, XᵀX and a per-record-id hit count)
   and starts worker processes (``python -m streamlearn worker``);
3. injects faults at seeded random intervals until the job finishes: SIGKILL / SIGTERM of
   a random worker, scaling between ``min_workers`` and ``max_workers``, SIGSTOP of a worker
   for longer than the session timeout then SIGCONT (a zombie holding a batch), a Redis
   restart (AOF, appendfsync always; graceful or SIGKILL), a Kafka broker restart, and the
   combinations "a member joins while Redis restarts" / "a member leaves while the broker
   restarts" (rebalance callbacks during an outage);
4. checks the invariants: the state equals numpy's exact sums over the produced data,
   every record id was applied exactly once (``lost`` = ids never applied, ``duplicated`` =
   extra applications), ``records_applied + records_dead_lettered == produced``, the stored
   offsets equal the end offsets, the job finished with ``finalize_calls == 1`` and
   ``initialize_calls == 1``, and the final snapshot holds the exact count.

It prints one summary line per run. The stack must be a private one (its own home, Redis
with AOF): the harness restarts its Redis and its broker.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter as Tally
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

REPO = Path(__file__).resolve().parents[2]

FAULTS = ("kill", "term", "scale", "stop", "redis", "kafka", "join_during_redis", "leave_during_kafka")
#: faults of a stack whose Redis is a Redis Cluster with replicas (``up(redis_cluster=3, redis_replicas=1)``):
#: a master of one of the job's slots SIGKILLed (its replica promoted), and one of the job's
#: slots migrated to another master (``redis-cli --cluster reshard``) while workers run
CLUSTER_FAULTS = ("kill", "stop", "failover", "reshard")


@dataclass(frozen=True)
class Profile:
    name: str
    records: int
    seed: int = 1
    dim: int = 4  # value columns (the id column comes on top)
    partitions: int = 6
    msg_rows: int = 10  # rows per Kafka message
    max_messages: int = 2  # messages per worker commit (small: many commits, long job)
    session_timeout_ms: int = 6000
    min_workers: int = 1
    max_workers: int = 4
    start_workers: int = 2
    fault_gap_s: tuple[float, float] = (2.0, 5.0)
    faults: tuple[str, ...] = FAULTS
    min_faults: int = 0  # keep injecting until at least this many (the job is paused-free; may finish first)
    timeout_s: float = 600.0
    #: ``stack.up`` arguments of the private stack the profile's faults need (name, value pairs)
    stack: tuple[tuple[str, object], ...] = (("redis_aof", True), ("redis_appendfsync", "always"))


PROFILES = {
    # CI: every fault kind once, in a seeded order, on a job that lasts about a minute
    # (one 5-row message per commit: the job must outlast the faults however fast workers get;
    # with 10-row messages and 2 per commit it ended before the faults once BLAS was pinned)
    "short": Profile("short", records=150_000, seed=1, msg_rows=5, max_messages=1, fault_gap_s=(1.0, 2.5)),
    # minutes: more data, more faults, each kind several times (paced like "short": with
    # 10-row messages, 4 per commit, the faster state path finished it in 54 s, 6 faults)
    "long": Profile("long", records=600_000, seed=7, msg_rows=5, max_messages=2, fault_gap_s=(2.0, 6.0),
                    timeout_s=1800.0),
    # a Redis Cluster (sharded state): each cluster fault once or more, besides worker faults
    "cluster": Profile("cluster", records=60_000, seed=3, msg_rows=5, max_messages=2, fault_gap_s=(1.0, 2.5),
                       faults=CLUSTER_FAULTS, timeout_s=900.0,
                       stack=(("redis_cluster", 3), ("redis_replicas", 1))),
}


@dataclass
class RunResult:
    profile: str
    seed: int
    faults: Tally = field(default_factory=Tally)
    records: int = 0  # produced records, good + bad
    good: int = 0
    applied: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicated: int = 0
    fenced: int = 0  # stale batches that workers dropped (FencedError), from the logs
    crashes: list = field(default_factory=list)  # unexpected worker exit codes
    finalize_calls: int = 0
    elapsed_s: float = 0.0
    leave_s: list = field(default_factory=list)  # SIGTERM -> exit, per graceful stop
    failures: list = field(default_factory=list)  # broken invariants, in words

    @property
    def ok(self) -> bool:
        return not self.failures and self.lost == 0 and self.duplicated == 0

    def summary(self) -> str:
        kinds = " ".join(f"{k}={self.faults[k]}" for k in FAULTS if self.faults[k])
        leave = f"{max(self.leave_s):.1f}s" if self.leave_s else "-"
        line = (f"chaos[{self.profile} seed={self.seed}] faults={sum(self.faults.values())} ({kinds}) "
                f"records={self.records} lost={self.lost} duplicated={self.duplicated} "
                f"applied={self.applied} dead_lettered={self.dead_lettered} fenced_batches={self.fenced} "
                f"finalize_calls={self.finalize_calls} worker_crashes={len(self.crashes)} "
                f"max_sigterm_exit={leave} elapsed={self.elapsed_s:.0f}s {'OK' if self.ok else 'FAIL'}")
        if self.failures:
            line += " | " + "; ".join(self.failures)
        return line


class Workers:
    """The worker processes of one job: start, signal, reap; logs in ``log_dir``."""

    def __init__(self, job: str, env: dict[str, str], log_dir: Path, rng: random.Random):
        self.job, self.env, self.log_dir, self.rng = job, env, log_dir, rng
        self.procs: list[subprocess.Popen] = []
        self.stopped: set[int] = set()  # pids under SIGSTOP
        self.expected_exit: dict[int, int] = {}  # pid -> the signal we sent
        self.codes: dict[int, int] = {}
        self.n = 0
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> subprocess.Popen:
        log = open(self.log_dir / f"worker-{self.n}.log", "w")
        self.n += 1
        p = subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", self.job], stdout=log,
                             stderr=subprocess.STDOUT, env=self.env, cwd=str(REPO))
        log.close()
        self.procs.append(p)
        return p

    def live(self) -> list[subprocess.Popen]:
        self.reap()
        return [p for p in self.procs if p.returncode is None]

    def running(self) -> list[subprocess.Popen]:
        return [p for p in self.live() if p.pid not in self.stopped]

    def reap(self) -> None:
        for p in self.procs:
            if p.returncode is None and p.poll() is not None:
                self.codes[p.pid] = p.returncode

    def pick(self) -> subprocess.Popen | None:
        running = self.running()
        return self.rng.choice(running) if running else None

    def kill(self, p: subprocess.Popen) -> None:
        self.expected_exit[p.pid] = signal.SIGKILL
        p.kill()
        p.wait()
        self.codes[p.pid] = p.returncode

    def term(self, p: subprocess.Popen, timeout: float = 60.0) -> float:
        """SIGTERM and wait; returns seconds to exit (graceful leave)."""
        self.expected_exit[p.pid] = signal.SIGTERM
        t0 = time.monotonic()
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self.codes[p.pid] = p.returncode
        return time.monotonic() - t0

    def unexpected_exits(self) -> list[tuple[int, int]]:
        """(pid, code) of workers that exited with an error we did not cause."""
        self.reap()
        out = []
        for pid, code in self.codes.items():
            sent = self.expected_exit.get(pid)
            if code == 0 or (sent is not None and code in (-sent, 0)):
                continue
            out.append((pid, code))
        return out

    def cont_all(self) -> None:
        for p in self.procs:
            if p.pid in self.stopped and p.returncode is None:
                os.kill(p.pid, signal.SIGCONT)
        self.stopped.clear()

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                self.codes[p.pid] = p.returncode
                self.expected_exit.setdefault(p.pid, -999)  # a straggler: reported below
        self.reap()

    def log_text(self) -> str:
        return "\n".join(f.read_text(errors="replace") for f in sorted(self.log_dir.glob("worker-*.log")))


def make_data(profile: Profile) -> np.ndarray:
    """(records, 1 + dim) float32: the id column, then small integers (exact sums in float64)."""
    rng = np.random.default_rng(profile.seed)
    X = np.empty((profile.records, 1 + profile.dim), dtype=np.float32)
    X[:, 0] = np.arange(profile.records, dtype=np.float32)
    X[:, 1:] = rng.integers(-8, 9, size=(profile.records, profile.dim)).astype(np.float32)
    return X


def produce(settings, topic: str, profile: Profile, X: np.ndarray) -> int:
    """Good rows plus bad messages; returns the number of bad *records* produced."""
    from streamlearn.streams.producer import Producer
    from streamlearn.wire.serde import encode_training_batch
    from streamlearn.streams.topics import ensure_topic

    ensure_topic(settings.kafka_client_conf(), topic, partitions=profile.partitions)
    bad_records = 0
    rng = random.Random(profile.seed)
    with Producer(settings.kafka, settings.kafka_conf) as p:
        p.send_batch(topic, X, batch_size=profile.msg_rows)
        for i in range(profile.partitions):  # interleaved with the data's tail in every partition
            p.send_raw(topic, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))), partition=i)
            bad_records += 1
        nan = np.zeros((7, 1 + profile.dim), dtype=np.float32)
        nan[3, 2] = np.nan
        p.send_raw(topic, encode_training_batch(nan), partition=0)
        bad_records += 7
        wide = np.zeros((5, 3 + profile.dim), dtype=np.float32)  # wrong dimension
        p.send_raw(topic, encode_training_batch(wide), partition=1)
        bad_records += 5
    return bad_records


def _status(client, job: str) -> dict | None:
    from streamlearn.runtime.jobs import job_status

    try:
        return job_status(client, job)
    except (redis.ConnectionError, redis.TimeoutError):
        return None  # Redis is restarting


class Injector:
    def __init__(self, home: Path, workers: Workers, profile: Profile, rng: random.Random, result: RunResult,
                 say, client=None):
        self.home, self.w, self.profile, self.rng, self.result, self.say = home, workers, profile, rng, result, say
        self.client = client  # the stack's Redis (cluster faults pick one of the job's slots)

    def ensure_at_least(self, n: int) -> None:
        while len(self.w.running()) < n:
            self.w.start()

    def replace_maybe(self) -> None:
        if len(self.w.running()) < self.profile.min_workers or self.rng.random() < 0.6:
            if len(self.w.live()) < self.profile.max_workers:
                self.w.start()
        self.ensure_at_least(self.profile.min_workers)

    def inject(self, kind: str) -> None:
        from streamlearn.devstack import stack

        w, rng = self.w, self.rng
        if kind == "kill":
            p = w.pick()
            if p is None:
                self.ensure_at_least(1)
                return
            w.kill(p)
            self.replace_maybe()
        elif kind == "term":
            p = w.pick()
            if p is None:
                self.ensure_at_least(1)
                return
            self.result.leave_s.append(w.term(p))
            self.replace_maybe()
        elif kind == "scale":
            target = rng.randint(self.profile.min_workers, self.profile.max_workers)
            while len(w.running()) < target and len(w.live()) < self.profile.max_workers:
                w.start()
            while len(w.running()) > target:
                self.result.leave_s.append(w.term(w.pick()))
            kind = f"scale->{target}"
        elif kind == "stop":
            self.ensure_at_least(2)
            p = w.pick()
            os.kill(p.pid, signal.SIGSTOP)
            w.stopped.add(p.pid)
            # another member must be running to take the partitions while it sleeps
            self.ensure_at_least(1)
            time.sleep(self.profile.session_timeout_ms / 1000.0 + rng.uniform(2.0, 4.0))
            os.kill(p.pid, signal.SIGCONT)
            w.stopped.discard(p.pid)
        elif kind in ("failover", "reshard"):  # on one of the job's slots (home or a shard)
            slot = rng.choice(job_slots(self.client, w.job))
            if kind == "failover":
                stack.fail_over_redis(self.home, slot)
            else:
                stack.reshard_redis(self.home, slot)
        elif kind == "redis":
            stack.restart_redis(self.home, kill=rng.random() < 0.5)
        elif kind == "kafka":
            stack.restart_kafka(self.home, kill=rng.random() < 0.5)
        elif kind == "join_during_redis":  # rebalance callbacks run while Redis is down
            stack.stop_redis(self.home, kill=True)
            if len(w.live()) < self.profile.max_workers:
                w.start()
            else:
                w.term(w.pick())
            time.sleep(rng.uniform(1.0, 4.0))
            stack.start_redis(self.home)
        elif kind == "leave_during_kafka":  # a member leaves (rebalance) while the broker restarts
            self.ensure_at_least(2)
            p = w.pick()
            stack.stop_kafka(self.home, kill=rng.random() < 0.5)
            self.result.leave_s.append(w.term(p))
            if len(w.live()) < self.profile.max_workers:
                w.start()
            time.sleep(rng.uniform(0.5, 2.0))
            stack.start_kafka(self.home)
        else:
            raise ValueError(f"unknown fault {kind!r}")
        self.result.faults[kind.split("->")[0]] += 1
        self.say(f"  fault {kind}: {len(w.running())} worker(s) running")


def job_slots(client, job: str) -> list[int]:
    """The hash slots of a job's state on a Redis Cluster: its home slot and its shards'."""
    from streamlearn.statestore.redis_state import RedisState

    backend = RedisState(client, job).backend
    return [client.keyslot(backend.keys.base)] + [shard.client.slot for shard in backend.shards()]


def check_invariants(client, job: str, X: np.ndarray, bad_records: int, result: RunResult) -> None:
    from streamlearn.runtime.jobs import job_status, load_spec
    from streamlearn.snapshots.format import decode_snapshot, load_model
    from streamlearn.snapshots.store import ModelStore
    from streamlearn.statestore.redis_state import RedisState

    fail = result.failures.append
    status = job_status(client, job)
    result.applied, result.dead_lettered = status["records_applied"], status["records_dead_lettered"]
    result.finalize_calls = status["finalize_calls"]
    if status["state"] != "finished":
        fail(f"job state is {status['state']}, not finished")
    if status["finalize_calls"] != 1:
        fail(f"finalize_calls={status['finalize_calls']}")
    if status["initialize_calls"] != 1:
        fail(f"initialize_calls={status['initialize_calls']}")
    if result.applied + result.dead_lettered != result.records:
        fail(f"applied {result.applied} + dead-lettered {result.dead_lettered} != produced {result.records}")
    if result.applied != result.good:
        fail(f"applied {result.applied} != good records {result.good}")
    if status["partitions"] != status["end_offsets"]:
        fail(f"stored offsets {status['partitions']} != end offsets {status['end_offsets']}")

    state = RedisState(client, job)
    hits = state.pull("hits")
    result.lost = int(np.count_nonzero(hits == 0))
    result.duplicated = int(np.sum(np.maximum(hits - 1, 0)))
    V = X[:, 1:].astype(np.float64)
    if float(state.pull("n")) != len(X):
        fail(f"state n={float(state.pull('n'))} != {len(X)}")
    if not np.array_equal(state.pull("sum"), V.sum(axis=0)):
        fail("state sum differs from numpy's exact sum")
    if not np.array_equal(state.pull("xtx"), V.T @ V):
        fail("state XᵀX differs from numpy's")

    spec = load_spec(client, job)
    store = ModelStore(client)
    version = store.latest_version(job)
    if version is None:
        fail("no snapshot stored")
    else:
        md = store.metadata(job, version)
        model = load_model(decode_snapshot(store.get(job, version)))
        if not md.get("final") or model.n != len(X) or md.get("records_applied") != result.good:
            fail(f"final snapshot v{version}: final={md.get('final')} n={model.n} "
                 f"records_applied={md.get('records_applied')}")
    published = client.hget(f"sl:{{{job}}}:counters", "published_version")
    if published is None or int(published) != version:
        fail(f"snapshot v{version} stored but published_version={published}")
    del spec


def run_chaos(settings, home: Path, profile: Profile, work_dir: Path, say=print) -> RunResult:
    """One chaos run on the private stack (``settings``, ``home``); returns the result
    (``result.summary()`` is the one-line report)."""
    from streamlearn.runtime.jobs import create_job

    rng = random.Random(profile.seed)
    result = RunResult(profile.name, profile.seed)
    tag = uuid.uuid4().hex[:8]
    topic, job = f"chaos-{profile.name}-{tag}", f"chaos-{profile.name}-{tag}"
    X = make_data(profile)
    bad = produce(settings, topic, profile, X)
    result.good, result.records = len(X), len(X) + bad
    client = settings.redis_client()
    create_job(client, settings.kafka_client_conf(), job, "counter", topic,
               {"dim": 1 + profile.dim, "n_ids": len(X), "id_column": 0})
    env = {**os.environ, "STREAMLEARN_KAFKA": settings.kafka, "STREAMLEARN_REDIS": settings.redis,
           "STREAMLEARN_SESSION_TIMEOUT_MS": str(profile.session_timeout_ms),
           "STREAMLEARN_WORKER_MAX_MESSAGES": str(profile.max_messages),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for key in [k for k in env if k.startswith("STREAMLEARN_KAFKA_")]:
        env.pop(key)
    for key, value in settings.kafka_conf.items():  # the private stack's own client settings
        env["STREAMLEARN_KAFKA_" + key.replace("_", "__").replace(".", "_").upper()] = str(value)
    workers = Workers(job, env, work_dir / job, rng)
    injector = Injector(home, workers, profile, rng, result, say, client)
    t0 = time.monotonic()
    for _ in range(profile.start_workers):
        workers.start()
    # a seeded schedule: every kind in a shuffled order, then random picks
    order = list(profile.faults)
    rng.shuffle(order)
    try:
        while True:
            deadline = time.monotonic() + rng.uniform(*profile.fault_gap_s)
            finished = False
            while time.monotonic() < deadline:
                s = _status(client, job)
                if s is not None and s["state"] == "finished":
                    finished = True
                    break
                time.sleep(0.2)
            if finished:
                break
            if time.monotonic() - t0 > profile.timeout_s:
                result.failures.append(f"job did not finish within {profile.timeout_s:.0f} s")
                break
            kind = order.pop(0) if order else rng.choice(profile.faults)
            injector.inject(kind)
            for pid, code in workers.unexpected_exits():
                if (pid, code) not in result.crashes:
                    result.crashes.append((pid, code))
                    say(f"  worker {pid} exited with {code} (unexpected)")
            injector.ensure_at_least(profile.min_workers)
    finally:
        workers.cont_all()
        workers.wait_all(90)
    result.elapsed_s = time.monotonic() - t0
    for pid, code in workers.unexpected_exits():
        if (pid, code) not in result.crashes:
            result.crashes.append((pid, code))
    logs = workers.log_text()
    result.fenced = len(re.findall(r"were reassigned; batch dropped", logs))
    try:
        check_invariants(settings.redis_client(), job, X, bad, result)
    except Exception as exc:  # report, don't hide the summary
        result.failures.append(f"invariant check raised {type(exc).__name__}: {exc}")
    if result.crashes:
        result.failures.append(f"unexpected worker exits {result.crashes} (logs in {workers.log_dir})")
    return result


__all__ = ["CLUSTER_FAULTS", "FAULTS", "job_slots", "PROFILES", "Profile", "RunResult", "run_chaos", "make_data"]
