"""Fault isolation of update steps (runtime/isolate.py) and the state's checkpoint/rollback,
in process on the memory backend: a step that raises is bisected to its bad records, their
partial pushes never reach the state, and an update that fails whatever the data is a bug."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn.batch import Batch
from streamlearn.runtime.isolate import AlgorithmBug, FailureRun, apply_steps
from streamlearn.statestore.buffered import CommitInfo
from streamlearn.statestore.local import LocalState
from tests.support.faulty_algorithms import BrokenCounter, PoisonedCounter


def _state(algo) -> LocalState:
    state = LocalState()
    algo.initialize(state)
    state.commit()
    return state


def _steps(X: np.ndarray, rows: int) -> list[Batch]:
    return [Batch(X[i:i + rows]) for i in range(0, len(X), rows)]


@pytest.mark.parametrize("step_rows", [1, 7, 64, 1000])
def test_bad_records_are_isolated_and_the_rest_applied_exactly(step_rows):
    rng = np.random.default_rng(3)
    X = rng.integers(0, 50, size=(500, 2)).astype(np.float32)
    bad = np.sort(rng.choice(500, size=23, replace=False))
    X[bad, 0] = -1.0
    algo = PoisonedCounter(dim=2, poison=-1.0)
    state = _state(algo)
    failures = apply_steps(algo, state, _steps(X, step_rows))
    assert [f.row for f in failures] == bad.tolist()
    assert {f.reason for f in failures} == {"ValueError: poisoned record (value -1)"}
    assert all(np.array_equal(f.record.X, X[[f.row]]) for f in failures)
    state.commit(CommitInfo(records_applied=500 - len(failures), records_dead_lettered=len(failures)))
    good = np.delete(X, bad, axis=0).astype(np.float64)
    assert float(state.pull("n")) == len(good)  # no partial push of a failed update survived
    assert np.array_equal(state.pull("sum"), good.sum(axis=0))
    assert np.array_equal(state.pull("xtx"), good.T @ good)


def test_a_failure_after_earlier_steps_keeps_nothing_twice():
    X = np.arange(1, 301, dtype=np.float32)[:, None]
    X[250, 0] = -1.0  # in the last step: the first steps ran (and pushed) before it raised
    algo = PoisonedCounter(dim=1, poison=-1.0)
    state = _state(algo)
    failures = apply_steps(algo, state, _steps(X, 100))
    assert [f.row for f in failures] == [250]
    state.commit()
    assert float(state.pull("n")) == 299
    assert float(state.pull("sum")[0]) == float(X.sum()) + 1.0


def test_an_update_that_fails_on_every_record_is_a_bug_after_a_run_of_them():
    algo = BrokenCounter(dim=1)
    state = _state(algo)
    run = FailureRun(limit=25)
    for _ in range(2):  # 20 records in a row: still data (a few poison records in a row happen)
        failures = apply_steps(algo, state, _steps(np.ones((10, 1), np.float32), 5))
        assert len(failures) == 10
        run.observe(10, failures)
    with pytest.raises(AlgorithmBug, match=r"RuntimeError: the update step has a bug on every record \(30 in a row\)"):
        run.observe(10, apply_steps(algo, state, _steps(np.ones((10, 1), np.float32), 5)))
    state.commit()
    assert float(state.pull("n")) == 0.0  # none of the failed updates' pushes is pending


def test_an_applied_record_ends_a_run_of_failures():
    algo = PoisonedCounter(dim=1, poison=-1.0)
    state = _state(algo)
    run = FailureRun(limit=4)
    X = np.array([[-1.0], [-1.0], [-1.0], [2.0], [-1.0], [-1.0]], np.float32)
    run.observe(6, apply_steps(algo, state, _steps(X, 3)))
    assert (run.length, run.reason) == (2, "ValueError: poisoned record (value -1)")
    with pytest.raises(AlgorithmBug):
        run.observe(2, apply_steps(algo, state, _steps(X[:2], 3)))


def test_an_update_that_fails_on_an_empty_batch_is_a_bug():
    class Always(PoisonedCounter):
        def update(self, state, batch):
            raise KeyError("n_features_")

    algo = Always(dim=1)
    with pytest.raises(AlgorithmBug, match="empty batch"):
        apply_steps(algo, _state(algo), _steps(np.ones((1, 1), np.float32), 5))


def test_one_bad_record_alone_is_data_not_a_bug():
    algo = PoisonedCounter(dim=1, poison=-1.0)
    state = _state(algo)
    failures = apply_steps(algo, state, [Batch(np.array([[-1.0]], np.float32))])
    assert [f.row for f in failures] == [0]


def test_rollback_restores_row_and_whole_key_pushes():
    state = LocalState()
    state.initialize("v", np.zeros(10))
    state.initialize("s", 0.0)
    state.commit()
    state.push("v", np.ones(2), rows=np.array([1, 3]))
    mark = state.checkpoint()
    state.push("v", np.full(10, 5.0))
    state.push("s", 2.0)
    state.rollback(mark)
    state.push("s", 1.0)
    state.commit()
    assert state.pull("v").tolist() == [0, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    assert float(state.pull("s")) == 1.0
