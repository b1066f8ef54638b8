"""Tensor backends for update steps (``--param backend=numpy|torch|mxnet``, ``device=cpu|cuda``).

Here, with numpy alone: the registry, clear ParamErrors at job creation, lazy imports, and
that the numpy path is the plain numpy computation. When torch is importable, numpy vs
torch-CPU equivalence too (tests/gpu adds CUDA; tests/mxnet runs the same cases on MXNet in
its own virtual environment). ``CASES``/``assert_same_model`` are shared with those suites.

Tolerance: every engine computes in float64, so only summation order differs (index_add
or CSR dot vs numpy's reduceat): relative 1e-7 where the state is float64; where it is
float32 (sparse keys with n_features >= 2**16) a pushed delta can round to the neighbouring
float32, so 1e-4 there.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from streamlearn import backends
from streamlearn import datasets as D
from streamlearn.algorithms import ParamError, make_algorithm
from streamlearn.runtime.local import fit_local

RTOL64, RTOL32 = 1e-7, 1e-4


def _dense():
    X, y = D.dense_classification(6000, d=12, seed=11)
    return X, y


def _sparse(n_features=None):
    X, y = D.interaction_data(6000, seed=12)
    if n_features:
        X = type(X)(X.indptr, (X.indices * 7919) % n_features, X.values, n_features)
    return X, y


def _cases():
    """name -> (algorithm, params, X, y, batch size, rtol)."""
    Xd, yd = _dense()
    Xs, ys = _sparse()
    Xb, yb = _sparse(1 << 17)  # float32 state keys
    ymc = (np.abs(Xd[:, 0] * 2).astype(int) % 3).astype(np.float64)
    yreg = yd * 3.0 + Xd[:, 1]
    return {
        "ll_dense": ("linear_learner", {"n_features": 12, "num_models": 8}, Xd, yd, 250, RTOL64),
        "ll_dense_hinge_sgd_l1": ("linear_learner", {"n_features": 12, "num_models": 6, "loss": "hinge",
                                                     "optimizer": "sgd", "l1": [0.0, 0.01]}, Xd, yd, 250, RTOL64),
        "ll_multiclass": ("linear_learner", {"n_features": 12, "num_models": 4, "num_classes": 3,
                                             "predictor_type": "multiclass_classifier"}, Xd, ymc, 250, RTOL64),
        "ll_regressor_l1": ("linear_learner", {"n_features": 12, "num_models": 4, "predictor_type": "regressor",
                                               "l1": [0.0, 0.001]}, Xd, yreg, 250, RTOL64),
        "ll_sparse": ("linear_learner", {"n_features": Xs.n_features, "num_models": 8}, Xs, ys, 250, RTOL64),
        "ll_sparse_f32": ("linear_learner", {"n_features": 1 << 17, "num_models": 8}, Xb, yb, 250, RTOL32),
        "fm": ("factorization_machines", {"n_features": Xs.n_features, "num_factors": 4}, Xs, ys, 250, RTOL64),
        "fm_regressor_sgd": ("factorization_machines", {"n_features": Xs.n_features, "num_factors": 4,
                                                        "predictor_type": "regressor", "optimizer": "sgd"},
                             Xs, ys * 2.0 - 0.5, 250, RTOL64),
        "fm_f32": ("factorization_machines", {"n_features": 1 << 17, "num_factors": 4}, Xb, yb, 250, RTOL32),
        "kmeans": ("kmeans", {"n_features": 5, "k": 8, "k_max": 10}, D.clustered(5000, d=5, n_clusters=8, seed=13),
                   None, 300, RTOL64),
    }


CASES = sorted(_cases())
_DATA: dict = {}


def case(name):
    if not _DATA:
        _DATA.update(_cases())
    return _DATA[name]


def fit_case(name: str, backend: str = "numpy", device: str = "cpu"):
    algo_name, params, X, y, bs, _ = case(name)
    params = dict(params)
    if backend != "numpy" or device != "cpu":
        params.update(backend=backend, device=device)
    return fit_local(make_algorithm(algo_name, params), D.batches(X, y, bs))


def assert_same_model(name: str, m_ref, m_other) -> None:
    rtol = case(name)[5]
    a, attrs_a = m_ref.to_arrays()
    b, attrs_b = m_other.to_arrays()
    assert sorted(a) == sorted(b)
    for k in a:
        scale = max(float(np.abs(a[k]).max()) if a[k].size else 0.0, 1e-12)
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=rtol * scale, err_msg=f"{name}: {k}")
    if "selected_model" in attrs_a:
        assert attrs_a["selected_model"] == attrs_b["selected_model"]


# -- registry, errors, laziness (no optional engine needed) -----------------------------------
ALGOS = {"linear_learner": {"n_features": 3}, "factorization_machines": {"n_features": 3},
         "kmeans": {"n_features": 3, "k": 2}}


def test_numpy_backend_is_numpy_itself():
    bk = backends.get_backend("numpy", "cpu")
    assert bk is backends.get_backend("numpy")
    assert bk.xp is np and bk.name == "numpy" and bk.device == "cpu"
    a = np.arange(6.0).reshape(2, 3)
    assert bk.asarray(a) is a and bk.to_numpy(a) is a


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_backend_params_default_to_numpy_cpu(algo):
    a = make_algorithm(algo, ALGOS[algo])
    assert (a.backend, a.device) == ("numpy", "cpu")
    from streamlearn.algorithms._common import NUMPY_BACKEND, backend_of
    assert backend_of(a) is NUMPY_BACKEND


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("params, word", [
    ({"backend": "tensorflow"}, "backend must be one of"),
    ({"backend": "numpy", "device": "cuda"}, "CPU only"),
    ({"device": "tpu"}, "device must be"),
    ({"backend": "torch", "device": "cuda:x"}, "device must be"),
])
def test_bad_backend_params_are_param_errors(algo, params, word):
    with pytest.raises(ParamError, match=word) as exc:
        make_algorithm(algo, {**ALGOS[algo], **params})
    assert algo in str(exc.value)


def _missing(mod: str) -> bool:
    return importlib.util.find_spec(mod) is None


@pytest.mark.skipif(not _missing("torch"), reason="torch is installed here")
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_uninstalled_torch_is_a_clear_param_error(algo):
    with pytest.raises(ParamError, match=r"not installed.*streamlearn\[torch\]"):
        make_algorithm(algo, {**ALGOS[algo], "backend": "torch"})


@pytest.mark.skipif(not _missing("mxnet"), reason="mxnet is installed here")
def test_uninstalled_mxnet_is_a_clear_param_error():
    with pytest.raises(ParamError, match=r"not installed.*numpy < 1.24"):
        make_algorithm("linear_learner", {"n_features": 3, "backend": "mxnet"})


@pytest.mark.skipif(_missing("torch"), reason="torch is not installed")
def test_cuda_without_cuda_is_a_clear_param_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ParamError, match="CUDA device"):
        make_algorithm("kmeans", {"n_features": 3, "k": 2, "backend": "torch", "device": "cuda"})


def test_the_cli_reports_a_backend_error_at_job_creation():
    """What ``job create --param backend=...`` calls (make_algorithm) fails before any worker runs."""
    from streamlearn.algorithms import algorithm_class
    with pytest.raises(ParamError):
        algorithm_class("linear_learner").from_params({"n_features": "3", "backend": "cupy"})


def test_numpy_jobs_never_import_torch_or_mxnet():
    code = ("import sys; from streamlearn import datasets as D; from streamlearn.algorithms import make_algorithm;"
            "from streamlearn.runtime.local import fit_local;"
            "X, y = D.dense_classification(600, d=4, seed=0);"
            "fit_local(make_algorithm('linear_learner', {'n_features': 4, 'num_models': 2}), D.batches(X, y, 100));"
            "fit_local(make_algorithm('kmeans', {'n_features': 4, 'k': 2}), D.batches(X, None, 100));"
            "bad = [m for m in ('torch', 'mxnet') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpy_backend_sparse_ops_match_definitions():
    bk = backends.get_backend("numpy")
    rng = np.random.default_rng(0)
    indptr = np.array([0, 2, 2, 5])
    cols = np.array([0, 3, 1, 3, 3])
    data = rng.normal(size=5).astype(np.float32)
    A = bk.csr(indptr, cols, data, 4)
    dense = np.zeros((3, 4))
    np.add.at(dense, (np.repeat(np.arange(3), np.diff(indptr)), cols), data.astype(np.float64))
    B = rng.normal(size=(4, 2))
    np.testing.assert_allclose(bk.spmm(A, B), dense @ B)
    np.testing.assert_allclose(bk.spmm(A, B[:, 0]), dense @ B[:, 0])
    R = rng.normal(size=(3, 2))
    np.testing.assert_allclose(bk.group_sum(A, A.data[:, None] * R[A.rows]), dense.T @ R)
    V = rng.normal(size=(5, 2))  # one row per stored value
    np.testing.assert_allclose(bk.row_sum(A, V), [V[0] + V[1], [0.0, 0.0], V[2] + V[3] + V[4]])


@pytest.mark.parametrize("name", ["ll_dense", "ll_sparse", "fm", "kmeans"])
def test_explicit_numpy_equals_default(name):
    """``backend=numpy`` given explicitly is the default path, bit for bit."""
    algo_name, params, X, y, bs, _ = case(name)
    m1 = fit_local(make_algorithm(algo_name, params), D.batches(X, y, bs))
    m2 = fit_local(make_algorithm(algo_name, {**params, "backend": "numpy", "device": "cpu"}), D.batches(X, y, bs))
    for k, v in m1.to_arrays()[0].items():
        np.testing.assert_array_equal(m2.to_arrays()[0][k], v)


# -- equivalence on torch CPU (where torch is installed) -----------------------------------------
@pytest.mark.skipif(_missing("torch"), reason="torch is not installed (tests/gpu runs these on the GPU machine)")
@pytest.mark.parametrize("name", CASES)
def test_torch_cpu_gives_the_numpy_model(name):
    assert_same_model(name, fit_case(name), fit_case(name, "torch", "cpu"))


@pytest.mark.parametrize("lookup_max", [None, 0])
def test_column_index_matches_unique_across_batches(monkeypatch, lookup_max):
    """ColumnIndex keeps one lookup table across batches and never clears it: every batch
    (fewer, more, other or no columns than the last) must still map like ``np.unique``;
    ``lookup_max=0`` takes the fallback for feature counts beyond the table's limit."""
    from streamlearn.algorithms import _common
    from streamlearn.batch import SparseRows

    if lookup_max is not None:
        monkeypatch.setattr(_common, "LOOKUP_MAX_FEATURES", lookup_max)
    index = _common.ColumnIndex()
    rng = np.random.default_rng(3)
    for n_features, nnz in [(50, 40), (50, 3), (1000, 300), (50, 0), (20, 20), (1 << 20, 500)]:
        cols = rng.integers(0, n_features, nnz)
        X = SparseRows(np.array([0, nnz // 2, nnz]), cols, np.ones(nnz, np.float32), n_features)
        distinct, local = index(X)
        np.testing.assert_array_equal(distinct, np.unique(cols))
        np.testing.assert_array_equal(distinct[local], cols)
        assert local.dtype == np.int64
