"""Incremental training on the real stack: ``job create --from-snapshot`` for every kind of
algorithm. A job over topic A, then a job continued from its snapshot over topic B, against
one job over A∪B: the exact counter ends with the same state; the linear learner (SGD,
every packed model with its accumulators and normalization statistics carried over) is at
least as good as the A-only model and within 0.003 accuracy of one pass over A∪B."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from streamlearn import datasets as D
from streamlearn.algorithms.base import training_state
from streamlearn.batch import Batch
from streamlearn.runtime.jobs import load_spec
from streamlearn.snapshots.format import decode_snapshot, load_model
from streamlearn.snapshots.parts import WHOLE_BYTES_ENV, Manifest
from streamlearn.snapshots.publisher import snapshot_topic
from streamlearn.snapshots.store import ModelStore
from streamlearn.snapshots.verified import stored_snapshot
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import end_offsets, ensure_topic
from tests.integration.procs import cli, start_worker, stop_all

pytestmark = pytest.mark.integration


def _topics(stack, parts: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> dict[str, str]:
    names = {}
    for key, (X, y) in parts.items():
        names[key] = f"inc-{key}-{uuid.uuid4().hex[:8]}"
        ensure_topic(stack.kafka_client_conf(), names[key], partitions=2)
        with Producer(stack.kafka, stack.kafka_conf) as p:
            p.send_batch(names[key], X, y, batch_size=200)
    return names


def _run(job: str, tmp_path, *args: str) -> None:
    cli("job", "create", job, *args)
    assert stop_all([start_worker(job, tmp_path)]) == [0]


def _counter_continued(stack, tmp_path, seed: int, rows: tuple[int, int], dim: int) -> tuple[object, str, str]:
    """Counter jobs over A, over B continued from A's snapshot, and over A∪B: the continued
    one ends with the state of the one over A∪B. Returns (client, job A, job B)."""
    rng = np.random.default_rng(seed)
    A, B = (rng.integers(-9, 10, (n, dim)).astype(np.float32) for n in rows)
    topics = _topics(stack, {"a": (A, None), "b": (B, None), "ab": (np.vstack([A, B]), None)})
    tag = uuid.uuid4().hex[:6]
    _run(f"cnt-a-{tag}", tmp_path, "--algorithm", "counter", "--topic", topics["a"], "--param", f"dim={dim}")
    _run(f"cnt-b-{tag}", tmp_path, "--algorithm", "counter", "--topic", topics["b"],
         "--from-snapshot", f"cnt-a-{tag}")
    _run(f"cnt-ab-{tag}", tmp_path, "--algorithm", "counter", "--topic", topics["ab"], "--param", f"dim={dim}")
    client = stack.redis_client()
    continued, whole = (training_state(RedisState(client, j)) for j in (f"cnt-b-{tag}", f"cnt-ab-{tag}"))
    assert sorted(continued) == sorted(whole)
    for key in whole:
        np.testing.assert_array_equal(continued[key], whole[key], err_msg=key)
    assert float(whole["n"]) == sum(rows)
    return client, f"cnt-a-{tag}", f"cnt-b-{tag}"


def test_counter_continued_on_b_has_the_state_of_one_job_over_a_and_b(stack, tmp_path):
    client, job_a, job_b = _counter_continued(stack, tmp_path, 3, (1500, 1100), 3)
    # lineage: the job's spec and its snapshot name the model it was continued from
    assert load_spec(client, job_b).parent == {"job": job_a, "version": 1}
    meta = ModelStore(client).metadata(job_b)
    assert meta["trained_from"] == {"job": job_a, "version": 1} and meta["training_state"] is True


def _published(stack, job: str) -> list[bytes]:
    """What the snapshot topic holds under ``job``'s key."""
    topic = snapshot_topic()
    ends = {p: end for p, end in end_offsets(stack.kafka_client_conf(), topic).items() if end > 0}
    consumer = Consumer(stack.kafka_client_conf(**{"group.id": f"read-{uuid.uuid4().hex}", "enable.auto.commit": False,
                                                   "fetch.max.bytes": 80 << 20}))
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    found, deadline = [], time.monotonic() + 60
    while ends and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        if msg.key() == job.encode():
            found.append(msg.value())
        if msg.offset() + 1 >= ends.get(msg.partition(), 0):
            ends.pop(msg.partition(), None)
    consumer.close()
    assert not ends, f"the snapshot topic was not read to its end: {ends}"
    return found


