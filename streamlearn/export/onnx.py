"""A model as an ONNX graph whose outputs equal its predictions (``streamlearn export``).

Built with the ``onnx`` package's helper API, opset 17, computed in float64 as the models
compute (the input is float32, as :func:`~streamlearn.batch.as_features` makes it, and is
cast once). Outputs are named as ``Model.predict_records`` names its fields:

==========================  ======================================================
linear_learner              ``prediction`` (the class in the user's coding, or the
                            value), ``score`` (binary: P(classes[1]); multiclass: the
                            predicted class's probability), ``scores`` (multiclass, N x C)
factorization_machines      ``prediction``, ``score`` (binary classifier)
kmeans                      ``prediction`` (nearest centre), ``distance``
pca                         ``prediction`` (the projection, N x k)
ntm                         ``prediction`` (the dominant topic), ``topic_mixture``
                            (N x K: softmax of the encoder's posterior mean; a
                            document's word counts in, N x vocabulary)
==========================  ======================================================

The linear learner's normalization is already folded into its weights at finalize, so the
graph is one affine map. Input: ``X`` (N x d, float32) by default; with ``sparse=True``
(linear learner, factorization machines, the 2**20-feature case, NTM) two (N x K) inputs,
``indices`` (int64) and ``values`` (float32), each row's non-zeros padded with value 0 (an
index with value 0 adds nothing), since onnxruntime has no sparse input for these ops.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamlearn.algorithms._common import model_coding
from streamlearn.algorithms.base import Model
from streamlearn.batch import as_features
from streamlearn.errors import UserError
from streamlearn.runtime.predict import load_job_model
from streamlearn.snapshots.store import ModelStore

__all__ = ["OPSET", "ExportError", "to_onnx", "export_job", "sparse_inputs"]

OPSET = 17


class ExportError(UserError):
    """A model the export cannot write (an algorithm without an ONNX graph, sparse input for a dense-only model)."""


class _Graph:
    """A tiny graph builder: constants, nodes with fresh output names."""

    def __init__(self):
        from onnx import TensorProto, helper

        self.helper, self.T = helper, TensorProto
        self.nodes: list = []
        self.initializers: list = []
        self._n = 0

    def _name(self, op: str) -> str:
        self._n += 1
        return f"{op.lower()}_{self._n}"

    def const(self, value: Any, dtype=np.float64) -> str:
        from onnx import numpy_helper

        name = self._name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        out = out or self._name(op)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def sum_axis(self, x: str, axis: int, keepdims: int = 0, out: str | None = None) -> str:
        return self.op("ReduceSum", x, self.const([axis], np.int64), keepdims=keepdims, out=out)

    def flat(self, x: str, out: str | None = None) -> str:
        return self.op("Reshape", x, self.const([-1], np.int64), out=out)

    def model(self, inputs: list, outputs: list, doc: str, metadata: dict[str, str]):
        from onnx import checker, helper

        graph = helper.make_graph(self.nodes, "streamlearn", inputs, outputs, self.initializers, doc_string=doc)
        onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                       producer_name="streamlearn")
        helper.set_model_props(onnx_model, metadata)
        checker.check_model(onnx_model)
        return onnx_model


def _rows(g: _Graph, table: np.ndarray, sparse: bool, source: str | None = None) -> str:
    """``X @ table`` as a graph: dense MatMul, or per row sum_j values_j * table[indices_j].
    ``source``: an elementwise function of the input (zero at zero) to use instead of it."""
    if not sparse:
        return g.op("MatMul", source or "Xd", g.const(table))
    gathered = g.op("Gather", g.const(table), "indices")  # (N, K) + table.shape[1:]
    values = source or "vals_d"
    weights = values if table.ndim == 1 else g.op("Unsqueeze", values, g.const([2], np.int64))
    return g.sum_axis(g.op("Mul", gathered, weights), 1)


def _classes(g: _Graph, coding) -> tuple[str, int]:
    values = np.asarray(coding.classes, dtype=np.float64)
    if np.all(values == np.floor(values)):
        return g.const(values.astype(np.int64), np.int64), g.T.INT64
    return g.const(values), g.T.DOUBLE


def _binary(g: _Graph, z: str, coding) -> list[tuple[str, int, list]]:
    """``prediction`` = classes[z > 0] and ``score`` = sigmoid(z) (clipped as the models clip)."""
    classes, kind = _classes(g, coding)
    g.op("Sigmoid", g.op("Clip", z, g.const(-35.0), g.const(35.0)), out="score")
    g.op("Gather", classes, g.op("Cast", g.op("Greater", z, g.const(0.0)), to=g.T.INT64), out="prediction")
    return [("prediction", kind, ["N"]), ("score", g.T.DOUBLE, ["N"])]


def _linear(g: _Graph, model, sparse: bool) -> list:
    Z = g.op("Add", _rows(g, model.weights, sparse), g.const(model.bias))
    pt = model.predictor_type
    if pt == "regressor":
        g.flat(Z, out="prediction")
        return [("prediction", g.T.DOUBLE, ["N"])]
    if pt == "binary_classifier":
        return _binary(g, g.flat(Z), model.coding)
    classes, kind = _classes(g, model.coding)
    g.op("Softmax", Z, axis=1, out="scores")
    g.op("ReduceMax", "scores", axes=[1], keepdims=0, out="score")
    g.op("Gather", classes, g.op("ArgMax", Z, axis=1, keepdims=0), out="prediction")
    return [("prediction", kind, ["N"]), ("score", g.T.DOUBLE, ["N"]),
            ("scores", g.T.DOUBLE, ["N", int(model.weights.shape[1])])]


def _fm(g: _Graph, model, sparse: bool) -> list:
    w = np.asarray(model.w, np.float64)
    V = np.asarray(model.v, np.float64)
    linear = _rows(g, w, sparse)
    S = _rows(g, V, sparse)  # (N, k): sum_j x_j v_j
    if sparse:
        sq = g.sum_axis(g.op("Mul", g.op("Gather", g.const((V * V).sum(1)), "indices"),
                             g.op("Mul", "vals_d", "vals_d")), 1)
    else:
        sq = g.op("MatMul", g.op("Mul", "Xd", "Xd"), g.const((V * V).sum(1)))
    pair = g.op("Mul", g.const(0.5), g.op("Sub", g.sum_axis(g.op("Mul", S, S), 1), sq))
    z = g.op("Add", g.op("Add", g.const(model.w0), linear), pair)
    attrs = model.attrs
    if attrs["predictor_type"] == "regressor":
        g.op("Add", g.op("Mul", z, g.const(attrs["label_std"])), g.const(attrs["label_mean"]), out="prediction")
        return [("prediction", g.T.DOUBLE, ["N"])]

    return _binary(g, z, model_coding(attrs))


def _kmeans(g: _Graph, model, sparse: bool) -> list:
    C = np.asarray(model.centers, np.float64)
    # |x|^2 - 2 x.c + |c|^2, as the model's nearest-centre search computes it
    d2 = g.op("Add", g.op("Add", g.sum_axis(g.op("Mul", "Xd", "Xd"), 1, keepdims=1),
                          g.op("MatMul", "Xd", g.const(-2.0 * C.T))), g.const((C * C).sum(1)))
    g.op("ArgMin", d2, axis=1, keepdims=0, out="prediction")
    g.op("Sqrt", g.op("Max", g.op("ReduceMin", d2, axes=[1], keepdims=0), g.const(0.0)), out="distance")
    return [("prediction", g.T.INT64, ["N"]), ("distance", g.T.DOUBLE, ["N"])]


def _pca(g: _Graph, model, sparse: bool) -> list:
    g.op("MatMul", g.op("Sub", "Xd", g.const(model.mean)), g.const(np.asarray(model.components, np.float64).T),
         out="prediction")
    return [("prediction", g.T.DOUBLE, ["N", int(model.components.shape[0])])]


def _activation(g: _Graph, name: str, x: str) -> str:
    if name == "softplus":  # max(x, 0) + log(1 + exp(-|x|)) as np.logaddexp(0, x): onnxruntime has no double Softplus
        tail = g.op("Log", g.op("Add", g.const(1.0), g.op("Exp", g.op("Neg", g.op("Abs", x)))))
        return g.op("Add", g.op("Relu", x), tail)
    return g.op({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[name], x)


def _ntm(g: _Graph, model, sparse: bool) -> list:
    """The encoder's mean: log(1 + counts) -> MLP -> mu; the mixture is softmax(mu)."""
    a = {name: np.asarray(value, np.float64) for name, value in model.arrays.items()}
    act = model.attrs["activation"]
    logged = g.op("Log", g.op("Add", "vals_d" if sparse else "Xd", g.const(1.0)))
    h = _activation(g, act, g.op("Add", _rows(g, a["enc_W0"], sparse, source=logged), g.const(a["enc_b0"])))
    for i in range(1, len(model.attrs["encoder_layers"])):
        h = _activation(g, act, g.op("Add", g.op("MatMul", h, g.const(a[f"enc_W{i}"])), g.const(a[f"enc_b{i}"])))
    mu = g.op("Add", g.op("MatMul", h, g.const(a["mu_W"])), g.const(a["mu_b"]))
    g.op("Softmax", mu, axis=1, out="topic_mixture")
    g.op("ArgMax", mu, axis=1, keepdims=0, out="prediction")
    return [("prediction", g.T.INT64, ["N"]), ("topic_mixture", g.T.DOUBLE, ["N", model.num_topics])]


