"""Training profiles and drift monitoring on the real stack.

- the profile of a job whose workers join, get SIGKILLed and restart counts every applied
  record exactly once (rows, per-feature counts and sums equal the data's), whether a
  worker writes it with every commit or only when forced (end, rebalance, shutdown);
- ``monitor --once`` on 20 windows of unshifted data raises at most one false alarm, and
  on data whose feature means moved by 0.5 standard deviations reports drift within two
  windows;
- ``--on-drift retrain`` creates an incremental job from the published snapshot, whose
  snapshot passes the gate like any other, and promotes its model to the job's line (a
  subscriber of the job receives it); ``monitor status`` and the monitoring topic carry the
  reports.
"""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from streamlearn import datasets as D
from streamlearn.monitoring.monitor import MONITORING_TOPIC
from streamlearn.monitoring.profile import Profile
from streamlearn.reporting.report import build_report
from streamlearn.runtime.jobs import create_job, job_status
from streamlearn.runtime.record import JobRecord
from streamlearn.snapshots.format import decode_snapshot
from streamlearn.snapshots.subscriber import ModelSubscriber
from streamlearn.snapshots.store import ModelStore
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import consumer_conf, ensure_topic, watermarks
from tests.integration.procs import cli, cli_json, start_worker, stop_all, wait_for, wait_status

pytestmark = pytest.mark.integration

WINDOW = 1000


def _topic(stack, X, y=None, partitions: int = 2, batch_size: int = 200) -> str:
    name = f"mon-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), name, partitions=partitions)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(name, X, y, batch_size=batch_size)
    return name


