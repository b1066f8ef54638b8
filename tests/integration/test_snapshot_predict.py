"""(d) A finished job's snapshot, followed by a ModelSubscriber, predicts exactly what the
finalized model predicts; ``streamlearn predict`` writes one JSON line per record."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from streamlearn.batch import Batch
from streamlearn.datasets import dense_classification
from streamlearn.runtime.jobs import create_job, load_spec
from streamlearn.snapshots.subscriber import ModelSubscriber
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
from tests.integration.procs import cli, start_worker, stop_all, wait_status

pytestmark = pytest.mark.integration


def test_subscriber_model_predicts_like_the_finalized_model(stack, tmp_path):
    # 20,000 records: at 500 rows per update step two concurrent workers make ~40 steps;
    # with 5,000 (10 steps, pairwise stale) one pass lands 0.02-0.04 below the peer
    X, y = dense_classification(22000, d=10, seed=3)
    X_train, y_train, X_test, y_test = X[:20000], y[:20000], X[20000:], y[20000:]
    topic = f"ll-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), topic, partitions=3)
    with Producer(stack.kafka, stack.kafka_conf) as producer:
        producer.send_batch(topic, X_train, y_train, batch_size=500)
    client = stack.redis_client()
    job = f"ll-{uuid.uuid4().hex[:8]}"
    create_job(client, stack.kafka_client_conf(), job, "linear_learner", topic,
               {"n_features": "10", "predictor_type": "binary_classifier", "num_models": "4"})
    procs = [start_worker(job, tmp_path), start_worker(job, tmp_path)]
    status = wait_status(client, job, lambda s: s["state"] == "finished", 180, "job to finish")
    stop_all(procs)
    assert status["records_applied"] == 20000 and status["snapshot_version"] is not None

    finalized = load_spec(client, job).algorithm_instance().finalize(RedisState(client, job))
    test_batch = Batch(X_test)
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf) as sub:
        model = sub.wait_for(status["snapshot_version"], timeout=60)
        assert sub.version == status["snapshot_version"]
    np.testing.assert_array_equal(model.evaluate(test_batch), finalized.evaluate(test_batch))
    accuracy = float(np.mean(model.evaluate(test_batch) == y_test))
    from sklearn.linear_model import LogisticRegression

    peer = LogisticRegression().fit(X_train, y_train).score(X_test, y_test)
    assert accuracy >= peer - 0.02, (accuracy, peer)  # one streaming pass, two workers

    csv = tmp_path / "test.csv"
    csv.write_text("\n".join([",".join(f"f{i}" for i in range(10))] +
                             [",".join(f"{v:.7g}" for v in row) for row in X_test[:50]]) + "\n")
    out = tmp_path / "pred.jsonl"
    cli("predict", job, "--from", str(csv), "--output", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 50
    expected = finalized.evaluate(Batch(np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.float32)))
    assert [row["prediction"] for row in lines] == [float(v) if isinstance(row["prediction"], float) else int(v)
                                                   for row, v in zip(lines, expected)]
    assert all("score" in row for row in lines)
