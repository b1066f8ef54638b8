"""The job's Redis record: the only module outside the state store that knows a job's keys.

A job is ``sl:{job}:*`` (one hash tag, so one Redis Cluster slot, which MULTI/EXEC and
WATCH need). Two owners share that prefix:

- the state store (:mod:`streamlearn.statestore.keys`) names what its commit transaction
  writes: the state's chunks and versions, each partition's next offset, owner epoch and data
  epoch, and the commit's accounting (``records_applied``, ``records_dead_lettered``,
  ``commits``, the rate samples, the first dead-letter reason), plus the members a barrier
  waits for. Offsets and epochs are part of the store's contract (as a faust ``StoreT`` keeps
  its changelog offsets with its data): they are only true together with the state.
- this record names the rest, what the job's lifecycle reads and writes around the commits:
  the spec, the status (which also gates every batch commit: see :meth:`JobRecord.state`),
  the failure reason, the finalize and periodic-snapshot locks, and the set of job names.
  It reads the store's offsets, counters and members for ``job status``, and counts the
  lifecycle's own events (``initialize_calls``, ``finalize_calls``, snapshot versions) in the
  same counters hash.
"""
from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager

from dataclasses import dataclass
from typing import Iterator

import redis

from streamlearn.registry.records import Registry
from streamlearn.snapshots.store import ModelStore, PreparedPut
from streamlearn.statestore.keys import PREFIX, StoreKeys
from streamlearn.statestore.redis_state import MEMBER_TIMEOUT_MS, RedisState, now_ms
from streamlearn.statestore.sharded import SlotClient, is_cluster, shard_pattern

#: the set of job names
JOBS = f"{PREFIX}:jobs"

#: states a job does not leave (``deleting`` ends in the job's keys being removed)
ENDED = ("finished", "failed", "deleting")

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@dataclass(frozen=True)
class StatusView:
    """One instant of the record, as ``job status`` reports it (raw: decoding is the caller's)."""

    status: str | None
    reason: str | None
    counters: dict[str, int]
    offsets: dict[int, int]
    data_epochs: dict[int, int]
    members: list[str]
    rate: list[bytes]  # "ms:records" samples, newest first
    snapshot_version: int | None