def test_profile_counts_every_record_once_under_worker_churn(stack, tmp_path):
    client = stack.redis_client()
    rng = np.random.default_rng(11)
    X = rng.normal(3.0, 2.0, (60_000, 4)).astype(np.float32)
    topic = _topic(stack, X, partitions=4, batch_size=20)
    job = f"prof-{uuid.uuid4().hex[:6]}"
    create_job(client, stack.kafka_client_conf(), job, "counter", topic, {"dim": 4})
    # the survivors write their profiles only when forced (a partition's end, a rebalance,
    # shutdown); the killed worker writes with every commit, so none of its rows may be missing
    lazy = {"STREAMLEARN_WORKER_MAX_MESSAGES": "1", "STREAMLEARN_PROFILE_FLUSH_S": "3600"}
    eager = {**lazy, "STREAMLEARN_PROFILE_FLUSH_S": "0"}
    procs = [start_worker(job, tmp_path, lazy), start_worker(job, tmp_path, eager)]
    wait_status(client, job, lambda s: s["records_applied"] > 8_000, 120, "records before the kill")
    # the killed worker must have committed before it dies (member ids carry the process id)
    wait_for(lambda: any(f"-{procs[1].pid}-" in m.decode() for m in client.hkeys(f"sl:{{{job}}}:profile")), 120,
             "the eager worker's first profile")
    procs[1].kill()
    procs[1].wait()
    procs.append(start_worker(job, tmp_path, lazy))
    status = wait_status(client, job, lambda s: s["state"] == "finished", 300, "job to finish")
    stop_all(procs)
    assert status["records_applied"] == len(X)

    snapshot = decode_snapshot(ModelStore(client).get(job, 1))
    profile = Profile.from_metadata(snapshot.metadata["profile"])
    assert profile.rows == len(X) and profile.features.count.tolist() == [len(X)] * 4
    assert profile.labels.nan[0] == len(X)  # no labels: every record's is missing
    np.testing.assert_allclose(profile.features.sum, X.astype(np.float64).sum(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(profile.features.min, X.min(axis=0))
    np.testing.assert_array_equal(profile.features.max, X.max(axis=0))
    assert profile.sketched_rows == profile.sketches[0].n and profile.sketched_rows > 0
    # the sketched median's rank in the data: the KLL rank error (~1.7 % at k=200) plus sampling
    assert abs(np.mean(X[:, 0] <= profile.sketches[0].get_quantile(0.5)) - 0.5) < 0.03
    members = client.hlen(f"sl:{{{job}}}:profile")
    assert members == 3  # the killed worker's committed profile stays and counts
    summary = ModelStore(client).metadata(job, 1)["profile"]
    assert "data" not in summary and summary["summary"]["rows"] == len(X)  # the registry keeps the summary


@pytest.fixture(scope="module")
def trained(stack, tmp_path_factory):
    """A gated linear learner trained on 8,000 rows; 20 windows of fresh unshifted rows and
    4 windows of rows whose every feature mean moved by 0.5 standard deviations."""
    X, y = D.dense_classification(8000 + 24 * WINDOW, d=6, seed=9, signal=4.0)
    train, live, moved = slice(0, 8000), slice(8000, 8000 + 20 * WINDOW), slice(8000 + 20 * WINDOW, None)
    shifted = X[moved] + 0.5 * X[train].std(axis=0)
    topics = {"train": _topic(stack, X[train], y[train]), "live": _topic(stack, X[live]),
              "shifted": _topic(stack, shifted), "shifted_labelled": _topic(stack, shifted, y[moved])}
    job = f"mon-{uuid.uuid4().hex[:6]}"
    cli("job", "create", job, "--algorithm", "linear_learner", "--topic", topics["train"], "--epochs", "1",
        "--gate", "accuracy>=0.5")
    assert stop_all([start_worker(job, tmp_path_factory.mktemp("w"))], timeout=120) == [0]
    return job, topics


def test_no_drift_on_unshifted_windows_drift_within_two_windows_after_a_shift(stack, trained):
    job, topics = trained
    calm = cli_json("monitor", job, "--topic", topics["live"], "--window", str(WINDOW), "--once")
    assert len(calm["windows"]) == 20
    alarms = [w["window"] for w in calm["windows"] if w["drift"]]
    assert len(alarms) <= 1, alarms
    assert set(calm["features"]) == {f"x{j}" for j in range(6)}
    assert all(f["ks"] is not None and f["psi"] is not None for f in calm["features"].values())

    moved = cli_json("monitor", job, "--topic", topics["shifted"], "--window", str(WINDOW), "--once")
    first = min(w["window"] for w in moved["windows"] if w["drift"])
    assert first <= 1, moved["windows"]
    assert moved["drift"] is True and len(moved["drifted_features"]) >= 3
    feature = moved["features"][moved["drifted_features"][0]]
    assert feature["ks"] > feature["ks_threshold"] and feature["drift"] is True

    status = cli_json("monitor", "status", job)
    assert status["drift"] is True and status["topic"] == topics["shifted"]
    # every window's report is on the monitoring topic
    reports = _reports(stack, job)
    assert len(reports) >= 24 and sum(r["drift"] for r in reports) >= 3
    # the job's report draws every monitored window: the calm ones, then the shifted ones
    windows = JobRecord(stack.redis_client(), job).monitor_windows()
    assert len(windows) == len(calm["windows"]) + len(moved["windows"])
    assert [w["drift"] for w in windows[len(calm["windows"]):]] == [w["drift"] for w in moved["windows"]]
    assert "<h2>Drift</h2>" in build_report(stack.redis_client(), job)


def test_drift_triggers_a_gated_retrain_whose_model_reaches_the_jobs_subscribers(stack, trained):
    job, topics = trained
    client = stack.redis_client()
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf) as sub:
        sub.wait_for(1, timeout=60)
        # --once waits for the retrain it started (at most --retrain-timeout), then promotes its model
        out = json.loads(cli("monitor", job, "--topic", topics["shifted"], "--labels-topic",
                             topics["shifted_labelled"], "--window", str(WINDOW), "--once", "--on-drift", "retrain",
                             "--retrain-timeout", "300", "--json", timeout=420).stdout)
        started = [w["retrain"] for w in out["windows"] if w["retrain"] and w["retrain"]["started"]]
        assert len(started) == 1, out["windows"]  # one retrain at a time
        assert out["score"]["metric"] in ("log_loss", "accuracy") and out["score"]["holdout"] is not None
        retrain = started[0]["job"]
        assert started[0]["from"] == f"{job}@1" and started[0]["topic"] == topics["shifted_labelled"]
        status = job_status(client, retrain)
        assert status["state"] == "finished" and status["records_applied"] == 4 * WINDOW
        meta = ModelStore(client).metadata(retrain, 1)
        assert meta["trained_from"] == {"job": job, "version": 1}
        assert meta["gate"]["status"] == "blessed", meta["gate"]
        assert [c["expr"] for c in meta["gate"]["checks"]] == ["finite", "records_applied>=1", "accuracy>=0.5"]

        # promoted: the retrained model is the job's version 2, through the job's own gate
        promotion = out["promotion"]
        assert promotion == started[0]["promotion"] and out["windows"][-1]["promotion"] == promotion
        assert promotion["model"] == f"{job}@2" and promotion["from"] == f"{retrain}@1", promotion
        assert promotion["status"] == "blessed" and promotion["published"] is True
        promoted = ModelStore(client).metadata(job, 2)
        assert promoted["job"] == job and promoted["parent"] == {"job": retrain, "version": 1}
        assert promoted["promoted_from"] == {"job": retrain, "version": 1}
        assert promoted["replaces"] == {"job": job, "version": 1} and promoted["gate"]["status"] == "blessed"
        assert JobRecord(client, job).snapshot_versions() == (2, 2)
        # ... and reaches the job's subscribers, as the job's own snapshot
        sub.wait_for(2, timeout=60)
        assert sub.version == 2 and sub.metadata["job"] == job and sub.metadata["promoted_from"]["job"] == retrain
        np.testing.assert_array_equal(
            decode_snapshot(ModelStore(client).get(job, 2)).arrays["weights"],
            decode_snapshot(ModelStore(client).get(retrain, 1)).arrays["weights"])
    assert cli_json("monitor", "status", job)["promotion"]["model"] == f"{job}@2"
    wait_for(lambda: job_status(client, retrain)["members"] == [], 30, "the retrain worker to leave")


def _reports(stack, job: str) -> list[dict]:
    conf = stack.kafka_client_conf()
    marks = watermarks(conf, MONITORING_TOPIC)
    consumer = Consumer({**consumer_conf(conf), "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(MONITORING_TOPIC, p, lo) for p, (lo, _) in marks.items()])
    todo, out = sum(hi - lo for lo, hi in marks.values()), []
    try:
        while todo > 0:
            for m in consumer.consume(500, timeout=2.0):
                if m.error() is None:
                    todo -= 1
                    if m.key() == job.encode():
                        out.append(json.loads(m.value()))
    finally:
        consumer.close()
    return out
