"""The same job gives the same model on numpy and on MXNet (float64 on both; tolerance as
in tests/unit/test_backends.py). Run by ``bash .ci/mxnet`` in its own virtual environment."""
from __future__ import annotations

import numpy as np
import pytest

from tests.unit.test_backends import CASES, assert_same_model, fit_case


def test_mxnet_imports_with_this_numpy():
    import mxnet as mx
    assert np.lib.NumpyVersion(np.__version__) < "1.24.0", "MXNet 1.9 needs numpy < 1.24"
    assert mx.__version__.startswith("1.9")


@pytest.mark.parametrize("name", CASES)
def test_mxnet_gives_the_numpy_model(name):
    assert_same_model(name, fit_case(name), fit_case(name, "mxnet", "cpu"))


def test_mxnet_cuda_without_gpu_is_a_param_error():
    import mxnet as mx
    from streamlearn.algorithms import ParamError, make_algorithm
    if mx.context.num_gpus() > 0:
        pytest.skip("a GPU build of mxnet with a GPU")
    with pytest.raises(ParamError, match="CUDA device"):
        make_algorithm("linear_learner", {"n_features": 3, "backend": "mxnet", "device": "cuda"})
