"""SparseRows.take: the rows asked for, in their order, as the dense matrix's rows."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlearn.batch import SparseRows


def _csr(lengths: list[int], n_features: int, seed: int) -> SparseRows:
    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    nnz = int(indptr[-1])
    return SparseRows(indptr, rng.integers(0, n_features, size=nnz).astype(np.int64),
                      rng.normal(size=nnz).astype(np.float32), n_features)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=40), data=st.data())
def test_take_gives_the_rows_asked_for_in_order_with_repeats_and_empty_rows(lengths, data):
    X = _csr(lengths, 17, seed=len(lengths))
    rows = np.array(data.draw(st.lists(st.integers(0, len(lengths) - 1), max_size=60)), dtype=np.int64)
    got = X.take(rows)
    assert got.indptr.dtype == np.int64 and len(got) == len(rows) and got.indptr[0] == 0
    for i, r in enumerate(rows):  # each row's stored values exactly, not only their dense sum
        a, b = X.indptr[r], X.indptr[r + 1]
        c, d = got.indptr[i], got.indptr[i + 1]
        assert np.array_equal(got.indices[c:d], X.indices[a:b]) and np.array_equal(got.values[c:d], X.values[a:b])
    assert len(got.indices) == int(got.indptr[-1])
