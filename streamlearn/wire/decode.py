"""Kafka message values -> validated numpy batches (:class:`~streamlearn.batch.Batch`), as update steps.

The hot path of every worker. A message is accepted or rejected *as a whole*; a rejected
message goes to the dead-letter topic with :attr:`Rejection.reason` in a header, and
:attr:`Rejection.n_records` says how many examples it carried (so that records applied +
records dead-lettered == records produced).

- ``training_batch`` messages are decoded with :func:`numpy.frombuffer`, no per-row Python.
  Claimed sizes are checked against the byte lengths *before* any array is made, so a
  message claiming 10**9 rows costs nothing.
- ``training_record`` messages cost one fastavro ``schemaless_reader`` call each (parsed
  schemas cached in the registry); consecutive ones are gathered in flat lists and turned
  into arrays once.
"""
from __future__ import annotations

import io
import math
import struct
from array import array
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from fastavro import schemaless_reader

from streamlearn.batch import Batch, SparseRows
from streamlearn.labels import LabelCoding
from streamlearn.wire.confluent import ConfluentSchemas, is_confluent_framed
from streamlearn.wire.schema_store import SharedSchemas
from streamlearn.wire.serde import (
    HEADER_LEN, MAGIC, REGISTRY, TRAINING_BATCH, TRAINING_RECORD, MalformedAvro, SchemaRegistry, fingerprint_hex,
    read_long,
)
from streamlearn.wire.rules import (
    R_BAD_INDPTR, R_INF_Y, R_KEYS, R_MALFORMED, R_MISSING_LABEL, R_NEGATIVE_W,
    R_NONFINITE_W, R_NONFINITE_X, R_NOT_AVRO, R_NOT_TRAINING, R_SIZE, R_SPARSE_RANGE, R_SPARSE_TO_DENSE, R_TRAILING,
    R_TRUNCATED, R_UNKNOWN_FP, both_forms, dense_reason, label_reason, no_features, sparse_reason, weight_reason,
)



@dataclass(frozen=True)
class Rejection:
    """Message ``index`` (position in the input list) was rejected for ``reason``."""

    index: int
    reason: str
    n_records: int = 1


@dataclass
class DecodeResult:
    """The accepted rows (as the messages' own arrays, not yet joined) and the rejections."""

    pieces: "list[_Piece]"
    n_features: int
    rejected: list[Rejection] = field(default_factory=list)
    #: indices of the accepted messages, in order
    accepted: list[int] = field(default_factory=list)

    @property
    def n_records(self) -> int:
        return sum(p.n for p in self.pieces)

    @property
    def n_rejected_records(self) -> int:
        return sum(r.n_records for r in self.rejected)

    def row_messages(self) -> np.ndarray:
        """The message index (position in the decoded list) of every accepted row, in
        ``steps`` order: where a record that an update step rejects came from."""
        parts = [np.full(p.n, p.src, dtype=np.int64) if np.isscalar(p.src) else np.asarray(p.src, dtype=np.int64)
                 for p in self.pieces if p.n]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @cached_property
    def batch(self) -> Batch:
        """Every accepted row as one Batch (a copy of all of them)."""
        return _assemble(self.pieces, self.n_features)

    def steps(self, rows: int) -> "list[Batch]":
        """``batch`` cut into consecutive batches of at most ``rows`` examples (a worker's update
        steps), without building ``batch``: every step is sparse if any message was, a step
        inside one message is a view of that message's arrays, and only steps that span
        messages are copied. A worker's window of ~100 dense 400 kB messages was joined into
        one fresh 40 MB array (its own mmap: ~10,000 page faults, 27 ms) just to be sliced."""
        pieces = [p for p in self.pieces if p.n]
        sparse = any(p.sparse for p in pieces)
        starts = np.cumsum([0] + [p.n for p in pieces])
        n = int(starts[-1])
        out = []
        for a in range(0, n, rows):
            b = min(a + rows, n)
            first = int(np.searchsorted(starts, a, side="right")) - 1
            parts, i = [], first
            while i < len(pieces) and starts[i] < b:
                lo, hi = max(a, starts[i]) - starts[i], min(b, starts[i + 1]) - starts[i]
                parts.append(_rows_of(pieces[i], int(lo), int(hi)))
                i += 1
            if len(parts) == 1 and parts[0].sparse == sparse:  # inside one message: its arrays, read-only
                p = parts[0]
                X = SparseRows(p.indptr, p.indices, p.values, self.n_features) if sparse else p.X
                out.append(Batch(X, p.y, p.w, p.keys))
            else:
                out.append(_assemble(parts, self.n_features, sparse))
        return out

    def messages(self, a: int, b: int) -> "DecodeResult":
        """What decoding messages ``a:b`` of the list alone gives (their rows as views, their
        rejections, indices counted from ``a``): a window decoded once, cut into shares."""
        pieces = []
        for p in self.pieces:
            src = np.full(p.n, p.src) if np.isscalar(p.src) else np.asarray(p.src)
            mine = np.flatnonzero((src >= a) & (src < b))  # a message's rows are consecutive
            if len(mine):
                lo, hi = int(mine[0]), int(mine[-1]) + 1
                piece = _rows_of(p, lo, hi)
                piece.src = p.src - a if np.isscalar(p.src) else (src[lo:hi] - a).tolist()
                pieces.append(piece)
        return DecodeResult(pieces, self.n_features,
                            [Rejection(r.index - a, r.reason, r.n_records) for r in self.rejected if a <= r.index < b],
                            [i - a for i in self.accepted if a <= i < b])


