"""The model store (snapshot bytes by version) and model registry (metadata + lineage) in Redis.

Keys of one job share the hash tag ``{job}`` so they live in one Redis Cluster slot, which
the Lua script that writes them atomically requires::

    sl:{job}:snapshot:<version>     snapshot bytes (immutable once written)
    sl:{job}:snapshot:<version>:parts   instead of the bytes when they exceed PART_BYTES on a Redis
                                    Cluster (or one message, 64 MiB, on one node): the manifest
                                    (:mod:`streamlearn.snapshots.parts`) of parts
                                    ``sl:{job/pM}:snapshot:<version>:<i>`` written round-robin to
                                    every master (tag ``job/pM`` on master M), so that no node
                                    holds a whole large model; on one node
                                    ``sl:{job}:snapshot:<version>:<i>`` (no command carries more
                                    than a part: Redis refuses a value over 512 MB)
    sl:{job}:snapshot:<version>:state   the training state encoded apart from the model
                                    (:func:`~streamlearn.snapshots.format.encode_detached`), put in
                                    the same atomic step; in parts like the model (``…:state:parts``,
                                    parts ``…:snapshot:<version>:state:<i>``; on one node only
                                    over STATE_WHOLE_BYTES); absent when the
                                    snapshot has no training state or carries it inside (before
                                    the state was kept apart)
    sl:{job}:snapshot:staged:<version>:<kind>:<id>   a value over STAGED_BYTES written ahead of the
                                    atomic step, which renames it into place
    sl:{job}:snapshot:pending       hash version -> {"at": ms, "keys": [part and staged keys]} of what
                                    was written for a version not committed yet: the commit removes its entry;
                                    one left behind (a lost finalize race, a crash between the
                                    parts and the commit) names orphaned parts, deleted by
                                    :meth:`ModelStore.collect_orphans`
    sl:{job}:snapshot:index         zset version -> version
    sl:{job}:snapshot:seq           INCR counter handing out versions
    sl:{job}:snapshot:meta          hash version -> metadata JSON (the registry entry)
    sl:{job}:snapshot:sha256        hash version -> sha256 of the bytes (idempotent re-put)
    sl:models:jobs                  set of names with models (cross-slot: written by the control
                                    plane, ``job create`` and ``publish_snapshot``, never by a worker,
                                    whose writes stay inside its job's slot)

The registry answers Schelter et al.'s questions without loading a model: who/when
(``created_at``), which hyperparameters (``params``), which data (``offsets``,
``records_applied``), derived from what (``parent``), how good (``metrics``/``scores``).
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from streamlearn.errors import UserError
from streamlearn.snapshots.parts import Manifest, PartialSnapshot, assemble, part_bytes, split, whole_bytes
from streamlearn.statestore.keys import PREFIX
from streamlearn.statestore.sharded import is_cluster, tag_on

__all__ = ["ModelStore", "SnapshotNotFound", "SnapshotConflict", "ORPHANED_AFTER_S"]

JOBS_KEY = f"{PREFIX}:models:jobs"
#: the largest training state kept as one value on one node (a model: one message, 64 MiB):
#: Redis refuses a value over 512 MB (``proto-max-bulk-len``) and needs about twice a value's
#: size while it is written. A state never goes on the topic: 4 MiB parts cost a sha256 of
#: every part and a round trip each (a 2^20-feature factorization machine's 38 MB: 10 parts).
STATE_WHOLE_BYTES = 256 << 20
#: a value over this is written ahead of the atomic step under a staged key that the step
#: renames into place: passed to the step's script, a 38 MB model was copied twice more in
#: Redis (0.12 s against 0.04 s for a SET of it)
STAGED_BYTES = 1 << 20
#: parts written this long ago for a version still not committed are orphans: far longer than
#: writing a 1 GiB snapshot takes, so a slow writer's parts are not taken from under it
ORPHANED_AFTER_S = 3600.0

# KEYS: data, index, seq, meta, sha, pending, state, staged data, staged state ; ARGV: version, data, metadata
# json, sha256, '1' when parts or staged values were written, the training state ('' for none), '1' when the
# data / the state was staged (written ahead under its staged key, renamed into place here; ARGV[2] / ARGV[6] empty)
_PUT = """
local function drop_staged()
  if ARGV[7] == '1' then redis.call('DEL', KEYS[8]) end
  if ARGV[8] == '1' then redis.call('DEL', KEYS[9]) end
