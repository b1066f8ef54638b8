"""The State protocol: what an algorithm's update step may do with the shared state.

Algorithms see only this interface (DESIGN.md, "The algorithm contract"). Implementations
(``RedisState`` for jobs, ``LocalState`` for in-process training and unit tests) share the
buffering logic in :mod:`streamlearn.statestore.buffered`, so an algorithm behaves the same
on both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from streamlearn.errors import UserError

#: ``step``: a sum of optimizer steps (parameters and their optimizer state) whose concurrent
#: deltas are averaged instead of added (see :mod:`streamlearn.statestore.buffered`, "steps")
Aggregator = Literal["sum", "step", "min", "max", "replace"]
AGGREGATORS: tuple[str, ...] = ("sum", "step", "min", "max", "replace")
DTYPES: tuple[str, ...] = ("float32", "float64")
#: target size of one stored chunk of a large key (see ``KeySpec.chunk_rows``). 1 MiB: a cold
#: push + commit of 80 MB took ~80 ms with 1 MiB chunks, 95-100 ms with 256 KiB, 512 KiB,
#: 2 MiB or 4 MiB ones (cold pull 28-30 vs 33-39 ms). Row-sparse keys set their own, smaller
#: ``chunk_rows`` (a sparse commit rewrites whole chunks); a key keeps the size it was
#: declared with.
CHUNK_BYTES = 1 << 20


class StateError(UserError, RuntimeError):
    """A state operation that cannot be carried out (unknown key, wrong shape, ...)."""


class FencedError(StateError):
    """This worker no longer owns a partition whose records it tried to commit.

    Raised by a commit after a rebalance (or a long pause) gave the partition to another
    worker: the batch is dropped, never applied, so no record is counted twice.
    """


class CommitRefused(StateError):
    """The job is not running (paused, failed, being deleted): a batch commit is refused.

    The commit checks the job's status inside its atomic step, so once ``job pause`` has
    returned no batch is applied; the worker drops the batch and goes back to the stored
    offsets, so nothing is lost.
    """


class StaleCommit(StateError):
    """A check-and-set commit (``CommitInfo.expect``) found a key it was computed from
    written since: nothing was applied. Compute again from a fresh read (or drop the
    batch: its records are consumed again from the stored offsets)."""


@dataclass(frozen=True)
class KeySpec:
    """How one state key is stored and aggregated; fixed at ``initialize``."""

    name: str
    shape: tuple[int, ...]
    aggregator: str = "sum"
    dtype: str = "float64"
    #: rows of the first axis stored together; 0 = automatic (about CHUNK_BYTES a chunk).
    #: Sparse models pass a small value so a push writes only the rows a batch touched.
    chunk_rows: int = 0
    #: a row journal (:mod:`streamlearn.statestore.journal`): a commit writes the rows it
    #: changed as one patch instead of rewriting their chunks; readers apply the patches
    journal: bool = False

    def validate(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise StateError(f"key {self.name!r}: unknown aggregator {self.aggregator!r}; use one of {AGGREGATORS}")
        if self.dtype not in DTYPES:
            raise StateError(f"key {self.name!r}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if any(int(s) < 0 for s in self.shape):
            raise StateError(f"key {self.name!r}: negative dimension in shape {self.shape}")
        if self.journal and (not self.shape or self.aggregator not in ("sum", "step")):
            raise StateError(f"key {self.name!r}: a row journal needs rows and deltas that add up (sum or step)")

    def to_json(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "aggregator": self.aggregator,
               "dtype": self.dtype, "chunk_rows": self.chunk_rows_}
        return {**out, "journal": True} if self.journal else out

    @classmethod
    def from_json(cls, d: dict) -> "KeySpec":
        return cls(d["name"], tuple(int(s) for s in d["shape"]), d["aggregator"], d["dtype"], int(d.get("chunk_rows", 0)),
                   bool(d.get("journal", False)))

    @property
    def chunk_rows_(self) -> int:
        """Rows per stored chunk (1 for a scalar key, which is a single chunk)."""
        if not self.shape:
            return 1
        if self.chunk_rows > 0:
            return self.chunk_rows
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize
        return max(1, CHUNK_BYTES // max(row_bytes, 1))

    @property
    def n_chunks(self) -> int:
        if not self.shape:
            return 1
        return max(1, -(-self.shape[0] // self.chunk_rows_))

    def chunk_shape(self, chunk_id: int) -> tuple[int, ...]:
        if not self.shape:
            return ()
        c = self.chunk_rows_
        rows = min(c, self.shape[0] - chunk_id * c)
        return (rows,) + tuple(self.shape[1:])


@runtime_checkable
class State(Protocol):
    """The shared state as an algorithm sees it.

    ``pull`` returns the latest global value *plus this worker's own pushes not yet
    committed* (read-your-writes), so a worker's consecutive batches build on each other.
    ``push`` never overwrites: the delta is aggregated into the global value by the key's
    aggregator (sum by default) when the batch is committed together with its offsets.
    ``rows`` selects rows along the first axis, so sparse models touch only what a batch used.
    A whole-key ``pull`` returns a read-only array (no copy of a large key); copy it to
    modify it in place.
    """

    def initialize(self, key: str, value: "np.ndarray | float", aggregator: str = "sum", dtype: str = "float64",
                   chunk_rows: int = 0, journal: bool = False) -> None:
        ...

    def pull(self, key: str, rows: "np.ndarray | None" = None) -> np.ndarray:
        ...

    def push(self, key: str, delta: "np.ndarray | float", rows: "np.ndarray | None" = None) -> None:
        ...

    def barrier(self) -> None:
        ...

    def keys(self) -> dict[str, KeySpec]:
        ...
