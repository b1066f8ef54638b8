"""torch CPU vs CUDA vs numpy: the same job gives the same model (float64 on every engine;
tolerance as in tests/unit/test_backends.py), and the CUDA path really runs on the GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamlearn import backends
from tests.unit.test_backends import CASES, assert_same_model, fit_case


def test_cuda_is_visible():
    assert torch.cuda.is_available()
    bk = backends.get_backend("torch", "cuda")
    x = bk.asarray(np.ones(3))
    assert x.is_cuda and x.dtype == torch.float64


@pytest.mark.parametrize("name", CASES)
def test_torch_cpu_gives_the_numpy_model(name):
    assert_same_model(name, fit_case(name), fit_case(name, "torch", "cpu"))


@pytest.mark.parametrize("name", CASES)
def test_torch_cuda_gives_the_numpy_model(name):
    assert_same_model(name, fit_case(name), fit_case(name, "torch", "cuda"))


@pytest.mark.parametrize("name", ["ll_dense", "ll_sparse", "fm", "kmeans"])
def test_cuda_and_cpu_torch_agree(name):
    assert_same_model(name, fit_case(name, "torch", "cpu"), fit_case(name, "torch", "cuda"))


def test_bad_cuda_index_is_a_param_error():
    from streamlearn.algorithms import ParamError, make_algorithm
    with pytest.raises(ParamError, match="CUDA device"):
        make_algorithm("linear_learner", {"n_features": 3, "backend": "torch", "device": "cuda:99"})
