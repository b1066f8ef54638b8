"""``streamlearn.connect()`` -> Connection -> Job on the real stack: topics, producing numpy,
pandas and scipy CSR data, jobs from an instance and from a name + dict, worker processes,
wait, snapshots, subscribe, predict/evaluate, and the errors a user meets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import streamlearn as sl
from streamlearn import datasets as D
from streamlearn.runtime import jobs
from tests.integration.procs import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(stack):
    with sl.connect() as c:
        yield c


def test_numpy_data_and_an_algorithm_instance(conn, unique_name, tmp_path):
    X, y = D.dense_classification(3000, d=8, seed=11)
    assert conn.create_topic(unique_name, partitions=2) == 2
    assert conn.create_topic(unique_name, partitions=2) == 2  # idempotent
    assert conn.produce(unique_name, X, y, batch_size=200) == 3000
    job = conn.create_job(unique_name, sl.LinearLearner(n_features=8, num_models=4), topic=unique_name)
    assert job.status()["state"] == "running" and job.spec.params["num_models"] == 4
    assert job.pause() == "paused" and job.status()["state"] == "paused"
    assert job.resume() == "running"
    workers = job.run_workers(2, log_dir=tmp_path)
    assert len(workers) == 2 and all(w.log_path.parent == tmp_path for w in workers)
    try:
        status = job.wait(timeout=300)
    finally:
        codes = [w.wait(timeout=60) for w in workers]
    assert status["state"] == "finished" and status["records_applied"] == 3000 * status["epochs"]
    assert codes == [0, 0]
    assert {"job": unique_name, "algorithm": "linear_learner", "topic": unique_name, "state": "finished"} in conn.jobs()
    [entry] = conn.models(job=unique_name)
    assert entry["version"] == 1 and entry["records_applied"] == 3000 * status["epochs"]
    model = conn.subscribe(job).wait_for(timeout=60)
    assert model.predict(X).shape == (3000,)
    np.testing.assert_array_equal(model.evaluate(X, y), model.predict(X))
    assert model.score(X, y, "accuracy") > 0.7
    assert conn.job(unique_name).status() == job.status()


def test_pandas_frame_and_a_name_with_params_unbounded(conn, unique_name):
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.standard_normal((1200, 3)), columns=["a", "b", "c"])
    frame["target"] = 2.0 * frame["a"] - frame["c"] + 0.01 * rng.standard_normal(1200)
    assert conn.produce(unique_name, frame, "target", partitions=2, batch_size=100) == 1200  # creates the topic
    job = conn.create_job(unique_name, "linear_learner",
                          topic=unique_name, params={"n_features": "3", "predictor_type": "regressor"},
                          until="never")
    [worker] = job.run_workers(1)
    try:
        wait_for(lambda: job.status()["records_applied"] == 1200, 240, "every record applied")
        version = job.snapshot()
        assert version == 1
        model = conn.subscribe(unique_name).wait_for(version=1, timeout=60)
        features = frame.drop(columns="target")
        assert model.predict(features).shape == (1200,)
        assert model.score(frame, "target", "r2") > 0.5  # one pass over 1,200 records; 0 = predicting the mean
        assert job.status()["state"] == "running"  # unbounded: it goes on
    finally:
        assert worker.stop(timeout=60) == 0  # SIGTERM: a worker leaves cleanly
    assert not worker.running


def test_scipy_csr_rows_train_a_sparse_model(conn, unique_name):
    X, y = D.interaction_data(4000, seed=8)
    csr = sp.csr_matrix((X.values, X.indices, X.indptr), shape=X.shape)
    conn.create_topic(unique_name, partitions=1)
    assert conn.produce(unique_name, csr, y, batch_size=500) == 4000
    job = conn.create_job(unique_name, sl.FactorizationMachines(n_features=X.n_features, num_factors=4),
                          topic=unique_name)
    [worker] = job.run_workers(1)
    try:
        status = job.wait(timeout=300)
        assert status["records_applied"] == 4000 * status["epochs"]
        assert worker.wait(timeout=60) == 0  # it leaves by itself once the job is finished
    finally:
        job.stop_workers()
    model = conn.subscribe(job).wait_for(timeout=60)
    np.testing.assert_array_equal(model.predict(csr), model.evaluate(sl.Batch(X, y)))
    assert model.score(csr, y, "auc") > 0.6


def test_user_errors(conn, unique_name):
    with pytest.raises(sl.UserError, match="does not exist"):
        conn.produce(unique_name, np.zeros((2, 2)))  # a missing topic, no partitions given
    conn.create_topic(unique_name, partitions=1)
    with pytest.raises(sl.UserError, match="fewer than the 3"):
        conn.create_topic(unique_name, partitions=3)
    with pytest.raises(sl.UserError, match="not both"):
        conn.create_job(unique_name, sl.KMeans(n_features=2), topic=unique_name, params={"k": 3})
    with pytest.raises(sl.UserError, match="k_max"):
        conn.create_job(unique_name, sl.KMeans(n_features=2, k=5, k_max=3), topic=unique_name)
    with pytest.raises(sl.UserError, match="unknown job"):
        conn.job(unique_name)
    job = conn.create_job(unique_name, "kmeans", topic=unique_name, params={"n_features": 2})
    with pytest.raises(sl.UserError, match="already exists"):
        conn.create_job(unique_name, "kmeans", topic=unique_name, params={"n_features": 2})
    with pytest.raises(sl.UserError, match="n >= 1"):
        job.run_workers(0)
    with pytest.raises(TimeoutError, match="did not finish"):
        job.wait(timeout=0.5)  # no worker: it cannot finish


def test_wait_reports_workers_that_died(conn, unique_name, monkeypatch):
    conn.create_topic(unique_name, partitions=1)
    conn.produce(unique_name, np.ones((10, 2)))
    job = conn.create_job(unique_name, sl.Counter(dim=2), topic=unique_name)
    monkeypatch.setenv("STREAMLEARN_WORKER_MAX_MESSAGES", "not-a-number")  # the worker fails at start
    [worker] = job.run_workers(1)
    with pytest.raises(sl.StreamlearnError, match=r"exited with \[1\] before it finished"):
        job.wait(timeout=120)
    assert "not-a-number" in worker.log_path.read_text()


@pytest.mark.skipif(not hasattr(jobs, "delete_job"), reason="jobs.delete_job comes with the job-deletion branch")
def test_delete(conn, unique_name):
    conn.create_topic(unique_name, partitions=1)
    job = conn.create_job(unique_name, "counter", topic=unique_name)
    job.delete(force=True)
    with pytest.raises(sl.UserError, match="unknown job"):
        job.status()
