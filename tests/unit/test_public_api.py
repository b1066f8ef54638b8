"""The public surface without a stack: exports, version, the error hierarchy and the CLI's
exit codes, user data (numpy / pandas / scipy) into batches and models, SparseRows.dot."""
from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import streamlearn as sl
from streamlearn import cli
from streamlearn.algorithms.base import ParamError
from streamlearn.batch import Batch, DataError, SparseRows
from streamlearn.config import ConfigError
from streamlearn.runtime.jobs import JobError
from streamlearn.snapshots.format import SnapshotError
from streamlearn.snapshots.store import SnapshotNotFound
from streamlearn.statestore.base import StateError
from streamlearn.streams.files import FileFormatError
from streamlearn.streams.topics import TopicError


def test_every_exported_name_resolves():
    for name in sl.__all__:
        assert getattr(sl, name) is not None, name
    assert {"LinearLearner", "FactorizationMachines", "KMeans", "PCA", "Median", "Counter"} <= set(sl.__all__)
    assert sl.LinearLearner.name == "linear_learner" and issubclass(sl.KMeans, sl.Algorithm)
    with pytest.raises(AttributeError):
        sl.no_such_name


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    assert sl.__version__ == version("streamlearn")


def test_import_is_cheap_and_a_regular_package():
    code = "import sys, streamlearn; print(streamlearn.__file__); print('confluent_kafka' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].endswith("streamlearn/__init__.py") and out[1] == "False"


@pytest.mark.parametrize("exc", [ParamError, JobError, ConfigError, SnapshotError, SnapshotNotFound, StateError,
                                 FileFormatError, TopicError, DataError, cli.UsageError])
def test_user_errors_share_one_base(exc):
    assert issubclass(exc, sl.UserError) and issubclass(exc, sl.StreamlearnError)
    assert not issubclass(exc, sl.ServiceUnavailable)


def test_existing_bases_are_kept():
    assert issubclass(ParamError, ValueError) and issubclass(SnapshotNotFound, KeyError)
    assert issubclass(JobError, RuntimeError)


@pytest.mark.parametrize("exc, code", [(JobError("unknown job 'x'"), 2), (sl.UserError("bad"), 2),
                                       (sl.ServiceUnavailable("Kafka down"), 3), (FileNotFoundError("f"), 2)])
def test_cli_exit_codes(monkeypatch, capsys, exc, code):
    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_algorithms", fail)
    assert cli.main(["algorithms"]) == code
    err = capsys.readouterr().err
    assert err.startswith("streamlearn: error: ") and err.count("\n") == 1


def test_cli_unreachable_redis_exits_3(monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("STREAMLEARN_KAFKA", "127.0.0.1:1")
    monkeypatch.setenv("STREAMLEARN_REDIS", f"redis://127.0.0.1:{port}/0")
    assert cli.main(["job", "list"]) == 3
    assert "cannot reach Redis" in capsys.readouterr().err


def test_connect_to_an_unreachable_redis_is_service_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(sl.ServiceUnavailable, match=f"cannot reach Redis at redis://127.0.0.1:{port}/0"):
        sl.connect(kafka="127.0.0.1:1", redis=f"redis://127.0.0.1:{port}/0")


def test_an_internal_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(cli, "cmd_algorithms", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["algorithms"])


# -- user data -------------------------------------------------------------------------------
def test_batch_of_numpy_pandas_and_scipy_agree():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 3)).astype(np.float32)
    X[X < 0] = 0
    y = rng.integers(0, 2, 20).astype(np.float64)
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "label": y, "c": X[:, 2]})
    dense = Batch.of(X, y)
    from_frame = Batch.of(frame, "label")
    sparse = Batch.of(sp.csr_matrix(X), pd.Series(y))
    np.testing.assert_array_equal(from_frame.X, dense.X)
    np.testing.assert_array_equal(from_frame.y, y)
    assert isinstance(sparse.X, SparseRows) and sparse.X.n_features == 3
    np.testing.assert_array_equal(sparse.X.to_dense(), X)
    np.testing.assert_array_equal(sparse.y, y)
    assert Batch.of(np.arange(4)).X.shape == (4, 1) and Batch.of(X).y is None


@pytest.mark.parametrize("X, y, word", [(np.zeros((2, 2, 2)), None, "2-D"), ([["a", "b"]], None, "numeric"),
                                        (np.zeros((3, 2)), [1, 2], "2 labels for 3 rows"),
                                        (np.zeros((3, 2)), "label", "needs a pandas DataFrame"),
                                        (pd.DataFrame({"a": [1.0]}), "label", "label column 'label' not found")])
def test_bad_user_data_is_a_user_error(X, y, word):
    with pytest.raises(DataError, match=word):
        Batch.of(X, y)


def test_models_take_user_data_and_batches_alike():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.float64)
    model = sl.fit_local(sl.LinearLearner(n_features=4, num_models=4), [Batch.of(X[i:i + 100], y[i:i + 100])
                                                                        for i in range(0, 400, 100)])
    batch = Batch(X, y)
    frame = pd.DataFrame(X, columns=list("abcd")).assign(target=y)
    np.testing.assert_array_equal(model.predict(X), model.evaluate(batch))
    np.testing.assert_array_equal(model.evaluate(X, y), model.evaluate(batch))
    np.testing.assert_array_equal(model.predict(frame.drop(columns="target")), model.evaluate(batch))
    assert model.score(X, y, "accuracy") == model.score(batch, "accuracy") == model.score(frame, "target",
                                                                                         metric="accuracy")
    assert model.score(X, y=y) == model.score(batch)
    assert model.predict_records(X[:3]) == model.predict_records(batch.take(np.arange(3)))
    assert model.score(X, y, "accuracy") > 0.9


# -- SparseRows.dot -----------------------------------------------------------------------------
def _reference_dot(X: SparseRows, w: np.ndarray) -> np.ndarray:
    contrib = w[X.indices] * (X.values if w.ndim == 1 else X.values[:, None])
    out = np.zeros((len(X),) + w.shape[1:], dtype=np.result_type(w, X.values))
    np.add.at(out, X.row_ids(), contrib)
    return out


@pytest.mark.parametrize("shape", [(50,), (50, 7)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparse_dot_equals_the_scatter_add(shape, dtype):
    rng = np.random.default_rng(2)
    dense = rng.standard_normal((30, 50)).astype(np.float32)
    dense[rng.random((30, 50)) < 0.8] = 0
    dense[[3, 17]] = 0  # empty rows stay 0
    X = Batch.of(sp.csr_matrix(dense)).X
    w = rng.standard_normal(shape).astype(dtype)
    got, want = X.dot(w), _reference_dot(X, w)
    assert got.dtype == want.dtype and got.shape == want.shape
    if dtype is np.float64:
        np.testing.assert_array_equal(got, want)  # same additions in the same order
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float64 accumulation, then float32
    np.testing.assert_allclose(got, dense.astype(np.float64) @ w.astype(np.float64), rtol=1e-4, atol=1e-4)


def test_sparse_dot_of_an_empty_batch():
    X = SparseRows(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 5)
    assert X.dot(np.ones((5, 2))).shape == (0, 2)