class _Piece:
    """The rows of one or more accepted messages: dense (X) or CSR (indptr/indices/values)."""

    __slots__ = ("n", "X", "indptr", "indices", "values", "y", "w", "keys", "src")

    def __init__(self, n, X=None, indptr=None, indices=None, values=None, y=None, w=None, keys=None):
        self.n, self.X, self.indptr, self.indices, self.values = n, X, indptr, indices, values
        self.y, self.w, self.keys = y, w, keys
        self.src: "int | list[int]" = -1  # the message index of its rows (one, or one per row)

    @property
    def sparse(self) -> bool:
        return self.X is None


# -- zero-copy readers for the project's current schemas -------------------------------------
# The Avro binary layout of these two exact schemas (Parsing Canonical Form below) is read
# by hand: float arrays and bytes fields become slices of the message, never Python lists.
# Any other writer schema (an evolved version) goes through fastavro's schema resolution.
_RECORD_CANONICAL = (
    '{"name":"streamlearn.TrainingRecord","type":"record","fields":[{"name":"features","type":["null",'
    '{"type":"array","items":"float"}]},{"name":"indices","type":["null",{"type":"array","items":"long"}]},'
    '{"name":"values","type":["null",{"type":"array","items":"float"}]},{"name":"n_features","type":["null",'
    '"long"]},{"name":"label","type":["null","double"]},{"name":"weight","type":"double"},{"name":"key",'
    '"type":["null","string"]},{"name":"event_time","type":["null","long"]}]}')
_BATCH_CANONICAL = (
    '{"name":"streamlearn.TrainingBatch","type":"record","fields":[{"name":"n_rows","type":"long"},'
    '{"name":"n_features","type":"long"},{"name":"dense","type":["null","bytes"]},{"name":"indptr","type":'
    '["null","bytes"]},{"name":"indices","type":["null","bytes"]},{"name":"values","type":["null","bytes"]},'
    '{"name":"labels","type":["null","bytes"]},{"name":"weights","type":["null","bytes"]},{"name":"keys",'
    '"type":["null",{"type":"array","items":["null","string"]}]},{"name":"event_time","type":["null","long"]}]}')

_unpack_double = struct.Struct("<d").unpack_from


def _union(b: bytes, pos: int) -> tuple[bool, int]:
    """A ["null", T] union's branch: (is T, next pos)."""
    x = b[pos]
    if x == 0:
        return False, pos + 1
    if x == 2:
        return True, pos + 1
    raise MalformedAvro("bad union branch")


