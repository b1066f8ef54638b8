"""The snapshot format: a model's numeric arrays + JSON metadata, and nothing that can run code.

A snapshot is one Avro record (``streamlearn/schemas/snapshot.avsc``) in Avro *single-object
encoding* (the framing of :mod:`streamlearn.wire.serde`)::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema | Avro body

The body holds ``format_version``, ``metadata_json``, the model's arrays (``name``, ``dtype``
from a fixed whitelist, ``shape``, little-endian C-order ``data``), the job's training
``state`` (one such array per state key, so ``job create --from-snapshot`` continues exactly
where the job was: packed models, optimizer accumulators, normalization statistics,
summaries), a sha256 ``checksum`` and an optional HMAC-SHA256 ``signature``. Both digests
cover the same canonical byte string (see :func:`_canonical_chunks`): a domain tag, the
metadata JSON, and every array's (then every state array's) name, dtype, shape and data,
each length-prefixed so that no two different snapshots share it.

A finalized job's snapshot is encoded in two such records (:func:`encode_detached`): the
model (state section empty), which is what the snapshot topic carries and servers load, and
the training state (no model arrays) signed the same way and bound to the model's bytes by
their sha256 (metadata :data:`STATE_OF`); the model store keeps both, and only
``--from-snapshot`` reads the second (:func:`attach_state`). Subscribers do not receive the
state, which is twice a factorization machine's model.

Loading never uses pickle, ``eval`` or ``np.load``: arrays are ``np.frombuffer`` views over
validated byte strings, with ``shape x itemsize == len(data)`` checked before any array is
built, and the model is rebuilt by the algorithm's own ``Model.from_arrays``.

Old formats keep loading (the GluonTS rule): every format version that was ever written
stays registered in :data:`_SCHEMA_FILES` with a reader that upgrades its records to the
current shape; the writer schema's fingerprint in the header selects the reader.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import platform
import struct
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from typing import Any, Callable, Iterator

import fastavro
import numpy as np

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from streamlearn.algorithms import model_class
from streamlearn.errors import UserError
from streamlearn.snapshots.signing import (HMAC_KEY_ENV, TRUSTED_KEYS_ENV, Signer, TrustedKeys, hmac_keys, hmac_sign,
                                           required, verify_ed25519, verify_hmac)
from streamlearn.wire.serde import HEADER_LEN, MAGIC, SCHEMA_DIR, MalformedAvro, parsed_fingerprint, read_long

__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "DTYPES",
    "KEY_ENV",
    "Snapshot",
    "SnapshotError",
    "snapshot_of",
    "encode",
    "encode_snapshot",
    "encode_detached",
    "Encoded",
    "STATE_OF",
    "attach_state",
    "decode_snapshot",
    "load_model",
]

#: The format version new snapshots are written in.
FORMAT_VERSION = 2
#: Environment variable holding the HMAC keys (comma-separated; the first signs); when set,
#: snapshots are signed on encode and unsigned or badly signed snapshots are rejected on decode
#: (see :mod:`streamlearn.snapshots.signing` for Ed25519 keys).
KEY_ENV = HMAC_KEY_ENV
#: The only element types a snapshot may hold (no object, no structured, no strings).
DTYPES = ("float32", "float64", "int32", "int64", "uint8", "bool")

#: Refuse inputs larger than this before parsing anything (snapshots are tens of MB).
MAX_SNAPSHOT_BYTES = 1 << 30
MAX_METADATA_BYTES = 16 << 20
MAX_ARRAYS = 4096
MAX_NDIM = 32
MAX_NAME_LEN = 1024

#: format version -> schema file. A new format version gets a new file; the old file is
#: kept (renamed to ``snapshot_v<N>.avsc``) so that its snapshots still decode.
_SCHEMA_FILES = {1: "snapshot_v1.avsc", 2: "snapshot.avsc"}

_FROM_ENV: Any = object()  # sentinel: "read the keys from the environment"
#: metadata key of a training state encoded apart from its model: the sha256 (hex) of the
#: model snapshot's bytes it belongs to
STATE_OF = "state_of"


class SnapshotError(UserError, ValueError):
    """The bytes are not a valid, intact (and, when a key is set, authentic) snapshot."""


@dataclass(frozen=True)
class Snapshot:
    """A decoded snapshot: JSON metadata and read-only numeric arrays."""

    metadata: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    #: the training state (state key -> value) to continue from; empty when the snapshot
    #: was written without it (format 1, or a state too large to carry)
    state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def version(self) -> int | None:
        return self.metadata.get("version")

    @property
    def job(self) -> str | None:
        return self.metadata.get("job")

    @property
    def algorithm(self) -> str:
        return self.metadata["algorithm"]


# -- schema registry (one reader per format version ever written) ----------------------


@dataclass(frozen=True)
class _Reader:
    format_version: int
    schema: Any  # parsed
    fingerprint: bytes
    upgrade: Callable[[dict], dict]  # record of this version -> record of the current shape
    prescan: Callable[[bytes, int], None] | None = None  # bounds check before fastavro parses


def _load_schema(filename: str) -> tuple[Any, bytes]:
    with open(SCHEMA_DIR / filename, encoding="utf-8") as f:
        parsed = fastavro.parse_schema(json.load(f), _write_hint=False)
    return parsed, parsed_fingerprint(parsed)


def _upgrade_v1(record: dict) -> dict:
    return {**record, "state": None}  # no training state (None: the v1 digest does not cover one)


def _upgrade_v2(record: dict) -> dict:
    return record  # v2 is the current shape


class _Scan:
    """Walks Avro framing (varints, lengths, block counts) without building anything."""

    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def long(self) -> int:
        try:
            value, self.pos = read_long(self.data, self.pos)
        except IndexError:
            raise SnapshotError("malformed snapshot body: truncated") from None
        except MalformedAvro:
            raise SnapshotError("malformed snapshot body: varint too long") from None
        return value

    def skip_bytes(self, what: str, limit: int) -> None:
        n = self.long()
        if n < 0 or n > limit or self.pos + n > len(self.data):
            raise SnapshotError(f"malformed snapshot body: bad {what} length {n}")
        self.pos += n

    def blocks(self, what: str, limit: int) -> Iterator[None]:
        total = 0
        while True:
            count = self.long()
            if count == 0:
                return
            if count < 0:
                count = -count
                self.long()  # block size in bytes
            total += count
            if total > limit:
                raise SnapshotError(f"malformed snapshot body: more than {limit} {what}")
            for _ in range(count):
                yield None


def _prescan_arrays(s: _Scan) -> None:
    for _ in s.blocks("arrays", MAX_ARRAYS):
        s.skip_bytes("array name", MAX_NAME_LEN * 4)
        s.long()  # dtype enum index (range-checked by the parser and the whitelist)
        for _ in s.blocks("dims", MAX_NDIM):
            s.long()
        s.skip_bytes("array data", MAX_SNAPSHOT_BYTES)


def _prescan(array_lists: int) -> Callable[[bytes, int], None]:
    def prescan(data: bytes, pos: int) -> None:
        """Reject absurd counts (arrays, dims) and lengths before fastavro materializes
        lists, so a small hostile message cannot make the parser build a huge one."""
        s = _Scan(data, pos)
        s.long()  # format_version
        s.skip_bytes("metadata", MAX_METADATA_BYTES)
        for _ in range(array_lists):  # v1: the arrays; v2: the arrays, then the state
            _prescan_arrays(s)
    return prescan


_UPGRADES: dict[int, Callable[[dict], dict]] = {1: _upgrade_v1, 2: _upgrade_v2}
_PRESCANS: dict[int, Callable[[bytes, int], None]] = {1: _prescan(1), 2: _prescan(2)}
_READERS: dict[bytes, _Reader] = {}
for _version, _file in _SCHEMA_FILES.items():
    _schema, _fp = _load_schema(_file)
    _READERS[_fp] = _Reader(_version, _schema, _fp, _UPGRADES[_version], _PRESCANS.get(_version))
_WRITER = next(r for r in _READERS.values() if r.format_version == FORMAT_VERSION)
SUPPORTED_FORMAT_VERSIONS = tuple(sorted(r.format_version for r in _READERS.values()))


# -- digests ---------------------------------------------------------------------------

_DOMAIN = b"streamlearn.snapshot.v1\n"  # kept for v2: the state section makes the strings differ
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


def _canonical_chunks(metadata_json: str, arrays: list[dict], state: list[dict] | None) -> Iterator[bytes]:
    """The byte string both the checksum and the signature cover, in pieces (no 32 MB join).
    ``state`` None: a format-1 snapshot, whose string has no state section."""
    yield _DOMAIN
    meta = metadata_json.encode("utf-8")
    yield _U64.pack(len(meta))
    yield meta
    yield from _array_chunks(arrays)
    if state is not None:
        yield b"state"
        yield from _array_chunks(state)


def _array_chunks(arrays: list[dict]) -> Iterator[bytes]:
    yield _U64.pack(len(arrays))
    for a in arrays:
        name = a["name"].encode("utf-8")
        dtype = a["dtype"].encode("ascii")
        yield _U64.pack(len(name)) + name + _U64.pack(len(dtype)) + dtype
        yield _U64.pack(len(a["shape"])) + b"".join(_I64.pack(d) for d in a["shape"])
        yield _U64.pack(len(a["data"]))
        yield a["data"]


def _digests(metadata_json: str, arrays: list[dict], state: list[dict] | None,
             keys: tuple[bytes, ...] | None = ()) -> tuple[str, list[str]]:
    """The sha256 of the canonical bytes and their HMAC under each of ``keys``, in one pass."""
    sha = hashlib.sha256()
    macs = [hmac.new(k, digestmod=hashlib.sha256) for k in keys or ()]
    for chunk in _canonical_chunks(metadata_json, arrays, state):
        sha.update(chunk)
        for mac in macs:
            mac.update(chunk)
    return sha.hexdigest(), [mac.hexdigest() for mac in macs]


def _trusted(value: Any) -> TrustedKeys:
    if value is None:
        return TrustedKeys()
    if isinstance(value, TrustedKeys):
        return value
    if isinstance(value, Ed25519PublicKey):
        return TrustedKeys.of(value)
    return TrustedKeys.of(*value)


def _verifiers(key: Any, trusted: Any, require: Any) -> tuple[tuple[bytes, ...], TrustedKeys, bool]:
    """(HMAC keys, trusted public keys, whether a signature is mandatory). All from the
    environment by default; once any is given explicitly, the others not given are off."""
    if key is _FROM_ENV and trusted is _FROM_ENV:
        return hmac_keys(os.environ.get(KEY_ENV)), TrustedKeys.from_env(), (required() if require is _FROM_ENV
                                                                               else bool(require))
    return (hmac_keys(None if key is _FROM_ENV else key), _trusted(None if trusted is _FROM_ENV else trusted),
            False if require is _FROM_ENV else bool(require))


# -- encoding --------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"snapshot metadata value of type {type(value).__name__} is not JSON-serializable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _library_versions() -> dict[str, str]:
    try:
        streamlearn_version = package_version("streamlearn")
    except Exception:  # running from a source checkout that is not installed
        streamlearn_version = "unknown"
    return {"streamlearn": streamlearn_version, "numpy": np.__version__, "python": platform.python_version()}


def _checked_array(name: Any, value: Any) -> np.ndarray:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LEN:
        raise SnapshotError(f"array name {name!r} must be a non-empty string of at most {MAX_NAME_LEN} chars")
    arr = np.asarray(value)
    if arr.dtype.name not in DTYPES:
        raise SnapshotError(f"array {name!r} has dtype {arr.dtype}; snapshots hold only {', '.join(DTYPES)}")
    if arr.ndim > MAX_NDIM:
        raise SnapshotError(f"array {name!r} has {arr.ndim} dimensions (max {MAX_NDIM})")
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")  # (ascontiguousarray makes 0-d 1-d)


def snapshot_of(model: Any, metadata: dict[str, Any] | None = None,
                state: dict[str, np.ndarray] | None = None) -> Snapshot:
    """The :class:`Snapshot` of ``model``: its arrays, the training ``state`` it was
    finalized from (state key -> value; see :func:`streamlearn.algorithms.base.training_state`)
    and the full metadata, normalized exactly as :func:`decode_snapshot` will return it
    (JSON round trip)."""
    arrays, attrs = model.to_arrays()
    md = dict(metadata or {})
    algorithm = getattr(model, "algorithm", "") or md.get("algorithm")
    if not algorithm:
        raise SnapshotError(f"{type(model).__name__} has no algorithm name")
    if md.get("algorithm", algorithm) != algorithm:
        raise SnapshotError(f"metadata says algorithm {md['algorithm']!r} but the model is {algorithm!r}")
    md["algorithm"] = algorithm
    md["model_attrs"] = attrs
    md["format_version"] = FORMAT_VERSION
    md.setdefault("job", None)
    md.setdefault("params", {})
    md.setdefault("version", None)
    md.setdefault("offsets", {})
    md.setdefault("records_applied", None)
    md.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    md.setdefault("library_versions", _library_versions())
    if md["version"] is not None and (isinstance(md["version"], bool) or not isinstance(md["version"], (int, np.integer))):
        raise SnapshotError(f"metadata version must be an int, not {md['version']!r}")
    normalized = json.loads(_dumps(md))
    checked = {name: _checked_array(name, arrays[name]) for name in sorted(arrays)}
    kept = {name: _checked_array(name, value) for name, value in sorted((state or {}).items())}
    for a in (*checked.values(), *kept.values()):
        a.flags.writeable = False
    return Snapshot(normalized, checked, kept)


def encode(snapshot: Snapshot, *, key: bytes | str | list | None = _FROM_ENV,
           signer: Signer | None = _FROM_ENV) -> bytes:
    """Serialize ``snapshot``, signed with ``signer`` (Ed25519; default: the private key file
    in ``$STREAMLEARN_SIGNING_KEY``), else with the first HMAC ``key`` (default:
    ``$STREAMLEARN_SNAPSHOT_KEY``), else unsigned. Given only ``key``, no Ed25519 key is used."""
    return _encode(snapshot, key, signer)[0]


def _encode(snapshot: Snapshot, key: bytes | str | list | None, signer: Signer | None,
            hash_bytes: bool = True) -> tuple[bytes, str | None]:
    """(:func:`encode`'s bytes, their sha256, None without ``hash_bytes``). The sha256 of the
    bytes is taken in a thread while the checksum of the canonical string is (hashlib lets go
    of the GIL): both read every array, and one after the other they were a third of a large
    model's finalize."""
    if signer is _FROM_ENV:
        signer = Signer.from_env() if key is _FROM_ENV else None
    keys = hmac_keys(os.environ.get(KEY_ENV) if key is _FROM_ENV else key)[:1]
    metadata_json = _dumps(snapshot.metadata)
    if len(metadata_json) > MAX_METADATA_BYTES:
        raise SnapshotError(f"snapshot metadata is {len(metadata_json)} bytes (max {MAX_METADATA_BYTES})")
    records, state = _array_records(snapshot.arrays, "arrays"), _array_records(snapshot.state, "state arrays")
    head = [MAGIC, _WRITER.fingerprint, *_avro_body(metadata_json, records, state)]
    sha = hashlib.sha256() if hash_bytes else None
    hasher = threading.Thread(target=lambda: [sha.update(piece) for piece in head], name="snapshot-sha256")
    if sha is not None:
        hasher.start()
    try:
        checksum, macs = _digests(metadata_json, records, state, () if signer is not None else keys)
    finally:
        if sha is not None:
            hasher.join()
    signature = signer.sign(checksum) if signer is not None else hmac_sign(keys[0], macs[0]) if macs else None
    tail = _avro_string(checksum) + (b"\x00" if signature is None else b"\x02" + _avro_string(signature))
    data = b"".join([*head, tail])
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"snapshot is {len(data)} bytes (max {MAX_SNAPSHOT_BYTES})")
    if sha is None:
        return data, None
    sha.update(tail)  # the union's branch: null, or string
    return data, sha.hexdigest()


