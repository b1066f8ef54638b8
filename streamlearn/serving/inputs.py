"""A prediction request's body -> features, or one line saying why not.

Three body formats: JSON ``{"instances": [[x, …], …]}`` (dense rows) or
``{"instances": [{"indices": […], "values": […]}, …]}`` (sparse rows);
``application/x-numpy`` (the bytes ``np.save`` writes: a 2-D numeric array, one row per
example); and ``application/avro``, one message of the project's training wire format
(a ``training_batch``, dense or CSR, as ``encode_training_batch`` writes it and producers
already send to Kafka; its labels, weights and keys are ignored), read by the workers' own
decoder, so it meets the same size and content checks as on a topic. The ``.npy`` header
is parsed here and its claimed shape checked against the bytes actually sent before any
array exists (``np.load`` would allocate what a hostile header claims), and nothing is
ever unpickled. Every rule a record meets at the training
door applies: the model's width, finite values, at least one row.
"""
from __future__ import annotations

import ast
import json
import math
from typing import Any

import numpy as np

from streamlearn.batch import SparseRows
from streamlearn.errors import UserError
from streamlearn.wire.decode import decode_messages

__all__ = ["AVRO", "BadRequest", "JSON", "NUMPY", "parse_body"]

JSON = "application/json"
NUMPY = "application/x-numpy"
AVRO = "application/avro"
_NPY_MAGIC = b"\x93NUMPY"


class BadRequest(UserError, ValueError):
    """A request the server refuses: ``status`` is the HTTP code (400, 413, 415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_body(body: bytes, content_type: str, width: int | None) -> "np.ndarray | SparseRows":
    """The features of a request body of ``content_type`` for a model taking ``width``
    features (None: any width); :class:`BadRequest` for anything else."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in ("", JSON):
        X = _from_json(body, width)
    elif kind == NUMPY:
        X = _from_npy(body)
    elif kind == AVRO:
        X = _from_avro(body, width)
    else:
        raise BadRequest(f"unsupported content type {kind!r}: send {JSON}, {NUMPY} or {AVRO}", 415)
    n = len(X) if isinstance(X, SparseRows) else X.shape[0]
    if n == 0:
        raise BadRequest("empty batch: send at least one instance")
    if not isinstance(X, SparseRows):
        if width is not None and X.shape[1] != width:
            raise BadRequest(f"the model expects {width} features, the instances have {X.shape[1]}")
        if not np.isfinite(X).all():
            row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise BadRequest(f"instance {row} holds NaN or infinity (or a value beyond float32)")
    return X


def _from_json(body: bytes, width: int | None) -> "np.ndarray | SparseRows":
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {exc}"[:200]) from None
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list):
        raise BadRequest('the body must be a JSON object {"instances": [...]}')
    if not instances:
        raise BadRequest("empty batch: send at least one instance")
    if all(isinstance(i, dict) for i in instances):
        return _sparse(instances, width)
    if any(isinstance(i, dict) for i in instances):
        raise BadRequest("instances mix dense rows and sparse {indices, values} rows")
    if any(not isinstance(i, list) or not all(map(_is_number, i)) for i in instances):
        raise BadRequest("a dense instance is a list of numbers")
    if len({len(i) for i in instances}) > 1:
        raise BadRequest("the dense instances differ in length")
    try:
        with np.errstate(over="ignore"):  # too large for float32 is caught as infinity
            return np.asarray(instances, dtype=np.float32).reshape(len(instances), -1)
    except (ValueError, TypeError):
        raise BadRequest("a dense instance is a list of numbers") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sparse(instances: list[dict[str, Any]], width: int | None) -> SparseRows:
    if width is None:
        raise BadRequest("this model takes dense instances only")
    indptr, indices, values = [0], [], []
    for row, inst in enumerate(instances):
        idx, val = inst.get("indices"), inst.get("values")
        if not isinstance(idx, list) or not isinstance(val, list) or len(idx) != len(val) or set(inst) - {"indices", "values"}:
            raise BadRequest(f"sparse instance {row} must be {{\"indices\": [...], \"values\": [...]}} of equal length")
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < width for i in idx):
            raise BadRequest(f"sparse instance {row}: indices must be integers in [0, {width})")
        if len(set(idx)) != len(idx):
            raise BadRequest(f"sparse instance {row}: an index appears twice")
        if not all(_is_number(v) and math.isfinite(v) for v in val):
            raise BadRequest(f"sparse instance {row}: values must be finite numbers")
        indices += idx
        values += val
        indptr.append(len(indices))
    with np.errstate(over="ignore"):
        vals = np.asarray(values, dtype=np.float32)
    if not np.isfinite(vals).all():
        raise BadRequest("a sparse value is beyond float32")
    return SparseRows(np.asarray(indptr, np.int64), np.asarray(indices, np.int64), vals, width)


def _from_npy(body: bytes) -> np.ndarray:
    """An ``np.save`` body, read from its header and its bytes only (no pickle, no
    allocation sized by the header's claim)."""
    if body[:6] != _NPY_MAGIC or len(body) < 10:
        raise BadRequest("not an .npy body (np.save bytes)")
    major = body[6]
    size_len = 2 if major == 1 else 4
    if major not in (1, 2, 3):
        raise BadRequest(f".npy format version {major} is not supported")
    header_len = int.from_bytes(body[8:8 + size_len], "little")
    start = 8 + size_len + header_len
    if len(body) < start:
        raise BadRequest(".npy header is truncated")
    try:
        header = ast.literal_eval(body[8 + size_len:start].decode("latin1"))
        dtype = np.dtype(header["descr"])
        shape, fortran = tuple(header["shape"]), bool(header["fortran_order"])
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        raise BadRequest("malformed .npy header") from None
    if dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None:
        raise BadRequest(f".npy dtype {dtype} is not a numeric array (floats or integers)")
    if len(shape) != 2 or any(not isinstance(d, int) or d < 0 for d in shape):
        raise BadRequest(f".npy array must be 2-D (rows, features), got shape {shape}")
    if shape[0] * shape[1] * dtype.itemsize != len(body) - start:
        raise BadRequest(f".npy header claims shape {shape} of {dtype} but the body holds {len(body) - start} bytes")
    X = np.frombuffer(body, dtype=dtype, offset=start).reshape(shape, order="F" if fortran else "C")
    with np.errstate(over="ignore"):
        return X.astype(np.float32)


def _from_avro(body: bytes, width: int | None) -> "np.ndarray | SparseRows":
    """A single-object encoded training message (its features only). Sparse rows need the
    model's width, as for JSON sparse instances."""
    decoded = decode_messages([body], width, accepts_sparse=width is not None, needs_label=False)
    if decoded.rejected:
        raise BadRequest(f"Avro body refused: {decoded.rejected[0].reason}"[:300])
    return decoded.batch.X
