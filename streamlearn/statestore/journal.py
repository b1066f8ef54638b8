"""Row journals: a key whose commits write the rows they change, not the chunks holding them.

A commit of a journaled key (``KeySpec.journal``, declared by ``initialize(..., journal=True)``)
writes one *patch*: the ids of the rows it changed and their deltas, stored under the key's
new version (a Redis hash ``sl:{job}:j:<key>``, field = version). A worker holding the key
at version h is brought to the current version V by adding the patches h+1 .. V in order,
with the same arithmetic a commit uses, so every holder computes the same bits. Traffic is
then proportional to the rows a commit changes: a synchronous round of factorization
machines over 2^20 hashed features changes ~12,000 of them, while its ~1 MiB chunks (every
one of them touched) hold the whole 75 MB key.

The chunks are brought up to date (*folded*) by a commit whose writer holds the whole key
current, once the patches since the last fold hold as many rows as the key: the fold writes
every chunk and moves ``base`` (the version the chunks hold) to its own version, and drops
the patches the fold before it had already folded, so a holder behind by less than one fold
still catches up from patches; one further behind reads the chunks and the patches since
``base`` (one instant). Folding at that size keeps the amortized cost of a fold at most the
cost of the patches themselves. What it costs in Redis' memory: the patches since the fold before the
last, at most about twice the key's size beside its chunks.

Journaled keys are added to (``sum``/``step``, one writer at a time where a model must not
average: synchronous rounds close under a check-and-set) and live on a single-node Redis.
"""
from __future__ import annotations

import numpy as np

from streamlearn.statestore.base import KeySpec

#: the field of a journal that holds the version its key's chunks hold
BASE = "base"
#: the field that holds the previous fold's base (the patches up to it are dropped at the next fold)
PREVIOUS = "previous"


def delta_dtype(spec: KeySpec) -> np.dtype:
    """The dtype a key's pending delta (and so its patches) is held in."""
    return np.dtype(np.float32) if np.dtype(spec.dtype) == np.float32 else np.dtype(np.float64)


def encode_patch(rows: np.ndarray, delta: np.ndarray) -> bytes:
    """Rows (int64, little-endian) followed by their deltas (the key's delta dtype, little-endian)."""
    return (np.ascontiguousarray(rows, dtype="<i8").tobytes()
            + np.ascontiguousarray(delta, dtype=delta.dtype.newbyteorder("<")).tobytes())


def decode_patch(spec: KeySpec, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    dt = delta_dtype(spec)
    width = int(np.prod(spec.shape[1:], dtype=np.int64))
    n = len(blob) // (8 + width * dt.itemsize)
    rows = np.frombuffer(blob, dtype="<i8", count=n)
    delta = np.frombuffer(blob, dtype=dt.newbyteorder("<"), offset=8 * n).reshape((n,) + tuple(spec.shape[1:]))
    return rows, delta


def add_rows(values: np.ndarray, rows: np.ndarray, delta: np.ndarray) -> None:
    """``values[rows] += delta`` as a commit adds (in float64, stored in ``values``' dtype)."""
    held = np.take(values, rows, axis=0)
    np.add(held, delta, out=held, dtype=np.float64, casting="same_kind")
    values[rows] = held


def replay(spec: KeySpec, values: np.ndarray, patches: list[bytes]) -> int:
    """Add ``patches`` (in version order) to ``values``; returns the rows they held."""
    n = 0
    for blob in patches:
        rows, delta = decode_patch(spec, blob)
        add_rows(values, rows, delta)
        n += len(rows)
    return n


def since(journal: dict, base: int, version: int) -> list[bytes] | None:
    """The patches after ``base`` up to ``version`` of a journal read whole (field -> blob,
    fields as bytes or str); None when one is missing."""
    patches = {}
    for field, blob in journal.items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        if name.isdigit():
            patches[int(name)] = blob
    wanted = range(base + 1, version + 1)
    if any(v not in patches for v in wanted):
        return None
    return [patches[v] for v in wanted]


def meta(journal: dict, field: str) -> int:
    raw = journal.get(field, journal.get(field.encode()))
    return int(raw or 0)
