"""No record can stall a job, and no model comes from zero records (issue 11), on the real
stack with real worker processes: an update step that raises is bisected to its records,
which are dead-lettered with the exception; an update that fails whatever the data fails
the job (workers exit non-zero with one line); a job that applied nothing publishes nothing."""
from __future__ import annotations

import signal
import time
import uuid

import numpy as np
import pytest
from sklearn.datasets import load_digits

from streamlearn.runtime.jobs import create_job, job_status
from streamlearn.snapshots.store import ModelStore
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.wire.serde import decode
from streamlearn.streams.topics import ensure_topic
from tests.integration.procs import cli, start_worker, stop_all, wait_status
from tests.integration.test_dead_letters import read_dlq
from tests.support.faulty_algorithms import faulty_cli, start_faulty_worker

pytestmark = pytest.mark.integration


def _topic(stack, partitions: int = 2) -> str:
    topic = f"poison-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), topic, partitions=partitions)
    return topic


def _ended(s: dict) -> bool:
    return s["state"] in ("finished", "failed")


def test_digits_labelled_1_to_10_do_not_stall_the_job(stack, tmp_path):
    """The issue's reproduction: labels 1..10 with 10 classes crashed every worker with
    IndexError. Declared as classes 0..9, label 10 is outside the contract: inside batch
    messages those records reach the update step, which raises for them, and each is
    isolated and dead-lettered alone; the rest trains and the job finishes."""
    X, y = load_digits(return_X_y=True)
    y = y + 1
    topic = _topic(stack)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, X.astype(np.float32), y.astype(np.float64), batch_size=100)
    client = stack.redis_client()
    job = f"digits-{uuid.uuid4().hex[:8]}"
    create_job(client, stack.kafka_client_conf(), job, "linear_learner", topic,
               {"n_features": 64, "predictor_type": "multiclass_classifier", "classes": list(range(10))}, epochs=1)
    procs = [start_worker(job, tmp_path), start_worker(job, tmp_path)]
    status = wait_status(client, job, _ended, 180, "the job to end")
    assert stop_all(procs) == [0, 0]
    assert status["state"] == "finished", status
    assert status["records_dead_lettered"] == int((y == 10).sum())
    assert status["records_applied"] + status["records_dead_lettered"] == len(y)
    dead = read_dlq(stack, f"{topic}.dlq", expected=status["records_dead_lettered"])
    assert len(dead) == status["records_dead_lettered"]
    assert all(decode(d["value"])[1]["label"] == 10.0 for d in dead)
    assert ModelStore(client).latest_version(job) == status["snapshot_version"] == 1


def test_poisoned_records_in_batch_messages_are_dead_lettered_alone_and_the_rest_applied_once(stack, tmp_path):
    values = np.arange(1, 3001, dtype=np.float32)
    poisoned = np.arange(17, 3000, 191)
    values[poisoned] = -1.0
    topic = _topic(stack, partitions=3)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, values[:, None], batch_size=100)
    client = stack.redis_client()
    job = f"poisoned-{uuid.uuid4().hex[:8]}"
    res = faulty_cli("job", "create", job, "--algorithm", "poisoned_counter", "--topic", topic, "--param", "dim=1")
    assert res.wait(60) == 0, res.stderr.read()
    procs = [start_faulty_worker(job, tmp_path), start_faulty_worker(job, tmp_path)]
    status = wait_status(client, job, _ended, 180, "the job to end")
    assert stop_all(procs) == [0, 0]
    assert status["state"] == "finished", status
    assert status["records_dead_lettered"] == len(poisoned)
    assert status["records_applied"] == len(values) - len(poisoned)
    good = np.delete(values, poisoned).astype(np.float64)
    state = RedisState(client, job)
    assert float(state.pull("n")) == len(good)  # no partial push of a failed update survived
    assert float(state.pull("sum")[0]) == good.sum()
    dead = read_dlq(stack, f"{topic}.dlq", expected=len(poisoned))
    assert len(dead) == len(poisoned)
    assert {d["streamlearn.reason"] for d in dead} == {"ValueError: poisoned record (value -1)"}
    assert all(d["streamlearn.records"] == "1" for d in dead)
    records = [decode(d["value"]) for d in dead]  # re-encoded alone out of 100-record messages
    assert all(name == "training_record" and rec["features"] == [-1.0] for name, rec in records)
    rows = sorted(int(d["streamlearn.source"].rsplit("/", 1)[1]) * 100 + int(d["streamlearn.row"]) for d in dead)
    assert len(set(rows)) == len(poisoned)


