"""One conformance suite for every registered algorithm (River ``checks`` style).

Each algorithm gets a small fixture (parameters, a few mini-batches, a quality measure);
every check below runs against all of them: the initialize/update/finalize contract,
parameters, snapshot round trip, determinism, pause + resume, and several workers.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

from streamlearn import datasets as D
from streamlearn.algorithms import BUILTIN, Model, ParamError, algorithm_class, model_class
from streamlearn.batch import Batch
from streamlearn.statestore.local import LocalState, MemoryBackend


@dataclass
class Fixture:
    params: dict[str, Any]
    train: list[Batch]
    test: Batch
    #: quality of a model on ``test``, higher is better
    quality: Callable[[Model, Batch], float]
    #: a parameter dict that must be rejected, and a word the message must contain
    bad: tuple[dict[str, Any], str]
    #: how much worse (absolute, in quality units) a 3-worker model may be than a 1-worker one
    multi_worker_tol: float


def _split_batches(X, y, n_train, batch_size):
    train = list(D.batches(X, y, batch_size, stop=n_train))
    test = next(D.batches(X, y, 10 ** 9, start=n_train))
    return train, test


def _fixture(name: str) -> Fixture:
    if name == "median":
        x = np.random.default_rng(0).exponential(2.0, (6000, 1)).astype(np.float32)
        train, test = _split_batches(x, None, 5000, 250)
        return Fixture({"learning_rate": 1.0}, train, test, lambda m, b: -m.score(b),
                       ({"learning_rate": -1.0}, "learning_rate"), 0.3)
    if name == "linear_learner":
        X, y = D.dense_classification(24000, d=20, seed=3)
        train, test = _split_batches(X, y, 20000, 250)
        return Fixture({"n_features": 20, "num_models": 8}, train, test, lambda m, b: -m.score(b, "log_loss"),
                       ({"n_features": 20, "predictor_type": "ranker"}, "predictor_type"), 0.01)
    if name == "factorization_machines":
        X, y = D.interaction_data(22000, seed=4)
        train, test = _split_batches(X, y, 20000, 250)
        return Fixture({"n_features": X.n_features, "num_factors": 4}, train, test, lambda m, b: m.score(b, "auc"),
                       ({"n_features": 0}, "n_features"), 0.02)
    if name == "kmeans":
        X = D.clustered(8000, d=5, n_clusters=8, seed=5)
        train, test = _split_batches(X, None, 6000, 300)
        return Fixture({"n_features": 5, "k": 8, "k_max": 10}, train, test,
                       lambda m, b: -m.score(b) / _KM_SCALE, ({"n_features": 5, "k": 12, "k_max": 10}, "k_max"), 0.05)
    if name == "pca":
        X = D.low_rank(6000, d=20, rank=3, seed=6)
        train, test = _split_batches(X, None, 5000, 500)
        return Fixture({"n_features": 20, "n_components": 3}, train, test, lambda m, b: -m.score(b),
                       ({"n_features": 20, "n_components": 3, "mode": "svd"}, "mode"), 1e-3)
    if name == "counter":
        x = np.random.default_rng(1).integers(0, 10, (3000, 3)).astype(np.float32)
        train, test = _split_batches(x, None, 2500, 250)
        return Fixture({"dim": 3}, train, test, lambda m, b: -m.score(b), ({"dim": 0}, "dim"), 1e-9)
    if name == "deepar":
        pts = D.seasonal_series(12, 60, period=7, seed=7)
        n = 12 * 56  # the last 4 points of every series are the test's prediction range
        train = [pts.take(np.arange(a, min(a + 32, n))) for a in range(0, n, 32)]
        return Fixture({"prediction_length": 4, "context_length": 8, "lags_seq": "[1, 2, 3, 7]", "num_cells": 12,
                        "max_series": 256, "num_samples": 50, "learning_rate": 0.01}, train, pts,
                       lambda m, b: -m.score(b), ({"likelihood": "poisson"}, "likelihood"), 0.3)
    raise AssertionError(f"no conformance fixture for algorithm {name!r}: add one")


_KM_SCALE = 1.0
ALGORITHMS = list(BUILTIN)  # not toy algorithms other test modules register
_CACHE: dict[str, Fixture] = {}


def fixture(name: str) -> Fixture:
    if name not in _CACHE:
        _CACHE[name] = _fixture(name)
    return _CACHE[name]


def make(name: str):
    return algorithm_class(name).from_params(fixture(name).params)


def fit(name: str, batches, state: LocalState | None = None, algo=None):
    algo = algo or make(name)
    if state is None:
        state = LocalState()
        algo.initialize(state)
        state.commit()
    for b in batches:
        algo.update(state, b)
        state.commit()
    return algo.finalize(state), state


def arrays_equal(m1: Model, m2: Model, exact: bool = True) -> None:
    a1, t1 = m1.to_arrays()
    a2, t2 = m2.to_arrays()
    assert sorted(a1) == sorted(a2)
    for k in a1:
        if exact:
            np.testing.assert_array_equal(a1[k], a2[k], err_msg=k)
        else:
            np.testing.assert_allclose(a1[k], a2[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_every_builtin_is_registered():
    assert {"median", "linear_learner", "factorization_machines", "kmeans", "pca"} <= set(ALGORITHMS)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_contract(name):
    fx = fixture(name)
    algo = make(name)
    state = LocalState()
    algo.initialize(state)
    state.commit()
    declared = set(state.keys())
    assert declared, "initialize declares the state"
    for b in fx.train[:3]:
        algo.update(state, b)
        state.commit()
    assert set(state.keys()) == declared, "update must not declare keys"
    model = algo.finalize(state)
    assert isinstance(model, model_class(name)) and model.algorithm == name
    out = model.evaluate(fx.test)
    assert len(out) == len(fx.test)
    assert np.isfinite(model.score(fx.test))
    recs = model.predict_records(fx.test.take(np.arange(5)))
    assert len(recs) == 5 and all(isinstance(r, dict) and "prediction" in r for r in recs)
    json.dumps(recs)
    with pytest.raises(ValueError):
        model.score(fx.test, metric="no-such-metric")
    assert algo.n_features() >= 1


@pytest.mark.parametrize("name", ALGORITHMS)
def test_parameters_are_the_init_signature(name):
    cls = algorithm_class(name)
    algo = make(name)
    sig = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert cls.param_names() == sig
    params = algo.get_params()
    assert list(params) == sig
    # every parameter given as a string (as from the CLI) converts back to the same value
    as_strings = {k: (json.dumps(list(v)) if isinstance(v, (list, tuple)) else
                      ("true" if v is True else "false" if v is False else str(v))) for k, v in params.items()}
    again = cls.from_params(as_strings)
    for k, v in params.items():
        got = again.get_params()[k]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (list(v) if isinstance(v, (list, tuple)) else v), k
    json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()})


@pytest.mark.parametrize("name", ALGORITHMS)
def test_bad_parameters_give_clear_errors(name):
    cls = algorithm_class(name)
    bad, word = fixture(name).bad
    with pytest.raises(ParamError, match=word) as exc:
        cls.from_params(bad)
    assert name in str(exc.value)
    with pytest.raises(ParamError, match="unknown parameter"):
        cls.from_params({**fixture(name).params, "no_such_param": 1})


@pytest.mark.parametrize("name", ALGORITHMS)
def test_snapshot_round_trip(name):
    fx = fixture(name)
    model, _ = fit(name, fx.train[:4])
    arrays, attrs = model.to_arrays()
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    copied = {k: np.array(v, copy=True) for k, v in arrays.items()}
    loaded = model_class(name).from_arrays(copied, json.loads(json.dumps(attrs)))
    np.testing.assert_array_equal(np.asarray(model.evaluate(fx.test)), np.asarray(loaded.evaluate(fx.test)))
    assert model.predict_records(fx.test) == loaded.predict_records(fx.test)
    assert model.score(fx.test) == loaded.score(fx.test)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_deterministic_with_fixed_seed(name):
    fx = fixture(name)
    m1, _ = fit(name, fx.train)
    m2, _ = fit(name, fx.train)
    arrays_equal(m1, m2)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_pause_and_resume_equals_uninterrupted(name):
    """Fit part of the stream, drop the algorithm instance, continue with a NEW one on the
    same committed state (no initialize): the model equals an uninterrupted run."""
    fx = fixture(name)
    half = len(fx.train) // 2
    straight, _ = fit(name, fx.train)
    backend = MemoryBackend()
    first = LocalState(backend)
    algo = make(name)
    algo.initialize(first)
    first.commit()
    for b in fx.train[:half]:
        algo.update(first, b)
        first.commit()
    del algo, first
    resumed, _ = fit(name, fx.train[half:], state=LocalState(backend), algo=make(name))
    arrays_equal(straight, resumed, exact=False)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_several_workers_match_one(name):
    """Three workers (LocalStates over one backend) interleave the batches; the model is as
    good as one worker's on the same data."""
    fx = fixture(name)
    single, _ = fit(name, fx.train)
    backend = MemoryBackend()
    init = LocalState(backend)
    make(name).initialize(init)
    init.commit()
    workers = [(make(name), LocalState(backend)) for _ in range(3)]
    for i in range(0, len(fx.train), 3):  # each worker pulls, then all commit: real interleaving
        group = list(zip(workers, fx.train[i:i + 3]))
        for (algo, st), b in group:
            st.refresh()
            algo.update(st, b)
        for (algo, st), b in group:
            st.commit()
    multi = make(name).finalize(LocalState(backend))
    q1, q3 = fx.quality(single, fx.test), fx.quality(multi, fx.test)
    assert q3 >= q1 - fx.multi_worker_tol * max(1.0, abs(q1)), (q1, q3)
    if name == "pca":  # sum-based: exactly the same moments
        arrays_equal(single, multi, exact=False)