@dataclass(frozen=True)
class Encoded:
    """A snapshot encoded as the model and, apart, its training state (see :func:`encode_detached`)."""

    model: bytes  # a snapshot whose state section is empty: what the topic carries
    sha256: str  # of ``model``
    state: bytes | None  # a snapshot of the training state alone, bound to ``model``; None: none


def encode_detached(snapshot: Snapshot, *, key: bytes | str | list | None = _FROM_ENV,
                    signer: Signer | None = _FROM_ENV) -> Encoded:
    """``snapshot`` as two snapshots, each array encoded once and both signed as :func:`encode`
    signs: the model with ``snapshot``'s metadata and no state, and (when ``snapshot`` carries
    one) the training state with no model arrays, whose metadata names the job, version and
    algorithm and, under :data:`STATE_OF`, the sha256 of the model's bytes."""
    model, sha = _encode(Snapshot(snapshot.metadata, snapshot.arrays), key, signer)
    assert sha is not None
    if not snapshot.state:
        return Encoded(model, sha, None)
    metadata = {k: snapshot.metadata.get(k) for k in ("job", "version", "algorithm", "format_version")}
    metadata.update(model_attrs={}, **{STATE_OF: sha})
    # the state's own sha256 is wanted only by a store that cuts it into parts (it hashes them)
    return Encoded(model, sha, _encode(Snapshot(metadata, {}, snapshot.state), key, signer, hash_bytes=False)[0])


