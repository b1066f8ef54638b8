"""Synchronous rounds of factorization machines, in-process: one worker's sync model is the
one-step-per-round model, N workers stepping from the same parameters give the same model,
and a round's close is a check-and-set that applies once."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn import datasets
from streamlearn.algorithms import make_algorithm
from streamlearn.batch import Batch
from streamlearn.runtime.local import fit_local
from streamlearn.runtime.rounds import Rounds
from streamlearn.statestore.base import StaleCommit
from streamlearn.statestore.buffered import CommitInfo
from streamlearn.statestore.local import LocalState, MemoryBackend

D, ROUND = 2 ** 12, 400


@pytest.fixture(scope="module")
def data():
    X, y = datasets.sparse_classification(4_000, D, nnz=20, vocabulary=3_000, seed=3)
    return X, y


def _fm(aggregation: str, **extra):
    return make_algorithm("factorization_machines", {"n_features": D, "num_factors": 4, "mini_batch_size": ROUND,
                                                     "aggregation": aggregation, **extra})


def _batches(data, rows: int, start: int = 0, stop: int | None = None) -> list[Batch]:
    X, y = data
    stop = len(y) if stop is None else stop
    return [Batch(datasets._rows(X, a, min(a + rows, stop)), y[a:min(a + rows, stop)]) for a in range(start, stop, rows)]


def _same(a, b, tol: float = 1e-9) -> None:
    np.testing.assert_allclose(a.w, b.w, rtol=0, atol=tol)
    np.testing.assert_allclose(a.v, b.v, rtol=0, atol=tol)
    assert abs(a.w0 - b.w0) <= tol


@pytest.mark.parametrize("optimizer, predictor_type", [("adagrad", "binary_classifier"), ("sgd", "binary_classifier"),
                                                       ("adagrad", "regressor")])
def test_one_worker_sync_is_one_step_per_round(data, optimizer, predictor_type):
    """What scaling.quality_sim simulates: each round one step on its rows."""
    batches = _batches(data, ROUND)
    sync = fit_local(_fm("sync", optimizer=optimizer, predictor_type=predictor_type), batches)
    reference = LocalState()
    algo = _fm("async", optimizer=optimizer, predictor_type=predictor_type)
    algo.initialize(reference)
    reference.commit()
    for batch in batches:
        algo.update(reference, batch)
        reference.commit()
    _same(sync, algo.finalize(reference))
    assert sync.attrs["examples_seen"] == len(data[1])


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_sharing_each_round_learn_the_one_worker_model(data, workers):
    """N members, each stepping on 1/N of every round's rows from the same parameters, in
    lockstep (contribute, then close): the one-worker model up to rounding."""
    algo = _fm("sync")
    backend = MemoryBackend()
    first = LocalState(backend)
    algo.initialize(first)
    first.commit()
    states = [LocalState(backend) for _ in range(workers)]
    rounds = [Rounds(algo, s) for s in states]
    part = ROUND // workers
    for start in range(0, len(data[1]), ROUND):
        for i, (state, member) in enumerate(zip(states, rounds)):
            expect = member.begin()
            for batch in _batches(data, part, start + i * part, start + (i + 1) * part):
                algo.update(state, batch)
            state.commit(CommitInfo(expect=expect, records_applied=part))
        for member in rounds:
            member.end()
    assert sum(m.closes for m in rounds) == len(data[1]) // ROUND  # each round closed once
    assert backend.records_applied == len(data[1])
    _same(algo.finalize(LocalState(backend)), fit_local(_fm("sync"), _batches(data, ROUND)), tol=1e-12)


def test_a_second_close_of_the_same_round_is_refused(data):
    algo = _fm("sync")
    backend = MemoryBackend()
    init = LocalState(backend)
    algo.initialize(init)
    init.commit()
    contributor = LocalState(backend)
    algo.update(contributor, _batches(data, ROUND)[0])
    contributor.commit()
    a, b = LocalState(backend), LocalState(backend)
    expects = [{"round": s.version("round"), "g_b": s.version("g_b")} for s in (a, b)]
    for s in (a, b):
        assert algo.close_round(s)
    a.commit(CommitInfo(expect=expects[0]))
    stepped = algo.finalize(LocalState(backend))
    with pytest.raises(StaleCommit):
        b.commit(CommitInfo(expect=expects[1]))
    _same(algo.finalize(LocalState(backend)), stepped, tol=0.0)
    check = LocalState(backend)
    assert float(check.pull("round")) == 1.0 and not check.pull("g_wv").any() and not check.pull("g_b").any()


def test_finalize_applies_the_round_not_closed_yet(data):
    """The last, partial round: finalize gives the model its close would give."""
    algo = _fm("sync")
    state = LocalState()
    algo.initialize(state)
    state.commit()
    algo.update(state, _batches(data, ROUND)[0])
    state.commit()
    pending = algo.finalize(state)
    algo.close_round(state)
    state.commit()
    _same(pending, algo.finalize(state), tol=0.0)
    assert pending.w.any()


def test_the_numpy_gradient_equals_the_compiled_one(data, monkeypatch):
    batches = _batches(data, ROUND)[:4]
    compiled = fit_local(_fm("sync"), batches)
    monkeypatch.setenv("STREAMLEARN_KERNELS", "numpy")
    _same(fit_local(_fm("sync"), batches), compiled, tol=1e-10)