def test_an_update_that_fails_on_every_record_fails_the_job_and_its_workers(stack, tmp_path):
    topic = _topic(stack, partitions=1)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, np.ones((3000, 1), np.float32), batch_size=100)
    client = stack.redis_client()
    job = f"broken-{uuid.uuid4().hex[:8]}"
    assert faulty_cli("job", "create", job, "--algorithm", "broken_counter", "--topic", topic).wait(60) == 0
    worker = faulty_cli("worker", job)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"streamlearn: error: job {job} failed: update raises RuntimeError: the update step has a bug")
    assert "Traceback" not in err
    status = job_status(client, job)
    assert status["state"] == "failed" and "RuntimeError: the update step has a bug" in status["reason"]
    assert status["records_applied"] == 0
    late = faulty_cli("worker", job)  # a worker that joins a failed job leaves at once, the same way
    _, err = late.communicate(timeout=60)
    assert late.returncode == 1 and err.strip().splitlines()[-1].startswith(f"streamlearn: error: job {job} failed")
    assert ModelStore(client).latest_version(job) is None


def test_a_job_whose_every_record_was_dead_lettered_fails_and_publishes_nothing(stack, tmp_path):
    topic = _topic(stack)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, np.ones((426, 1), np.float32), batch_size=50)
    client = stack.redis_client()
    job = f"nothing-{uuid.uuid4().hex[:8]}"
    create_job(client, stack.kafka_client_conf(), job, "counter", topic, {"dim": 2})
    procs = [start_worker(job, tmp_path)]
    status = wait_status(client, job, _ended, 120, "the job to end")
    assert stop_all(procs) == [1]
    assert status["state"] == "failed"
    assert status["reason"] == "all 426 records dead-lettered: dimension 1 != 2"
    assert status["records_applied"] == 0 and status["snapshot_version"] is None
    assert ModelStore(client).versions(job) == []


def test_no_periodic_or_requested_snapshot_of_a_state_that_applied_nothing(stack, tmp_path):
    topic = _topic(stack)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, np.ones((300, 1), np.float32), batch_size=50)
    client = stack.redis_client()
    job = f"nosnap-{uuid.uuid4().hex[:8]}"
    cli("job", "create", job, "--algorithm", "counter", "--topic", topic, "--param", "dim=2",
        "--until", "never", "--snapshot-every", "0.3")
    procs = [start_worker(job, tmp_path)]
    wait_status(client, job, lambda s: s["records_dead_lettered"] == 300, 60, "every record dead-lettered")
    time.sleep(1.5)  # several snapshot periods
    assert ModelStore(client).versions(job) == []
    res = cli("snapshot", job, check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "applied no record" in res.stderr
    with Producer(stack.kafka, stack.kafka_conf) as p:  # the first good records: snapshots begin
        p.send_batch(topic, np.ones((10, 2), np.float32), batch_size=10)
    wait_status(client, job, lambda s: s["records_applied"] == 10, 60, "good records")
    deadline = time.monotonic() + 30
    while not ModelStore(client).versions(job) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ModelStore(client).metadata(job)["records_applied"] == 10
    procs[0].send_signal(signal.SIGTERM)
    assert stop_all(procs) == [0]
