"""The job's state in Redis, with the commit point as one optimistic transaction.

Redis has no vector add, so a push is aggregated by the committing worker inside a
WATCH / MULTI / EXEC transaction: it reads the touched chunks, combines its buffered
deltas with them, and writes them back together with the batch's partition offsets and
counters. If any other writer changed a watched chunk, or a partition's epoch moved
(the partition was reassigned), EXEC fails and the commit is retried or fenced. The
outcome equals server-side aggregation: every delta is applied exactly once, to the
newest value, atomically with the offsets of the records that produced it.

Every commit also increments the written keys' versions (``sl:{job}:versions``) in the same
MULTI. A worker that holds chunks read (or written) at a key's current version does not read
them back at commit: a lone writer's commit only writes. Every worker of a job must therefore
run code that bumps versions (true of every release so far; a writer that did not would make
the others trust stale chunks).
"""
from __future__ import annotations

import json
import time

import numpy as np
import redis

from streamlearn.statestore import journal
from streamlearn.statestore.base import CommitRefused, FencedError, KeySpec, StaleCommit, StateError
from streamlearn.statestore.buffered import BufferedState, CommitInfo, Compute, encode_chunk
from streamlearn.statestore.keys import StoreKeys
from streamlearn.statestore.resp_into import exec_multi, exec_watched, hmget_into, multi_into, versioned_hmget_into
from streamlearn.statestore.sharded import ShardedBackend, SlotClient, is_cluster

#: a member that has not sent a heartbeat for this long has left the job (barrier, status)
MEMBER_TIMEOUT_MS = 10_000

_BARRIER = """
local gen = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[4]) < gen then return 1 end
local arrived = KEYS[3] .. gen
redis.call('SADD', arrived, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('SISMEMBER', arrived, m) == 0 then return 0 end
end
redis.call('SET', KEYS[1], gen + 1)
redis.call('DEL', arrived)
return 1
"""


# KEYS: the counters hash; ARGV: (partition, earliest, latest) triples. Lowers
# ``event_time_min:<p>`` / raises ``event_time_max:<p>`` (Redis has no "set if lower" for a hash
# field); run inside the commit's MULTI, so the range moves with the commit's offsets.
_EVENT_TIME = """
for i = 1, #ARGV, 3 do
  local lo, hi = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local f_lo, f_hi = 'event_time_min:' .. ARGV[i], 'event_time_max:' .. ARGV[i]
  local cur = redis.call('HGET', KEYS[1], f_lo)
  if not cur or lo < tonumber(cur) then redis.call('HSET', KEYS[1], f_lo, lo) end
  cur = redis.call('HGET', KEYS[1], f_hi)
  if not cur or hi > tonumber(cur) then redis.call('HSET', KEYS[1], f_hi, hi) end
end
return 1
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def _pairs(mapping: dict) -> list:
    """A mapping as HSET's flat ``field value field value ...`` arguments."""
    return [x for item in mapping.items() for x in item]