def _float_array(b: bytes, pos: int) -> tuple[bytes, int, int]:
    """An array<float> -> (float32 LE bytes, count, next pos)."""
    chunks = []
    n = 0
    while True:
        count, pos = read_long(b, pos)
        if count == 0:
            break
        if count < 0:
            count = -count
            _, pos = read_long(b, pos)  # block size in bytes
        end = pos + 4 * count
        if end > len(b):
            raise MalformedAvro("array past the end")
        chunks.append(b[pos:end])
        n += count
        pos = end
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), n, pos


def _long_array(b: bytes, pos: int) -> tuple[list[int], int]:
    # The Avro block loop is written out in each array reader (floats, longs, batch keys) on
    # purpose: a shared block-header helper cost ~10 % of single-record decoding (measured
    # 450k vs 500k records/s), the worker's record path.
    out: list[int] = []
    while True:
        count, pos = read_long(b, pos)
        if count == 0:
            return out, pos
        if count < 0:
            count = -count
            _, pos = read_long(b, pos)
        if count > len(b) - pos:  # every long takes at least one byte
            raise MalformedAvro("array past the end")
        for _ in range(count):
            x, pos = read_long(b, pos)
            out.append(x)


def _bytes(b: bytes, mv: memoryview, pos: int):
    present, pos = _union(b, pos)
    if not present:
        return None, pos
    n, pos = read_long(b, pos)
    if n < 0 or pos + n > len(b):
        raise MalformedAvro("bytes past the end")
    return mv[pos:pos + n], pos + n


def _string(b: bytes, pos: int) -> tuple[str, int]:
    n, pos = read_long(b, pos)
    if n < 0 or pos + n > len(b):
        raise MalformedAvro("string past the end")
    return b[pos:pos + n].decode("utf-8"), pos + n


def _read_record_fast(b: bytes) -> dict:
    """A current-schema training_record; features/values as float32 LE bytes."""
    pos = HEADER_LEN
    present, pos = _union(b, pos)
    features = None
    nfeat = 0
    if present:
        features, nfeat, pos = _float_array(b, pos)
    indices = values = width = label = key = None
    nval = 0
    present, pos = _union(b, pos)
    if present:
        indices, pos = _long_array(b, pos)
    present, pos = _union(b, pos)
    if present:
        values, nval, pos = _float_array(b, pos)
    present, pos = _union(b, pos)
    if present:
        width, pos = read_long(b, pos)
    present, pos = _union(b, pos)
    if present:
        if pos + 8 > len(b):
            raise MalformedAvro("double past the end")
        label = _unpack_double(b, pos)[0]
        pos += 8
    if pos + 8 > len(b):
        raise MalformedAvro("double past the end")
    weight = _unpack_double(b, pos)[0]
    pos += 8
    present, pos = _union(b, pos)
    if present:
        key, pos = _string(b, pos)
    present, pos = _union(b, pos)
    if present:
        _, pos = read_long(b, pos)
    if pos != len(b):
        raise _Trailing(len(b) - pos)
    return {"features": features, "n_dense": nfeat, "indices": indices, "values": values, "n_values": nval,
            "n_features": width, "label": label, "weight": weight, "key": key}


def _read_batch_fast(b: bytes) -> dict:
    """A current-schema training_batch; bytes fields are zero-copy memoryviews."""
    mv = memoryview(b)
    n_rows, pos = read_long(b, HEADER_LEN)
    n_features, pos = read_long(b, pos)
    dense, pos = _bytes(b, mv, pos)
    indptr, pos = _bytes(b, mv, pos)
    indices, pos = _bytes(b, mv, pos)
    values, pos = _bytes(b, mv, pos)
    labels, pos = _bytes(b, mv, pos)
    weights, pos = _bytes(b, mv, pos)
    keys = None
    present, pos = _union(b, pos)
    if present:
        keys = []
        while True:
            count, pos = read_long(b, pos)
            if count == 0:
                break
            if count < 0:
                count = -count
                _, pos = read_long(b, pos)
            if count > len(b) - pos:  # every item takes at least one byte
                raise MalformedAvro("array past the end")
            for _ in range(count):
                present, pos = _union(b, pos)
                if present:
                    k, pos = _string(b, pos)
                    keys.append(k)
                else:
                    keys.append(None)
    present, pos = _union(b, pos)
    if present:
        _, pos = read_long(b, pos)
    if pos != len(b):
        raise _Trailing(len(b) - pos)
    return {"n_rows": n_rows, "n_features": n_features, "dense": dense, "indptr": indptr, "indices": indices,
            "values": values, "labels": labels, "weights": weights, "keys": keys}


