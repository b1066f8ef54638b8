"""A snapshot in parts: its encoded bytes cut into pieces, with a manifest that names them.

A snapshot larger than one Redis Cluster node's share (or than one Kafka message) is stored
and published in parts. The snapshot itself does not change: it is the same single Avro
record (:mod:`streamlearn.snapshots.format`) whose checksum and signature cover every array,
cut into :data:`PART_BYTES` pieces. The manifest is JSON (no pickle) after a magic line::

    streamlearn.snapshot.parts.v1\\n{"job": ..., "version": ..., "bytes": N, "sha256": <whole>,
                                    "parts": [[key, bytes, sha256], ...]}

``key`` names where a part is: a Redis key (the model store: parts on every master of the
cluster, the manifest on the job's home slot) or a Kafka message key (the snapshot topic:
parts first, then the manifest under the job's key). A loader fetches every part, checks
each one's length and sha256 and the whole one's, and only then decodes (and verifies the
signature of) the whole snapshot; a missing or altered part is refused with
:class:`PartialSnapshot`, never loaded. The manifest is not trusted for anything but
finding the parts: what is loaded is decided by the whole snapshot's own checksum and
signature.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable

from streamlearn.errors import UserError
from streamlearn.snapshots.format import MAX_SNAPSHOT_BYTES, SnapshotError

__all__ = ["PART_BYTES", "WHOLE_BYTES", "WHOLE_BYTES_ENV", "MAGIC", "PartialSnapshot", "Manifest", "PartsBuffer",
           "is_manifest", "split", "assemble", "whole_bytes", "part_bytes"]

#: the size of one part: a Redis node needs about twice a value's size while it is written
#: (the command's buffer and the value), and a Kafka message on a topic this project did not
#: create may be limited to 1 MB by default, 64 MiB on ours
PART_BYTES = 4 << 20
#: the largest snapshot stored as one Redis value (on one node) and sent as one Kafka message:
#: the snapshot topic's ``max.message.bytes``; larger ones are stored and published in parts
WHOLE_BYTES = 64 << 20
#: a smaller limit, for a snapshot topic this project did not create (Kafka's default
#: ``max.message.bytes`` is about 1 MB: set it a few kB below the topic's limit)
WHOLE_BYTES_ENV = "STREAMLEARN_SNAPSHOT_MESSAGE_BYTES"
_MIN_PART_BYTES = 64 << 10
MAGIC = b"streamlearn.snapshot.parts.v1\n"
#: at most this many parts (a snapshot is at most MAX_SNAPSHOT_BYTES)
MAX_PARTS = MAX_SNAPSHOT_BYTES // _MIN_PART_BYTES
_MAX_KEY_LEN = 1024


class PartialSnapshot(SnapshotError):
    """A snapshot in parts whose parts are missing, altered or do not add up: refused."""


class BadPartSize(UserError, ValueError):
    """``$STREAMLEARN_SNAPSHOT_MESSAGE_BYTES`` is not a byte count the parts can use."""


def whole_bytes() -> int:
    """The largest snapshot kept whole: ``$STREAMLEARN_SNAPSHOT_MESSAGE_BYTES`` (64 KiB to
    64 MiB), else :data:`WHOLE_BYTES`."""
    raw = os.environ.get(WHOLE_BYTES_ENV, "").strip()
    if not raw:
        return WHOLE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not _MIN_PART_BYTES <= value <= WHOLE_BYTES:
        raise BadPartSize(f"{WHOLE_BYTES_ENV}={raw[:40]!r}: give a byte count from {_MIN_PART_BYTES} to {WHOLE_BYTES}")
    return value


def part_bytes() -> int:
    """The size of one part: :data:`PART_BYTES`, or less when :func:`whole_bytes` is less."""
    return min(PART_BYTES, whole_bytes())


@dataclass(frozen=True)
class Manifest:
    """Where the parts of ``job``'s snapshot ``version`` are, and what they must hash to."""

    job: str
    version: int
    size: int
    sha256: str
    parts: tuple[tuple[str, int, str], ...]  # (key, bytes, sha256)

    @classmethod
    def of(cls, job: str, version: int, data: bytes, pieces: list[bytes], keys: list[str],
           sha256: str | None = None) -> "Manifest":
        """The manifest of ``data`` cut into ``pieces`` stored under ``keys``; ``sha256``:
        ``data``'s, when the caller has it already."""
        return cls(job, version, len(data), sha256 or hashlib.sha256(data).hexdigest(),
                   tuple((k, len(p), hashlib.sha256(p).hexdigest()) for k, p in zip(keys, pieces, strict=True)))

    @property
    def name(self) -> str:
        return f"{self.job}@{self.version}"

    def to_bytes(self) -> bytes:
        body = {"job": self.job, "version": self.version, "bytes": self.size, "sha256": self.sha256,
                "parts": [list(p) for p in self.parts]}
        return MAGIC + json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Manifest":
        """The manifest of ``raw``, checked for shape and bounds (not for authenticity)."""
        if not is_manifest(raw) or len(raw) > MAX_PARTS * (_MAX_KEY_LEN + 128):
            raise PartialSnapshot("not a snapshot manifest")
        try:
            body = json.loads(bytes(raw[len(MAGIC):]))
            job, version, size, sha, parts = body["job"], body["version"], body["bytes"], body["sha256"], body["parts"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise PartialSnapshot(f"malformed snapshot manifest: {exc}"[:300]) from None
        if not isinstance(job, str) or not _count(version) or not _count(size) or size > MAX_SNAPSHOT_BYTES \
                or not _hex(sha) or not isinstance(parts, list) or not 0 < len(parts) <= MAX_PARTS:
            raise PartialSnapshot("malformed snapshot manifest: bad job, version, size, sha256 or part count")
        checked = []
        for p in parts:
            if not (isinstance(p, list) and len(p) == 3 and isinstance(p[0], str) and len(p[0]) <= _MAX_KEY_LEN
                    and _count(p[1]) and _hex(p[2])):
                raise PartialSnapshot(f"malformed snapshot manifest of {job}@{version}: bad part {str(p)[:80]}")
            checked.append((p[0], p[1], p[2]))
        if sum(p[1] for p in checked) != size:
            raise PartialSnapshot(f"malformed snapshot manifest of {job}@{version}: parts do not add up to {size} bytes")
        return cls(job, version, size, sha, tuple(checked))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def is_manifest(raw: bytes | None) -> bool:
    return raw is not None and bytes(raw[:len(MAGIC)]) == MAGIC


def split(data: bytes, size: int | None = None) -> list[memoryview]:
    """``data`` in pieces of ``size`` (default :func:`part_bytes`; the last one shorter): views
    of ``data``, not copies (a Kafka producer takes ``bytes(piece)``)."""
    size = part_bytes() if size is None else size
    view = memoryview(data)
    return [view[i:i + size] for i in range(0, len(data), size)]


def assemble(manifest: Manifest, fetch: Callable[[str], bytes | None]) -> bytes:
    """The whole snapshot from its parts (``fetch(key)``: a part's bytes, None when absent),
    each part and the whole checked against the manifest; :class:`PartialSnapshot` otherwise."""
    pieces = []
    for i, (key, size, sha) in enumerate(manifest.parts):
        piece = fetch(key)
        if piece is None:
            raise PartialSnapshot(f"snapshot {manifest.name}: part {i + 1} of {len(manifest.parts)} ({key}) is "
                                  "missing; a partial snapshot is never loaded")
        if len(piece) != size or hashlib.sha256(piece).hexdigest() != sha:
            raise PartialSnapshot(f"snapshot {manifest.name}: part {i + 1} of {len(manifest.parts)} ({key}) is not "
                                  "the part the manifest names (altered or from another snapshot)")
        pieces.append(piece)
    data = b"".join(pieces)
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise PartialSnapshot(f"snapshot {manifest.name}: the assembled parts do not hash to the manifest's sha256")
    return data


class PartsBuffer:
    """Parts read from the snapshot topic, held until their manifest arrives: only those of
    the newest version seen (a publisher sends all parts of a version, then its manifest), so
    a subscriber holds at most one snapshot's parts."""

    def __init__(self) -> None:
        self.version: int | None = None
        self._parts: dict[str, bytes] = {}

    def add(self, version: int, key: str, value: bytes) -> None:
        if self.version is None or version > self.version:
            self.version, self._parts = version, {}
        if version == self.version:
            self._parts[key] = value

    def take(self, manifest: Manifest) -> bytes:
        """The snapshot ``manifest`` names, from the held parts (:class:`PartialSnapshot` when
        any is missing or altered); the parts of that version are dropped either way."""
        held = self._parts if manifest.version == self.version else {}
        try:
            return assemble(manifest, held.get)
        finally:
            if manifest.version == self.version:
                self._parts = {}
