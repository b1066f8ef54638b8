"""The unit an update step works on: a mini-batch of examples as numpy arrays.

Workers decode Kafka messages straight into these arrays (never per-record Python
objects), so every algorithm's ``update`` is vectorized over the batch. :meth:`Batch.of`
makes one from what a user holds: numpy arrays, a pandas DataFrame (the label named by
its column) or a scipy sparse matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamlearn.backends import group_sum
from streamlearn.errors import UserError


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
        return group_sum(self.row_ids(), contrib, len(self)).astype(np.result_type(w, self.values), copy=False)

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float32)
        out[self.row_ids(), self.indices] = self.values
        return out

    def take(self, rows: np.ndarray) -> "SparseRows":
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # each kept value's position: its row's start, moved from where the row starts in the result
        pick = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1], dtype=np.int64)
        return SparseRows(indptr, self.indices[pick], self.values[pick], self.n_features)


Features = "np.ndarray | SparseRows"


class DataError(UserError, ValueError):
    """Data that cannot be used as features or labels (wrong shape, not numeric...)."""


def as_features(X) -> "np.ndarray | SparseRows":
    """Features as float32 (rows, columns) or :class:`SparseRows`, from a numpy array (a 1-D
    array is one column), a pandas DataFrame, a scipy sparse matrix or ``SparseRows``."""
    if isinstance(X, SparseRows):
        return X
    if hasattr(X, "tocsr") and hasattr(X, "nnz"):  # scipy.sparse (not imported: an optional package)
        csr = X.tocsr()
        csr.sum_duplicates()
        return SparseRows(csr.indptr.astype(np.int64), csr.indices.astype(np.int64), csr.data.astype(np.float32),
                          int(csr.shape[1]))
    try:
        dense = np.asarray(X.to_numpy() if hasattr(X, "columns") and hasattr(X, "to_numpy") else X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"features must be numeric: {exc}") from None
    if dense.ndim == 1:
        dense = dense[:, None]
    if dense.ndim != 2:
        raise DataError(f"features must be a 2-D array (rows, columns), got shape {dense.shape}")
    return dense


def split_label(X, y):
    """``(features, labels or None)``: ``y`` may name a column of the DataFrame ``X``."""
    if isinstance(y, str):
        if not hasattr(X, "columns") or y not in X.columns:
            raise DataError(f"label column {y!r} not found" + ("" if hasattr(X, "columns") else
                                                               " (a column name needs a pandas DataFrame)"))
        X, y = X.drop(columns=[y]), X[y]
    if y is None:
        return X, None
    try:
        labels = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"labels must be numeric: {exc}") from None
    return X, labels


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

    @classmethod
    def of(cls, X, y=None) -> "Batch":
        """A batch from user data: ``X`` as :func:`as_features` takes it, ``y`` labels (an
        array or Series) or the name of the label column of the DataFrame ``X``."""
        X, labels = split_label(X, y)
        features = as_features(X)
        n = len(features) if isinstance(features, SparseRows) else features.shape[0]
        if labels is not None and len(labels) != n:
            raise DataError(f"{len(labels)} labels for {n} rows")
        return cls(features, labels)
