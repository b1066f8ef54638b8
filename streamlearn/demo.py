"""``streamlearn demo``: the whole system once, on the local stack.

Starts the stack, produces 100,000 synthetic events into a 4-partition topic, trains a
linear learner with 2 workers while a 3rd joins mid-job, publishes the snapshot, follows
it with a ModelSubscriber and prints the accuracy on held-out data.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import numpy as np

from streamlearn.batch import Batch
from streamlearn.config import Settings
from streamlearn.datasets import dense_classification
from streamlearn.devstack import stack
from streamlearn.runtime.jobs import JobError, create_job, job_status, set_paused
from streamlearn.snapshots.subscriber import ModelSubscriber
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic, training_topic_config

N_TRAIN, N_TEST, N_FEATURES = 100_000, 20_000, 20


def _wait(client, job: str, predicate, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(client, job)
        if predicate(status):
            return status
        time.sleep(0.2)
    raise RuntimeError(f"demo: job {job} did not get there in {timeout} s: {job_status(client, job)}")


def _pause(client, job: str) -> bool:
    """Pause ``job``; False when it has ended already."""
    try:
        set_paused(client, job, True)
    except JobError:
        return False
    return True


def run_demo() -> float:
    try:
        settings = Settings.resolve()
    except Exception:
        print("starting the local stack (Kafka KRaft + Redis)...", flush=True)
        settings = stack.up()
    env = {**os.environ, **settings.env(),
           "STREAMLEARN_WORKER_MAX_MESSAGES": "1"}  # one 100-event message per commit: a job long enough to watch
    client = settings.redis_client()
    run = uuid.uuid4().hex[:6]
    topic, job = f"demo-events-{run}", f"demo-{run}"

    X, y = dense_classification(N_TRAIN + N_TEST, d=N_FEATURES, seed=1)
    ensure_topic(settings.kafka_client_conf(), topic, partitions=4, config=training_topic_config())
    t0 = time.perf_counter()
    with Producer(settings.kafka, settings.kafka_conf) as producer:
        producer.send_batch(topic, X[:N_TRAIN], y[:N_TRAIN], batch_size=100)
    print(f"produced {N_TRAIN} events to {topic} (4 partitions) in {time.perf_counter() - t0:.1f} s")

    create_job(client, settings.kafka_client_conf(), job, "linear_learner", topic,
               {"n_features": N_FEATURES, "predictor_type": "binary_classifier"})
    print(f"created job {job}: linear_learner, 32 packed models, until end of data")
    cmd = [sys.executable, "-m", "streamlearn", "worker", job]
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    t0 = time.perf_counter()
    status = _wait(client, job, lambda s: s["records_applied"] >= N_TRAIN // 4 or s["state"] == "finished", 300)
    # a worker's start-up (imports, compiled kernels: seconds) can outlast the rest of this small
    # job: paused, the job waits for the 3rd worker to join instead of finishing without it
    paused = _pause(client, job)
    print(f"2 workers applied {status['records_applied']} records; "
          f"{'job paused while ' if paused else ''}a 3rd worker starts and joins")
    workers.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    status = _wait(client, job, lambda s: len(s["members"]) == 3 or s["state"] == "finished", 120)
    if paused:
        set_paused(client, job, False)
    print(f"{len(status['members'])} members at {status['records_applied']} records applied"
          f"{'; job resumed' if paused else ''}")
    status = _wait(client, job, lambda s: s["state"] == "finished", 600)
    for w in workers:
        w.wait(60)
    elapsed = time.perf_counter() - t0
    print(f"job finished: {status['records_applied']} records applied, {status['records_dead_lettered']} "
          f"dead-lettered, {elapsed:.1f} s, snapshot version {status['snapshot_version']}")

    with ModelSubscriber(job, settings.kafka, settings.kafka_conf) as subscriber:
        model = subscriber.wait_for(status["snapshot_version"], timeout=60)
    predictions = model.evaluate(Batch(X[N_TRAIN:]))
    accuracy = float(np.mean(predictions == y[N_TRAIN:]))
    print(f"snapshot loaded from streamlearn.snapshots; accuracy on {N_TEST} held-out events: {accuracy:.4f}")
    print(f"try: streamlearn job status {job} ; streamlearn predict {job} --from FILE.csv")
    return accuracy


if __name__ == "__main__":
    run_demo()
