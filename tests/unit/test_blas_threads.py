"""A worker limits the BLAS of its own process (threadpoolctl), after numpy is loaded."""
from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from streamlearn.runtime.worker import limit_blas_threads


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_limit_blas_threads_sets_every_loaded_blas():
    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS is loaded
    assert _blas_threads(), "numpy links a BLAS threadpoolctl can see"
    with threadpool_limits(limits=2, user_api="blas"):  # restores the original count afterwards
        assert limit_blas_threads(1) is True
        assert _blas_threads() == [1] * len(_blas_threads())


def test_zero_leaves_blas_alone():
    before = _blas_threads()
    assert limit_blas_threads(0) is False
    assert _blas_threads() == before
