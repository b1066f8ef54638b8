"""The unit an update step works on: a mini-batch of examples as numpy arrays.

Workers decode Kafka messages straight into these arrays (never per-record Python
objects), so every algorithm's ``update`` is vectorized over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SparseRows:
    """Rows in CSR form: row i has columns ``indices[indptr[i]:indptr[i+1]]``.

    ``n_features`` is the logical width (e.g. 2**20 for hashed features); nothing of
    that width is ever allocated per row.
    """

    indptr: np.ndarray  # int64, (n+1,)
    indices: np.ndarray  # int64, (nnz,)
    values: np.ndarray  # float32, (nnz,)
    n_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.indptr) - 1, self.n_features)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row_ids(self) -> np.ndarray:
        """The row index of every stored value (the CSR 'expand' used by sparse dot products)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))

    def dot(self, w: np.ndarray) -> np.ndarray:
        """``X @ w`` for a dense ``w`` of shape (n_features,) or (n_features, m)."""
        contrib = w[self.indices] * (self.values if w.ndim == 1 else self.values[:, None])
        out = np.zeros((len(self),) + w.shape[1:], dtype=np.result_type(w, self.values))
        np.add.at(out, self.row_ids(), contrib)
        return out

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float32)
        out[self.row_ids(), self.indices] = self.values
        return out

    def take(self, rows: np.ndarray) -> "SparseRows":
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        pick = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(rows) else np.zeros(0, np.int64)
        return SparseRows(indptr, self.indices[pick], self.values[pick], self.n_features)


Features = "np.ndarray | SparseRows"


@dataclass(frozen=True)
class Batch:
    """A mini-batch: features ``X`` (dense float32 (n, d) or :class:`SparseRows`),
    optional labels ``y`` (float64, NaN where a record had none) and weights ``w``."""

    X: "np.ndarray | SparseRows"
    y: "np.ndarray | None" = None
    w: "np.ndarray | None" = None
    keys: "list[str | None] | None" = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.X) if isinstance(self.X, SparseRows) else int(self.X.shape[0])

    @property
    def is_sparse(self) -> bool:
        return isinstance(self.X, SparseRows)

    @property
    def weights(self) -> np.ndarray:
        return np.ones(len(self), dtype=np.float64) if self.w is None else self.w.astype(np.float64)

    def take(self, rows: np.ndarray) -> "Batch":
        """The sub-batch of the given row positions (for holdout splits and tests)."""
        X = self.X.take(rows) if isinstance(self.X, SparseRows) else self.X[rows]
        keys = None if self.keys is None else [self.keys[i] for i in rows]
        return Batch(X, None if self.y is None else self.y[rows], None if self.w is None else self.w[rows], keys)

    def dense(self) -> np.ndarray:
        return self.X.to_dense() if isinstance(self.X, SparseRows) else self.X
