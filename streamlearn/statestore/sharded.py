"""A job's state spread over a Redis Cluster, exactly-once per shard.

Design
------
One Redis node holds a job's state when every key carries the hash tag ``{job}``: a commit is
one WATCH / MULTI / EXEC, and MULTI cannot span slots. On a cluster the state is split:

- **Home** (slot of ``{job}``): everything a commit writes besides chunks, exactly as on a
  single node (:class:`~streamlearn.statestore.redis_state.RedisBackend` runs it unchanged):
  key specs, each partition's authoritative next offset, owner epoch and data epoch, the
  counters, members and barrier, and (the job record's) status. The home commit is the
  commit point: a batch counts once its home transaction has run.
- **Shards** (slots of ``{job:s0}``, ``{job:s1}``…, one per master at job creation, each tag
  chosen so that its slot lives on a different master then): chunk ``c`` of state key ``k``
  lives on shard ``(crc32(k) + c) mod S``, so a large key's chunks are spread round-robin
  over the nodes. Each shard also holds a copy of the partitions' owner epochs and an
  **applied record**: partition -> the (data epoch, next offset) of the last batch applied
  to that shard.

A commit writes every shard it touches first, each in its own WATCH / MULTI / EXEC that
(1) checks the shard's copy of the fence epochs (a claim raises them on every shard, so a
fenced worker is refused on every shard a commit touches), (2) reads the applied record and
skips the shard if it already has the batch (every partition's stored position at or past
the batch's end), (3) writes the combined chunks *and* the batch's end positions into the
applied record. Then the home transaction writes offsets and counters as on a single node
(gate and fence checked again there). Each shard's write is all-or-nothing with its record of
the batch, so a shard applies a batch once, whatever happens to the other shards.

Failure between shard commits and the home commit leaves a batch on some shards only. The
stored offsets (home) are then the smallest positions: a worker (the same after an outage,
or a new owner after a rebalance) resumes from them, and :meth:`ShardedBackend.claim` /
:meth:`~ShardedBackend.positions` also read every shard's applied record. Each position
past the home offset is a **replay point**: the end of a batch that reached some shards.
The worker re-reads the records up to each replay point as a batch of that partition alone
(:class:`ReplayCutter`), so the replayed batch ends exactly where the partial one did; each
shard then applies it only if its applied record lacks it, and the home commit counts the
records once. A replayed batch's update is computed from the state as it is now, so the
shards that missed the batch get deltas computed from newer parameters than the shards
that had it: each record still affects every shard exactly once, which is what the
parameter-server model promises for concurrent workers anyway.

Reads: a pull reads chunks per shard (each shard one instant; across shards no instant is
promised, as for concurrent workers on one node). The store reports no key versions, so
every commit reads the chunks it writes back under WATCH (a lone writer on one node reads
nothing back; here it does: the price of per-shard transactions). Finalize and snapshots
read a **consistent cut**: the home offsets first, then every shard (chunks and applied
record in one MULTI each); the cut is taken only if no shard is ahead of the home offsets
(no batch in flight on it), otherwise it is read again. Since shards are written before the
home commit, such a cut holds exactly the batches the home offsets count. The barrier lives
on the home slot, unchanged.

Replicas: Redis replicates asynchronously, so a master may acknowledge a write and die
before its replica has it. A shard that loses an applied batch while the home counted it
would lose records for good, so when the cluster has replicas every write of the store (a
shard's commit, the home commit, a claim) is followed by ``WAIT 1`` on its slot (a marker
write, then WAIT, on one connection: the replica stream is ordered, so the marker's
acknowledgment covers every earlier write), and the next step waits for it. A master with no
live replica therefore stalls commits (an outage the worker rides out) rather than
acknowledge what a failover could lose.

Topology: each slot is served by the node the client's slot map names now
(:class:`SlotClient`). A redirect (MOVED / ASK / TRYAGAIN / CLUSTERDOWN: a slot migration
or failover) or a lost node refreshes the slot map and surfaces as ``redis.ConnectionError``,
the outage the worker already survives: it drops the batch in hand and resumes from the
stored offsets and replay points.
"""
from __future__ import annotations

import functools
import json
import time
import zlib
from typing import Callable

import numpy as np
import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from streamlearn.statestore.base import CommitRefused, FencedError, KeySpec, StateError
from streamlearn.statestore.buffered import CommitInfo, Compute, encode_chunk
from streamlearn.statestore.keys import PREFIX, StoreKeys
from streamlearn.statestore.resp_into import exec_multi, exec_watched, hmget_into, multi_into