class _Trailing(Exception):
    def __init__(self, n: int):
        self.n = n


def _from_fastavro_record(rec: dict) -> dict:
    """A fastavro-decoded training_record in the shape :func:`_read_record_fast` returns."""
    out = dict(rec)
    f = rec["features"]
    if f is not None:
        out["features"], out["n_dense"] = array("f", f).tobytes(), len(f)
    v = rec["values"]
    if v is not None:
        out["values"], out["n_values"] = array("f", v).tobytes(), len(v)
    else:
        out["n_values"] = 0
    return out


class _RecordRun:
    """Consecutive single-record messages of one kind (dense or sparse), finished into one
    piece at once: one frombuffer, one finiteness check for all of them."""

    __slots__ = ("sparse", "chunks", "indices", "lengths", "labels", "has_label", "weights", "has_weight",
                 "keys", "has_key", "index")

    def __init__(self, sparse: bool):
        self.sparse = sparse
        self.chunks: list = []  # float32 LE bytes: dense rows, or sparse values
        self.indices: list[int] = []
        self.lengths: list[int] = []
        self.labels: list[float] = []
        self.weights: list[float] = []
        self.keys: list = []
        self.has_label = self.has_weight = self.has_key = False
        self.index: list[int] = []  # message index of each row

    def piece(self, n_features: int, rejected: list, labels=None) -> _Piece | None:
        n = len(self.index)
        flat = np.frombuffer(b"".join(self.chunks), dtype="<f4")
        if not self.sparse:
            X = flat.reshape(n, n_features)
            good = np.isfinite(X).all(axis=1)
            indptr = indices = values = None
        else:
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(self.lengths, out=indptr[1:])
            finite = np.isfinite(flat)
            good = np.ones(n, dtype=bool)
            if not finite.all():
                good[np.repeat(np.arange(n), self.lengths)[~finite]] = False
            X, indices, values = None, np.array(self.indices, dtype=np.int64), flat
        y = np.array(self.labels, dtype=np.float64) if self.has_label else None
        w = np.array(self.weights, dtype=np.float64) if self.has_weight else None
        keys = self.keys if self.has_key else None
        for r in np.flatnonzero(~good):
            rejected.append(Rejection(self.index[int(r)], R_NONFINITE_X))
        if labels is not None and y is not None:
            off_contract = labels.violations(y) & good
            for r in np.flatnonzero(off_contract):
                rejected.append(Rejection(self.index[int(r)], labels.reason(float(y[r]))))
            good &= ~off_contract
        if not good.all():
            rows = np.flatnonzero(good)
            if X is not None:
                X = X[rows]
            else:
                sub = SparseRows(indptr, indices, values, n_features).take(rows)
                indptr, indices, values = sub.indptr, sub.indices, sub.values
            y = None if y is None else y[rows]
            w = None if w is None else w[rows]
            keys = None if keys is None else [keys[int(r)] for r in rows]
            n = len(rows)
        if n == 0:
            return None
        piece = _Piece(n, X=X, indptr=indptr, indices=indices, values=values, y=y, w=w, keys=keys)
        piece.src = self.index if good.all() else [self.index[int(r)] for r in np.flatnonzero(good)]
        return piece


#: an algorithm's rule for the rows of one message: (CSR indptr, stored values) -> the reason
#: the message is dead-lettered, or None (see ``Algorithm.row_rule``)
RowRule = "Callable[[np.ndarray, np.ndarray], str | None]"


