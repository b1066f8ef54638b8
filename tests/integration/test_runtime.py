"""The core runtime end to end, on a real Kafka broker and a real Redis (issue 2, tests a–e).

Workers are real processes (``python -m streamlearn worker``); faults are real signals.
"""
from __future__ import annotations

import signal
import uuid

import numpy as np
import pytest

from streamlearn.runtime.jobs import create_job, job_status, set_paused
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
from tests.integration.procs import start_worker, stop_all, wait_status

pytestmark = pytest.mark.integration

N_RECORDS = 200_000
PARTITIONS = 6
# small update steps so the job lasts long enough for members to join and leave mid-job
SLOW = {"STREAMLEARN_WORKER_MAX_MESSAGES": "1"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def median_topic(stack):
    """200,000 values (median ≈ 100) in 6 partitions, as batch messages of 20 records."""
    topic = unique("median")
    ensure_topic(stack.kafka_client_conf(), topic, partitions=PARTITIONS)
    values = np.random.default_rng(7).normal(100.0, 15.0, N_RECORDS).astype(np.float32)
    with Producer(stack.kafka, stack.kafka_conf) as producer:
        producer.send_batch(topic, values[:, None], batch_size=20)
    return topic, float(np.median(values))


def finished(s: dict) -> bool:
    return s["state"] == "finished"


def final_n(client, job: str) -> float:
    return float(RedisState(client, job).pull("n"))


def test_elastic_median_exactly_once(stack, median_topic, tmp_path):
    """(a) workers join and leave mid-job; every record is applied exactly once."""
    topic, true_median = median_topic
    client = stack.redis_client()
    job = unique("med-elastic")
    create_job(client, stack.kafka_client_conf(), job, "median", topic)
    procs = [start_worker(job, tmp_path, SLOW), start_worker(job, tmp_path, SLOW)]
    wait_status(client, job, lambda s: s["records_applied"] > 20_000, 120, "first records")
    procs.append(start_worker(job, tmp_path, SLOW))  # a third joins
    joined_at = wait_status(client, job, lambda s: len(s["members"]) == 3, 60, "three members")["records_applied"]
    procs[0].send_signal(signal.SIGTERM)  # one leaves gracefully
    procs[0].wait(30)
    left_at = job_status(client, job)["records_applied"]
    status = wait_status(client, job, finished, 300, "job to finish")
    stop_all(procs)
    assert joined_at < N_RECORDS and left_at < N_RECORDS, "membership changed only after the data ran out"
    assert status["records_applied"] == N_RECORDS
    assert status["records_dead_lettered"] == 0
    assert final_n(client, job) == N_RECORDS
    assert status["finalize_calls"] == 1 and status["initialize_calls"] == 1
    assert status["partitions"] == status["end_offsets"]
    median = float(RedisState(client, job).pull("median"))
    assert abs(median - true_median) <= 0.02 * abs(true_median)


def test_sigkill_mid_batch_loses_and_duplicates_nothing(stack, median_topic, tmp_path):
    """(b) SIGKILL a worker while it processes, restart it: still exactly 200,000."""
    topic, _ = median_topic
    client = stack.redis_client()
    job = unique("med-kill")
    create_job(client, stack.kafka_client_conf(), job, "median", topic)
    procs = [start_worker(job, tmp_path, SLOW), start_worker(job, tmp_path, SLOW)]
    wait_status(client, job, lambda s: s["records_applied"] > 30_000, 120, "records before the kill")
    procs[1].kill()
    procs[1].wait()
    killed_at = job_status(client, job)["records_applied"]
    procs.append(start_worker(job, tmp_path, SLOW))
    status = wait_status(client, job, finished, 300, "job to finish")
    stop_all(procs)
    assert killed_at < N_RECORDS
    assert status["records_applied"] == N_RECORDS
    assert final_n(client, job) == N_RECORDS
    assert status["finalize_calls"] == 1


def test_pause_resume_continues_from_stored_offsets(stack, median_topic, tmp_path):
    """(c) pause stops progress, resume continues from stored offsets; no second initialize."""
    topic, _ = median_topic
    client = stack.redis_client()
    job = unique("med-pause")
    create_job(client, stack.kafka_client_conf(), job, "median", topic)
    procs = [start_worker(job, tmp_path, SLOW)]
    wait_status(client, job, lambda s: s["records_applied"] > 10_000, 120, "records before the pause")
    set_paused(client, job, True)
    import time

    time.sleep(1.5)  # let an in-flight batch land
    paused = job_status(client, job)
    time.sleep(2.0)
    still = job_status(client, job)
    assert paused["state"] == "paused"
    assert still["records_applied"] == paused["records_applied"] < N_RECORDS
    assert still["partitions"] == paused["partitions"]
    procs.append(start_worker(job, tmp_path, SLOW))  # a worker started while paused waits too
    time.sleep(1.0)
    assert job_status(client, job)["records_applied"] == paused["records_applied"]
    set_paused(client, job, False)
    status = wait_status(client, job, finished, 300, "job to finish")
    stop_all(procs)
    assert status["records_applied"] == N_RECORDS
    assert final_n(client, job) == N_RECORDS
    assert status["initialize_calls"] == 1