def _avro_long(n: int) -> bytes:
    """Avro's encoding of an int or long: zigzag, then 7 bits a byte, low bits first."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _avro_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _avro_long(len(raw)) + raw


def _avro_body(metadata_json: str, records: list[dict], state: list[dict]) -> Iterator[bytes]:
    """The Avro body of a snapshot record up to its checksum (the writer schema's fields in
    order), in pieces that hold the arrays' own buffers: joined once, where fastavro copied
    a 113 MB factorization machine's arrays three times (bytes, its buffer, the output stream)."""
    yield _avro_long(FORMAT_VERSION)
    yield _avro_string(metadata_json)
    for section in (records, state):
        if section:  # one block of every item, then the empty block that ends the array
            yield _avro_long(len(section))
            for a in section:
                dims = a["shape"]
                yield b"".join([_avro_string(a["name"]), _avro_long(DTYPES.index(a["dtype"])),
                                *([_avro_long(len(dims)), *map(_avro_long, dims)] if dims else []), b"\x00",
                                _avro_long(len(a["data"]))])
                yield a["data"]
        yield b"\x00"


def attach_state(model: Snapshot, model_sha256: str, state: Snapshot) -> Snapshot:
    """``model`` (verified, its bytes hashing to ``model_sha256``) with the training state of
    ``state`` (verified), which must have been encoded beside exactly those model bytes."""
    md = state.metadata
    bound = md.get(STATE_OF) == model_sha256 and (md.get("job"), md.get("version")) == (model.job, model.version)
    if not bound or state.arrays:
        raise SnapshotError(f"the training state stored beside {model.job}@{model.version} belongs to another "
                            "snapshot (replaced or forged)")
    return Snapshot(model.metadata, model.arrays, state.state)


