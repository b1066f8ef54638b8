"""Avro serde: single-object encoding with an in-process schema registry.

Wire format of every message value and of every snapshot (Avro spec, "Single-object encoding")::

    0xC3 0x01 | CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form
              |   (8 bytes, little-endian) | Avro binary body

The framing (:data:`MAGIC`, :data:`HEADER_LEN`), the fingerprint (:func:`fingerprint`,
:func:`parsed_fingerprint`) and Avro's zig-zag varint (:func:`read_long`) are defined here
once, for the training messages and for the snapshot format.

The registry maps fingerprints to writer schemas. :func:`decode` resolves the writer
schema by fingerprint and reads into the *current* reader schema of the same name, so a
message written with an older (or newer) compatible version of a schema is read with
Avro's schema-resolution rules (added fields take their defaults, removed ones are
skipped). Evolved versions are made known with :func:`register` (in this process) or in
the shared registry of :mod:`~streamlearn.wire.schema_store` (to every worker).

Schema names are the ``.avsc`` file stems (``"training_record"``, ``"training_batch"``);
full Avro names (``"streamlearn.TrainingRecord"``) are accepted as aliases.
"""
from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from streamlearn.batch import SparseRows

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAGIC = b"\xc3\x01"
HEADER_LEN = 10  # magic (2) + fingerprint (8)

TRAINING_RECORD = "training_record"
TRAINING_BATCH = "training_batch"


class SerdeError(ValueError):
    """A value that cannot be encoded or decoded (bad header, unknown schema, bad body)."""


class UnknownSchemaError(SerdeError):
    """The fingerprint in a message names no registered schema."""

    def __init__(self, fp: bytes):
        self.fingerprint = fp
        super().__init__(f"unknown schema fingerprint {fingerprint_hex(fp)}")


def fingerprint_hex(fp: bytes) -> str:
    """The 64-bit fingerprint as the number it is (the 8 wire bytes are little-endian)."""
    return f"0x{int.from_bytes(fp, 'little'):016x}"


class MalformedAvro(SerdeError):
    """Avro binary that cannot be read (a varint too long, a length past the end...)."""


def fingerprint(schema: Any) -> bytes:
    """CRC-64-AVRO fingerprint of ``schema``'s Parsing Canonical Form, as the 8 wire bytes
    (little-endian). ``schema`` is a dict/list/str schema or JSON text."""
    if isinstance(schema, str) and schema.lstrip()[:1] in ("{", "[", '"'):
        schema = json.loads(schema)
    return parsed_fingerprint(fastavro.parse_schema(schema))


def parsed_fingerprint(parsed: Any) -> bytes:
    """:func:`fingerprint` of a schema fastavro has parsed already."""
    return canonical_fingerprint(to_parsing_canonical_form(parsed))


def canonical_fingerprint(canonical: str) -> bytes:
    """The fingerprint of a Parsing Canonical Form: fastavro renders the CRC-64-AVRO
    fingerprint as the hex of its little-endian bytes, the 8 bytes on the wire."""
    return bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))


def read_long(b: bytes, pos: int) -> tuple[int, int]:
    """Avro zig-zag varint at ``pos`` -> (value, next pos). IndexError past the end,
    :class:`MalformedAvro` for more than 10 bytes. The hot path of the fast readers."""
    x = b[pos]
    if x < 0x80:
        return (x >> 1) ^ -(x & 1), pos + 1
    result = x & 0x7F
    shift = 7
    pos += 1
    while True:
        x = b[pos]
        pos += 1
        result |= (x & 0x7F) << shift
        if x < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise MalformedAvro("varint too long")


@dataclass(frozen=True)
class SchemaEntry:
    name: str  # short name, e.g. "training_record"
    full_name: str  # Avro full name, e.g. "streamlearn.TrainingRecord"
    fingerprint: bytes
    parsed: dict  # fastavro-parsed schema (cached; parsing is the expensive part)
    canonical: str