def _nonzero_rows(values, sparse: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, values) of one record's values (sparse: as stored; dense: the non-zeros) or
    of a dense message's rows, for a :data:`RowRule`."""
    if sparse:
        v = np.frombuffer(values or b"", dtype="<f4")
        return np.array([0, len(v)]), v
    X = np.frombuffer(values, dtype="<f4")[None, :] if not isinstance(values, np.ndarray) else values
    nz = X != 0
    return np.concatenate([[0], np.cumsum(nz.sum(1))]), X[nz]


def decode_messages(values: list[bytes], n_features: int | None, accepts_sparse: bool, needs_label: bool,
                    registry: SchemaRegistry = REGISTRY, shared: SharedSchemas | None = None,
                    confluent: ConfluentSchemas | None = None, labels: LabelCoding | None = None,
                    row_rule: "RowRule | None" = None) -> DecodeResult:
    """Decode and validate Kafka message values into one :class:`Batch` (accepted examples,
    concatenated in message order) plus the :class:`Rejection` of every bad message.

    ``n_features=None`` takes the width of the first training message (inspecting a topic
    whose width is not known yet). A fingerprint unknown to ``registry`` is looked up in
    ``shared`` (one round trip for all unknown fingerprints of the call); Confluent-framed
    values are read when ``confluent`` is given. ``labels``: the job's label coding, a record
    message whose label is outside it is rejected. A batch message is not rejected whole for
    some of its labels: its records reach the update step, whose label encoding raises for
    them, and the worker isolates and dead-letters them one by one (runtime/isolate.py).
    ``row_rule``: the algorithm's own rule for a message's rows (:data:`RowRule`).
    Never raises for bad input bytes: everything wrong with a message is a rejection (an
    unreachable Redis or schema registry raises: the window is retried).
    """
    n_features = None if n_features is None else int(n_features)
    by_fp = registry.by_fingerprint
    current = registry.current
    rejected: list[Rejection] = []
    pieces: list[_Piece] = []
    run: _RecordRun | None = None
    nan = math.nan

    def close_run() -> None:
        if run is not None:
            piece = run.piece(n_features, rejected, labels)
            if piece is not None:
                pieces.append(piece)

    for i, v in enumerate(values):
        if type(v) is not bytes:
            try:
                v = bytes(v)
            except Exception:  # noqa: BLE001
                rejected.append(Rejection(i, f"message value is {type(v).__name__}, not bytes"))
                continue
        if confluent is not None and is_confluent_framed(v):
            v = confluent.reframe(v, registry)
            if type(v) is str:
                rejected.append(Rejection(i, v))
                continue
        nbytes = len(v)
        if nbytes < HEADER_LEN or v[:2] != MAGIC:
            if 0 < nbytes < HEADER_LEN and MAGIC.startswith(v[:2]):
                rejected.append(Rejection(i, f"{R_TRUNCATED} ({nbytes} bytes)"))
            else:
                rejected.append(Rejection(i, R_NOT_AVRO))
            continue
        writer = by_fp.get(v[2:HEADER_LEN])
        if writer is None and shared is not None:
            shared.learn(registry, _fingerprints(values[i:]))
            shared = None  # asked once per call: what it did not know stays unknown
            writer = by_fp.get(v[2:HEADER_LEN])
        if writer is None:
            rejected.append(Rejection(i, f"{R_UNKNOWN_FP} {fingerprint_hex(v[2:HEADER_LEN])}"))
            continue
        name = writer.name
        if name != TRAINING_RECORD and name != TRAINING_BATCH:
            rejected.append(Rejection(i, f"schema {name} is {R_NOT_TRAINING}"))
            continue
        reader = current.get(name, writer)
        try:
            if reader is writer and writer.canonical == _RECORD_CANONICAL:
                rec = _read_record_fast(v)
            elif reader is writer and writer.canonical == _BATCH_CANONICAL:
                rec = _read_batch_fast(v)
            else:
                fo = io.BytesIO(v)
                fo.seek(HEADER_LEN)
                rec = schemaless_reader(fo, writer.parsed, None if reader is writer else reader.parsed)
                if fo.tell() != nbytes:
                    raise _Trailing(nbytes - fo.tell())
                if name == TRAINING_RECORD:
                    rec = _from_fastavro_record(rec)
                elif name == TRAINING_BATCH:
                    rec = {k: (None if rec.get(k) is None else memoryview(rec[k])) if k in _BATCH_BYTES else rec.get(k)
                           for k in _BATCH_FIELDS}
        except _Trailing as exc:
            rejected.append(Rejection(i, f"{exc.n} {R_TRAILING}"))
            continue
        except Exception as exc:  # noqa: BLE001 - bad bytes raise many types (fastavro, utf-8, ...)
            rejected.append(Rejection(i, f"{R_MALFORMED} ({type(exc).__name__})"))
            continue

        if n_features is None:
            n_features = _width(name, rec)
        if name == TRAINING_RECORD:
            reason, sparse = _check_record(rec, n_features, accepts_sparse, needs_label)
            if reason is None and row_rule is not None:
                reason = row_rule(*_nonzero_rows(rec["values"] if sparse else rec["features"], sparse))
            if reason is not None:
                rejected.append(Rejection(i, reason))
                continue
            if run is None or run.sparse != sparse:
                close_run()
                run = _RecordRun(sparse)
            if sparse:
                run.indices.extend(rec["indices"])
                run.chunks.append(rec["values"])
                run.lengths.append(rec["n_values"])
            else:
                run.chunks.append(rec["features"])
            label = rec["label"]
            if label is None:
                run.labels.append(nan)
            else:
                run.labels.append(label)
                run.has_label = True
            weight = rec["weight"]
            run.weights.append(weight)
            if weight != 1.0:
                run.has_weight = True
            key = rec["key"]
            run.keys.append(key)
            if key is not None:
                run.has_key = True
            run.index.append(i)
        elif name == TRAINING_BATCH:
            piece, reason, n_rec = _batch_piece(rec, n_features, accepts_sparse, needs_label)
            if piece is not None and row_rule is not None and piece.n:
                reason = row_rule(*(_nonzero_rows(piece.X, False) if piece.X is not None else (piece.indptr, piece.values)))
                piece = None if reason else piece
            if piece is None:
                rejected.append(Rejection(i, reason, n_rec))
                continue
            close_run()
            run = None
            piece.src = i
            pieces.append(piece)
    close_run()
    rejected.sort(key=lambda r: r.index)
    bad = {r.index for r in rejected}
    accepted = [i for i in range(len(values)) if i not in bad]
    return DecodeResult(pieces, 0 if n_features is None else n_features, rejected, accepted)