#: a position in a partition: (data epoch, next offset), compared as a tuple
Position = tuple[int, int]

#: the version a sharded read reports: never equal to a commit's (so every commit reads back)
_READ_VERSION = -2
_NO_VERSION = -3
#: how long a write may wait for a replica's acknowledgment (ms)
WAIT_MS = 5000
#: how long a consistent cut may wait for batches in flight on some shards
CUT_TIMEOUT_S = 60.0

_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "READONLY")

# KEYS: the shard's epochs, its applied record; ARGV: partition, epoch, partition, epoch, …
# Raises each epoch to the claimed one (never lowers it: a slower, older claim loses) and
# returns the applied record's positions of those partitions.
_RAISE_EPOCHS = """
local out = {}
for i = 1, #ARGV, 2 do
  local e = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if e < tonumber(ARGV[i + 1]) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i]) or false
end
return out
"""


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)


class SlotClient:
    """The plain ``redis.Redis`` of the node that serves one hash slot, resolved at each use
    from the cluster client's slot map (so a failover or migration, once the map is
    refreshed, is followed without rebuilding anything)."""

    def __init__(self, cluster: RedisCluster, key: str):
        self.cluster = cluster
        self.slot = cluster.keyslot(key)

    def node(self) -> redis.Redis:
        node = self.cluster.nodes_manager.get_node_from_slot(self.slot)
        return self.cluster.get_redis_connection(node)

    def register_script(self, script: str) -> Script:
        return Script(self, script)  # runs on whichever node serves the slot when called

    def get_encoder(self):
        return self.node().get_encoder()

    def __getattr__(self, name: str):
        return getattr(self.node(), name)


def _encode(pos: Position) -> str:
    return f"{pos[0]}:{pos[1]}"


def _decode(raw: bytes | None) -> Position | None:
    if raw is None:
        return None
    epoch, _, offset = raw.decode().partition(":")
    return int(epoch), int(offset)


class ShardKeys:
    """Keys of one shard (hash tag ``{tag}``)."""

    def __init__(self, tag: str, cluster: RedisCluster):
        self.base = f"{PREFIX}:{{{tag}}}"
        self.epochs = f"{self.base}:epochs"  # partition -> owner epoch (a copy, raised by claims)
        self.applied = f"{self.base}:applied"  # partition -> "data epoch:next offset" of the last batch here
        self.client = SlotClient(cluster, self.base)

    def state(self, key: str) -> str:
        return f"{self.base}:k:{key}"


def tag_on(cluster: RedisCluster, prefix: str, node_name: str) -> str:
    """A hash tag (``prefix``, else ``prefix.N``) whose slot the node ``node_name`` serves now."""
    for attempt in range(100_000):
        tag = prefix if attempt == 0 else f"{prefix}.{attempt}"
        if cluster.nodes_manager.get_node_from_slot(cluster.keyslot(f"{{{tag}}}")).name == node_name:
            return tag
    return prefix  # pragma: no cover - 16,384 slots: found long before


def shard_pattern(job: str) -> str:
    """A SCAN pattern matching every shard key of ``job`` (job names hold no ``:``)."""
    return f"{PREFIX}:{{{job}:*"