_BUILDERS = {"linear_learner": (_linear, True), "factorization_machines": (_fm, True), "kmeans": (_kmeans, False),
             "pca": (_pca, False), "ntm": (_ntm, True)}


def _width(model: Model) -> int:
    return int(model.vocab_size if model.algorithm == "ntm" else model.attrs["n_features"])


def to_onnx(model: Model, *, sparse: bool = False, metadata: dict[str, Any] | None = None):
    """The ``onnx.ModelProto`` of ``model`` (checked with ``onnx.checker``)."""
    entry = _BUILDERS.get(model.algorithm)
    if entry is None:
        raise ExportError(f"{model.algorithm} models have no ONNX export (exportable: {', '.join(_BUILDERS)})")
    build, takes_sparse = entry
    if sparse and not takes_sparse:
        raise ExportError(f"{model.algorithm} models take dense input only (drop --sparse-input)")
    g = _Graph()
    h, T = g.helper, g.T
    if sparse:
        inputs = [h.make_tensor_value_info("indices", T.INT64, ["N", "K"]),
                  h.make_tensor_value_info("values", T.FLOAT, ["N", "K"])]
        g.op("Cast", "values", to=T.DOUBLE, out="vals_d")
    else:
        inputs = [h.make_tensor_value_info("X", T.FLOAT, ["N", _width(model)])]
        g.op("Cast", "X", to=T.DOUBLE, out="Xd")
    outputs = [h.make_tensor_value_info(name, kind, shape) for name, kind, shape in build(g, model, sparse)]
    props = {"algorithm": model.algorithm, "n_features": str(_width(model)), "input": "sparse" if sparse else "dense"}
    props.update({k: str(v) for k, v in (metadata or {}).items() if k in ("job", "version", "created_at")})
    return g.model(inputs, outputs, f"streamlearn {model.algorithm} model", props)


def sparse_inputs(X) -> dict[str, np.ndarray]:
    """The ``indices`` / ``values`` inputs of a sparse-input graph for CSR rows ``X``
    (:class:`~streamlearn.batch.SparseRows` or scipy sparse), padded to the longest row."""

    rows = as_features(X)
    counts = np.diff(rows.indptr)
    K = max(int(counts.max()) if len(counts) else 0, 1)
    indices = np.zeros((len(counts), K), np.int64)
    values = np.zeros((len(counts), K), np.float32)
    slot = np.arange(len(rows.indices)) - np.repeat(rows.indptr[:-1], counts)
    indices[rows.row_ids(), slot] = rows.indices
    values[rows.row_ids(), slot] = rows.values
    return {"indices": indices, "values": values}


def export_job(redis_client: Any, job: str, output: Path, *, version: int | None = None, sparse: bool = False) -> Path:
    """Write ``job``'s newest (or given) model to ``output`` as ONNX; returns the path."""
    import onnx


    model = load_job_model(redis_client, job, version)
    metadata = ModelStore(redis_client).metadata(job, version)
    onnx.save(to_onnx(model, sparse=sparse, metadata=metadata), str(output))
    return Path(output)