def _array_records(arrays: dict[str, np.ndarray], what: str) -> list[dict]:
    if len(arrays) > MAX_ARRAYS:
        raise SnapshotError(f"snapshot has {len(arrays)} {what} (max {MAX_ARRAYS})")
    records = []
    for name in sorted(arrays):
        arr = _checked_array(name, arrays[name])
        # the array's own buffer (read-only in a snapshot), not a copy: digests and the body read it
        data = memoryview(arr.reshape(-1)).cast("B")
        records.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "data": data})
    return records


def encode_snapshot(model: Any, metadata: dict[str, Any] | None = None, *, key: bytes | str | list | None = _FROM_ENV,
                    state: dict[str, np.ndarray] | None = None, signer: Signer | None = _FROM_ENV) -> bytes:
    """``model`` + ``metadata`` (job, params, version, offsets, records_applied, lineage,
    scores, ...) + the training ``state`` as snapshot bytes. Fills algorithm, model_attrs,
    format_version, created_at and library_versions."""
    return encode(snapshot_of(model, metadata, state), key=key, signer=signer)


# -- decoding --------------------------------------------------------------------------


def _read_record(data: bytes) -> tuple[_Reader, dict]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"a snapshot is bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"snapshot is {len(data)} bytes (max {MAX_SNAPSHOT_BYTES})")
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        raise SnapshotError("not a streamlearn snapshot (no Avro single-object header)")
    reader = _READERS.get(data[2:HEADER_LEN])
    if reader is None:
        raise SnapshotError(
            f"unknown snapshot schema fingerprint {data[2:HEADER_LEN].hex()}: written by a newer or foreign "
            f"writer; this reader supports format versions {list(SUPPORTED_FORMAT_VERSIONS)}"
        )
    if reader.prescan is not None:
        reader.prescan(data, HEADER_LEN)
    buf = io.BytesIO(data)
    buf.seek(HEADER_LEN)
    try:
        record = fastavro.schemaless_reader(buf, reader.schema)
    except Exception as exc:  # truncated / malformed Avro: any parser error is a format error
        raise SnapshotError(f"malformed snapshot body: {type(exc).__name__}: {exc}"[:300]) from None
    if buf.tell() != len(data):
        raise SnapshotError(f"{len(data) - buf.tell()} trailing bytes after the snapshot body")
    if not isinstance(record, dict) or record.get("format_version") != reader.format_version:
        raise SnapshotError(f"format_version field disagrees with the schema (format {reader.format_version})")
    try:
        return reader, reader.upgrade(record)
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"cannot upgrade a format-{reader.format_version} snapshot: {exc}") from None