class SchemaRegistry:
    """Fingerprint -> writer schema, and name -> current (reader) schema."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_fingerprint: dict[bytes, SchemaEntry] = {}
        self.current: dict[str, SchemaEntry] = {}
        self._aliases: dict[str, str] = {}  # full name -> short name

    # -- registration ------------------------------------------------------------------
    def register(self, schema: Any, name: str | None = None, make_current: bool = False) -> bytes:
        """Make ``schema`` known as a writer schema; returns its fingerprint (wire bytes).

        ``name`` defaults to the short name already mapped to the schema's full Avro name,
        else the full name. The first schema registered under a name, or any with
        ``make_current=True``, becomes the reader schema for that name.
        """
        if isinstance(schema, (str, Path)) and Path(str(schema)).suffix == ".avsc":
            schema = json.loads(Path(schema).read_text())
        elif isinstance(schema, str):
            schema = json.loads(schema)
        parsed = fastavro.parse_schema(schema)  # keeps fastavro's "parsed" hint: no re-parse per call
        canonical = to_parsing_canonical_form(parsed)
        fp = canonical_fingerprint(canonical)
        full = parsed.get("name", "") if isinstance(parsed, dict) else ""
        with self._lock:
            short = name or self._aliases.get(full) or full
            if not short:
                raise SerdeError("a registered schema needs a name (a named record type)")
            if full:
                self._aliases.setdefault(full, short)
            entry = SchemaEntry(short, full, fp, parsed, canonical)
            self.by_fingerprint[fp] = entry
            if make_current or short not in self.current:
                self.current[short] = entry
        return fp

    def resolve_name(self, name: str) -> str:
        return name if name in self.current else self._aliases.get(name, name)

    def reader(self, name: str) -> SchemaEntry:
        try:
            return self.current[self.resolve_name(name)]
        except KeyError:
            raise SerdeError(f"unknown schema name {name!r}; known: {sorted(self.current)}") from None

    def writer(self, fp: bytes) -> SchemaEntry:
        try:
            return self.by_fingerprint[fp]
        except KeyError:
            raise UnknownSchemaError(fp) from None

    # -- encode / decode ---------------------------------------------------------------
    def encode(self, record: dict, schema_name: str) -> bytes:
        entry = self.reader(schema_name)
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(entry.fingerprint)
        try:
            fastavro.schemaless_writer(buf, entry.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise SerdeError(f"record does not match schema {entry.name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, value: bytes) -> tuple[str, dict]:
        name, _, record = self.decode_with_entry(value)
        return name, record

    def decode_with_entry(self, value: bytes) -> tuple[str, SchemaEntry, dict]:
        """Like :meth:`decode`, also returning the writer's :class:`SchemaEntry`."""
        writer = self.writer(check_header(value))
        reader = self.current.get(writer.name, writer)
        fo = io.BytesIO(value)
        fo.seek(HEADER_LEN)
        try:
            record = fastavro.schemaless_reader(
                fo, writer.parsed, None if reader is writer else reader.parsed
            )
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bad bytes
            raise SerdeError(f"malformed Avro body ({type(exc).__name__})") from exc
        if fo.tell() != len(value):
            raise SerdeError(f"{len(value) - fo.tell()} trailing bytes after the Avro body")
        return writer.name, writer, record