class RedisBackend:
    def __init__(self, client: redis.Redis, job: str, member: str | None = None, gate: str | None = None):
        self.client = client
        self.keys = StoreKeys(job)
        self.member = member
        self.gate = gate
        self._specs: dict[str, KeySpec] | None = None
        self._barrier = client.register_script(_BARRIER)
        self.conflicts = 0  # optimistic retries, for benchmarks
        self.profiles: list[bytes] = []  # set by read_consistent_into
        #: journaled key -> (version, base, patches since base), set by read_consistent_into
        self.journals: dict[str, tuple[int, int, list[bytes]]] = {}
        #: partition -> positions of batches applied in part (a sharded store's; one node applies a batch whole)
        self.replay: dict[int, list[tuple[int, int]]] = {}

    def specs(self) -> dict[str, KeySpec]:
        if self._specs is None:
            raw = self.client.hgetall(self.keys.keyspecs)
            self._specs = {k.decode(): KeySpec.from_json(json.loads(v)) for k, v in raw.items()}
        return dict(self._specs)

    def declare(self, spec: KeySpec, chunks: dict[int, np.ndarray]) -> None:
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            created, _ = exec_multi(conn, [("HSETNX", self.keys.keyspecs, spec.name, json.dumps(spec.to_json())),
                                           self._hset_chunks(spec.name, chunks, spec)])
        finally:
            pool.release(conn)
        if not created:
            raise StateError(f"state key {spec.name!r} is already initialized")
        if self._specs is not None:
            self._specs[spec.name] = spec

    def _hset_chunks(self, key: str, chunks: dict[int, np.ndarray], spec: KeySpec | None = None) -> tuple:
        """``HSET`` of a key's chunks, each sent from the array's own buffer."""
        spec = spec or self.specs()[key]
        return ("HSET", self.keys.state(key), *_pairs({cid: encode_chunk(spec, c) for cid, c in chunks.items()}))

    def read(self, key: str, dests: dict[int, np.ndarray]) -> int:
        ids = list(dests)  # the version and the chunks of one instant (MULTI)
        version, bad = versioned_hmget_into(self.client, self.keys.versions, key, self.keys.state(key), ids,
                                            [dests[i] for i in ids])
        self._check_read(key, ids, bad)
        return int(version or 0)

    def journal_since(self, key: str, version: int) -> tuple[int, int | None, list[bytes]] | None:
        """(current version, base, the patches after ``version``) of a journaled key; None
        when one of them is gone (folded and dropped). Patches never change once written, so
        the version and the patches need not be read at one instant."""
        current = int(self.client.hget(self.keys.versions, key) or 0)
        if current <= version:
            return current, None, []
        raw = self.client.hmget(self.keys.journal(key), [journal.BASE, *range(version + 1, current + 1)])
        if any(blob is None for blob in raw[1:]):
            return None
        return current, int(raw[0] or 0), raw[1:]

    def read_journaled(self, key: str, dests: dict[int, np.ndarray]) -> tuple[int, int, list[bytes]]:
        """Fill ``dests`` with the chunks; (version, base, the patches since base), one instant."""
        ids = list(dests)
        (version, raw), (bad,) = multi_into(self.client, [("HGET", self.keys.versions, key),
                                                          ("HGETALL", self.keys.journal(key))],
                                            [(self.keys.state(key), ids, [dests[i] for i in ids])])
        self._check_read(key, ids, bad)
        return self._journal_of(key, int(version or 0), raw)

    def _journal_of(self, key: str, version: int, raw: list) -> tuple[int, int, list[bytes]]:
        kept = dict(zip(raw[::2], raw[1::2]))
        base = journal.meta(kept, journal.BASE)
        patches = journal.since(kept, base, version)
        if patches is None:
            raise StateError(f"state key {key!r}: patches after version {base} are missing from its journal")
        return version, base, patches

    def _read_into(self, conn, key: str, dests: dict[int, np.ndarray], filled) -> None:
        if dests:
            ids = list(dests)
            bad = hmget_into(conn, self.keys.state(key), ids, [dests[i] for i in ids], lambda i: filled(ids[i]))
            self._check_read(key, ids, bad)

    def _check_read(self, key: str, ids: list[int], bad: list[int]) -> None:
        if bad:
            raise StateError(f"state key {key!r} chunk {ids[bad[0]]} is missing from the store or has the "
                             f"wrong size ({len(bad)} chunk(s) unreadable)")

    def transact(self, touched: dict[str, list[int]], compute: Compute, info: CommitInfo,
                 patches: dict[str, bytes] | None = None) -> None:
        k = self.keys
        patches = patches or {}
        # a batch commit (one with offsets) also watches the gate (the job's status): a pause
        # (or a failure, a delete) that lands before EXEC refuses it, so `job pause` is a barrier
        gated = bool(info.offsets) and self.gate is not None
        watched = [k.epochs] + ([self.gate] if gated else []) + [k.state(key) for key in touched]
        # a key's version moves only with its chunks: watching them keeps the check true until EXEC
        watched += [k.state(key) for key in info.expect if key not in touched]
        watched += [k.journal(key) for key in patches]  # each patch takes the next version: one writer at a time
        parts = sorted(info.fence)
        mine = sorted(p for p in info.offsets if p in info.fence)
        retry = False
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    if parts:
                        epochs = pipe.hmget(k.epochs, parts)
                        stale = [p for p, e in zip(parts, epochs) if e is None or int(e) != info.fence[p]]
                        if stale:
                            raise FencedError(f"partitions {stale} were reassigned; batch dropped")
                    if gated:
                        status = pipe.get(self.gate)
                        if status is not None and status != b"running":  # None: no job record (deleted)
                            raise CommitRefused(f"job {k.job!r} is {status.decode()}; batch dropped")
                    if retry and mine and info.offsets.keys() <= info.fence.keys():
                        # redis-py turns a connection lost during EXEC into a WatchError, but
                        # that EXEC may have been applied (reply lost). Only the fence holder
                        # moves these offsets (and their data epochs), so if they already equal
                        # ours it was: done. The epoch tells a pass that ended where the batch
                        # began (offset back at the start) from the batch not applied.
                        fields = [str(p) for p in mine]
                        stored = pipe.hmget(k.offsets, fields)
                        passes = pipe.hmget(k.data_epochs, fields)
                        if all(o is not None and int(o) == info.offsets[p] and int(e or 0) == info.data_epochs.get(p, 0)
                               for p, o, e in zip(mine, stored, passes)):
                            pipe.unwatch()
                            return
                    # a check-and-set, after the lost-reply check (an EXEC that went through moved them itself)
                    if info.expect:
                        expected = list(info.expect)
                        held = pipe.hmget(k.versions, expected)
                        moved = [key for key, v in zip(expected, held) if int(v or 0) != info.expect[key]]
                        if moved:
                            raise StaleCommit(f"state keys {moved} were written since this commit read them; "
                                              f"nothing applied")
                    # a key's version moves only together with its chunks (same MULTI), and the
                    # chunks are watched: versions read here stay true until EXEC
                    names = list(touched)
                    versions = {n: int(v or 0) for n, v in zip(names, pipe.hmget(k.versions, names))} if names else {}
                    writes = compute(lambda key, dests, filled: self._read_into(pipe.connection, key, dests, filled), versions)
                    commands: list[tuple] = []
                    for key, chunks in writes.items():
                        commands.append(self._hset_chunks(key, chunks))
                        commands.append(("HINCRBY", k.versions, key, 1))
                    for key, blob in patches.items():
                        commands += self._patch_commands(pipe, key, blob, versions[key] + 1, key in writes)
                    if info.offsets:
                        commands.append(("HSET", k.offsets, *_pairs({str(p): o for p, o in info.offsets.items()})))
                    if info.data_epochs:
                        commands.append(("HSET", k.data_epochs, *_pairs({str(p): e for p, e in info.data_epochs.items()})))
                    if info.profile is not None:
                        commands.append(("HSET", k.profile, *info.profile))
                    if info.dead_letter_reason:
                        commands.append(("HSETNX", k.info, "first_dead_letter", info.dead_letter_reason))
                    if info.records_applied:
                        commands.append(("HINCRBY", k.counters, "records_applied", info.records_applied))
                    if info.records_dead_lettered:
                        commands.append(("HINCRBY", k.counters, "records_dead_lettered", info.records_dead_lettered))
                    commands.append(("HINCRBY", k.counters, "commits", 1))
                    if info.event_times:
                        commands.append(("EVAL", _EVENT_TIME, 1, k.counters,
                                         *[x for p, (lo, hi) in sorted(info.event_times.items()) for x in (p, lo, hi)]))
                    if info.offsets:
                        commands.append(("LPUSH", k.rate, f"{now_ms()}:{info.records_applied + info.records_dead_lettered}"))
                        commands.append(("LTRIM", k.rate, 0, 199))
                    exec_watched(pipe, commands, "the commit")  # a lost reply: the retry reads the offsets (above)
                    return
                except redis.WatchError:
                    self.conflicts += 1
                    retry = True
                    continue

    def _patch_commands(self, pipe, key: str, blob: bytes, version: int, folded: bool) -> list[tuple]:
        """Write a journaled key's patch as ``version``; a fold (its chunks written) moves the
        base there and drops the patches the previous fold had folded."""
        name = self.keys.journal(key)
        commands: list[tuple] = [("HSET", name, version, blob)]
        if not folded:
            return commands + [("HINCRBY", self.keys.versions, key, 1)]
        base, previous = (int(v or 0) for v in pipe.hmget(name, [journal.BASE, journal.PREVIOUS]))
        if base > previous:
            commands.append(("HDEL", name, *range(previous + 1, base + 1)))
        return commands + [("HSET", name, journal.BASE, version, journal.PREVIOUS, base)]

    def read_consistent_into(self, dests: dict[str, dict[int, np.ndarray]]) -> tuple[dict[int, int], dict[str, int]]:
        """Fill ``dests`` (key -> chunk id -> array) and return the offsets and counters, all
        as of one instant (MULTI); the chunks are read straight into the arrays."""
        names = sorted(dests)
        reads = [(self.keys.state(n), list(dests[n]), list(dests[n].values())) for n in names]
        journaled = [n for n in names if self.specs()[n].journal]
        (raw_offsets, raw_counters, raw_profiles, *raw_journals), bad = multi_into(
            self.client, [("HGETALL", self.keys.offsets), ("HGETALL", self.keys.counters),
                          ("HGETALL", self.keys.profile),
                          *[c for n in journaled for c in (("HGET", self.keys.versions, n),
                                                           ("HGETALL", self.keys.journal(n)))]], reads)
        self.journals = {n: self._journal_of(n, int(v or 0), raw)
                         for n, v, raw in zip(journaled, raw_journals[::2], raw_journals[1::2])}
        self.profiles = list(raw_profiles[1::2])  # the members' data profiles of the same instant
        for name, (_, ids, _), missing in zip(names, reads, bad):
            self._check_read(name, ids, missing)
        offsets = {int(p): int(o) for p, o in zip(raw_offsets[::2], raw_offsets[1::2])}
        counters = {c.decode(): int(v) for c, v in zip(raw_counters[::2], raw_counters[1::2])}
        return offsets, counters

    def claim(self, partitions: list[int]) -> list[tuple[int, int | None, int]]:
        """Take ownership of ``partitions`` (a new owner epoch each, fencing out any previous
        owner's commits), then read where each stands: (epoch, stored offset or None, data epoch).
        The epochs are bumped first, so a fenced writer's last commit is visible in the offsets."""
        if not partitions:
            return []
        pipe = self.client.pipeline(transaction=True)
        for p in partitions:
            pipe.hincrby(self.keys.epochs, str(p), 1)
        fields = [str(p) for p in partitions]
        pipe.hmget(self.keys.offsets, fields).hmget(self.keys.data_epochs, fields)
        results = pipe.execute()
        epochs, (stored, passes) = results[:len(partitions)], results[len(partitions):]
        return [(int(e), None if o is None else int(o), int(d or 0)) for e, o, d in zip(epochs, stored, passes)]

    def positions(self, partitions: list[int]) -> list[tuple[int | None, int]]:
        """The stored (next offset or None, data epoch) of each of ``partitions``, of one instant."""
        fields = [str(p) for p in partitions]
        stored, passes = self.client.pipeline(transaction=True).hmget(self.keys.offsets, fields).hmget(
            self.keys.data_epochs, fields).execute()
        return [(None if o is None else int(o), int(d or 0)) for o, d in zip(stored, passes)]

    def write_profile(self, member: str, blob: bytes) -> None:
        """Store ``member``'s data profile outside a commit: it must cover only batches whose
        commits already went through (see :mod:`streamlearn.monitoring.profile`)."""
        self.client.hset(self.keys.profile, member, blob)

    def heartbeat(self) -> None:
        if self.member:
            self.client.zadd(self.keys.members, {self.member: now_ms()})

    def leave(self) -> None:
        if self.member:
            self.client.zrem(self.keys.members, self.member)

    def live_members(self) -> int:
        """Members whose last heartbeat is within ``MEMBER_TIMEOUT_MS`` (at least 1: this one)."""
        return max(1, int(self.client.zcount(self.keys.members, now_ms() - MEMBER_TIMEOUT_MS, "+inf")))

    def lease(self, name: str) -> bool:
        """Whether this member holds (or has just taken) the lease ``name``: one member does
        a job-wide task while the others wait; the lease lapses after ``MEMBER_TIMEOUT_MS``,
        so a holder that dies hands the task on. Saves duplicate work only: what the task
        writes must be safe without it (a check-and-set)."""
        key = self.keys.lease + name
        member = self.member or ""
        if self.client.set(key, member, nx=True, px=MEMBER_TIMEOUT_MS):
            return True
        return self.client.get(key) == member.encode()

    def barrier(self, poll_s: float = 0.01, timeout_s: float = 600.0) -> None:
        """Wait until every live member of the job has arrived (members that stop sending
        heartbeats drop out, so a member leaving never deadlocks the others)."""
        if not self.member:
            return
        gen = int(self.client.get(self.keys.barrier_gen) or 0)
        deadline = time.monotonic() + timeout_s
        while True:
            self.heartbeat()
            done = self._barrier(keys=[self.keys.barrier_gen, self.keys.members, self.keys.barrier_arrived],
                                 args=[self.member, now_ms(), MEMBER_TIMEOUT_MS, gen])
            if int(done):
                return
            if time.monotonic() > deadline:
                raise StateError(f"barrier: not every member arrived within {timeout_s} s")
            time.sleep(poll_s)


class RedisState(BufferedState):
    """The State of job ``job`` in Redis, as one worker (``member``) sees it; on a Redis
    Cluster (a ``RedisCluster`` client) the state is sharded (:mod:`~streamlearn.statestore.sharded`).

    ``gate``: a key whose value must be ``running`` (or absent) for a batch commit to apply,
    checked inside the commit's transaction; the job record passes the job's status."""

    backend: "RedisBackend | ShardedBackend"

    def __init__(self, client: redis.Redis, job: str, member: str | None = None, gate: str | None = None):
        if is_cluster(client):  # a Redis Cluster: chunks on shards, the rest on the job's home slot
            home = RedisBackend(SlotClient(client, StoreKeys(job).base), job, member, gate)
            super().__init__(ShardedBackend(client, home, job))
        else:
            super().__init__(RedisBackend(client, job, member, gate))

    def load_consistent(self) -> tuple[dict[int, int], dict[str, int]]:
        """Fill the cache with one consistent cut of the whole state (for finalize) and
        return the offsets and counters of that cut."""
        return self.load_all(self.backend.read_consistent_into)