def _check_arrays(records: Any) -> None:
    if not isinstance(records, list) or len(records) > MAX_ARRAYS:
        raise SnapshotError(f"a snapshot holds at most {MAX_ARRAYS} arrays")
    seen: set[str] = set()
    for a in records:
        name, dtype, shape, data = a.get("name"), a.get("dtype"), a.get("shape"), a.get("data")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LEN or name in seen:
            raise SnapshotError(f"bad or duplicate array name {str(name)[:80]!r}")
        seen.add(name)
        if dtype not in DTYPES:  # the Avro enum already restricts this; never trust one layer
            raise SnapshotError(f"array {name!r}: dtype {str(dtype)[:40]!r} is not allowed (allowed: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise SnapshotError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} dims")
        if not isinstance(data, bytes):
            raise SnapshotError(f"array {name!r}: data must be bytes")
        n = 1
        for d in shape:
            if not isinstance(d, int) or d < 0:
                raise SnapshotError(f"array {name!r}: bad dimension {d!r} in shape")
            n *= d  # Python ints: no overflow, and nothing is allocated from the claim
        expected = n * np.dtype(dtype).itemsize
        if expected != len(data):
            raise SnapshotError(
                f"array {name!r}: shape {shape[:8]}{'...' if len(shape) > 8 else ''} x {dtype} needs "
                f"{expected} bytes but the snapshot holds {len(data)}"
            )