def check_header(value: bytes) -> bytes:
    """Validate the single-object header; return the 8 fingerprint bytes."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise SerdeError(f"message value is {type(value).__name__}, not bytes")
    if len(value) < HEADER_LEN and len(value) > 0 and MAGIC.startswith(bytes(value[:2])):
        raise SerdeError(f"truncated message ({len(value)} bytes)")
    if bytes(value[:2]) != MAGIC:
        raise SerdeError("not Avro single-object encoded (bad magic)")
    return bytes(value[2:HEADER_LEN])


def load_project_schemas(registry: SchemaRegistry) -> None:
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        try:
            registry.register(json.loads(path.read_text()), name=path.stem, make_current=True)
        except Exception as exc:  # noqa: BLE001 - name the file, whatever broke
            raise SerdeError(f"cannot load schema {path}: {exc}") from exc


#: The process-wide registry, holding the project's schemas.
REGISTRY = SchemaRegistry()
load_project_schemas(REGISTRY)


def register(schema: Any, name: str | None = None, make_current: bool = False) -> bytes:
    """Register a (possibly evolved) schema in the process registry; returns its fingerprint."""
    return REGISTRY.register(schema, name=name, make_current=make_current)


def encode(record: dict, schema_name: str) -> bytes:
    """Single-object encode ``record`` with the current schema called ``schema_name``."""
    return REGISTRY.encode(record, schema_name)


def decode(value: bytes) -> tuple[str, dict]:
    """``(schema_name, record)`` of a single-object encoded value, read into the current
    reader schema of that name. Raises :class:`SerdeError` (or :class:`UnknownSchemaError`)."""
    return REGISTRY.decode(value)


def schema_fingerprint(schema_name: str) -> bytes:
    """The wire fingerprint of the current schema called ``schema_name``."""
    return REGISTRY.reader(schema_name).fingerprint


# -- training messages ----------------------------------------------------------------------
def _le_bytes(a, dtype: str) -> bytes:
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


def encode_training_batch(X, y=None, w=None, keys=None, event_time=None) -> bytes:
    """One ``training_batch`` message holding all rows of ``X``.

    ``X``: dense (n, d) array (sent as float32) or a :class:`~streamlearn.batch.SparseRows`;
    ``y``: labels (NaN = missing) or None; ``w``: weights or None; ``keys``: n strings/None.
    """
    if isinstance(X, SparseRows):
        n, d = X.shape
        rec = {"n_rows": n, "n_features": d, "indptr": _le_bytes(X.indptr, "<i8"),
               "indices": _le_bytes(X.indices, "<i8"), "values": _le_bytes(X.values, "<f4")}
    else:
        X = np.asarray(X)
        if X.ndim != 2:
            raise SerdeError(f"X must be 2-d (rows, features), got shape {X.shape}")
        n, d = X.shape
        rec = {"n_rows": n, "n_features": d, "dense": _le_bytes(X, "<f4")}
    if y is not None:
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(y) != n:
            raise SerdeError(f"{len(y)} labels for {n} rows")
        rec["labels"] = _le_bytes(y, "<f8")
    if w is not None:
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        if len(w) != n:
            raise SerdeError(f"{len(w)} weights for {n} rows")
        rec["weights"] = _le_bytes(w, "<f8")
    if keys is not None:
        keys = [None if k is None else str(k) for k in keys]
        if len(keys) != n:
            raise SerdeError(f"{len(keys)} keys for {n} rows")
        rec["keys"] = keys
    if event_time is not None:
        rec["event_time"] = int(event_time)
    return encode(rec, TRAINING_BATCH)


def encode_training_record(features=None, *, indices=None, values=None, n_features=None, label=None,
                           weight: float = 1.0, key: str | None = None, event_time: int | None = None) -> bytes:
    """One ``training_record`` message: dense ``features`` or sparse ``indices``/``values``/``n_features``."""
    if (features is None) == (indices is None):
        raise SerdeError("give either dense features or sparse indices/values")
    rec: dict = {"weight": float(weight), "key": None if key is None else str(key),
                 "label": None if label is None else float(label),
                 "event_time": None if event_time is None else int(event_time)}
    if features is not None:
        rec["features"] = np.asarray(features, dtype=np.float32).reshape(-1).tolist()
    else:
        if values is None or n_features is None:
            raise SerdeError("a sparse record needs indices, values and n_features")
        rec["indices"] = np.asarray(indices, dtype=np.int64).reshape(-1).tolist()
        rec["values"] = np.asarray(values, dtype=np.float32).reshape(-1).tolist()
        rec["n_features"] = int(n_features)
    return encode(rec, TRAINING_RECORD)


__all__ = [
    "MAGIC", "HEADER_LEN", "TRAINING_RECORD", "TRAINING_BATCH", "SerdeError", "UnknownSchemaError", "MalformedAvro",
    "SchemaRegistry", "SchemaEntry", "REGISTRY", "register", "encode", "decode", "fingerprint", "parsed_fingerprint",
    "canonical_fingerprint", "read_long",
    "fingerprint_hex", "schema_fingerprint", "check_header", "encode_training_batch", "encode_training_record",
]