class JobRecord:
    """The Redis record of job ``name`` on ``client`` (nothing is read until asked)."""

    def __init__(self, client: redis.Redis, name: str):
        self.client = client
        self.name = name
        self.store = StoreKeys(name)
        base = self.store.base
        self._spec = f"{base}:spec"  # JSON job spec
        self._status = f"{base}:status"  # running | paused | finished | failed | deleting
        self._finalize_lock = f"{base}:finalize:lock"
        self._snapshot_lock = f"{base}:snapshot:lock"
        self._snapshot_mutex = f"{base}:snapshot:mutex"
        self._monitor = f"{base}:monitor"  # JSON: the latest drift report (streamlearn monitor)
        # list: every window's per-feature KS distances and verdict, oldest first (the report's plot)
        self._monitor_windows = f"{base}:monitor:windows"
        self._history = f"{base}:history"  # list: JSON samples of the job's progress, oldest first
        self._history_turn = f"{base}:history:turn"

    # -- the jobs ------------------------------------------------------------------------------
    @staticmethod
    def names(client: redis.Redis) -> list[str]:
        return sorted(raw.decode() for raw in client.smembers(JOBS))

    # -- spec and creation ---------------------------------------------------------------------
    def spec_json(self) -> bytes | None:
        return self.client.get(self._spec)

    def claim(self, spec_json: str) -> bool:
        """Store the spec unless the name is taken; returns whether it was free. The job is
        listed (:meth:`enlist`) only once it is completely created."""
        return bool(self.client.set(self._spec, spec_json, nx=True))

    def enlist(self) -> None:
        """Name the job in the jobs set: the last step of creating it (the one write of
        ``job create`` outside the job's own keys)."""
        self.client.sadd(JOBS, self.name)

    def undo_claim(self) -> None:
        """Remove what a creation that failed after :meth:`claim` wrote (all of it the job's
        own keys, found without SCAN): no half-created job stays behind."""
        names = [k.decode() if isinstance(k, bytes) else k for k in self.client.hkeys(self.store.keyspecs)]
        self.client.delete(self._spec, self._status, *self.store.all_keys(names))

    def state(self, member: str | None = None) -> RedisState:
        """The job's state as ``member`` sees it; its batch commits apply only while the
        status is ``running`` (a pause, failure or delete refuses them: a barrier)."""
        return RedisState(self.client, self.name, member, gate=self._status)

    def start(self, start_offsets: dict[int, int]) -> None:
        """After ``initialize``: the first offsets, zeroed counters, status ``running``."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.store.offsets, mapping={str(p): o for p, o in start_offsets.items()})
        pipe.hset(self.store.counters, mapping={"records_applied": 0, "records_dead_lettered": 0,
                                                "initialize_calls": 1, "finalize_calls": 0})
        pipe.set(self._status, "running")
        pipe.execute()

    # -- status --------------------------------------------------------------------------------
    def status(self) -> str | None:
        raw = self.client.get(self._status)
        return None if raw is None else raw.decode()

    def set_status(self, status: str) -> None:
        self.client.set(self._status, status)

    def change_status(self, status: str, reason: str | None = None) -> str:
        """Set ``status`` (and the failure ``reason``) unless the job already ended; returns
        the status it had (unchanged when that is one of :data:`ENDED`)."""
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self._status)
                    before = (pipe.get(self._status) or b"").decode()
                    if before in ENDED:
                        pipe.unwatch()
                        return before
                    pipe.multi()
                    pipe.set(self._status, status)
                    if reason is not None:
                        pipe.hset(self.store.info, "reason", reason)
                    pipe.execute()
                    return before
                except redis.WatchError:
                    continue

    def read_status(self) -> StatusView:
        """Status, counters, offsets, data epochs, live members and rate samples of one instant."""
        k = self.store
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self._status)
        pipe.hgetall(k.counters)
        pipe.hgetall(k.offsets)
        pipe.zrangebyscore(k.members, now_ms() - MEMBER_TIMEOUT_MS, "+inf")
        pipe.lrange(k.rate, 0, -1)
        pipe.hgetall(k.data_epochs)
        pipe.hget(k.info, "reason")
        status, counters, offsets, members, rate, passes, reason = pipe.execute()
        counters = {c.decode(): int(v) for c, v in counters.items()}
        return StatusView(
            status=None if status is None else status.decode(),
            reason=None if reason is None else reason.decode(),
            counters=counters,
            offsets={int(p): int(o) for p, o in offsets.items()},
            data_epochs={int(p): int(e) for p, e in passes.items()},
            members=sorted(m.decode() for m in members),
            rate=rate,
            snapshot_version=counters.get("snapshot_version"),
        )

    def records_applied(self) -> int:
        return int(self.client.hget(self.store.counters, "records_applied") or 0)

    def live_members(self) -> list[str]:
        return [m.decode() for m in self.client.zrangebyscore(self.store.members, now_ms() - MEMBER_TIMEOUT_MS, "+inf")]

    def offsets(self) -> dict[int, int]:
        return {int(p): int(o) for p, o in self.client.hgetall(self.store.offsets).items()}

    def first_dead_letter(self) -> str | None:
        raw = self.client.hget(self.store.info, "first_dead_letter")
        return None if raw is None else raw.decode()

    # -- finalize and snapshots ----------------------------------------------------------------
    def take_finalize_lock(self, member: str) -> bool:
        """The lock of the one finalizer of a bounded job (expires after 5 minutes)."""
        if self.client.set(self._finalize_lock, member, nx=True, px=300_000):
            return True
        # redis-py retries a SET whose reply was lost (Redis restart): the lock may be ours
        return self.client.get(self._finalize_lock) == member.encode()

    def release_finalize_lock(self, member: str) -> None:
        self.client.eval(_RELEASE, 1, self._finalize_lock, member)

    def take_snapshot_turn(self, member: str, period_s: float) -> bool:
        """Whether ``member`` publishes this period's snapshot (the lock expires with the period)."""
        return bool(self.client.set(self._snapshot_lock, member, nx=True, px=int(period_s * 1000)))

    @contextmanager
    def one_snapshot_at_a_time(self, wait_s: float = 300.0) -> Iterator[bool]:
        """Held while a snapshot of the job is taken (periodic, on demand, final), so that
        each reads the state after the one before it was stored: versions follow the data
        and a snapshot's parent is the version before it. Yields whether it was got within
        ``wait_s`` (then the caller goes on anyway: the order of versions is at stake, not
        exactly-once); it expires after 5 minutes (a snapshot taker that died holding it)."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        held = bool(self.client.set(self._snapshot_mutex, token, nx=True, px=300_000))
        while not held and time.monotonic() < deadline:
            time.sleep(0.05)
            held = bool(self.client.set(self._snapshot_mutex, token, nx=True, px=300_000))
        try:
            yield held
        finally:
            if held:
                self.client.eval(_RELEASE, 1, self._snapshot_mutex, token)

    def record_snapshot(self, version: int, final: bool, put: PreparedPut, publishable: bool = True) -> bool:
        """In one transaction: ``put`` (the model store's writes), the job's
        ``snapshot_version`` (and ``publishable_version`` unless the gate rejected it) and,
        when ``final``, ``finalize_calls`` + 1 and status ``finished`` — unless the job is
        finished already (another finalizer won; then nothing is written and False returned).
        A put whose parts were collected raises ``SnapshotAbandoned`` before anything is
        written (an error reply inside MULTI would not undo the job's writes)."""
        # on a Redis Cluster, the plain client of the job's node: a cluster pipeline refuses scripts
        home = SlotClient(self.client, self.store.base) if is_cluster(self.client) else self.client
        while True:
            with home.pipeline(transaction=True) as pipe:
                status = None
                try:
                    if final:
                        pipe.watch(self._status)
                        status = pipe.get(self._status)
                        if status == b"finished":
                            return False
                    put.check(pipe)
                    pipe.multi()
                    put.queue(pipe)
                    pipe.hset(self.store.counters, "snapshot_version", version)
                    if publishable:
                        pipe.hset(self.store.counters, "publishable_version", version)
                    else:  # 0: none yet (a job recorded before the gate has no such field)
                        pipe.hsetnx(self.store.counters, "publishable_version", 0)
                    if final:
                        pipe.hincrby(self.store.counters, "finalize_calls", 1)
                        pipe.set(self._status, "finished")
                    pipe.execute()
                    return True
                except redis.WatchError:
                    if final and self.client.get(self._status) != status:
                        return False  # the status changed under us: another finalizer won
                    # the snapshot's pending parts moved (another version's put): look again

    def snapshot_versions(self, stored: bool = False) -> tuple[int | None, int | None]:
        """(the newest snapshot version the gate let through — with ``stored``, the newest
        stored one, rejected or not —, the newest one produced to the topic)."""
        newest, publishable, published = self.client.hmget(
            self.store.counters, ["snapshot_version", "publishable_version", "published_version"])
        if not stored and publishable is not None:  # a job recorded before the gate has none: all go
            newest = publishable
        return (int(newest) or None if newest is not None else None), (None if published is None else int(published))

    def mark_published(self, version: int) -> None:
        self.client.hset(self.store.counters, "published_version", version)

    # -- monitoring ----------------------------------------------------------------------------
    def add_monitor_report(self, report_json: str, window_json: str, cap: int) -> None:
        """Store the latest window's report and append its summary, keeping the newest ``cap``."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._monitor, report_json)
        pipe.rpush(self._monitor_windows, window_json)
        pipe.ltrim(self._monitor_windows, -cap, -1)
        pipe.execute()

    def replace_monitor_report(self, report_json: str) -> None:
        """Rewrite the latest report (what happened to a retrain arrived after its window)."""
        self.client.set(self._monitor, report_json)

    def monitor_windows(self) -> list[dict]:
        """The summaries of the monitored windows, oldest first."""
        return [json.loads(raw) for raw in self.client.lrange(self._monitor_windows, 0, -1)]

    def monitor_report(self) -> str | None:
        raw = self.client.get(self._monitor)
        return None if raw is None else raw.decode()

    # -- history -------------------------------------------------------------------------------
    def take_history_turn(self, member: str, period_s: float) -> bool:
        """Whether ``member`` writes this period's history sample (the turn expires with it)."""
        return bool(self.client.set(self._history_turn, member, nx=True, px=max(1, int(period_s * 1000))))

    def append_history(self, sample_json: str, cap: int) -> None:
        """Append one sample, keeping the newest ``cap``."""
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(self._history, sample_json)
        pipe.ltrim(self._history, -cap, -1)
        pipe.execute()

    def history(self, newest: int | None = None) -> list[bytes]:
        """The samples, oldest first; only the ``newest`` n when given."""
        return self.client.lrange(self._history, -newest if newest else 0, -1)

    # -- deletion ------------------------------------------------------------------------------
    def delete(self) -> None:
        """Remove every key of the job but its published snapshots (the model store's) and its
        lineage (the registry's), and its name from the jobs set."""
        base, kept = self.store.base, (ModelStore.prefix(self.name), Registry.prefix(self.name))
        doomed = {k.decode() for k in self.client.scan_iter(match=f"{base}:*", count=1000)}
        doomed = {k for k in doomed if not k.startswith(kept)} | set(self.store.all_keys())
        doomed |= {self._spec, self._status, self._finalize_lock, self._snapshot_lock, self._snapshot_mutex}
        for key in self.client.scan_iter(match=shard_pattern(self.name), count=1000):
            self.client.delete(key)  # a sharded state's chunks (other slots of a Redis Cluster)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*sorted(doomed))
        if is_cluster(self.client):  # the jobs set is in another slot: no MULTI spans both
            pipe.execute()
            pipe = self.client.pipeline(transaction=False)
        pipe.srem(JOBS, self.name)
        pipe.execute()


__all__ = ["ENDED", "JOBS", "JobRecord", "StatusView"]