def schema_ids(values: list) -> set[str]:
    """The writer schemas of ``values``: the fingerprint of each single-object encoded one
    (``0x…``), ``confluent:<id>`` of each Confluent-framed one (data lineage)."""
    out = {fingerprint_hex(fp) for fp in _fingerprints(values)}
    out |= {f"confluent:{int.from_bytes(bytes(v[1:5]), 'big')}" for v in values if is_confluent_framed(v)}
    return out


def _fingerprints(values: list) -> list[bytes]:
    """The fingerprints of the single-object encoded ``values``."""
    return [bytes(v[2:HEADER_LEN]) for v in values if len(v) >= HEADER_LEN and bytes(v[:2]) == MAGIC]


_BATCH_FIELDS = ("n_rows", "n_features", "dense", "indptr", "indices", "values", "labels", "weights", "keys")
_BATCH_BYTES = frozenset(("dense", "indptr", "indices", "values", "labels", "weights"))


def _width(name: str, rec: dict) -> int | None:
    """The width a decoded training message claims (dense length or sparse n_features)."""
    if name == TRAINING_BATCH:
        return rec["n_features"]
    return rec["n_dense"] if rec["features"] is not None else rec["n_features"]


def _check_record(rec: dict, n_features: int, accepts_sparse: bool, needs_label: bool):
    """(reason or None, is_sparse) for one decoded training_record (:mod:`~streamlearn.wire.rules`).
    Feature finiteness is checked for all records of a run at once (:meth:`_RecordRun.piece`)."""
    features = rec["features"]
    indices = rec["indices"]
    if features is not None:
        if indices is not None:
            return both_forms("record"), False
        sparse, reason = False, dense_reason(rec["n_dense"], n_features)
    elif indices is not None:
        if not accepts_sparse:
            return R_SPARSE_TO_DENSE, True
        sparse, reason = True, sparse_reason(indices, rec["n_values"], rec["n_features"], n_features,
                                             width_required=True)
    else:
        return no_features("record"), False
    return reason or label_reason(rec["label"], needs_label) or weight_reason(rec["weight"]), sparse


