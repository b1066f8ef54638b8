"""Small bounded data trains well with the defaults (in-process, the job's epochs emulated by
repeating the batches): held-out, 80/20 split with a fixed seed, against scikit-learn's
StandardScaler + LogisticRegression / Ridge. The job-level version with 2 workers is
tests/integration/test_data_contract.py."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn import datasets as D
from streamlearn.algorithms import make_algorithm
from streamlearn.runtime.contract import TopicSample, default_epochs, infer_params
from streamlearn.runtime.local import fit_local

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.mark.parametrize("loader,predictor_type,tolerance", [
    (load_breast_cancer, "binary_classifier", 0.01),
    (load_digits, "multiclass_classifier", 0.01),
    (load_diabetes, "regressor", 0.03),
], ids=["breast_cancer", "digits", "diabetes"])
def test_defaults_match_sklearn_on_small_data(loader, predictor_type, tolerance):
    X, y = loader(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X.astype(np.float32), y.astype(np.float64), test_size=0.2, random_state=0)
    peer = LogisticRegression(max_iter=5000) if predictor_type != "regressor" else Ridge()
    ref = make_pipeline(StandardScaler(), peer).fit(Xtr, ytr).score(Xte, yte)
    # what job create does: infer the "auto" parameters from the records, size the steps
    algo = make_algorithm("linear_learner", {"predictor_type": predictor_type})
    algo = make_algorithm("linear_learner", {**algo.get_params(), **infer_params(
        algo, TopicSample.of_batches("t", [D.to_batch(Xtr, ytr)]), bounded=True)})
    steps = list(D.batches(Xtr, ytr, algo.step_rows))
    model = fit_local(algo, steps * default_epochs(len(Xtr)))
    ours = model.score(D.to_batch(Xte, yte), "r2" if predictor_type == "regressor" else "accuracy")
    print(f"{loader.__name__}: ours {ours:.4f} vs sklearn {ref:.4f} (step {algo.step_rows}, "
          f"{default_epochs(len(Xtr))} epochs)")
    assert ours >= ref - tolerance
