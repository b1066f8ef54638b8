"""The worker: one member of a job's Kafka consumer group.

Loop: consume a mini-batch of messages → decode into numpy arrays (bad messages go to the
dead-letter topic) → ``algorithm.update`` → commit the pushes together with the batch's
offsets in one atomic Redis transaction (the windows that arrived during an update are
applied first and share that commit: a group commit). Offsets in Redis are authoritative: on every
partition assignment the worker bumps the partition's epoch (fencing out any previous
owner that might still hold a stale batch) and seeks to the stored offset. Kafka's own
group offsets are committed too, but only as a lag indicator for operators.
"""
from __future__ import annotations

import copy
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import redis
from confluent_kafka import (OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from threadpoolctl import ThreadpoolController

from streamlearn.algorithms.base import Algorithm
from streamlearn.backends import kernels
from streamlearn.config import Settings
from streamlearn.monitoring.profile import MemberProfile
from streamlearn.runtime.isolate import AlgorithmBug, Failure, FailureRun, apply_steps
from streamlearn.runtime.finalize import ensure_published, maybe_finalize, periodic_snapshot
from streamlearn.runtime.history import JobHistory
from streamlearn.runtime.jobs import JobSpec, fail_job, load_spec
from streamlearn.runtime.metrics import WorkerMetrics, consumer_lag, high_watermarks, serve_metrics
from streamlearn.runtime.record import JobRecord
from streamlearn.runtime.rounds import Rounds
from streamlearn.snapshots.publisher import SnapshotPublishError
from streamlearn.snapshots.signing import require_signer
from streamlearn.statestore.base import CommitRefused, FencedError, StaleCommit
from streamlearn.statestore.buffered import CommitInfo
from streamlearn.statestore.sharded import ReplayCutter
from streamlearn.streams.access import RefusalWatch, refusal
from streamlearn.wire.confluent import ConfluentSchemas, SchemaRegistryUnavailable
from streamlearn.wire.decode import DecodeResult, decode_messages, rejection_headers
from streamlearn.wire.schema_store import SharedSchemas

log = logging.getLogger("streamlearn.worker")


class DeadLetterUnavailable(RuntimeError):
    """The dead-letter topic did not acknowledge rejected records (broker down)."""


#: failures a worker outlives: it drops the batch in hand and goes back to the stored offsets
_OUTAGES = (redis.ConnectionError, redis.TimeoutError, DeadLetterUnavailable, SnapshotPublishError, KafkaException,
            SchemaRegistryUnavailable)


class _StopDuringOutage(Exception):
    """Stop was asked for while Redis was unreachable: nothing in hand was committed, so
    the worker just leaves (its records are consumed again from the stored offsets)."""


#: How a worker fetches (the ingest-limit benchmark reads with the same settings). Batch
#: messages are ~400 kB, so a fetch may bring many. ``fetch.queue.backoff.ms``: librdkafka
#: (>= 2.4) waits this long before fetching again once its local queue was over its limits,
#: 1000 ms by default; a worker that had just taken a large window then found the queue
#: empty for up to a second: 1.7 of 3.0 s blocked in consume for 800 messages that it could
#: process in 1.3 s; 0.7 s (the group's start) with 10 ms.
FETCH_CONF = {
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
    "fetch.queue.backoff.ms": 10,
}


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker batches and talks to the group (a small policy object, not flags)."""

    max_messages: int = 500  # at most this many messages per window (one commit each): what has arrived
    update_rows: int = 0  # examples per update step; 0 = the algorithm's own ``step_rows``
    poll_timeout_s: float = 0.2
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    control_interval_s: float = 0.25  # how often the job's status (pause/finish) is read
    outage_limit_s: float = 300.0  # how long Redis may be unreachable before the worker gives up
    #: BLAS threads per worker (0 = leave the library's default). Workers are the unit of
    #: parallelism; OpenBLAS' own threads spin on cores the broker, Redis, librdkafka and the
    #: other workers need, which made the linear learner's 500-row update steps ~7x slower
    #: on a 2-core machine (benchmarks/README.md, scaling.workers).
    blas_threads: int = 1
    close_timeout_s: float = 10.0  # how long leaving the group may take on shutdown
    #: the most seconds between writes of the worker's data profile (it is also written when a
    #: partition reaches its end, on a rebalance and on shutdown); a SIGKILLed worker's profile
    #: misses at most this long of its committed rows (streamlearn.monitoring.profile)
    profile_flush_s: float = 5.0

    def step_rows(self, algorithm: Algorithm) -> int:
        """Examples per update step: ``update_rows`` if set, else the algorithm's own."""
        return self.update_rows or algorithm.step_rows

    @classmethod
    def from_env(cls) -> "WorkerConfig":
        env = os.environ
        return cls(
            max_messages=int(env.get("STREAMLEARN_WORKER_MAX_MESSAGES", cls.max_messages)),
            update_rows=int(env.get("STREAMLEARN_WORKER_UPDATE_ROWS", cls.update_rows)),
            session_timeout_ms=int(env.get("STREAMLEARN_SESSION_TIMEOUT_MS", cls.session_timeout_ms)),
            blas_threads=int(env.get("STREAMLEARN_WORKER_BLAS_THREADS", cls.blas_threads)),
            profile_flush_s=float(env.get("STREAMLEARN_PROFILE_FLUSH_S", cls.profile_flush_s)),
        )


def limit_blas_threads(n: int) -> bool:
    """Set the thread count of every BLAS loaded in this process (numpy's bundled OpenBLAS
    included) to ``n``; numpy is imported long before a worker starts, so the
    ``OPENBLAS_NUM_THREADS`` variable would come too late. Returns whether any was set."""
    blas = ThreadpoolController().select(user_api="blas")
    if n <= 0 or not blas.info():
        return False
    blas.limit(limits=int(n), user_api="blas")
    return True


class Worker:
    def __init__(self, job: str, settings: Settings, config: WorkerConfig | None = None, member: str | None = None):
        self.settings = settings
        self.config = config or WorkerConfig.from_env()
        require_signer()  # production (STREAMLEARN_REQUIRE_SIGNED): no key, no worker
        self.client = settings.redis_client()
        self.spec: JobSpec = load_spec(self.client, job)
        self.algorithm = self.spec.algorithm_instance()
        self.member = member or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.record = JobRecord(self.client, job)
        self.state = self.record.state(self.member)
        self.shared_schemas = SharedSchemas(self.client)  # writer schemas this process was not started with
        self.confluent_schemas = ConfluentSchemas.from_env()
        self.fence: dict[int, int] = {}  # partition -> epoch we own it under
        self.done_partitions: set[int] = set()  # reached the job's end offset
        self.passes: dict[int, int] = {}  # partition -> the data epoch (pass) being read
        self.positions: dict[int, int] = {}  # partition -> the next offset as last claimed or committed here
        self.replay = ReplayCutter()  # partial batches of a sharded store, re-applied alone
        self.rebalances = 0  # assignments and revocations seen: a group commit spans none
        # synchronous rounds (aggregation=sync): every window goes through them, even an empty one
        self.rounds = Rounds(self.algorithm, self.state) if self.algorithm.synchronous else None
        self._stop = threading.Event()
        self._paused = False
        self._unsettled: Exception | None = None  # set while a recovery's seek is still owed
        self.records_applied = 0
        self.failure: str | None = None  # why this worker failed the job (an AlgorithmBug)
        self.failing = FailureRun()
        self._next_control = 0.0
        self._consumer: Consumer | None = None
        self._dlq: Producer | None = None
        # the rows this worker committed, profiled (an algorithm with its own record type: none)
        self.profile = (None if getattr(self.algorithm, "decode_window", None) is not None
                        else MemberProfile(self.member, self.spec.profile_sample, self.config.profile_flush_s))
        self.metrics = WorkerMetrics(job, self.client)
        self.history = JobHistory(self.client, self.spec, self.algorithm, self.member)
        self._refused = RefusalWatch(settings.kafka)  # librdkafka's error_cb: credentials, ACLs, TLS

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> str:
        """Work until the job finishes (bounded jobs), fails, is deleted or ``stop`` is
        called; returns the job's state as last seen."""
        limit_blas_threads(self.config.blas_threads)
        kernels.warm_up()  # before joining the group: no consumed window waits for numba's first call
        conf = self.settings.kafka_client_conf(**{
            "group.id": self.spec.group_id,
            "client.id": self.member,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self.config.session_timeout_ms,
            "heartbeat.interval.ms": self.config.heartbeat_interval_ms,
            "partition.assignment.strategy": "roundrobin",
            "error_cb": self._refused,
            **FETCH_CONF,
        })
        self._consumer = Consumer(conf)
        self._dlq = Producer(self.settings.kafka_client_conf(**{"enable.idempotence": True, "linger.ms": 5,
                                                                "error_cb": self._refused}))
        self._consumer.subscribe([self.spec.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        status = "running"
        try:
            while not self._stop.is_set():
                try:
                    try:
                        if time.monotonic() >= self._next_control:
                            status = self._control()
                            self._next_control = time.monotonic() + self.config.control_interval_s
                            if status == "finished":
                                ensure_published(self.settings, self.client, self.spec.name)
                                self.history.finish(self._watermarks)
                                break
                            if status in ("failed", "deleting"):
                                break
                        self._step()
                        self._refused.check()
                        if self.failure is not None:
                            status = "failed"
                            break
                    except _OUTAGES as exc:
                        self._refused(exc.args[0] if isinstance(exc, KafkaException) and exc.args else None)
                        self._refused.check()  # a refusal is no outage: retrying cannot succeed
                        if self._stop.is_set():
                            raise _StopDuringOutage(str(exc)) from exc
                        self.metrics.dropped("outage")
                        self._recover(exc)
                except _StopDuringOutage as exc:
                    log.warning("%s: stopping during an outage (%s); nothing uncommitted is kept: the "
                                "records in hand are consumed again from the stored offsets", self.member, exc)
                    break
        finally:
            self._close()
        return status

    def _step(self) -> None:
        if self._unsettled is not None:  # a recovery whose seek failed: finish it before consuming
            self._recover(self._unsettled)
            return
        if self._paused:
            self._consumer.consume(num_messages=1, timeout=self.config.poll_timeout_s)  # serves rebalances
            self._idle_round()
            return
        msgs = self._next_messages()
        if msgs:
            self._process(msgs)
            return
        self._idle_round()
        self._write_profile()  # idle: a due write costs no throughput
        if self.rounds is None:
            self.state.prefetch()  # idle: the first window's rows are read now, not in its step
        if self.spec.until == "end":
            maybe_finalize(self.settings, self.client, self.spec, self.member)

    def _next_messages(self) -> list:
        """What has arrived, up to ``max_messages``, waiting only while nothing has.

        librdkafka's ``consume(n, timeout)`` waits for ``n`` messages or the timeout; asking
        for 500 while a producer is still sending held the first records back for the whole
        timeout and then handed over one huge window at the end, so training did not overlap
        producing. Taking what is queued (fetching goes on in the background while a window
        is processed) makes the window as large as the backlog and no larger."""
        n = self._window_limit()
        msgs = self._consumer.consume(num_messages=n, timeout=0)
        if msgs:
            return msgs
        msgs = self._consumer.consume(num_messages=1, timeout=self.config.poll_timeout_s)
        if msgs and n > 1:
            msgs += self._consumer.consume(num_messages=n - 1, timeout=0)
        return msgs

    def _window_limit(self) -> int:
        """The most messages a window (and a group commit) takes."""
        return min(self.config.max_messages, self.algorithm.window_messages or self.config.max_messages)

    def _retry(self, fn, what: str):
        """Call ``fn`` until Redis answers (an outage of up to ``outage_limit_s``)."""
        deadline, delay = time.monotonic() + self.config.outage_limit_s, 0.1
        while True:
            try:
                return fn()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._stop.is_set():
                    raise _StopDuringOutage(str(exc)) from exc
                if time.monotonic() > deadline:
                    raise
                log.warning("%s: Redis unavailable during %s (%s); retrying", self.member, what, exc)
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def _recover(self, exc: Exception) -> None:
        """After an outage the batch in hand may or may not have been committed; the stored
        offsets say which. Drop the batch and seek every partition to its stored offset, so
        each record is applied exactly once either way."""
        log.warning("%s: %s; dropping the batch in hand and resuming from the stored offsets", self.member, exc)
        self._unsettled = None
        self.state.discard()
        assigned = [tp.partition for tp in self._consumer.assignment()]
        if not assigned:
            return
        positions = self._retry(lambda: self.state.backend.positions(assigned), "recovery")
        self.replay.assign(assigned, self.state.backend.replay)
        for p, (offset, done_passes) in zip(assigned, positions):
            self.passes[p] = done_passes
            if offset is not None and p in self.fence:
                try:
                    self._consumer.seek(TopicPartition(self.spec.topic, p, offset))
                except KafkaException as seek_error:
                    # never consume on from a position past a dropped batch: try again next step
                    log.warning("%s: seek of partition %d failed (%s)", self.member, p, seek_error)
                    self._unsettled = exc
        time.sleep(0.2)  # an outage is not over in microseconds: don't spin

    def _close(self) -> None:
        closer = None
        try:
            if self._consumer is not None:
                # leaves the group now, so the others rebalance at once; but librdkafka's close
                # blocks for as long as the broker is unreachable, so bound it (the group then
                # drops this member after its session timeout)
                closer = threading.Thread(target=self._consumer.close, daemon=True)
                closer.start()
                closer.join(self.config.close_timeout_s if self._refused.refused is None else 1.0)
                if closer.is_alive():
                    log.warning("%s: the broker did not answer the leave within %.0f s; exiting without it",
                                self.member, self.config.close_timeout_s)
        finally:
            if closer is None or not closer.is_alive():  # else its revoke callback may be writing it
                self._write_profile(force=True)
            try:
                self.state.backend.leave()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("%s: could not leave the job's members (%s); it drops out after its heartbeat "
                            "timeout", self.member, exc)
            if self._dlq is not None:
                self._dlq.flush(10 if self._refused.refused is None else 1)

    def _control(self) -> str:
        """Heartbeat, and react to the job's status (pause / resume / finished / failed /
        deleting; a job whose status is gone was deleted)."""
        self.state.backend.heartbeat()
        self.metrics.lag(consumer_lag(self._consumer, self.spec.topic, self.spec.end_offsets,
                                      {p: o for p, o in self.positions.items() if p in self.fence}))
        self.history.tick(self._watermarks)
        status = self.record.status() or "deleting"
        want_paused = status == "paused"
        if want_paused != self._paused:
            assignment = self._consumer.assignment()
            (self._consumer.pause if want_paused else self._consumer.resume)(assignment)
            self._paused = want_paused
            log.info("%s: job %s", self.member, status)
        if status == "running" and self.spec.snapshot_every:
            periodic_snapshot(self.settings, self.client, self.spec, self.member)
        return status

    def _watermarks(self) -> dict[int, int] | None:
        return high_watermarks(self._consumer, self.spec.topic, self.record.offsets())

    # -- rebalance callbacks --------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        ids = [tp.partition for tp in partitions]
        claimed = self._retry(lambda: self.state.backend.claim(ids), "partition assignment")
        self.replay.assign(ids, self.state.backend.replay)
        for tp, (epoch, offset, done_passes) in zip(partitions, claimed):
            self.fence[tp.partition] = epoch
            self.passes[tp.partition] = done_passes
            self.positions[tp.partition] = offset if offset is not None else self.spec.start_offsets.get(tp.partition, 0)
            tp.offset = offset if offset is not None else OFFSET_BEGINNING
            end = self.spec.end_offsets.get(tp.partition)
            if end is not None and offset is not None and offset >= end:
                self.done_partitions.add(tp.partition)
        consumer.assign(partitions)
        paused = [tp for tp in partitions if self._paused or tp.partition in self.done_partitions]
        if paused:
            consumer.pause(paused)
        log.info("%s: assigned %s", self.member, {tp.partition: tp.offset for tp in partitions})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        self._write_profile(force=True)  # the partitions' next owner may finish the job
        self.replay.drop([tp.partition for tp in partitions])
        for tp in partitions:
            self.fence.pop(tp.partition, None)
            self.done_partitions.discard(tp.partition)
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions)

    # -- the update step ------------------------------------------------------------------
    def _process(self, msgs) -> None:
        if self.rounds is None and self._may_group():
            self._process_group(msgs)
            return
        for batch in self.replay.cut(msgs, self._stored_position):
            if self.rounds is None:
                if not self._process_batch(batch):
                    return  # dropped (fenced, refused, failed): the rest goes back to the stored offsets too
                continue
            for share, decoded in self._round_shares(batch):
                done = self._process_batch(share, self.rounds.begin(), decoded)
                self.rounds.end()  # dropped or not, the others wait for this member
                if not done:
                    return

    def _may_group(self) -> bool:
        """Whether windows may share one commit: not while a sharded store has batches to
        re-apply alone, nor with passes (a pass's end moves the partition back to its start at
        the commit that reaches it)."""
        return not self.replay.points and self.spec.epochs == 1

    def _process_group(self, msgs) -> None:
        """Apply ``msgs``, then what has arrived meanwhile, and commit them all at once (a
        group commit) when nothing more is waiting or the window's message limit is reached.
        A commit writes every chunk a window touched (all of a 2^20-feature factorization
        machine's 75 MB, whatever the window's size), so while records arrive faster than
        they are applied, one commit for what arrived during an update costs one key's write
        instead of one for each window; nothing waits for records that have not arrived."""
        limit, rebalances = self._window_limit(), self.rebalances
        pending: list[_Applied] = []
        windows: list = []  # the messages of each window in ``pending``
        failing = copy.copy(self.failing)
        taken = 0
        while msgs:
            discards = self.state.discards
            applied = self._apply(msgs)
            if applied is False:
                return  # the job failed; the state was discarded
            if pending and self.state.discards != discards:
                # isolating a record whose update raised dropped every pending push, the earlier
                # windows' too: apply the windows again, each with its own commit (nothing was
                # counted or dead-lettered yet)
                self.state.discard()
                self.failing = failing
                for window in [*windows, msgs]:
                    if not self._process_batch(window):
                        return
                return
            if applied is not None:
                pending.append(applied)
                windows.append(msgs)
            taken += len(msgs)
            msgs = self._consumer.consume(num_messages=limit - taken, timeout=0) if pending and taken < limit else []
            if self.rebalances != rebalances:
                # that consume served a rebalance: the partitions start again from their stored
                # offsets (under new fencing epochs), so what is applied here must not be committed
                self.metrics.dropped("rebalanced")
                self.state.discard()
                if msgs:
                    self._process(msgs)
                return
        if pending:
            self._commit(pending)

    def _idle_round(self) -> None:
        """Nothing to contribute (no records, paused): take part in the round all the same,
        so the members that have records are not held up."""
        if self.rounds is not None:
            self.rounds.begin()
            self.rounds.end()

    def _round_shares(self, msgs) -> list[tuple[list, DecodeResult]]:
        """``msgs`` cut into this member's shares of successive rounds: whole messages, at
        most ``mini_batch_size / live members`` rows each (at least one message: a larger
        message makes its round larger), each with its messages decoded (the window once)."""
        share = -(-self.config.step_rows(self.algorithm) // self.state.backend.live_members())
        values = [m.value() or b"" if m.error() is None else b"" for m in msgs]
        decoded = self._decode(values, msgs)
        counts = np.bincount(decoded.row_messages(), minlength=len(msgs))
        starts, rows = [0], 0
        for i, n in enumerate(counts.tolist()):
            if i > starts[-1] and rows + n > share:
                starts.append(i)
                rows = 0
            rows += n
        bounds = list(zip(starts, starts[1:] + [len(msgs)]))
        return [(msgs[a:b], decoded.messages(a, b)) for a, b in bounds]

    def _stored_position(self, partition: int, offset: int) -> tuple[int, int]:
        """(data epoch, offset) stored for ``partition`` after the message at ``offset``."""
        offsets, passes = self._positions_after({partition: offset + 1})
        return passes[partition], offsets[partition]

    def _decode(self, values: list[bytes], msgs):
        own_reader = getattr(self.algorithm, "decode_window", None)  # an algorithm with its own record type
        if own_reader is not None:
            return own_reader(self.state, values, shared=self.shared_schemas, confluent=self.confluent_schemas,
                              partitions=[m.partition() for m in msgs])
        return decode_messages(values, self.algorithm.n_features(), self.algorithm.accepts_sparse,
                               self.algorithm.needs_label, shared=self.shared_schemas,
                               confluent=self.confluent_schemas, labels=self.algorithm.label_coding(),
                               row_rule=self.algorithm.row_rule())

    def _process_batch(self, msgs, expect: dict[str, int] | None = None, decoded: DecodeResult | None = None) -> bool:
        """Apply and commit one batch (``expect``: a synchronous round's check-and-set, see
        :mod:`streamlearn.runtime.rounds`; ``decoded``: ``msgs`` decoded already); False when
        it was dropped."""
        applied = self._apply(msgs, decoded)
        if applied is None:
            return True
        return applied is not False and self._commit([applied], expect)

    def _apply(self, msgs, decoded: DecodeResult | None = None) -> "_Applied | None | bool":
        """Decode ``msgs`` (unless ``decoded``) and apply their records to the state, uncommitted;
        the rejected and failed ones go to the dead-letter topic with the commit (``send_dead``).
        None: nothing to apply; False: the algorithm failed (the job is failed, the state discarded)."""
        good, next_offsets = [], {}
        for m in msgs:
            err = m.error()
            if err is not None:
                refused = refusal(err, self.settings.kafka, f"topic {m.topic()}, group {self.spec.group_id}")
                if refused is not None:
                    self._refused.refused = refused  # a quick exit: nothing more will be answered
                    raise refused
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: consume error %s", self.member, err)
                continue
            p, off = m.partition(), m.offset()
            if p not in self.fence:
                continue  # revoked while this message was in flight
            end = self.spec.end_offsets.get(p)
            if end is not None and off >= end:
                if self._last_pass(p):
                    self._mark_done(p)
                continue  # an earlier pass: the commit that reached the end moves it to the start
            good.append(m)
            next_offsets[p] = off + 1
        if not good:
            return None
        result = (decoded if decoded is not None and len(good) == len(msgs)  # every message kept
                  else self._decode([m.value() or b"" for m in good], good))
        started = time.perf_counter()
        try:
            steps = result.steps(self.config.step_rows(self.algorithm))
            failures = apply_steps(self.algorithm, self.state, steps)
            self.failing.observe(result.n_records, failures)
        except AlgorithmBug as exc:
            self.state.discard()
            self._fail(str(exc))
            return False
        def send_dead() -> None:
            self._dead_letter(good, result.rejected)
            self._dead_letter_records(good, result.row_messages(), failures)

        return _Applied(next_offsets=next_offsets, steps=steps, failures=failures,
                        applied=result.n_records - len(failures),
                        dead=sum(r.n_records for r in result.rejected) + len(failures), send_dead=send_dead,
                        reasons=[r.reason for r in result.rejected] + [f.reason for f in failures],
                        event_times=event_times(good, {r.index for r in result.rejected}),
                        seconds=time.perf_counter() - started)

    def _commit(self, batches: "list[_Applied]", expect: dict[str, int] | None = None) -> bool:
        """Commit what ``batches`` applied, with their offsets and counts, in one transaction;
        False when it was dropped (the state discarded or recovered from the stored offsets)."""
        for b in batches:  # delivered before the commit that counts them
            b.send_dead()
        next_offsets: dict[int, int] = {}
        for b in batches:
            next_offsets.update(b.next_offsets)
        steps = [step for b in batches for step in b.steps]
        failed_rows, start = [], 0
        for b in batches:  # a failure's row counts across the batch's steps: across all of them here
            failed_rows += [start + f.row for f in b.failures]
            start += sum(len(step) for step in b.steps)
        offsets, passes = self._positions_after(next_offsets)
        ended = [p for p, o in offsets.items() if self.spec.end_offsets.get(p) is not None and o >= self.spec.end_offsets[p]]
        applied, dead = sum(b.applied for b in batches), sum(b.dead for b in batches)
        reasons = [r for b in batches for r in b.reasons]
        info = CommitInfo(offsets=offsets, fence={p: self.fence[p] for p in offsets},
                          records_applied=applied, records_dead_lettered=dead,
                          data_epochs=passes if self.spec.epochs > 1 else {},
                          dead_letter_reason=reasons[0] if reasons else None,
                          profile=None if self.profile is None else self.profile.stage(
                              steps, failed_rows, force=bool(ended)),  # ended: finalize may come next
                          event_times=_merged_times([b.event_times for b in batches]), expect=expect or {})
        updated, conflicts = time.perf_counter(), self.state.backend.conflicts
        try:
            self.state.commit(info, keep_held=self.rounds is not None)  # rounds: the parameters move only at a close
        except FencedError as exc:
            log.warning("%s: %s", self.member, exc)
            self.metrics.dropped("fenced")
            self.state.discard()
            return False
        except CommitRefused as exc:  # paused (or failed, deleted) before this commit: back to the stored offsets
            self.metrics.dropped("refused")
            self._recover(exc)
            self._next_control = 0.0
            return False
        except StaleCommit as exc:  # the round closed without this member's share: back to the stored offsets
            self.metrics.dropped("stale")
            self._recover(exc)
            return False
        self.records_applied += applied
        if self.profile is not None:
            self.profile.accept()
        self.positions.update(offsets)
        self.metrics.committed(applied, dead, sum(b.seconds for b in batches), time.perf_counter() - updated,
                               self.state.backend.conflicts - conflicts)
        for p, o in offsets.items():
            if passes[p] != self.passes.get(p, 0):  # the commit started the partition's next pass
                self.passes[p] = passes[p]
                try:
                    self._consumer.seek(TopicPartition(self.spec.topic, p, o))
                except KafkaException as exc:
                    log.warning("%s: seek of partition %d to its next pass failed (%s)", self.member, p, exc)
                    self._unsettled = exc
        self._consumer.commit(offsets=[TopicPartition(self.spec.topic, p, o) for p, o in offsets.items()],
                              asynchronous=True)
        for p in ended:
            self._mark_done(p)
        return True

    def _write_profile(self, force: bool = False) -> None:
        """Write this worker's data profile if it has committed rows not written yet and a
        write is due (or ``force``); Redis unreachable: the rows stay for a later write."""
        if self.profile is None:
            return
        try:
            self.profile.write(self.state.backend.write_profile, force)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("%s: data profile not written (%s); it is written later", self.member, exc)

    def _last_pass(self, partition: int) -> bool:
        return self.passes.get(partition, 0) >= self.spec.epochs - 1

    def _positions_after(self, next_offsets: dict[int, int]) -> tuple[dict[int, int], dict[int, int]]:
        """(offset, data epoch) to store for each partition after this batch: reaching the end
        of a pass that is not the last stores the start offset of the next pass instead."""
        offsets, passes = {}, {}
        for p, o in next_offsets.items():
            start, end, done = self.spec.start_offsets.get(p, 0), self.spec.end_offsets.get(p), self.passes.get(p, 0)
            if end is not None and o >= end and not self._last_pass(p) and start < end:
                offsets[p], passes[p] = start, done + 1
            else:
                offsets[p], passes[p] = o, done
        return offsets, passes

    def _fail(self, reason: str) -> None:
        """The algorithm fails whatever the data: fail the job (every worker stops) rather
        than dead-letter the stream."""
        log.error("%s: %s; failing job %s", self.member, reason, self.spec.name)
        fail_job(self.client, self.spec.name, reason)
        self.failure = reason

    def _mark_done(self, partition: int) -> None:
        if partition not in self.done_partitions:
            self.done_partitions.add(partition)
            self._consumer.pause([TopicPartition(self.spec.topic, partition)])

    def _dead_letter(self, msgs, rejected) -> None:
        """Send rejected messages to ``<topic>.dlq`` with the reason; wait for delivery so
        the commit that counts them never precedes them. A bounded job's later passes count
        them again (every pass reads the range) but do not send them again: decoding is
        deterministic, so the first pass's dead letter stands for every pass."""
        if not rejected:
            return
        errors: list[str] = []
        for r in rejected:
            m = msgs[r.index]
            if self.passes.get(m.partition(), 0) == 0:
                self._send_dead(m, m.value(), rejection_headers(r), errors)
        self._flush_dead(errors)

    def _dead_letter_records(self, msgs, row_messages: np.ndarray, failures: list[Failure]) -> None:
        """Send the records that made ``update`` raise to ``<topic>.dlq``, one message each
        with the exception as the reason: a message's own bytes when it held just that
        record, else the record re-encoded alone (``streamlearn.row`` says which row of the
        source message it was)."""
        if not failures:
            return
        errors: list[str] = []
        for f in failures:
            index = int(row_messages[f.row])
            first = int(np.searchsorted(row_messages, index))  # rows of one message are consecutive
            alone = int(np.searchsorted(row_messages, index, side="right")) - first == 1
            m = msgs[index]
            headers = [("streamlearn.reason", f.reason.encode()), ("streamlearn.records", b"1"),
                       ("streamlearn.row", str(f.row - first).encode())]
            self._send_dead(m, m.value() if alone else f.encoded(), headers, errors)
        self._flush_dead(errors)

    def _send_dead(self, m, value: bytes, headers: list, errors: list[str]) -> None:
        headers = headers + [("streamlearn.job", self.spec.name.encode()),
                             ("streamlearn.source", f"{m.topic()}/{m.partition()}/{m.offset()}".encode())]
        self._dlq.produce(self.spec.dlq_topic, value=value, key=m.key(), headers=headers,
                          on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)

    def _flush_dead(self, errors: list[str]) -> None:
        if self._dlq.flush(30) or errors:
            raise DeadLetterUnavailable(f"dead-letter topic {self.spec.dlq_topic} did not take the records: {errors[:3]}")


@dataclass(frozen=True)
class _Applied:
    """A batch applied to the worker's state and not committed yet."""

    next_offsets: dict[int, int]  # partition -> the offset after its last message
    steps: list  # the update steps' batches
    failures: list[Failure]  # records that failed their update (dead-lettered), rows across ``steps``
    applied: int
    dead: int  # records dead-lettered (rejected at decoding, or failed)
    # sends them to the dead-letter topic: called by the commit, so that a group dropped before
    # its commit (a rebalance) sent nothing, and its records are dead-lettered once, when read again
    send_dead: Callable[[], None]
    reasons: list[str]
    event_times: dict[int, tuple[int, int]]
    seconds: float  # decoding and updating


def _merged_times(times: list[dict[int, tuple[int, int]]]) -> dict[int, tuple[int, int]]:
    """partition -> (earliest, latest) over several batches' :func:`event_times`."""
    out: dict[int, tuple[int, int]] = {}
    for t in times:
        for p, (lo, hi) in t.items():
            a, b = out.get(p, (lo, hi))
            out[p] = (min(a, lo), max(b, hi))
    return out


def event_times(msgs, rejected: set[int]) -> dict[int, tuple[int, int]]:
    """partition -> (earliest, latest) Kafka timestamp (ms) of ``msgs`` but the ``rejected``
    indices: the event-time range of the records a commit applies (messages without a
    timestamp are left out)."""
    out: dict[int, tuple[int, int]] = {}
    for i, m in enumerate(msgs):
        kind, ts = m.timestamp()
        if i in rejected or kind == TIMESTAMP_NOT_AVAILABLE or ts < 0:
            continue
        p = m.partition()
        lo, hi = out.get(p, (ts, ts))
        out[p] = (min(lo, ts), max(hi, ts))
    return out


def run_worker(job: str, settings: Settings | None = None, metrics_port: int | None = None) -> str:
    """Entry point of ``streamlearn worker NAME``; ``metrics_port``: serve Prometheus metrics
    there (``/metrics``; 0 = any free port, logged)."""
    settings = settings or Settings.resolve()
    config = WorkerConfig.from_env()
    deadline = time.monotonic() + config.outage_limit_s
    while True:  # a worker (re)started while Redis restarts waits for it instead of crashing
        try:
            worker = Worker(job, settings, config)
            break
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unavailable at start (%s); retrying", exc)
            time.sleep(1.0)
    worker.install_signal_handlers()
    if metrics_port is not None:
        log.info("%s: Prometheus metrics at http://0.0.0.0:%d/metrics", worker.member,
                 serve_metrics(worker.metrics.registry, metrics_port))
    return worker.run()


__all__ = ["Worker", "WorkerConfig", "run_worker"]
