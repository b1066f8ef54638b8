"""How a worker sizes its update steps: the algorithm's ``step_rows`` unless overridden."""
from __future__ import annotations

from streamlearn.algorithms import make_algorithm
from streamlearn.runtime.worker import WorkerConfig


def test_each_algorithm_gets_its_own_step_size_unless_the_environment_overrides_it(monkeypatch):
    kmeans = make_algorithm("kmeans", {"n_features": 3, "k": 2})
    linear = make_algorithm("linear_learner", {"n_features": 3})
    median = make_algorithm("median", {})
    monkeypatch.delenv("STREAMLEARN_WORKER_UPDATE_ROWS", raising=False)
    config = WorkerConfig.from_env()
    assert [config.step_rows(a) for a in (kmeans, linear, median)] == [5_000, 1_000, 500]
    monkeypatch.setenv("STREAMLEARN_WORKER_UPDATE_ROWS", "64")
    config = WorkerConfig.from_env()
    assert [config.step_rows(a) for a in (kmeans, linear, median)] == [64, 64, 64]