def test_the_topic_carries_the_model_alone_and_the_store_keeps_its_training_state(stack, tmp_path):
    """Only ``--from-snapshot`` reads the training state (a factorization machine's is twice its
    model): the snapshot topic gets the model without it, the very bytes the store holds as
    the version; the store keeps the state beside them, and a job continued from it ends with
    the state of one job over A and B."""
    client, job_a, _ = _counter_continued(stack, tmp_path, 5, (700, 500), 3)
    store = ModelStore(client)
    published = _published(stack, job_a)
    assert published and all(message == store.get(job_a, 1) for message in published)
    topic_snapshot = decode_snapshot(published[0], job=job_a)
    assert topic_snapshot.state == {} and topic_snapshot.metadata["training_state"] is True
    kept = stored_snapshot(store, job_a, 1, with_state=True)
    assert sorted(kept.state) == ["n", "sum", "xtx"] and float(kept.state["n"]) == 700
    assert store.metadata(job_a, 1)["state_bytes"] == len(store.get_state(job_a, 1))


def test_linear_learner_continued_on_b_is_near_one_pass_over_a_and_b(stack, tmp_path):
    X, y = D.dense_classification(34000, d=20, seed=21)
    # a small A (its model is not saturated yet), a larger B, 20,000 held-out rows
    (XA, yA), (XB, yB), (Xt, yt) = (X[:1000], y[:1000]), (X[1000:14000], y[1000:14000]), (X[14000:], y[14000:])
    topics = _topics(stack, {"a": (XA, yA), "b": (XB, yB), "ab": (X[:14000], y[:14000])})
    tag = uuid.uuid4().hex[:6]
    params = ["--algorithm", "linear_learner", "--param", "num_models=8", "--param", "mini_batch_size=200",
              "--epochs", "1"]
    _run(f"ll-a-{tag}", tmp_path, "--topic", topics["a"], *params)
    _run(f"ll-b-{tag}", tmp_path, "--algorithm", "linear_learner", "--topic", topics["b"],
         "--from-snapshot", f"ll-a-{tag}", "--epochs", "1")
    _run(f"ll-ab-{tag}", tmp_path, "--topic", topics["ab"], *params)
    store = ModelStore(stack.redis_client())
    snapshots = {k: stored_snapshot(store, f"ll-{k}-{tag}", 1, with_state=True) for k in ("a", "b", "ab")}
    assert snapshots["b"].metadata["params"]["num_models"] == 8  # the parent's parameters carried over
    assert float(snapshots["b"].state["n"]) > float(snapshots["a"].state["n"])
    acc = {k: load_model(s).score(Batch(Xt, yt), "accuracy") for k, s in snapshots.items()}
    assert acc["b"] >= acc["a"], acc
    assert abs(acc["b"] - acc["ab"]) <= 0.003, acc


def test_a_snapshot_in_parts_on_one_redis_carries_its_state_and_is_continued(stack, tmp_path, monkeypatch):
    """One plain Redis, one message lowered to 64 KiB (the setting reaches the workers and the
    CLI): the counter's snapshot (X'X in the model and in the state, 80 KB each) is stored in
    parts with its training state, and a job continued from it ends with the state of one job
    over A and B."""
    monkeypatch.setenv(WHOLE_BYTES_ENV, str(64 << 10))
    client, job_a, _ = _counter_continued(stack, tmp_path, 4, (600, 400), 100)
    store = ModelStore(client)
    assert store.redis.get(store.key(job_a, 1)) is None  # not one value
    manifest = Manifest.from_bytes(store.redis.get(f"{store.key(job_a, 1)}:parts"))
    assert len(manifest.parts) >= 3 and store.metadata(job_a, 1)["training_state"] is True