def _rerouted(method):
    """Redirects and lost nodes refresh the slot map and surface as ``redis.ConnectionError``."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError) as exc:
            self.refresh()
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                raise
            raise redis.ConnectionError(f"Redis Cluster unavailable: {exc}") from exc
        except redis.ResponseError as exc:
            if not isinstance(exc, (redis.exceptions.MovedError, redis.exceptions.AskError,
                                    redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)) \
                    and not str(exc).startswith(_REDIRECTS):
                raise
            self.refresh()
            raise redis.ConnectionError(f"Redis Cluster slot moved or down ({exc}); retry") from exc
    return wrapper


class ShardedBackend:
    """The state of job ``job`` on a Redis Cluster: ``home`` is a single-node backend bound
    to the job's home slot (:class:`SlotClient`); chunks live on the shards."""

    def __init__(self, cluster: RedisCluster, home, job: str):
        self.cluster = cluster
        self.home = home
        self.keys: StoreKeys = home.keys
        self.member = home.member
        self._shards: list[ShardKeys] | None = None
        #: partition -> positions past its stored offset where a partial batch ended (to re-apply alone)
        self.replay: dict[int, list[Position]] = {}
        self._shard_conflicts = 0
        self.profiles: list[bytes] = []  # set by read_consistent_into, as the single-node backend's
        self.replicated = bool(cluster.get_replicas())

    @property
    def conflicts(self) -> int:
        return self.home.conflicts + self._shard_conflicts

    def _replicate(self, client: SlotClient, base: str) -> None:
        """Return once a replica has every write made so far to ``client``'s slot (see the design)."""
        if not self.replicated:
            return
        pipe = client.pipeline(transaction=False)
        pipe.set(f"{base}:sync", int(time.time() * 1000))
        pipe.execute_command("WAIT", 1, WAIT_MS)
        _, acked = pipe.execute()
        if int(acked) < 1:
            raise redis.ConnectionError(f"no replica of {base} acknowledged the write within {WAIT_MS} ms")

    def refresh(self) -> None:
        """Reload the slot map (after a redirect or a lost node); a failure is left to the retry."""
        try:
            self.cluster.nodes_manager.initialize()
        except (redis.RedisError, OSError):
            pass

    # -- shards ------------------------------------------------------------------------------
    def shards(self) -> list[ShardKeys]:
        if self._shards is None:
            raw = self.home.client.hget(self.keys.info, "shards")
            if raw is None:
                raise StateError(f"job {self.keys.job!r} has no state on this cluster (no shards declared)")
            self._shards = [ShardKeys(tag, self.cluster) for tag in json.loads(raw)]
        return self._shards

    def _ensure_shards(self) -> list[ShardKeys]:
        """At the first declare: one shard per master, each tag placed on a different master."""
        if self.home.client.hget(self.keys.info, "shards") is None:
            masters = sorted(self.cluster.get_primaries(), key=lambda n: n.name)
            tags = [self._tag_on(i, m.name) for i, m in enumerate(masters)]
            self.home.client.hsetnx(self.keys.info, "shards", json.dumps(tags))
        return self.shards()

    def _tag_on(self, i: int, node_name: str) -> str:
        return tag_on(self.cluster, f"{self.keys.job}:s{i}", node_name)

    def shard_of(self, key: str, cid: int) -> int:
        return (zlib.crc32(key.encode()) + cid) % len(self.shards())

    def _by_shard(self, key: str, ids) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for cid in ids:
            out.setdefault(self.shard_of(key, cid), []).append(cid)
        return out

    # -- declaration and reads -----------------------------------------------------------------
    @_rerouted
    def specs(self) -> dict[str, KeySpec]:
        return self.home.specs()

    @_rerouted
    def declare(self, spec: KeySpec, chunks: dict[int, np.ndarray]) -> None:
        shards = self._ensure_shards()
        if not self.home.client.hsetnx(self.keys.keyspecs, spec.name, json.dumps(spec.to_json())):
            raise StateError(f"state key {spec.name!r} is already initialized")
        for s, ids in self._by_shard(spec.name, chunks).items():
            fields = [x for cid in ids for x in (cid, encode_chunk(spec, chunks[cid]))]
            _on_connection(shards[s].client, lambda conn: exec_multi(conn, [("HSET", shards[s].state(spec.name), *fields)]))
        if self.home._specs is not None:
            self.home._specs[spec.name] = spec

    @_rerouted
    def read(self, key: str, dests: dict[int, np.ndarray]) -> int:
        shards = self.shards()
        for s, ids in self._by_shard(key, dests).items():
            bad = _on_connection(shards[s].client,
                                 lambda conn: hmget_into(conn, shards[s].state(key), ids, [dests[i] for i in ids]))
            self.home._check_read(key, ids, bad)
        return _READ_VERSION

    # -- the commit ------------------------------------------------------------------------------
    @_rerouted
    def transact(self, touched: dict[str, list[int]], compute: Compute, info: CommitInfo) -> None:
        if info.expect:  # the shards' versions are not one atomic cut
            raise StateError("check-and-set commits (synchronous rounds) need a single-node Redis")
        shards = self.shards()
        on: dict[int, dict[str, list[int]]] = {}
        for key, ids in touched.items():
            for s, part in self._by_shard(key, ids).items():
                on.setdefault(s, {})[key] = part
        end = {p: (info.data_epochs.get(p, 0), o) for p, o in info.offsets.items()}
        if on and info.offsets and self.home.gate is not None:
            # not atomic with the shards' writes (the home commit checks again, atomically): a
            # pause that lands in between leaves a partial batch, re-applied on resume
            status = self.home.client.get(self.home.gate)
            if status is not None and status != b"running":
                raise CommitRefused(f"job {self.keys.job!r} is {status.decode()}; batch dropped")
        for s in sorted(on):
            self._commit_shard(s, shards[s], on[s], compute, info, end, {k: _NO_VERSION for k in touched})
            self._replicate(shards[s].client, shards[s].base)
        self.home.transact({}, lambda read, versions: {}, info)
        self._replicate(self.home.client, self.keys.base)

    def _commit_shard(self, s: int, shard: ShardKeys, keys: dict[str, list[int]], compute: Compute,
                      info: CommitInfo, end: dict[int, Position], versions: dict[str, int]) -> None:
        parts = sorted(info.fence)
        watched = [shard.epochs, shard.applied] + [shard.state(k) for k in keys]
        fields = [str(p) for p in end]
        with shard.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    if parts:
                        epochs = pipe.hmget(shard.epochs, [str(p) for p in parts])
                        stale = [p for p, e in zip(parts, epochs) if e is None or int(e) != info.fence[p]]
                        if stale:
                            raise FencedError(f"partitions {stale} were reassigned; batch dropped")
                    have = [_decode(v) for v in pipe.hmget(shard.applied, fields)] if fields else []
                    done = [h is not None and h >= end[p] for p, h in zip(end, have)]
                    if done and all(done):
                        # this shard has the batch already (a replay, or a retry after a lost
                        # EXEC reply): read what is stored, add nothing
                        compute(self._reader(pipe.connection, s, apply=False), versions)
                        pipe.unwatch()
                        return
                    if any(done):
                        raise StateError(f"shard {s}: batch partly applied before ({dict(zip(end, have))} vs "
                                         f"{end}); the worker must replay partial batches alone")
                    writes = compute(self._reader(pipe.connection, s, apply=True), versions)
                    commands: list[tuple] = []
                    for key, chunks in writes.items():
                        if chunks:
                            spec = self.home.specs()[key]
                            commands.append(("HSET", shard.state(key),
                                             *[x for cid, c in chunks.items() for x in (cid, encode_chunk(spec, c))]))
                    if end:
                        commands.append(("HSET", shard.applied, *[x for p, pos in end.items() for x in (str(p), _encode(pos))]))
                    if commands:  # a lost reply: the retry reads the applied record (above)
                        exec_watched(pipe, commands, f"shard {s}'s commit")
                    return
                except redis.WatchError:
                    self._shard_conflicts += 1
                    continue

    def _reader(self, conn, s: int, *, apply: bool):
        """A commit's reader limited to the chunks of shard ``s`` (``apply``: combine each with
        the pending delta as it arrives; else just refresh the worker's copy)."""
        shard = self.shards()[s]

        def read(key: str, dests: dict[int, np.ndarray], filled: Callable[[int], object]) -> None:
            ids = [cid for cid in dests if self.shard_of(key, cid) == s]
            if ids:
                bad = hmget_into(conn, shard.state(key), ids, [dests[i] for i in ids],
                                 (lambda i: filled(ids[i])) if apply else None)
                self.home._check_read(key, ids, bad)
        return read

    # -- partitions ------------------------------------------------------------------------------
    @_rerouted
    def claim(self, partitions: list[int]) -> list[tuple[int, int | None, int]]:
        """As on one node (home), then raise every shard's copy of the new epochs and read
        their applied records: positions past the stored offsets become replay points."""
        claimed = self.home.claim(partitions)
        if not partitions:
            return claimed
        args = [x for p, (epoch, _, _) in zip(partitions, claimed) for x in (str(p), epoch)]
        applied = []
        for shard in self.shards():
            raw = shard.client.eval(_RAISE_EPOCHS, 2, shard.epochs, shard.applied, *args)
            applied.append([_decode(v) for v in raw])
            self._replicate(shard.client, shard.base)
        self._replicate(self.home.client, self.keys.base)
        self._note_replay(partitions, [(o, d) for _, o, d in claimed], applied)
        return claimed

    @_rerouted
    def positions(self, partitions: list[int]) -> list[tuple[int | None, int]]:
        stored = self.home.positions(partitions)
        fields = [str(p) for p in partitions]
        applied = [[_decode(v) for v in shard.client.hmget(shard.applied, fields)] for shard in self.shards()]
        self._note_replay(partitions, stored, applied)
        return stored

    def _note_replay(self, partitions: list[int], stored: list[tuple[int | None, int]],
                     applied: list[list[Position | None]]) -> None:
        for i, (p, (offset, epoch)) in enumerate(zip(partitions, stored)):
            at = (epoch, -1 if offset is None else offset)
            points = sorted({shard[i] for shard in applied if shard[i] is not None and shard[i] > at})
            if points:
                self.replay[p] = points
            else:
                self.replay.pop(p, None)

    # -- consistent cut, members -----------------------------------------------------------------
    @_rerouted
    def read_consistent_into(self, dests: dict[str, dict[int, np.ndarray]]) -> tuple[dict[int, int], dict[str, int]]:
        """Fill ``dests`` and return the offsets and counters of one cut: the home's, with
        every shard holding exactly the batches those offsets count (see the design)."""
        deadline = time.monotonic() + CUT_TIMEOUT_S
        shards = self.shards()
        while True:
            (offsets, counters, passes, profiles), _ = multi_into(
                self.home.client, [("HGETALL", self.keys.offsets), ("HGETALL", self.keys.counters),
                                   ("HGETALL", self.keys.data_epochs), ("HGETALL", self.keys.profile)], [])
            home = {int(p): (0, int(o)) for p, o in zip(offsets[::2], offsets[1::2])}
            for p, e in zip(passes[::2], passes[1::2]):
                if int(p) in home:
                    home[int(p)] = (int(e), home[int(p)][1])
            ahead = False
            for s, shard in enumerate(shards):
                names = sorted(dests)
                reads = []
                for name in names:
                    ids = [cid for cid in dests[name] if self.shard_of(name, cid) == s]
                    if ids:
                        reads.append((name, ids))
                (applied,), bad = multi_into(shard.client, [("HGETALL", shard.applied)],
                                             [(shard.state(n), ids, [dests[n][i] for i in ids]) for n, ids in reads])
                for (name, ids), missing in zip(reads, bad):
                    self.home._check_read(name, ids, missing)
                for p, pos in zip(applied[::2], applied[1::2]):
                    if _decode(pos) > home.get(int(p), (0, -1)):
                        ahead = True
            if not ahead:
                self.profiles = list(profiles[1::2])  # the members' data profiles, with the home counters
                return ({p: o for p, (_, o) in home.items()},
                        {c.decode(): int(v) for c, v in zip(counters[::2], counters[1::2])})
            if time.monotonic() > deadline:
                raise StateError(f"no consistent cut of job {self.keys.job!r} within {CUT_TIMEOUT_S} s: a batch "
                                 "stays applied to some shards only (its replay has not run)")
            time.sleep(0.05)

    @_rerouted
    def heartbeat(self) -> None:
        self.home.heartbeat()

    @_rerouted
    def write_profile(self, member: str, blob: bytes) -> None:
        self.home.write_profile(member, blob)

    @_rerouted
    def leave(self) -> None:
        self.home.leave()

    @_rerouted
    def barrier(self, poll_s: float = 0.01, timeout_s: float = 600.0) -> None:
        self.home.barrier(poll_s, timeout_s)


