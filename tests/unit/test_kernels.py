"""The compiled kernels (streamlearn.backends.kernels) give the numpy path's model.

Each case trains the same algorithm on the same float64 batches twice, once with
``STREAMLEARN_KERNELS=numpy`` and once compiled, and compares the finalized models (within 1e-10:
only the order of some sums differs) and the whole training state (relative 1e-10); the buffered state's
row gather/scatter is compared exactly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamlearn import datasets as D
from streamlearn.algorithms import checks
from streamlearn.algorithms.base import training_state
from streamlearn.algorithms.factorization_machines import FactorizationMachines
from streamlearn.algorithms.linear_learner import LinearLearner
from streamlearn.backends import kernels
from streamlearn.statestore.local import LocalState

pytestmark = pytest.mark.skipif(kernels.numba is None, reason="numba is a dependency; this is its check")


def _train(algo, batches, mode: str, monkeypatch):
    monkeypatch.setenv(kernels.ENV_KERNELS, mode)
    assert kernels.compiled() == (mode == "numba")
    model, state = checks.fit(algo, batches)
    return model, training_state(state)


def _assert_same(algo_factory, batches, monkeypatch):
    m_np, s_np = _train(algo_factory(), batches, "numpy", monkeypatch)
    m_nb, s_nb = _train(algo_factory(), batches, "numba", monkeypatch)
    a_np, attrs_np = m_np.to_arrays()
    a_nb, attrs_nb = m_nb.to_arrays()
    assert sorted(a_np) == sorted(a_nb)
    for key in a_np:
        np.testing.assert_allclose(a_nb[key], a_np[key], rtol=0, atol=1e-10, err_msg=key)
    assert sorted(s_np) == sorted(s_nb)
    for key in s_np:
        assert s_np[key].dtype == np.float64, key  # the comparison is only meaningful in float64
        # relative too: the averaging sums (u_w) scale the steps by tau^2 / 2 (values ~1e5)
        np.testing.assert_allclose(s_nb[key], s_np[key], rtol=1e-10, atol=1e-10, err_msg=f"state {key}")
    assert attrs_np.get("selected_model") == attrs_nb.get("selected_model")


def _sparse(n=1200, d=3000, seed=1, y_kind="binary"):
    X, y = D.sparse_classification(n, d, nnz=12, vocabulary=2000, seed=seed)
    if y_kind == "multiclass":
        y = (np.arange(n) % 3).astype(np.float64)
    elif y_kind == "regressor":
        y = np.random.default_rng(seed).normal(3.0, 2.0, n)
    return list(D.batches(X, y, 200)), d


@pytest.mark.parametrize("params", [
    {"predictor_type": "binary_classifier", "optimizer": "adagrad"},
    {"predictor_type": "binary_classifier", "optimizer": "sgd"},
    {"predictor_type": "regressor", "optimizer": "adagrad", "bias_l2": 0.01, "linear_l2": 0.01, "factors_l2": 0.01},
])
def test_factorization_machines_compiled_step_matches_numpy(params, monkeypatch):
    batches, d = _sparse(y_kind="regressor" if params["predictor_type"] == "regressor" else "binary")
    _assert_same(lambda: FactorizationMachines(n_features=d, num_factors=4, **params), batches, monkeypatch)


@pytest.mark.parametrize("params, y_kind", [
    ({}, "binary"),
    ({"l1": (0.0, 1e-3), "l2": (0.0, 1e-2)}, "binary"),
    ({"predictor_type": "multiclass_classifier", "num_classes": 3}, "multiclass"),
    ({"predictor_type": "regressor", "averaging": False}, "regressor"),
])
def test_sparse_linear_learner_compiled_step_matches_numpy(params, y_kind, monkeypatch):
    batches, d = _sparse(y_kind=y_kind)
    _assert_same(lambda: LinearLearner(n_features=d, num_models=6, holdout_fraction=0.1, **params), batches,
                 monkeypatch)


def test_dense_linear_learner_compiled_adagrad_matches_numpy(monkeypatch):
    X, y = D.dense_classification(2000, d=10, seed=2)
    batches = list(D.batches(X, y, 250))
    _assert_same(lambda: LinearLearner(n_features=10, num_models=4, l1=(0.0, 1e-3)), batches, monkeypatch)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_gather_and_scatter_match_numpy_exactly(dtype, monkeypatch):
    """Row pulls and pushes (duplicates included, which add up) and the commits that combine
    them into the key, through the compiled and the numpy path, leave bit-identical deltas and
    values and return bit-identical rows."""
    rng = np.random.default_rng(0)
    init = rng.normal(size=(1000, 5))
    pushes = [(np.sort(rng.choice(1000, 300, replace=False)), rng.normal(size=(300, 5))) for _ in range(3)]
    pushes.append((rng.integers(0, 1000, 400), rng.normal(size=(400, 5))))  # unsorted, with duplicates
    late = rng.normal(size=(2, 5))
    results = {}
    for mode in ("numpy", "numba"):
        monkeypatch.setenv(kernels.ENV_KERNELS, mode)
        state = LocalState()
        state.initialize("k", init, dtype=dtype, chunk_rows=64)
        state.commit()
        pulled = []
        for rows, delta in pushes:
            pulled.append(state.pull("k", rows=rows))
            state.push("k", delta, rows=rows)
        pulled.append(state.pull("k", rows=np.arange(1000)))
        state.commit()  # every chunk dirty: the whole key combined at once
        pulled.append(state.pull("k", rows=np.arange(0, 1000, 7)))
        state.push("k", late, rows=np.array([3, 900]))
        state.commit()  # two chunks: combined one by one
        pulled.append(state.pull("k", rows=np.arange(1000)))
        results[mode] = pulled
    for a, b in zip(results["numpy"], results["numba"]):
        assert a.dtype == b.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b)


def test_kernels_switch_off_by_environment_and_warm_up_in_a_fresh_process():
    code = ("import os, time; from streamlearn.backends import kernels; "
            "assert kernels.compiled(); kernels.warm_up(); "
            "os.environ['STREAMLEARN_KERNELS'] = 'numpy'; assert not kernels.compiled(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_kernels_compile_without_a_writable_cache_directory(tmp_path):
    """A read-only install with no writable home: numba refuses ``cache=True`` (no directory to
    cache in) when a kernel is defined; the kernels still load, compiled in the process. (A
    file where each cache directory would go stands for a read-only file system, for root too.)"""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "kernels_copy.py").write_text(Path(kernels.__file__).read_text())
    (tmp_path / "pkg" / "__pycache__").write_text("")  # the in-tree cache cannot be made
    (tmp_path / "home").write_text("")  # nor ~/.cache/numba under it
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(tmp_path / "pkg"), PYTHONDONTWRITEBYTECODE="1")
    code = ("import numpy as np, kernels_copy as k; assert k.compiled(); held = np.arange(6.0).reshape(3, 2); "
            "print(k.gather(held, np.array([2, 0], dtype=np.int64)).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "[[4.0, 5.0], [0.0, 1.0]]", out.stderr[-2000:]
