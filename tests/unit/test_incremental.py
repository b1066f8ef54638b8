"""Incremental training (``job create --from-snapshot``) in-process: a snapshot carries the
training state, and continuing from it on B after training on A equals training on A∪B
(exact algorithms: the same state; SGD learners: at least as good as the A-only model and
within 0.003 accuracy of one pass over A∪B). The same ``initialize_from`` path a job runs
(``streamlearn.runtime.local.continue_local``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamlearn import datasets as D
from streamlearn.algorithms import ParamError, make_algorithm
from streamlearn.algorithms.base import training_state
from streamlearn.batch import Batch
from streamlearn.runtime.local import continue_local, fit_local
from streamlearn.snapshots.format import decode_snapshot, encode_snapshot, load_model
from streamlearn.statestore.local import LocalState

GOLDEN = Path(__file__).parent / "golden"


def _fit(name: str, params: dict, batches: list[Batch]):
    state = LocalState()
    algo = make_algorithm(name, params)
    algo.initialize(state)
    state.commit()
    return fit_local(algo, batches, state=state), state


def _published(model, state) -> "object":
    """The snapshot a job publishes (model + training state), through the wire format."""
    return decode_snapshot(encode_snapshot(model, {"job": "parent"}, state=training_state(state), key=None))


def _continued(name: str, params: dict, snapshot, batches: list[Batch]):
    state = LocalState()
    return continue_local(make_algorithm(name, params), snapshot, batches, state=state), state


EXACT = {
    "counter": ({"dim": 4}, lambda: list(D.batches(np.random.default_rng(1).integers(-5, 6, (4000, 4))
                                                    .astype(np.float32), None, 250))),
    "pca": ({"n_features": 12, "n_components": 3, "mode": "exact"},
            lambda: list(D.batches(np.round(D.low_rank(4000, d=12, rank=3, seed=2) * 8), None, 250))),
    "kmeans": ({"n_features": 5, "k": 6, "k_max": 8, "n_init": 3},
               lambda: list(D.batches(D.clustered(6000, d=5, n_clusters=6, seed=3), None, 500))),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_algorithms_continue_to_the_state_of_one_run_over_a_and_b(name):
    params, data = EXACT[name]
    batches = data()
    a, b = batches[: len(batches) // 2], batches[len(batches) // 2:]
    whole_model, whole = _fit(name, params, batches)
    parent_model, parent_state = _fit(name, params, a)
    continued_model, continued = _continued(name, params, _published(parent_model, parent_state), b)
    one, two = training_state(whole), training_state(continued)
    assert sorted(one) == sorted(two)
    for key in one:
        if name == "counter":  # integer-valued sums in float64: exact whatever the grouping
            np.testing.assert_array_equal(one[key], two[key], err_msg=key)
        else:
            np.testing.assert_allclose(one[key], two[key], rtol=1e-9, atol=1e-9, err_msg=key)
    for arr_one, arr_two in zip(whole_model.to_arrays()[0].values(), continued_model.to_arrays()[0].values()):
        np.testing.assert_allclose(arr_one, arr_two, rtol=1e-7, atol=1e-9)


def _accuracy(model, test: Batch) -> float:
    return float(model.score(test, "accuracy"))


SGD = {
    "linear_learner": lambda: (D.dense_classification(30000, d=20, seed=11), {"n_features": 20, "num_models": 8,
                                                                              "mini_batch_size": 200}),
    "factorization_machines": lambda: (D.interaction_data(30000, seed=12), None),
}


@pytest.mark.parametrize("name", sorted(SGD))
def test_sgd_learners_continue_at_least_as_well_as_the_parent_and_near_one_pass(name):
    (X, y), params = SGD[name]()
    params = params or {"n_features": X.n_features, "num_factors": 4}
    train = list(D.batches(X, y, 200, stop=24000))
    test = next(D.batches(X, y, 10 ** 9, start=24000))
    a, b = train[:60], train[60:]
    parent_model, parent_state = _fit(name, params, a)
    whole_model, _ = _fit(name, params, train)
    continued_model, _ = _continued(name, params, _published(parent_model, parent_state), b)
    parent_acc, whole_acc, continued_acc = (_accuracy(m, test) for m in (parent_model, whole_model, continued_model))
    assert continued_acc >= parent_acc, (continued_acc, parent_acc)
    assert abs(continued_acc - whole_acc) <= 0.003, (continued_acc, whole_acc)


def test_packed_linear_learner_keeps_every_model_accumulator_and_statistic():
    X, y = D.dense_classification(4000, d=6, seed=5)
    params = {"n_features": 6, "num_models": 4, "mini_batch_size": 100}
    model, state = _fit("linear_learner", params, list(D.batches(X, y, 100)))
    snapshot = _published(model, state)
    assert {"w", "b", "g2_w", "g2_b", "u_w", "u_b", "feat_n", "feat_sum", "feat_sq", "val", "n"} <= set(snapshot.state)
    assert snapshot.state["w"].shape == (6, 4) and float(snapshot.state["n"]) > 0
    again = LocalState()
    make_algorithm("linear_learner", params).initialize_from(again, load_model(snapshot), snapshot.state)
    again.commit()
    for key, value in snapshot.state.items():
        np.testing.assert_array_equal(again.pull(key), value, err_msg=key)


def test_parameters_that_resize_the_state_are_refused():
    X, y = D.dense_classification(2000, d=6, seed=5)
    model, state = _fit("linear_learner", {"n_features": 6, "num_models": 4}, list(D.batches(X, y, 100)))
    with pytest.raises(ParamError, match="state 'w' has shape"):
        make_algorithm("linear_learner", {"n_features": 6, "num_models": 8}).initialize_from(
            LocalState(), model, _published(model, state).state)


EXPECTED = json.loads((GOLDEN / "v1_expected.json").read_text())


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"median"}))
def test_a_format_1_snapshot_has_no_state_to_continue_from(name):
    snapshot = decode_snapshot((GOLDEN / f"{name}.v1.snapshot").read_bytes(), key=None)
    algo = make_algorithm(name, snapshot.metadata["params"])
    with pytest.raises(ParamError, match="carries no training state"):
        algo.check_continuable(load_model(snapshot), snapshot.state)


def test_a_format_1_median_snapshot_still_continues_from_its_model():
    snapshot = decode_snapshot((GOLDEN / "median.v1.snapshot").read_bytes(), key=None)
    parent = load_model(snapshot)
    model = continue_local(make_algorithm("median", snapshot.metadata["params"]), snapshot,
                           [Batch(np.full((50, 1), 10.0, dtype=np.float32))])
    assert model.n == parent.n + 50 and model.median > parent.median


def test_a_state_that_does_not_fit_beside_the_model_is_left_out_of_the_snapshot(monkeypatch):
    from streamlearn.runtime.jobs import JobSpec
    from streamlearn.runtime import finalize

    model, state = _fit("counter", {"dim": 4}, EXACT["counter"][1]()[:2])
    spec = JobSpec(name="j", algorithm="counter", topic="t")
    assert sorted(finalize._kept_state(spec, state, model)) == ["n", "sum", "xtx"]
    # counter: model arrays 160 bytes, state 168 bytes
    monkeypatch.setattr(finalize, "MAX_SNAPSHOT_BYTES", finalize.METADATA_ROOM_BYTES + 300)
    assert finalize._kept_state(spec, state, model) is None


def test_a_state_over_one_message_is_kept_in_the_snapshot():
    """Model and state over one snapshot message (64 MiB) keep the state: a snapshot that
    large is stored and published in parts, so the job can still be continued from it."""
    from streamlearn.runtime.jobs import JobSpec
    from streamlearn.runtime import finalize

    dim = 2100  # counter: X'X in the model and in the state, 35 MB each
    model, state = _fit("counter", {"dim": dim}, [Batch(np.ones((2, dim), dtype=np.float32))])
    kept = finalize._kept_state(JobSpec(name="j", algorithm="counter", topic="t"), state, model)
    assert kept is not None and kept["xtx"].nbytes + model.to_arrays()[0]["xtx"].nbytes > 64 << 20
    assert kept["n"] == 2


def test_factorization_machines_keep_their_accumulators_not_a_second_copy_of_the_model():
    """An async FM snapshot keeps ``wv``'s accumulator columns, not its parameter columns (the
    model's ``w`` and ``v``): half the bytes beside the model, and continuing from it gives
    the model continuing from the whole state gives, bit for bit. Sync keeps ``wv`` whole."""
    from streamlearn.algorithms.factorization_machines import ACCUMULATORS

    nf = 2 ** 12
    X, y = D.sparse_classification(3000, n_features=nf, seed=13)
    batches = list(D.batches(X, y, 250))
    params = {"n_features": nf, "num_factors": 4}
    model, state = _fit("factorization_machines", params, batches[:6])
    whole = training_state(state)
    kept = make_algorithm("factorization_machines", params).kept_state(state, model)
    assert "wv" not in kept and kept[ACCUMULATORS].shape == (nf, 5)
    assert sum(a.nbytes for a in kept.values()) < 0.6 * sum(a.nbytes for a in whole.values())
    snapshots = [decode_snapshot(encode_snapshot(model, {"job": "parent"}, state=s, key=None)) for s in (kept, whole)]
    (from_kept, kept_state), (from_whole, whole_state) = (
        _continued("factorization_machines", params, s, batches[6:]) for s in snapshots)
    np.testing.assert_array_equal(kept_state.pull("wv"), whole_state.pull("wv"))
    np.testing.assert_array_equal(from_kept.v, from_whole.v)
    sync = {**params, "aggregation": "sync"}
    model, state = _fit("factorization_machines", sync, batches[:2])
    assert "wv" in make_algorithm("factorization_machines", sync).kept_state(state, model)