end
if ARGV[5] == '1' and redis.call('HDEL', KEYS[6], ARGV[1]) == 0 and redis.call('HEXISTS', KEYS[5], ARGV[1]) == 0 then
  return redis.error_reply('ABANDONED snapshot version ' .. ARGV[1] .. ': its parts were collected as orphans')
end
local existing = redis.call('HGET', KEYS[5], ARGV[1])
if existing then
  drop_staged()
  if existing == ARGV[4] then return 0 end
  return redis.error_reply('CONFLICT snapshot version ' .. ARGV[1] .. ' already stored with different bytes')
end
if ARGV[7] == '1' then redis.call('RENAME', KEYS[8], KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
if ARGV[8] == '1' then redis.call('RENAME', KEYS[9], KEYS[7]) elseif ARGV[6] ~= '' then redis.call('SET', KEYS[7], ARGV[6]) end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
if seq < tonumber(ARGV[1]) then redis.call('SET', KEYS[3], ARGV[1]) end
return 1
"""

# KEYS: pending, sha ; ARGV: written at or before (ms), one version or '' (all)
# The pending entries of versions written long enough ago (their writer lost its race or died)
# are removed; those of versions never committed are returned: their parts are orphans.
_ORPHANS = """
local out = {}
local pending = redis.call('HGETALL', KEYS[1])
for i = 1, #pending, 2 do
  local version, entry = pending[i], pending[i + 1]
  if (ARGV[2] == '' or version == ARGV[2]) and cjson.decode(entry)['at'] <= tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], version)
    if redis.call('HEXISTS', KEYS[2], version) == 0 then out[#out + 1] = entry end
  end
end
return out
"""


class SnapshotNotFound(UserError, KeyError):
    """No snapshot (or no registry entry) for that job/version."""


class SnapshotConflict(RuntimeError):
    """A different snapshot is already stored under that job/version (versions are immutable)."""


class SnapshotAbandoned(RuntimeError):
    """The parts written for a snapshot version were collected as orphans before its commit
    (a writer over ``ORPHANED_AFTER_S`` slow): nothing was stored; a new version must be put."""


@dataclass(frozen=True)
class PreparedPut:
    """A snapshot put whose parts (if any) are written, to be committed in a caller's
    transaction: :meth:`check` under the caller's WATCH, before MULTI, then :meth:`queue`."""

    job: str
    version: int
    keys: list[str]
    args: list[Any]
    script: Any

    @property
    def written_ahead(self) -> bool:
        """Whether parts or staged values were written before the atomic step."""
        return self.args[4] == 1

    def check(self, pipe: Any) -> None:
        """Raise :class:`SnapshotAbandoned` (before the caller's transaction writes anything)
        when this put's parts were collected; WATCH their pending entry, so that a collection
        between this check and EXEC aborts the transaction (``redis.WatchError``)."""
        if not self.written_ahead:
            return
        sha, pending = self.keys[4], self.keys[5]  # the script's KEYS (``_PUT``)
        pipe.watch(pending)
        version = str(self.version)
        if not pipe.hexists(pending, version) and not pipe.hexists(sha, version):
            raise SnapshotAbandoned(f"snapshot {self.job}@{self.version}: its parts were collected as orphans "
                                    "before the commit; nothing was stored")

    def queue(self, pipe: Any) -> None:
        """Queue the atomic put on ``pipe`` (inside MULTI); a conflict surfaces from ``execute``."""
        self.script(keys=self.keys, args=self.args, client=pipe)


def _binary_client(client: Any) -> Any:
    """A client that returns bytes: snapshot bytes are not text."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not kwargs or not kwargs.get("decode_responses"):
        return client
    new_pool = type(pool)(connection_class=pool.connection_class, **{**kwargs, "decode_responses": False})
    return redis.Redis(connection_pool=new_pool)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


class ModelStore:
    """Versioned snapshot bytes + a queryable registry of their metadata, in Redis."""

    def __init__(self, redis_client: Any):
        self.redis = _binary_client(redis_client)
        self._put = self.redis.register_script(_PUT)
        self._orphans = self.redis.register_script(_ORPHANS)
        self._part_tags: dict[str, list[str]] = {}

    # -- keys ------------------------------------------------------------------------------
    @staticmethod
    def prefix(job: str) -> str:
        """What every key of ``job``'s stored snapshots starts with (they outlive the job)."""
        return f"{ModelStore._base(job)}:"

    @staticmethod
    def _base(job: str) -> str:
        if not isinstance(job, str) or not job:
            raise ValueError("job must be a non-empty string")
        return f"{PREFIX}:{{{job}}}:snapshot"

    def key(self, job: str, version: int) -> str:
        return f"{self._base(job)}:{int(version)}"

    def _manifest_key(self, job: str, version: int) -> str:
        return f"{self.key(job, version)}:parts"

    def _state_key(self, job: str, version: int) -> str:
        return f"{self.key(job, version)}:state"

    def spreads(self, size: int, kind: str = "") -> bool:
        """Whether a blob of ``size`` bytes is stored in parts: on a Redis Cluster, spread over
        its masters when over one part; on one node, a snapshot (``kind`` "") when over one
        message (:func:`~streamlearn.snapshots.parts.whole_bytes`), a training state
        ("state") when over :data:`STATE_WHOLE_BYTES`."""
        if is_cluster(self.redis):
            return size > part_bytes()
        return size > (STATE_WHOLE_BYTES if kind == "state" else whole_bytes())

    def _part_keys(self, job: str, version: int, count: int, kind: str = "", first: int = 0) -> list[str]:
        """Keys of ``count`` parts, round-robin over the masters (each tag chosen on one of
        them) from the ``first``-th; on one node, under the job's own tag. ``kind``: "" the
        model's, "state" the training state's."""
        if job not in self._part_tags and not is_cluster(self.redis):
            self._part_tags[job] = [job]
        elif job not in self._part_tags:
            masters = sorted(self.redis.get_primaries(), key=lambda n: n.name)
            self._part_tags[job] = [tag_on(self.redis, f"{job}/p{m}", node.name) for m, node in enumerate(masters)]
        tags = self._part_tags[job]
        infix = f"{kind}:" if kind else ""
        return [f"{PREFIX}:{{{tags[(first + i) % len(tags)]}}}:snapshot:{int(version)}:{infix}{i}"
                for i in range(count)]

    # -- store -----------------------------------------------------------------------------
    def next_version(self, job: str) -> int:
        """A fresh version number for ``job`` (atomic INCR; never handed out twice)."""
        return int(self.redis.incr(f"{self._base(job)}:seq"))

    def put(self, job: str, data: bytes, metadata: dict[str, Any], *, pipe: Any = None,
            state: bytes | None = None) -> None:
        """Store snapshot ``data`` (see :meth:`prepare`) in one atomic step. With ``pipe`` (a
        redis-py pipeline, possibly inside MULTI), the write is queued on it so the caller can
        commit it together with its own updates; a conflict then surfaces as a
        ``redis.ResponseError`` from ``pipe.execute()`` (a caller that must not write its own
        updates without the snapshot uses :meth:`prepare` and :meth:`PreparedPut.check`)."""
        put = self.prepare(job, data, metadata, state=state)
        if pipe is not None:
            put.queue(pipe)
            return
        try:
            self._put(keys=put.keys, args=put.args)
        except redis.ResponseError as exc:
            if "CONFLICT" in str(exc):
                raise SnapshotConflict(f"job {job!r} already has a different snapshot version {put.version}") from None
            if "ABANDONED" in str(exc):
                raise SnapshotAbandoned(str(exc)) from None
            raise
        self.collect_orphans(job)

    def prepare(self, job: str, data: bytes, metadata: dict[str, Any], *, state: bytes | None = None) -> PreparedPut:
        """Snapshot ``data`` as ``metadata["version"]`` with its registry entry and, when given,
        the training ``state`` encoded apart from it (:func:`~streamlearn.snapshots.format.
        encode_detached`), ready to be put in one atomic step: the parts of a blob over one
        message are written now, the manifests go in the atomic step. Re-putting identical
        bytes is a no-op; different bytes under an existing version are refused (CONFLICT).
        ``metadata["snapshot_sha256"]``, when given, is taken as the sha256 of ``data``."""
        version = metadata.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"metadata['version'] must be a positive int, got {version!r}")
        if metadata.get("job") not in (None, job):
            raise ValueError(f"metadata names job {metadata.get('job')!r}, not {job!r}")
        entry = dict(metadata, job=job, snapshot_bytes=len(data))
        entry.setdefault("snapshot_sha256", hashlib.sha256(data).hexdigest())
        if state is not None:
            entry["state_bytes"] = len(state)
        base = self._base(job)
        keys = [self.key(job, version), f"{base}:index", f"{base}:seq", f"{base}:meta", f"{base}:sha256",
                self._pending_key(job), self._state_key(job, version)]
        args = [version, bytes(data), json.dumps(entry, sort_keys=True, default=str), entry["snapshot_sha256"], 0,
                b"" if state is None else bytes(state), "", ""]
        present = {kind: blob for kind, blob in (("", data), ("state", state)) if blob is not None}
        parted = {kind: blob for kind, blob in present.items() if self.spreads(len(blob), kind)}
        staged = {kind: blob for kind, blob in present.items() if kind not in parted and len(blob) > STAGED_BYTES}
        # the parts and staged values first; the manifests and renames in the atomic step
        manifests, staged_keys = self._write_ahead(job, version, parted, staged,
                                                   {"": entry["snapshot_sha256"]})
        args[4] = 1 if parted or staged else 0
        if "" in manifests:
            keys[0], args[1] = self._manifest_key(job, version), manifests[""]
        if "state" in manifests:
            keys[6], args[5] = f"{keys[6]}:parts", manifests["state"]
        for kind, (data_at, flag_at) in {"": (1, 6), "state": (5, 7)}.items():
            if kind in staged_keys:
                args[data_at], args[flag_at] = b"", "1"
        # a staged value's key (in the job's slot); otherwise any key of the slot, untouched
        keys += [staged_keys.get("", keys[0]), staged_keys.get("state", keys[6])]
        return PreparedPut(job, version, keys, args, self._put)

    def _pending_key(self, job: str) -> str:
        return f"{self._base(job)}:pending"

    def _write_ahead(self, job: str, version: int, parted: dict[str, bytes], staged: dict[str, bytes],
                     sha256: dict[str, str | None]) -> tuple[dict[str, bytes], dict[str, str]]:
        """Write the parts of each of ``parted`` and each of ``staged`` as one value under a
        staged key of its own (kind -> bytes: "" the model, "state" its training state;
        ``sha256``: kind -> the blob's sha256 when known; a part's key holds it once a version
        is put: rewriting it is idempotent). Returns (the parts' manifests by kind, the staged
        keys by kind). Everything is named in the pending hash first, so that what a put whose
        commit never comes wrote is found (:meth:`collect_orphans`, :meth:`discard`)."""
        if not parted and not staged:
            return {}, {}
        pieces, keys = {kind: split(blob) for kind, blob in parted.items()}, {}
        for kind, cut in pieces.items():  # the state's parts go on round the masters after the model's
            keys[kind] = self._part_keys(job, version, len(cut), kind, first=sum(map(len, keys.values())))
        staged_keys = {kind: f"{self._base(job)}:staged:{int(version)}:{kind or 'model'}:{uuid.uuid4().hex}"
                       for kind in staged}
        written = [k for kind in keys for k in keys[kind]] + list(staged_keys.values())
        self.redis.hset(self._pending_key(job), str(int(version)), json.dumps({"at": _now_ms(), "keys": written}))
        for kind in parted:
            for key, piece in zip(keys[kind], pieces[kind]):
                self.redis.set(key, piece)
        for kind, blob in staged.items():
            self.redis.set(staged_keys[kind], blob)
        manifests = {kind: Manifest.of(job, int(version), blob, pieces[kind], keys[kind], sha256=sha256.get(kind))
                     .to_bytes() for kind, blob in parted.items()}
        return manifests, staged_keys

    def collect_orphans(self, job: str, older_than_s: float = ORPHANED_AFTER_S) -> int:
        """Delete the parts written at least ``older_than_s`` ago for versions of ``job`` that
        were never committed (a lost finalize race, a crash between the parts and the commit);
        returns how many. A commit that comes after its parts were collected is refused
        (``ABANDONED``), so a stored manifest never names a collected part."""
        return self._delete_orphans(job, _now_ms() - int(older_than_s * 1000), "")

    def discard(self, job: str, version: int) -> int:
        """Delete the parts of ``version`` if it was not committed (its writer lost the
        finalize race); returns how many."""
        return self._delete_orphans(job, _now_ms() + 1, str(int(version)))

    def _delete_orphans(self, job: str, before_ms: int, version: str) -> int:
        entries = self._orphans(keys=[self._pending_key(job), f"{self._base(job)}:sha256"], args=[before_ms, version])
        keys = [key for entry in entries for key in json.loads(entry)["keys"]]
        for key in keys:  # one by one: on a cluster, the parts are in different slots
            self.redis.delete(key)
        return len(keys)

    def get(self, job: str, version: int | None = None) -> bytes:
        """The snapshot bytes of ``version`` (the latest when None); a snapshot stored in parts
        is assembled and checked part by part (:class:`~streamlearn.snapshots.parts.PartialSnapshot`
        when a part is missing or altered)."""
        if version is None:
            version = self.latest_version(job)
            if version is None:
                raise SnapshotNotFound(f"job {job!r} has no snapshots")
        data = self._blob(job, version, self.key(job, version))
        if data is None:
            raise SnapshotNotFound(f"job {job!r} has no snapshot version {version}")
        return data

    def get_state(self, job: str, version: int) -> bytes | None:
        """The training state stored beside ``version``'s model (checked as :meth:`get` checks),
        None when it has none apart (no state, or one carried inside the snapshot)."""
        return self._blob(job, version, self._state_key(job, version))

    def _blob(self, job: str, version: int, key: str) -> bytes | None:
        data = self.redis.get(key)
        if data is not None:
            return data
        manifest = self.redis.get(f"{key}:parts")
        if manifest is None:
            return None
        parts = Manifest.from_bytes(manifest)
        if (parts.job, parts.version) != (job, int(version)):
            raise PartialSnapshot(f"the manifest stored as {job}@{version} names {parts.name}")
        return assemble(parts, self.redis.get)

    def sha256(self, job: str, version: int) -> str | None:
        """The sha256 (hex) of the bytes stored as ``version`` of ``job``, None if none are."""
        found = self.redis.hget(f"{self._base(job)}:sha256", str(int(version)))
        return None if found is None else _text(found)

    def versions(self, job: str) -> list[int]:
        return [int(v) for v in self.redis.zrange(f"{self._base(job)}:index", 0, -1)]

    def latest_version(self, job: str) -> int | None:
        top = self.redis.zrevrange(f"{self._base(job)}:index", 0, 0)
        return int(top[0]) if top else None

    # -- registry --------------------------------------------------------------------------
    def metadata(self, job: str, version: int | None = None) -> dict[str, Any]:
        """The registry entry (snapshot metadata, no arrays) of ``version`` (latest when None)."""
        if version is None:
            version = self.latest_version(job)
            if version is None:
                raise SnapshotNotFound(f"job {job!r} has no snapshots")
        raw = self.redis.hget(f"{self._base(job)}:meta", str(int(version)))
        if raw is None:
            raise SnapshotNotFound(f"job {job!r} has no snapshot version {version}")
        return json.loads(raw)

    def register_job(self, job: str) -> None:
        """Name ``job`` in the index :meth:`jobs` lists (a global key: the control plane's,
        before the job's first snapshot)."""
        self.redis.sadd(JOBS_KEY, job)

    def jobs(self) -> list[str]:
        return sorted(_text(j) for j in self.redis.smembers(JOBS_KEY))

    def list_models(self, job: str | None = None, algorithm: str | None = None) -> list[dict[str, Any]]:
        """Registry entries, ordered by (job, version), optionally of one job / algorithm."""
        out = []
        for j in [job] if job is not None else self.jobs():
            for raw in self.redis.hgetall(f"{self._base(j)}:meta").values():
                entry = json.loads(raw)
                if algorithm is None or entry.get("algorithm") == algorithm:
                    out.append(entry)
        out.sort(key=lambda e: (str(e.get("job")), e.get("version") or 0))
        return out

    def lineage(self, job: str, version: int | None = None) -> list[dict[str, Any]]:
        """The entry of ``version`` followed by its ancestors (via ``metadata['parent']``,
        ``{"job": ..., "version": ...}`` or a version int of the same job), newest first."""
        chain, seen = [], set()
        entry: dict[str, Any] | None = self.metadata(job, version)
        while entry is not None and (entry.get("job"), entry.get("version")) not in seen:
            chain.append(entry)
            seen.add((entry.get("job"), entry.get("version")))
            parent = entry.get("parent")
            if isinstance(parent, dict):
                pjob, pver = parent.get("job", entry.get("job")), parent.get("version")
            elif isinstance(parent, int) and not isinstance(parent, bool):
                pjob, pver = entry.get("job"), parent
            else:
                break
            try:
                entry = self.metadata(pjob, pver) if isinstance(pver, int) else None
            except SnapshotNotFound:
                entry = None
        return chain