def _batch_piece(rec: dict, n_features: int, accepts_sparse: bool, needs_label: bool):
    """(piece, None, n) for a good training_batch, else (None, reason, n_records)."""
    nr, nf = rec["n_rows"], rec["n_features"]
    if nr < 0 or nf < 0:
        return None, f"{R_SIZE}: negative size (n_rows={nr}, n_features={nf})", 1
    dense, indptr, indices, values = rec["dense"], rec["indptr"], rec["indices"], rec["values"]
    labels, weights, keys = rec["labels"], rec["weights"], rec["keys"]

    # 1. Claimed sizes against byte lengths (Python ints: no overflow, nothing allocated).
    if dense is not None:
        if indptr is not None or indices is not None or values is not None:
            return None, both_forms("batch"), 1
        if nf == 0 and nr > 0:  # a claim no byte length could contradict
            return None, f"{R_SIZE}: {nr} rows of 0 features", 1
        if len(dense) != nr * nf * 4:
            return None, (f"{R_SIZE}: {nr} rows x {nf} features need {nr * nf * 4} bytes of dense "
                          f"values, got {len(dense)}"), 1
    elif indptr is not None:
        if indices is None or values is None:
            return None, "sparse batch without indices or values", 1
        if len(indptr) != (nr + 1) * 8:
            return None, f"{R_SIZE}: {nr} rows need {(nr + 1) * 8} bytes of indptr, got {len(indptr)}", 1
        if len(indices) % 8:
            return None, f"{R_SIZE}: {len(indices)} bytes of int64 indices", 1
        nnz = len(indices) // 8
        if len(values) != nnz * 4:
            return None, f"{R_SIZE}: {nnz} indices need {nnz * 4} bytes of values, got {len(values)}", 1
    elif nr != 0:
        return None, no_features("batch"), 1
    if labels is not None and len(labels) != nr * 8:
        return None, f"{R_SIZE}: {nr} rows need {nr * 8} bytes of labels, got {len(labels)}", 1
    if weights is not None and len(weights) != nr * 8:
        return None, f"{R_SIZE}: {nr} rows need {nr * 8} bytes of weights, got {len(weights)}", 1
    if keys is not None and len(keys) != nr:
        return None, f"{R_KEYS} {len(keys)} != n_rows {nr}", 1
    # From here on the message is self-consistent: it carries nr records.

    # 2. Content.
    if dense is not None:
        if nf != n_features:
            return None, f"dimension {nf} != {n_features}", nr
        X = np.frombuffer(dense, dtype="<f4").reshape(nr, nf)
        if not np.isfinite(X).all():
            return None, R_NONFINITE_X, nr
        piece = _Piece(nr, X=X)
    elif indptr is not None:
        if not accepts_sparse:
            return None, R_SPARSE_TO_DENSE, nr
        if nf != n_features:
            return None, f"sparse n_features {nf} != {n_features}", nr
        ip = np.frombuffer(indptr, dtype="<i8")
        if ip[0] != 0 or ip[-1] != nnz or (nr and (np.diff(ip) < 0).any()):
            return None, R_BAD_INDPTR, nr
        idx = np.frombuffer(indices, dtype="<i8")
        if nnz and (idx.min() < 0 or idx.max() >= n_features):
            return None, f"{R_SPARSE_RANGE} [0, {n_features})", nr
        vals = np.frombuffer(values, dtype="<f4")
        if not np.isfinite(vals).all():
            return None, R_NONFINITE_X, nr
        piece = _Piece(nr, indptr=ip, indices=idx, values=vals)
    else:  # an empty batch
        piece = _Piece(0, X=np.zeros((0, n_features), dtype=np.float32))
    if labels is not None:
        y = np.frombuffer(labels, dtype="<f8")
        if np.isinf(y).any():
            return None, R_INF_Y, nr
        if needs_label and np.isnan(y).any():
            return None, R_MISSING_LABEL, nr
        piece.y = y
    elif needs_label and nr:
        return None, R_MISSING_LABEL, nr
    if weights is not None:
        w = np.frombuffer(weights, dtype="<f8")
        if not np.isfinite(w).all():
            return None, R_NONFINITE_W, nr
        if (w < 0).any():
            return None, R_NEGATIVE_W, nr
        piece.w = w
    if keys is not None and any(k is not None for k in keys):
        piece.keys = keys
    return piece, None, nr


