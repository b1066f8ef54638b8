"""Save the MLflow models the ``serve.*`` cases compare against (run by the MLflow venv's
Python, never imported by streamlearn: mlflow is not one of its dependencies).

    PYTHON benchmarks/mlflow_peer_models.py linear_learner WEIGHTS.npz OUT_DIR
    PYTHON benchmarks/mlflow_peer_models.py factorization_machines WEIGHTS.npz OUT_DIR

``linear_learner``: a scikit-learn ``LogisticRegression`` given the served model's weights
(``coef``, ``intercept``, ``classes``), saved with the sklearn flavor (its pyfunc answers
``predict``: the class). ``factorization_machines``: a pyfunc model holding ``w0``, ``w``,
``v`` that reads ``dataframe_records`` of ``{"indices": [...], "values": [...]}`` rows and
answers ``{"prediction", "score"}`` records, as the FM model's ``predict_records`` does.
"""
from __future__ import annotations

import sys

import mlflow.pyfunc
import numpy as np


class FactorizationMachinesPyfunc(mlflow.pyfunc.PythonModel):
    """z = w0 + x.w + 1/2 (|x V|^2 - sum_j x_j^2 |v_j|^2) over a scipy CSR matrix of the rows."""

    def load_context(self, context) -> None:
        arrays = np.load(context.artifacts["weights"])
        self.w0 = float(arrays["w0"][0])
        self.w = arrays["w"].astype(np.float64)
        self.v = arrays["v"].astype(np.float64)
        self.v2 = (self.v ** 2).sum(1)
        self.classes = arrays["classes"]

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import scipy.sparse as sp

        indices, values = list(model_input["indices"]), list(model_input["values"])
        indptr = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum([len(i) for i in indices], out=indptr[1:])
        X = sp.csr_matrix((np.concatenate(values).astype(np.float64), np.concatenate(indices).astype(np.int64), indptr),
                          shape=(len(indices), len(self.w)))
        XV = X @ self.v
        z = self.w0 + X @ self.w + 0.5 * ((XV * XV).sum(1) - X.multiply(X) @ self.v2)
        return pd.DataFrame({"prediction": self.classes[(z > 0).astype(np.int64)], "score": 1.0 / (1.0 + np.exp(-z))})


def save_linear(arrays, out: str) -> None:
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression()
    model.coef_, model.intercept_ = arrays["coef"], arrays["intercept"]
    model.classes_, model.n_features_in_ = arrays["classes"], arrays["coef"].shape[1]
    mlflow.sklearn.save_model(model, out)


def save_fm(weights_path: str, out: str) -> None:
    mlflow.pyfunc.save_model(out, python_model=FactorizationMachinesPyfunc(), artifacts={"weights": weights_path})


if __name__ == "__main__":
    kind, weights, out = sys.argv[1:4]
    if kind == "linear_learner":
        save_linear(np.load(weights), out)
    elif kind == "factorization_machines":
        save_fm(weights, out)
    else:
        raise SystemExit(f"unknown model kind {kind!r}")
