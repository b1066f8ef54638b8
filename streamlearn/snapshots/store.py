"""The model store (snapshot bytes by version) and model registry (metadata + lineage) in Redis.

Keys of one job share the hash tag ``{job}`` so they live in one Redis Cluster slot, which
the Lua script that writes them atomically requires::

    sl:{job}:snapshot:<version>     snapshot bytes (immutable once written)
    sl:{job}:snapshot:<version>:parts   on a Redis Cluster, instead of the bytes when they exceed
                                    PART_BYTES: the manifest (:mod:`streamlearn.snapshots.parts`)
                                    of parts ``sl:{job/pM}:snapshot:<version>:<i>`` written
                                    round-robin to every master (tag ``job/pM`` on master M),
                                    so that no node holds a whole large model
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
from typing import Any

import redis

from streamlearn.errors import UserError
from streamlearn.snapshots.parts import PART_BYTES, Manifest, PartialSnapshot, assemble, split
from streamlearn.statestore.keys import PREFIX
from streamlearn.statestore.sharded import is_cluster, tag_on

__all__ = ["ModelStore", "SnapshotNotFound", "SnapshotConflict"]

JOBS_KEY = f"{PREFIX}:models:jobs"

# KEYS: data, index, seq, meta, sha ; ARGV: version, data, metadata json, sha256
_PUT = """
local existing = redis.call('HGET', KEYS[5], ARGV[1])
if existing then
  if existing == ARGV[4] then return 0 end
  return redis.error_reply('CONFLICT snapshot version ' .. ARGV[1] .. ' already stored with different bytes')
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
if seq < tonumber(ARGV[1]) then redis.call('SET', KEYS[3], ARGV[1]) end
return 1
"""


class SnapshotNotFound(UserError, KeyError):
    """No snapshot (or no registry entry) for that job/version."""


class SnapshotConflict(RuntimeError):
    """A different snapshot is already stored under that job/version (versions are immutable)."""


def _binary_client(client: Any) -> Any:
    """A client that returns bytes: snapshot bytes are not text."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not kwargs or not kwargs.get("decode_responses"):
        return client
    new_pool = type(pool)(connection_class=pool.connection_class, **{**kwargs, "decode_responses": False})
    return redis.Redis(connection_pool=new_pool)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


class ModelStore:
    """Versioned snapshot bytes + a queryable registry of their metadata, in Redis."""

    def __init__(self, redis_client: Any):
        self.redis = _binary_client(redis_client)
        self._put = self.redis.register_script(_PUT)
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

    def spreads(self, size: int) -> bool:
        """Whether a snapshot of ``size`` bytes is stored in parts spread over the cluster's masters."""
        return is_cluster(self.redis) and size > PART_BYTES

    def _part_keys(self, job: str, version: int, count: int) -> list[str]:
        """Keys of ``count`` parts, round-robin over the masters (each tag chosen on one of them)."""
        if job not in self._part_tags:
            masters = sorted(self.redis.get_primaries(), key=lambda n: n.name)
            self._part_tags[job] = [tag_on(self.redis, f"{job}/p{m}", node.name) for m, node in enumerate(masters)]
        tags = self._part_tags[job]
        return [f"{PREFIX}:{{{tags[i % len(tags)]}}}:snapshot:{int(version)}:{i}" for i in range(count)]

    # -- store -----------------------------------------------------------------------------
    def next_version(self, job: str) -> int:
        """A fresh version number for ``job`` (atomic INCR; never handed out twice)."""
        return int(self.redis.incr(f"{self._base(job)}:seq"))

    def put(self, job: str, data: bytes, metadata: dict[str, Any], *, pipe: Any = None) -> None:
        """Store snapshot ``data`` as ``metadata["version"]`` with its registry entry, in one
        atomic step. Re-putting identical bytes is a no-op; different bytes under an
        existing version raise :class:`SnapshotConflict`.

        With ``pipe`` (a redis-py pipeline, possibly inside MULTI), the write is queued on it
        so the caller can commit it together with its own updates; a conflict then surfaces
        as a ``redis.ResponseError`` from ``pipe.execute()``."""
        version = metadata.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"metadata['version'] must be a positive int, got {version!r}")
        if metadata.get("job") not in (None, job):
            raise ValueError(f"metadata names job {metadata.get('job')!r}, not {job!r}")
        entry = dict(metadata, job=job, snapshot_bytes=len(data))
        entry.setdefault("snapshot_sha256", hashlib.sha256(data).hexdigest())
        base = self._base(job)
        keys = [self.key(job, version), f"{base}:index", f"{base}:seq", f"{base}:meta", f"{base}:sha256"]
        args = [version, bytes(data), json.dumps(entry, sort_keys=True, default=str), entry["snapshot_sha256"]]
        if self.spreads(len(data)):  # the parts first; the manifest in the atomic step
            keys[0], args[1] = self._manifest_key(job, version), self._put_parts(job, version, data)
        if pipe is not None:
            self._put(keys=keys, args=args, client=pipe)
            return
        try:
            self._put(keys=keys, args=args)
        except redis.ResponseError as exc:
            if "CONFLICT" in str(exc):
                raise SnapshotConflict(f"job {job!r} already has a different snapshot version {version}") from None
            raise

    def _put_parts(self, job: str, version: int, data: bytes) -> bytes:
        """Write ``data``'s parts (a part's key holds it once a version is put: rewriting it
        is idempotent) and return the manifest naming them. Parts of a put whose transaction
        then fails stay behind unreferenced."""
        pieces = split(data)
        keys = self._part_keys(job, version, len(pieces))
        for key, piece in zip(keys, pieces):
            self.redis.set(key, piece)
        return Manifest.of(job, int(version), data, pieces, keys).to_bytes()

    def get(self, job: str, version: int | None = None) -> bytes:
        """The snapshot bytes of ``version`` (the latest when None); a snapshot stored in parts
        is assembled and checked part by part (:class:`~streamlearn.snapshots.parts.PartialSnapshot`
        when a part is missing or altered)."""
        if version is None:
            version = self.latest_version(job)
            if version is None:
                raise SnapshotNotFound(f"job {job!r} has no snapshots")
        data = self.redis.get(self.key(job, version))
        if data is not None:
            return data
        manifest = self.redis.get(self._manifest_key(job, version))
        if manifest is None:
            raise SnapshotNotFound(f"job {job!r} has no snapshot version {version}")
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
