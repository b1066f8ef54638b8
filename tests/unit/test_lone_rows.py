"""Rows a worker would reject go in messages of their own, so that only they are dead-lettered."""
from __future__ import annotations

import numpy as np

from streamlearn.batch import SparseRows
from streamlearn.streams.producer import lone_rows


def test_dense_rows_with_a_missing_or_infinite_value_or_label_or_weight_are_lone():
    X = np.array([[1, 2], [np.nan, 0], [3, np.inf], [4, 5], [6, 7]], dtype=np.float32)
    assert lone_rows(X).tolist() == [False, True, True, False, False]
    y = np.array([0, 1, 1, np.inf, 1.0])
    assert lone_rows(X, y).tolist() == [False, True, True, True, False]
    w = np.array([1, 1, 1, 1, -1.0])
    assert lone_rows(X, y, w).tolist() == [False, True, True, True, True]


def test_a_missing_label_is_lone_among_labelled_rows_only():
    X = np.zeros((3, 1), dtype=np.float32)
    assert lone_rows(X, np.array([1.0, np.nan, 0.0])).tolist() == [False, True, False]
    assert not lone_rows(X, np.full(3, np.nan)).any()  # unlabelled data, for an unsupervised job


def test_sparse_rows():
    X = SparseRows(np.array([0, 1, 1, 3]), np.array([0, 1, 2]), np.array([1.0, np.nan, 2.0], dtype=np.float32), 4)
    assert lone_rows(X).tolist() == [False, False, True]
