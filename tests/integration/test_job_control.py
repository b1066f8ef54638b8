"""Job control on the real stack (issue 11): pause is a barrier (no commit lands after
``job pause`` returned; the rate reads 0 while paused) and ``job delete`` removes a job's
keys and consumer group, stopping its workers first with ``--force``."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from streamlearn.runtime.jobs import create_job, job_status, set_paused
from streamlearn.registry.records import Registry
from streamlearn.snapshots.store import ModelStore
from streamlearn.runtime.record import JOBS
from streamlearn.statestore.keys import StoreKeys
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
from tests.integration.procs import cli, start_worker, stop_all, wait_status

pytestmark = pytest.mark.integration

N = 120_000


def _median_topic(stack, n: int, partitions: int = 4, batch_size: int = 20) -> str:
    topic = f"ctl-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), topic, partitions=partitions)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, np.random.default_rng(1).normal(10, 2, (n, 1)).astype(np.float32), batch_size=batch_size)
    return topic


def test_pause_is_a_barrier_and_resume_finishes_exactly(stack, tmp_path):
    topic = _median_topic(stack, N)
    client = stack.redis_client()
    job = f"barrier-{uuid.uuid4().hex[:8]}"
    create_job(client, stack.kafka_client_conf(), job, "median", topic)
    env = {"STREAMLEARN_WORKER_MAX_MESSAGES": "50"}
    procs = [start_worker(job, tmp_path, env), start_worker(job, tmp_path, env)]
    wait_status(client, job, lambda s: s["records_applied"] > 10_000, 120, "the workers to be busy")
    keys = StoreKeys(job)
    set_paused(client, job, True)
    at_pause = (client.hget(keys.counters, "records_applied"), client.hgetall(keys.offsets))  # nothing in flight lands
    for _ in range(30):
        time.sleep(0.1)
        assert (client.hget(keys.counters, "records_applied"), client.hgetall(keys.offsets)) == at_pause
    paused = job_status(client, job)
    assert paused["state"] == "paused" and paused["records_per_second"] == 0.0
    assert paused["records_applied"] == int(at_pause[0]) < N
    set_paused(client, job, False)
    status = wait_status(client, job, lambda s: s["state"] == "finished", 300, "the job to finish")
    assert stop_all(procs) == [0, 0]
    assert status["records_applied"] == N and status["partitions"] == status["end_offsets"]
    assert float(RedisState(client, job).pull("n")) == N


def _group_exists(stack, group: str) -> bool:
    admin = AdminClient({"bootstrap.servers": stack.kafka})
    return group in {g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid}


def _job_keys(client, job: str) -> list[bytes]:
    """The job's keys in Redis, but for the model store's and the registry's (published
    snapshots and lineage stay)."""
    kept = (ModelStore.prefix(job), Registry.prefix(job))
    return [k for k in client.scan_iter(match=f"{StoreKeys(job).base}:*") if not k.decode().startswith(kept)]


def test_delete_an_idle_job_keeps_its_snapshots(stack, tmp_path):
    topic = _median_topic(stack, 500, partitions=2)
    client = stack.redis_client()
    job = f"del-idle-{uuid.uuid4().hex[:8]}"
    create_job(client, stack.kafka_client_conf(), job, "median", topic)
    assert stop_all([start_worker(job, tmp_path)]) == [0]
    assert job_status(client, job)["state"] == "finished"
    assert _job_keys(client, job) and _group_exists(stack, f"streamlearn.{job}")
    out = cli("job", "delete", job)
    assert f"deleted job {job}" in out.stdout
    assert _job_keys(client, job) == [] and not client.sismember(JOBS, job)
    assert not _group_exists(stack, f"streamlearn.{job}")
    assert ModelStore(client).versions(job) == [1]  # the published model stays, with its lineage
    assert Registry(client).job_entry(job)["algorithm"] == "median"
    res = cli("job", "status", job, check=False)
    assert res.returncode == 2 and "unknown job" in res.stderr


def test_delete_a_running_job_needs_force_which_stops_its_workers(stack, tmp_path):
    topic = _median_topic(stack, 2000, partitions=2)
    client = stack.redis_client()
    job = f"del-run-{uuid.uuid4().hex[:8]}"
    cli("job", "create", job, "--algorithm", "median", "--topic", topic, "--until", "never")
    procs = [start_worker(job, tmp_path)]
    wait_status(client, job, lambda s: s["records_applied"] == 2000 and s["members"], 60, "the worker to train")
    refused = cli("job", "delete", job, check=False)
    assert refused.returncode == 2 and "--force" in refused.stderr and refused.stderr.count("\n") == 1
    assert job_status(client, job)["state"] == "running"
    cli("job", "delete", job, "--force")
    assert stop_all(procs, timeout=30) == [0]  # stopped cleanly, not killed
    assert _job_keys(client, job) == [] and not client.sismember(JOBS, job)
    assert not _group_exists(stack, f"streamlearn.{job}")
    # the name is free again: a new job of that name starts from scratch
    cli("job", "create", job, "--algorithm", "median", "--topic", topic)
    assert job_status(client, job)["records_applied"] == 0
    procs = [start_worker(job, tmp_path)]
    assert wait_status(client, job, lambda s: s["state"] == "finished", 60, "the new job")["records_applied"] == 2000
    assert stop_all(procs) == [0]
