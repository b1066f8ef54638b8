"""The data contract: label codings (mapping, dead letters with reasons, predictions in the
user's coding) and the inference of "auto" parameters from a topic's records."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn import datasets as D
from streamlearn.algorithms import make_algorithm
from streamlearn.algorithms.base import ParamError
from streamlearn.algorithms.factorization_machines import FactorizationMachines
from streamlearn.algorithms.linear_learner import LinearLearner
from streamlearn.runtime.contract import TopicSample, default_epochs, default_step_rows, infer_params
from streamlearn.runtime.isolate import apply_steps
from streamlearn.labels import LabelCoding, LabelError
from streamlearn.runtime.local import fit_local
from streamlearn.snapshots.format import decode_snapshot, encode_snapshot, load_model
from streamlearn.statestore.local import LocalState
from streamlearn.wire.decode import decode_messages
from streamlearn.wire.serde import encode_training_batch, encode_training_record


def _two_blobs(n=600, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y01 = (rng.random(n) < 0.5).astype(float)
    X = (rng.normal(size=(n, d)) + 2.0 * (2 * y01[:, None] - 1)).astype(np.float32)
    return X, y01


@pytest.mark.parametrize("coding", [(0, 1), (1, 2), (-1, 1), (5, 3)])
def test_binary_codings_train_and_predict_in_the_users_coding(coding):
    X, y01 = _two_blobs()
    y = np.where(y01 > 0, coding[1], coding[0]).astype(float)
    for algo in (LinearLearner(n_features=4, classes=list(coding), num_models=4),
                 FactorizationMachines(n_features=4, classes=list(coding), num_factors=2)):
        model = fit_local(algo, D.batches(X, y, 100))
        pred = model.evaluate(D.to_batch(X))
        assert set(np.unique(pred).tolist()) == set(coding)
        assert model.score(D.to_batch(X, y), "accuracy") > 0.95
        assert model.score(D.to_batch(X, y), "auc") > 0.95  # label-aware metrics map the user's labels
        assert model.predict_records(D.to_batch(X[:1]))[0]["prediction"] in coding
        again = load_model(decode_snapshot(encode_snapshot(model, {"job": "j"}, key=None)))
        np.testing.assert_array_equal(again.evaluate(D.to_batch(X)), pred)  # the mapping is in the snapshot


def test_multiclass_labels_1_to_10_mapped():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(10, 6)) * 4
    k = rng.integers(0, 10, 3000)
    X = (centers[k] + rng.normal(size=(3000, 6))).astype(np.float32)
    y = (k + 1).astype(float)  # digits coded 1..10: crashed _dloss with IndexError before the mapping
    algo = LinearLearner(n_features=6, predictor_type="multiclass_classifier", classes=list(range(1, 11)),
                         num_models=4)
    model = fit_local(algo, D.batches(X, y, 200))
    pred = model.evaluate(D.to_batch(X))
    assert pred.min() >= 1 and pred.max() == 10
    assert model.score(D.to_batch(X, y), "accuracy") > 0.9
    rec = model.predict_records(D.to_batch(X[:3]))
    assert [r["prediction"] for r in rec] == pred[:3].tolist() and len(rec[0]["scores"]) == 10
    with pytest.raises(LabelError, match="label 0 is not one of the classes"):
        algo.update(None, D.to_batch(X[:2], np.array([0.0, 1.0])))


def test_label_coding_rules_and_reasons():
    binary = LabelCoding.identity(2)
    np.testing.assert_array_equal(binary.violations(np.array([0, 1, 2, -1, np.nan, 0.5])),
                                  [False, False, True, True, False, True])
    multi = LabelCoding.identity(10)
    np.testing.assert_array_equal(multi.violations(np.array([0, 9, 10, -1, 2.5])), [False, False, True, True, True])
    assert multi.reason(2.5) == ("label 2.5 is not a class: labels must be integers in [0, 10) or mapped with "
                                 "--param classes=...")
    mapped = LabelCoding.of([2, 1])  # declared order: class 0 is the label 2
    np.testing.assert_array_equal(mapped.encode(np.array([1.0, 2.0, np.nan])), [1.0, 0.0, np.nan])
    np.testing.assert_array_equal(mapped.decode(np.array([0, 1])), [2, 1])
    assert mapped.first_violation(np.array([1.0, 3.0])) == "label 3 is not one of the classes [2, 1]"
    assert LabelCoding(None).violations(np.array([1e9, -3.5])).sum() == 0


def test_decode_dead_letters_labels_outside_the_coding_with_reasons():
    coding = LabelCoding.of([1, 2])
    values = [encode_training_record([0.5, 1.0], label=1.0), encode_training_record([0.5, 1.0], label=2.0),
              encode_training_record([0.5, 1.0], label=-1.0), encode_training_record([0.5, 1.0], label=2.5),
              encode_training_batch(np.ones((3, 2), np.float32), np.array([1.0, 2.0, 1.0])),
              encode_training_batch(np.ones((4, 2), np.float32), np.array([1.0, 2.0, 0.0, 1.0]))]
    res = decode_messages(values, 2, True, True, labels=coding)
    assert [(r.index, r.reason, r.n_records) for r in res.rejected] == [
        (2, "label -1 is not one of the classes [1, 2]", 1), (3, "label 2.5 is not one of the classes [1, 2]", 1)]
    # a batch message is not rejected whole for one label: its records reach the update step
    assert res.n_records == 9 and res.accepted == [0, 1, 4, 5]
    np.testing.assert_array_equal(res.batch.y, [1, 2, 1, 2, 1, 1, 2, 0, 1])
    # ... whose label encoding raises for the bad one, which the worker isolates alone
    algo = LinearLearner(n_features=2, classes=[1, 2], num_models=2)
    state = LocalState()
    algo.initialize(state)
    state.commit()
    failures = apply_steps(algo, state, list(res.steps(4)))
    assert [(f.row, f.reason) for f in failures] == [(7, "LabelError: label 0 is not one of the classes [1, 2]")]
    multi = decode_messages([encode_training_record([1.0], label=v) for v in (0.0, 9.0, 10.0, 2.5, -1.0)], 1, False,
                            True, labels=LabelCoding.identity(10))
    assert [r.index for r in multi.rejected] == [2, 3, 4] and all("not a class" in r.reason for r in multi.rejected)


def test_decode_without_a_width_takes_the_first_messages():
    values = [encode_training_batch(np.ones((3, 5), np.float32), np.zeros(3)), encode_training_record([1.0] * 4)]
    res = decode_messages(values, None, True, False)
    assert res.n_features == 5 and res.n_records == 3
    assert [r.reason for r in res.rejected] == ["dimension 4 != 5"]


def _sample(X, y, topic="t"):
    return TopicSample.of_batches(topic, D.batches(X, y, 100))


def test_infer_n_features_and_refuse_a_contradiction():
    X, y = _two_blobs(d=30)
    algo = make_algorithm("linear_learner", {})
    assert algo.unresolved() == ["n_features"]
    assert infer_params(algo, _sample(X, y, "bc"), bounded=True)["n_features"] == 30
    with pytest.raises(ParamError, match=r"n_features=29 but topic 'bc''s records have 30 features"):
        infer_params(make_algorithm("linear_learner", {"n_features": "29"}), _sample(X, y, "bc"), True)
    with pytest.raises(ParamError, match="has no records to infer it from"):
        infer_params(make_algorithm("kmeans", {}), TopicSample("empty"), True)
    mixed = TopicSample.of_batches("m", [D.to_batch(X[:5]), D.to_batch(X[:5, :3])])
    with pytest.raises(ParamError, match="differing widths"):
        infer_params(make_algorithm("pca", {"n_components": "2"}), mixed, True)
    assert infer_params(make_algorithm("pca", {"n_components": "2", "n_features": "3"}), mixed, True) == {}
    with pytest.raises(ParamError, match="in-process, pass a value"):
        fit_local(make_algorithm("kmeans", {}), [])


def test_infer_label_codings():
    X, _ = _two_blobs(n=40)
    cases = [("binary_classifier", {}, [0, 1] * 20, {"classes": [0, 1]}),
             ("binary_classifier", {}, [1, 2] * 20, {"classes": [1, 2]}),
             ("binary_classifier", {}, [1, -1] * 20, {"classes": [-1, 1]}),
             ("multiclass_classifier", {"num_classes": "10"}, list(range(1, 11)) * 4,
              {"classes": list(range(1, 11)), "num_classes": 10}),
             ("multiclass_classifier", {"num_classes": "5"}, [0, 1, 2] * 13 + [0], {"classes": [0, 1, 2, 3, 4]}),
             ("multiclass_classifier", {}, [0.5, 2, 7] * 13 + [7], {"classes": [0.5, 2, 7], "num_classes": 3})]
    for pt, extra, labels, want in cases:
        algo = make_algorithm("linear_learner", {"predictor_type": pt, **extra})
        got = infer_params(algo, _sample(X, np.array(labels, float)), bounded=False)
        assert {k: got[k] for k in want} == want, (pt, labels, got)
        resolved = make_algorithm("linear_learner", {**algo.get_params(), **got})
        assert resolved.unresolved() == [] and resolved.label_coding().classes is not None
    with pytest.raises(ParamError, match=r"take 3 value\(s\) \[0, 1, 2\].*multiclass"):
        infer_params(make_algorithm("linear_learner", {}), _sample(X, np.array([0, 1, 2] * 13 + [0.0])), True)
    with pytest.raises(ParamError, match="num_classes=9 but topic 't''s labels take 10 values"):
        infer_params(make_algorithm("linear_learner", {"predictor_type": "multiclass_classifier", "num_classes": "9"}),
                     _sample(X, np.array(list(range(1, 11)) * 4, float)), True)
    regressor = make_algorithm("linear_learner", {"predictor_type": "regressor", "n_features": "4"})
    assert infer_params(regressor, _sample(X, np.linspace(0, 1, 40)), False) == {}


def test_declared_classes_param_forms_and_checks():
    assert make_algorithm("linear_learner", {"n_features": "2", "classes": "1,2"}).classes == [1, 2]
    assert make_algorithm("linear_learner", {"n_features": "2", "classes": "[-1, 1]"}).classes == [-1, 1]
    for bad, match in [({"classes": "1,2,3"}, "binary_classifier with 2 classes"), ({"classes": "1,1"}, "distinct"),
                       ({"classes": "a,b"}, "list of distinct int or float"),
                       ({"predictor_type": "regressor", "classes": "0,1"}, "classes is for classifiers"),
                       ({"predictor_type": "multiclass_classifier", "num_classes": "3", "classes": "1,2"},
                        "with 3 classes")]:
        with pytest.raises(ParamError, match=match):
            make_algorithm("linear_learner", {"n_features": "2", **bad})


def test_step_and_epoch_defaults_scale_with_the_data():
    assert default_step_rows(455) == 64 and default_step_rows(1437) == 89 and default_step_rows(50_000) == 1000
    assert default_epochs(455) == 44 and default_epochs(353) == 50 and default_epochs(1437) == 14
    assert default_epochs(20_000) == 1 and default_epochs(10**7) == 1 and default_epochs(0) == 1
    X, y = _two_blobs(n=455)
    got = infer_params(make_algorithm("linear_learner", {}), _sample(X, y), bounded=True)
    assert got["mini_batch_size"] == 64
    assert make_algorithm("linear_learner", {"n_features": "4", **got}).step_rows == 64
    assert "mini_batch_size" not in infer_params(make_algorithm("linear_learner", {}), _sample(X, y), bounded=False)
    assert LinearLearner(n_features=4).step_rows == 1000 and FactorizationMachines(n_features=4).step_rows == 500