def decode_snapshot(data: bytes, key: bytes | str | list | None = _FROM_ENV, *, trusted: Any = _FROM_ENV,
                    job: str | None = None, require: bool = _FROM_ENV) -> Snapshot:
    """Parse and verify snapshot bytes; raise :class:`SnapshotError` for anything invalid.

    The checksum is always verified. Authenticity: a job with public keys pinned by
    ``trusted`` (default ``$STREAMLEARN_TRUSTED_KEYS``) must carry an Ed25519 signature of
    one of them; otherwise, with HMAC ``key``s (default ``$STREAMLEARN_SNAPSHOT_KEY``), an
    HMAC of one of them; otherwise ``require`` (default ``$STREAMLEARN_REQUIRE_SIGNED``)
    refuses it. ``job``: the job the caller asked for; a snapshot whose signed metadata
    names another one is refused. Passing ``key`` or ``trusted`` turns the other sources
    not passed off (``key=None``: checksum only)."""
    keys, trust, require = _verifiers(key, trusted, require)
    _reader, record = _read_record(data)
    metadata_json, records, state = record.get("metadata_json"), record.get("arrays"), record.get("state")
    if not isinstance(metadata_json, str) or len(metadata_json) > MAX_METADATA_BYTES:
        raise SnapshotError(f"metadata must be a JSON string of at most {MAX_METADATA_BYTES} bytes")
    _check_arrays(records)
    if state is not None:
        _check_arrays(state)
    checksum, macs = _digests(metadata_json, records, state, keys)
    stored_checksum = record.get("checksum")
    if not isinstance(stored_checksum, str) or not hmac.compare_digest(checksum, stored_checksum):
        raise SnapshotError("checksum mismatch: snapshot is corrupted or tampered")
    try:
        metadata = json.loads(metadata_json)
    except (ValueError, RecursionError) as exc:
        raise SnapshotError(f"metadata is not valid JSON: {exc}"[:300]) from None
    if not isinstance(metadata, dict):
        raise SnapshotError("metadata must be a JSON object")
    if job is not None and metadata.get("job") != job:
        raise SnapshotError(f"snapshot belongs to job {str(metadata.get('job'))[:100]!r}, not {job!r}")
    _authenticate(record.get("signature"), checksum, macs, trust.for_job(metadata.get("job")), keys, require,
                  metadata.get("job"))
    if not isinstance(metadata.get("algorithm"), str) or not isinstance(metadata.get("model_attrs"), dict):
        raise SnapshotError("metadata must name the algorithm and carry model_attrs")
    return Snapshot(metadata, _arrays_of(records), _arrays_of(state or []))


