"""ONNX graphs of in-process models (fit_local) against the models' own predictions, run by onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

import streamlearn as sl
from streamlearn import datasets as D
from streamlearn.export.onnx import ExportError, sparse_inputs, to_onnx

ort = pytest.importorskip("onnxruntime")  # a test extra: .ci/run installs it


def _run(model_proto, feeds: dict) -> dict:
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _batches(X, y=None, rows=500):
    return [sl.Batch.of(X[i:i + rows], None if y is None else y[i:i + rows]) for i in range(0, len(X), rows)]


def _field(records, name):
    return np.asarray([r[name] for r in records], np.float64)


X, Y = D.dense_classification(2000, d=8, seed=3)


@pytest.mark.parametrize("predictor_type, labels, extra", [
    ("binary_classifier", Y * 2 - 1, {"classes": [-1, 1]}),
    ("multiclass_classifier", (X[:, 0] > 0) + 2.0 * (X[:, 1] > 0), {"num_classes": 4}),
    ("regressor", 3 * X[:, 0] - X[:, 2] + 1, {}),
])
def test_linear_learner(predictor_type, labels, extra):
    model = sl.fit_local(sl.LinearLearner(n_features=8, predictor_type=predictor_type, **extra), _batches(X, labels))
    records = model.predict_records(X)
    out = _run(to_onnx(model), {"X": X})
    np.testing.assert_allclose(out["prediction"], model.evaluate(X), rtol=0, atol=1e-5)
    if predictor_type != "regressor":
        np.testing.assert_array_equal(out["prediction"], model.evaluate(X))  # classes in the user's coding
        np.testing.assert_allclose(out["score"], _field(records, "score"), atol=1e-5)
    if predictor_type == "multiclass_classifier":
        np.testing.assert_allclose(out["scores"], np.asarray([r["scores"] for r in records]), atol=1e-5)


def test_kmeans_and_pca():
    km = sl.fit_local(sl.KMeans(n_features=8, k=5), _batches(X))
    out = _run(to_onnx(km), {"X": X})
    np.testing.assert_array_equal(out["prediction"], km.evaluate(X))
    np.testing.assert_allclose(out["distance"], _field(km.predict_records(X), "distance"), atol=1e-5)
    pca = sl.fit_local(sl.PCA(n_features=8, n_components=3), _batches(X))
    np.testing.assert_allclose(_run(to_onnx(pca), {"X": X})["prediction"], pca.evaluate(X), atol=1e-5)
    with pytest.raises(ExportError, match="dense input only"):
        to_onnx(pca, sparse=True)


@pytest.mark.parametrize("predictor_type", ["binary_classifier", "regressor"])
def test_factorization_machines_dense_and_sparse_inputs(predictor_type):
    Xs, ys = D.interaction_data(3000, seed=8)
    if predictor_type == "regressor":
        ys = ys * 2.5 + 0.5
    fm = sl.fit_local(sl.FactorizationMachines(n_features=Xs.n_features, num_factors=4,
                                               predictor_type=predictor_type), _batches_sparse(Xs, ys))
    want = fm.evaluate(sl.Batch(Xs))
    for out in (_run(to_onnx(fm, sparse=True), sparse_inputs(Xs)), _run(to_onnx(fm), {"X": Xs.to_dense()})):
        np.testing.assert_allclose(out["prediction"], want, atol=1e-5)
        if predictor_type == "binary_classifier":
            np.testing.assert_array_equal(out["prediction"], want)
            np.testing.assert_allclose(out["score"], _field(fm.predict_records(sl.Batch(Xs)), "score"), atol=1e-5)


def _batches_sparse(Xs, ys, rows=500):
    return [sl.Batch(Xs.take(np.arange(i, min(i + rows, len(Xs)))), ys[i:i + rows]) for i in range(0, len(Xs), rows)]


def test_sparse_inputs_pad_with_zero_values():
    rows = sl.Batch.of(np.array([[0, 2.0, 0, 0], [0, 0, 0, 0], [1.0, 0, 0, 3.0]])).X
    import scipy.sparse as sp

    feeds = sparse_inputs(sp.csr_matrix(rows))
    np.testing.assert_array_equal(feeds["indices"], [[1, 0], [0, 0], [0, 3]])
    np.testing.assert_array_equal(feeds["values"], [[2, 0], [0, 0], [1, 3]])


def test_an_algorithm_without_a_graph_is_a_user_error():
    model = sl.fit_local(sl.Median(), [sl.Batch.of(np.arange(10.0)[:, None])])
    with pytest.raises(sl.UserError, match="no ONNX export"):
        to_onnx(model)


@pytest.mark.parametrize("activation, layers", [("softplus", [16, 8]), ("relu", [16]), ("tanh", [8]),
                                                ("sigmoid", [8])])
def test_ntm_topic_mixture_dense_and_sparse_inputs(activation, layers):
    """An NTM with random weights (its encoder is all the graph needs: no training, no torch)."""
    from streamlearn.algorithms.ntm import NTMModel, layout

    V, K = 60, 5
    rng = np.random.default_rng(4)
    arrays = {name: rng.normal(0, 0.5, shape).astype(np.float32) for name, shape in layout(V, layers, K)}
    model = NTMModel(arrays, {"num_topics": K, "encoder_layers": layers, "activation": activation})
    docs = D.topic_documents(200, vocab_size=V, num_topics=K, length=30, seed=5)
    want = model.evaluate(sl.Batch(docs))
    dominant = [r["prediction"] for r in model.predict_records(sl.Batch(docs))]
    for out in (_run(to_onnx(model, sparse=True), sparse_inputs(docs)), _run(to_onnx(model), {"X": docs.to_dense()})):
        np.testing.assert_allclose(out["topic_mixture"], want, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(out["prediction"], dominant)