def _on_connection(client: SlotClient, fn):
    node = client.node()
    pool = node.connection_pool
    conn = pool.get_connection()
    try:
        return fn(conn)
    finally:
        pool.release(conn)


class ReplayCutter:
    """Cuts a worker's window of messages so that a partial batch (one that reached some
    shards only) is re-applied alone and ends exactly where it ended before.

    For a partition with replay points, its messages are held until one reaches the next
    point; they then form a batch of their own. Messages of partitions without points form
    one batch after those (the order of commits within a partition is kept). On one node
    there are never replay points and a window is one batch, as it always was."""

    def __init__(self):
        self.points: dict[int, list[Position]] = {}
        self.held: dict[int, list] = {}

    def assign(self, partitions: list[int], points: dict[int, list[Position]]) -> None:
        """The stored positions of ``partitions`` were just read: start over from them."""
        for p in partitions:
            self.held.pop(p, None)
            if points.get(p):
                self.points[p] = list(points[p])
            else:
                self.points.pop(p, None)

    def drop(self, partitions: list[int]) -> None:
        for p in partitions:
            self.held.pop(p, None)
            self.points.pop(p, None)

    def cut(self, msgs: list, position: Callable[[int, int], Position]) -> list[list]:
        """``msgs`` as batches to commit in order; ``position(partition, offset)`` is the
        position stored after the message at ``offset``."""
        if not self.points:
            return [msgs] if msgs else []
        batches, rest = [], []
        for m in msgs:
            p = m.partition()
            points = self.points.get(p)
            if not points or m.error() is not None:
                rest.append(m)
                continue
            held = self.held.setdefault(p, [])
            held.append(m)
            if position(p, m.offset()) >= points[0]:
                batches.append(held)
                del self.held[p]
                points.pop(0)
                if not points:
                    del self.points[p]
        return batches + ([rest] if rest else [])
