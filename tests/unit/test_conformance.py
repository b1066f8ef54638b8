"""The public conformance suite (``streamlearn.algorithms.checks``) for every built-in algorithm.

Each algorithm gets a small fixture (parameters, a few mini-batches, a quality measure);
every check of :data:`checks.CHECKS` runs against all of them (declarations, the
initialize/update/finalize contract, snapshot round trip, pause + resume, determinism),
plus what needs a quality measure or a known bad value: clear parameter errors and
several workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

from streamlearn import datasets as D
import streamlearn as sl
from streamlearn.algorithms import BUILTIN, Model, ParamError, algorithm_class, checks
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
    #: passes over ``train`` in the several-workers check (a model trained to convergence, as a
    #: user trains it, where one pass leaves it short)
    multi_worker_passes: int = 1


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
    if name == "ntm":
        X = D.topic_documents(3500, vocab_size=200, num_topics=5, seed=7)
        train, test = _split_batches(X, None, 3000, 100)
        # 6 passes: in one, 3 workers take a third of the lone worker's sequential steps, and
        # their summed steps (3x the step size) fall short of its model by 3-4 % of log
        # perplexity at this learning rate; trained to convergence they land within 0.4 %
        return Fixture({"vocab_size": 200, "num_topics": 5, "encoder_layers": [32], "learning_rate": 0.01,
                        "mini_batch_size": 50, "holdout_fraction": 0.1}, train, test,
                       lambda m, b: -np.log(m.score(b)), ({"vocab_size": 200, "num_topics": 1}, "num_topics"), 0.02,
                       multi_worker_passes=6)
    if name == "deepar":
        pts = D.seasonal_series(12, 60, period=7, seed=7)
        n = 12 * 56  # the last 4 points of every series are the test's prediction range
        train = [pts.take(np.arange(a, min(a + 32, n))) for a in range(0, n, 32)]
        return Fixture({"prediction_length": 4, "context_length": 8, "lags_seq": [1, 2, 3, 7], "num_cells": 12,
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


def test_every_builtin_is_registered():
    assert {"median", "linear_learner", "factorization_machines", "kmeans", "pca"} <= set(ALGORITHMS)


def case(name: str) -> checks.Case:
    fx = fixture(name)
    return checks.Case(algorithm_class(name), fx.params, fx.train, fx.test)


@pytest.mark.parametrize("check", checks.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_conformance(name, check):
    check(case(name))


@pytest.mark.parametrize("cls", [sl.Median, sl.LinearLearner, sl.FactorizationMachines, sl.KMeans, sl.PCA,
                                 sl.Counter], ids=lambda c: c.name)
def test_check_algorithm_on_its_synthetic_data(cls):
    """``check_algorithm`` as an algorithm's author calls it: the class and test parameters."""
    required = {"n_features": 12} if "n_features" in cls.param_names() else {}
    checks.check_algorithm(cls, **required)


def test_check_algorithm_names_the_failing_check():
    class Forgetful(sl.Median):  # a parameter that is not declared
        def __init__(self, learning_rate: float = 1.0, initial_guess: float = 0.0, synchronized: bool = False,
                      extra: int = 0):
            super().__init__(learning_rate, initial_guess, synchronized)
            self.extra = extra

    with pytest.raises(AssertionError, match=r"check_declarations\(Forgetful\).*undeclared \['extra'\]"):
        checks.check_algorithm(Forgetful)

    class Drifting(sl.Median):  # depends on something outside the state: not deterministic
        runs = 0

        def initialize(self, state):
            Drifting.runs += 1
            state.initialize("median", float(Drifting.runs))
            state.initialize("n", 0.0)

    with pytest.raises(AssertionError, match=r"check_pause_resume\(Drifting\)|check_deterministic\(Drifting\)"):
        checks.check_algorithm(Drifting)


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
def test_several_workers_match_one(name):
    """Three workers (LocalStates over one backend) interleave the batches; the model is as
    good as one worker's on the same data."""
    fx = fixture(name)
    train = fx.train * fx.multi_worker_passes
    single, _ = checks.fit(make(name), train)
    backend = MemoryBackend()
    init = LocalState(backend)
    make(name).initialize(init)
    init.commit()
    workers = [(make(name), LocalState(backend)) for _ in range(3)]
    for i in range(0, len(train), 3):  # each worker pulls, then all commit: real interleaving
        group = list(zip(workers, train[i:i + 3]))
        for (algo, st), b in group:
            st.refresh()
            algo.update(st, b)
        for (algo, st), b in group:
            st.commit()
    multi = make(name).finalize(LocalState(backend))
    q1, q3 = fx.quality(single, fx.test), fx.quality(multi, fx.test)
    assert q3 >= q1 - fx.multi_worker_tol * max(1.0, abs(q1)), (q1, q3)
    if name == "pca":  # sum-based: exactly the same moments
        checks.assert_same_model(single, multi, exact=False, what="pca")