def _authenticate(signature: Any, checksum: str, macs: list[str], pinned: dict, keys: tuple[bytes, ...],
                  require: bool, job: Any) -> None:
    if signature is not None and not isinstance(signature, str):
        raise SnapshotError("malformed signature")
    try:
        if pinned:
            if signature is None:
                raise ValueError(f"snapshot of job {job!r} is unsigned but {TRUSTED_KEYS_ENV} pins keys to it")
            verify_ed25519(signature, checksum, pinned, job)
        elif keys:
            if signature is None:
                raise ValueError(f"snapshot is unsigned but {KEY_ENV} is set")
            verify_hmac(signature, macs)
        elif require:
            raise ValueError(f"no key verifies snapshots of job {job!r} ({TRUSTED_KEYS_ENV} or {KEY_ENV}) and "
                             "signatures are required")
    except ValueError as exc:
        raise SnapshotError(str(exc)) from None


def _arrays_of(records: list[dict]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for a in records:
        dtype = np.dtype(a["dtype"]).newbyteorder("<")
        arr = np.frombuffer(a["data"], dtype=dtype).reshape(a["shape"])  # bytes -> read-only view
        if a["dtype"] == "bool" and a["data"] and int(np.frombuffer(a["data"], np.uint8).max()) > 1:
            raise SnapshotError(f"array {a['name']!r}: bool data holds bytes other than 0 and 1")
        if not dtype.isnative:
            arr = arr.astype(dtype.newbyteorder("="))
        arr.flags.writeable = False
        arrays[a["name"]] = arr
    return arrays


def load_model(snapshot: Snapshot) -> Any:
    """The :class:`~streamlearn.algorithms.base.Model` a snapshot holds, rebuilt by its
    algorithm's ``from_arrays`` (no code comes from the snapshot itself)."""
    if STATE_OF in snapshot.metadata:
        raise SnapshotError(f"{snapshot.job}@{snapshot.version} is a training state, not a model")
    return model_class(snapshot.metadata["algorithm"]).from_arrays(dict(snapshot.arrays), snapshot.metadata["model_attrs"])