def _to_csr(p: _Piece) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if p.sparse:
        return p.indptr, p.indices, p.values
    rows, cols = np.nonzero(p.X)
    indptr = np.zeros(p.n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=p.n), out=indptr[1:])
    return indptr, cols.astype(np.int64), p.X[rows, cols]


def _rows_of(p: _Piece, a: int, b: int) -> _Piece:
    """Rows ``a:b`` of a piece, as views of its arrays (a sparse piece's indptr rebased)."""
    if p.sparse:
        ip = p.indptr[a:b + 1]
        s, e = int(ip[0]), int(ip[-1])
        out = _Piece(b - a, indptr=ip - s, indices=p.indices[s:e], values=p.values[s:e])
    else:
        out = _Piece(b - a, X=p.X[a:b])
    out.y = None if p.y is None else p.y[a:b]
    out.w = None if p.w is None else p.w[a:b]
    out.keys = None if p.keys is None else p.keys[a:b]
    return out


def _assemble(pieces: list[_Piece], n_features: int, sparse: bool | None = None) -> Batch:
    """One Batch of ``pieces`` in arrays of its own (sparse if ``sparse``, by default if any
    piece is)."""
    pieces = [p for p in pieces if p.n]
    n = sum(p.n for p in pieces)
    if not pieces:
        return Batch(np.zeros((0, n_features), dtype=np.float32))
    if any(p.sparse for p in pieces) if sparse is None else sparse:
        parts = [_to_csr(p) for p in pieces]
        offsets = np.cumsum([0] + [len(ind) for _, ind, _ in parts])
        indptr = np.concatenate([np.zeros(1, np.int64)] + [ip[1:] + off for (ip, _, _), off in zip(parts, offsets)])
        X = SparseRows(indptr.astype(np.int64, copy=False),
                       np.concatenate([ind for _, ind, _ in parts]).astype(np.int64, copy=False),
                       np.concatenate([val for _, _, val in parts]).astype(np.float32, copy=False),
                       n_features)
    else:
        X = np.concatenate([p.X for p in pieces]).astype(np.float32, copy=False)
    y = None
    if any(p.y is not None for p in pieces):
        y = np.concatenate([p.y if p.y is not None else np.full(p.n, np.nan) for p in pieces]).astype(np.float64,
                                                                                                    copy=False)
    w = None
    if any(p.w is not None for p in pieces):
        w = np.concatenate([p.w if p.w is not None else np.ones(p.n) for p in pieces]).astype(np.float64, copy=False)
    keys = None
    if any(p.keys is not None for p in pieces):
        keys = []
        for p in pieces:
            keys.extend(p.keys if p.keys is not None else [None] * p.n)
    assert len(X) == n if isinstance(X, SparseRows) else X.shape[0] == n
    return Batch(X, y, w, keys)


def rejection_headers(rejection: Rejection) -> list[tuple[str, bytes]]:
    """Kafka headers describing a rejection (for a dead-letter record)."""
    return [("streamlearn.reason", rejection.reason.encode()),
            ("streamlearn.records", str(rejection.n_records).encode())]


__all__ = ["decode_messages", "DecodeResult", "Rejection", "rejection_headers", "schema_ids"]
