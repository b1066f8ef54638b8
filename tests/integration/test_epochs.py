"""Epochs (issue 11): a bounded job reads its topic range E times, exactly once per epoch,
the epoch stored with the offsets; a worker killed mid-epoch and another started in its
place end with the same state and counts. The exact ``counter`` checks every record:
integer sums are exact in float64 whatever the order of the commits."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from streamlearn.runtime.jobs import job_status
from streamlearn.snapshots.store import ModelStore
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
from tests.integration.procs import cli, start_worker, stop_all, wait_status

pytestmark = pytest.mark.integration

N, EPOCHS = 4000, 3
SLOW = {"STREAMLEARN_WORKER_MAX_MESSAGES": "1"}


@pytest.fixture(scope="module")
def values_topic(stack):
    topic = f"epochs-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), topic, partitions=3)
    values = np.arange(1, N + 1, dtype=np.float32)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, values[:, None], batch_size=40)
    return topic, values.astype(np.float64)


def _check_exact(client, job: str, values: np.ndarray) -> dict:
    status = job_status(client, job)
    assert status["state"] == "finished", status
    assert status["records_applied"] == EPOCHS * N and status["records_dead_lettered"] == 0
    assert status["epochs"] == EPOCHS and status["epoch"] == EPOCHS - 1
    assert set(status["partition_epochs"].values()) == {EPOCHS - 1}
    assert status["partitions"] == status["end_offsets"]
    assert status["finalize_calls"] == 1 and status["initialize_calls"] == 1
    state = RedisState(client, job)
    assert float(state.pull("n")) == EPOCHS * N
    assert float(state.pull("sum")[0]) == EPOCHS * values.sum()
    assert float(state.pull("xtx")[0, 0]) == EPOCHS * (values ** 2).sum()
    assert ModelStore(client).metadata(job)["records_applied"] == EPOCHS * N
    return status


def test_epochs_apply_every_record_once_per_epoch(stack, values_topic, tmp_path):
    topic, values = values_topic
    job = f"ep-{uuid.uuid4().hex[:8]}"
    out = cli("job", "create", job, "--algorithm", "counter", "--topic", topic, "--epochs", str(EPOCHS))
    assert f"{EPOCHS} epochs" in out.stdout
    procs = [start_worker(job, tmp_path), start_worker(job, tmp_path)]
    client = stack.redis_client()
    wait_status(client, job, lambda s: s["state"] == "finished", 180, "the job to finish")
    assert stop_all(procs) == [0, 0]
    _check_exact(client, job, values)


def test_epochs_resume_mid_epoch_after_a_killed_worker(stack, values_topic, tmp_path):
    topic, values = values_topic
    job = f"ep-kill-{uuid.uuid4().hex[:8]}"
    cli("job", "create", job, "--algorithm", "counter", "--topic", topic, "--param", f"epochs={EPOCHS}")
    client = stack.redis_client()
    procs = [start_worker(job, tmp_path, SLOW)]
    # partitions move through the passes at their own pace: wait until one is past the first
    mid = wait_status(client, job, lambda s: s["records_applied"] > N + 400 and max(s["partition_epochs"].values()) >= 1,
                      600, "a later pass")
    assert mid["records_applied"] < (EPOCHS - 1) * N + 400  # a slow worker: still far from the end
    procs[0].kill()
    procs[0].wait()
    killed_at = job_status(client, job)["records_applied"]
    assert N < killed_at < EPOCHS * N  # killed after the first pass, before the last record
    procs.append(start_worker(job, tmp_path, SLOW))
    procs.append(start_worker(job, tmp_path))  # elastic as ever: a second one joins
    wait_status(client, job, lambda s: s["state"] == "finished", 300, "the job to finish")
    assert stop_all(procs[1:]) == [0, 0]
    _check_exact(client, job, values)


def test_epochs_are_for_bounded_jobs_and_positive(stack, values_topic):
    topic, _ = values_topic
    for extra, message in ((["--epochs", "0"], "positive integer"),
                           (["--param", "epochs=2", "--until", "never"], "bounded job")):
        res = cli("job", "create", f"ep-bad-{uuid.uuid4().hex[:6]}", "--algorithm", "counter", "--topic", topic,
                  *extra, check=False)
        assert res.returncode == 2 and message in res.stderr, res.stderr
