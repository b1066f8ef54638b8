"""(e) Bad records land in ``<topic>.dlq`` with a reason; applied + dead-lettered == produced."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from streamlearn.runtime.jobs import create_job
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
from streamlearn.wire.serde import encode_training_batch
from tests.integration.procs import start_worker, stop_all, wait_status

pytestmark = pytest.mark.integration


def read_dlq(stack, topic: str, expected: int) -> list[dict]:
    consumer = Consumer(stack.kafka_client_conf(**{"group.id": f"dlq-reader-{uuid.uuid4().hex}",
                                                   "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    found: list[dict] = []
    try:
        for _ in range(100):
            for m in consumer.consume(num_messages=100, timeout=0.5):
                if m.error() is None:
                    found.append({k: v.decode() for k, v in (m.headers() or [])} | {"value": m.value()})
            if len(found) >= expected:
                break
    finally:
        consumer.close()
    return found


def test_bad_records_are_dead_lettered_with_reasons(stack, tmp_path):
    topic = f"bad-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), topic, partitions=2)
    good = np.arange(1000, dtype=np.float32)[:, None]
    with Producer(stack.kafka, stack.kafka_conf) as producer:
        producer.send_batch(topic, good, batch_size=100)
        producer.send_raw(topic, b"this is not avro at all")
        producer.send_raw(topic, b"\xc3\x01" + b"\x13\x37" * 4 + b"\x02\x00")  # unknown fingerprint
        producer.send_record(topic, np.array([np.nan], dtype=np.float32))
        producer.send_record(topic, np.array([1.0, 2.0], dtype=np.float32))  # median takes 1 feature
        # a batch message is accepted or rejected as a whole (send_batch would send the inf row alone)
        producer.send_raw(topic, encode_training_batch(np.array([[1.0], [np.inf], [3.0]], dtype=np.float32)))
    produced = 1000 + 1 + 1 + 1 + 1 + 3
    client = stack.redis_client()
    job = f"dlq-{uuid.uuid4().hex[:8]}"
    create_job(client, stack.kafka_client_conf(), job, "median", topic)
    procs = [start_worker(job, tmp_path)]
    status = wait_status(client, job, lambda s: s["state"] == "finished", 120, "job to finish")
    stop_all(procs)
    assert status["records_applied"] == 1000
    assert status["records_dead_lettered"] == produced - 1000
    assert status["records_applied"] + status["records_dead_lettered"] == produced
    assert float(RedisState(client, job).pull("n")) == 1000

    dead = read_dlq(stack, f"{topic}.dlq", expected=5)
    assert len(dead) == 5
    reasons = sorted(d["streamlearn.reason"] for d in dead)
    joined = " | ".join(reasons).lower()
    assert "fingerprint" in joined
    assert "nan" in joined or "inf" in joined
    assert "dimension" in joined
    assert any("single-object" in r.lower() or "magic" in r.lower() or "not avro" in r.lower() for r in reasons), reasons
    assert all(d["streamlearn.job"] == job for d in dead)
    assert sorted(int(d["streamlearn.records"]) for d in dead) == [1, 1, 1, 1, 3]
    assert any(d["value"] == b"this is not avro at all" for d in dead)


def test_a_file_with_bad_rows_trains_on_every_good_row(stack, tmp_path):
    """A user's CSV with a short row, a word for a label and a missing feature: produce
    dead-letters the first two itself (row number and text), sends the third alone so that
    the worker dead-letters only it, and the job trains on every other row."""
    from tests.integration.procs import cli

    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 3))
    y = (X @ [1.0, -1.0, 0.5] > 0).astype(int)
    lines = ["a,b,c,label"] + [f"{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},{t}" for r, t in zip(X, y)]
    lines[50] = "0.1,0.2"                    # file row 51: two fields
    lines[120] = "0.1,0.2,0.3,yes"           # file row 121: a word label
    lines[300] = "0.1,,0.3,1"                # file row 301: a missing feature
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    topic, job = f"file-{uuid.uuid4().hex[:8]}", f"file-{uuid.uuid4().hex[:8]}"
    out = cli("produce", topic, "--from", str(path), "--label-column", "label", "--partitions", "2",
              "--batch-size", "50")
    assert "produced 398 records" in out.stdout
    assert "2 rows of" in out.stderr and "row 51: 2 fields, expected 4" in out.stderr
    dead = read_dlq(stack, f"{topic}.dlq", 2)
    assert sorted((d["streamlearn.source"].rsplit(":", 1)[1], d["streamlearn.reason"], d["value"]) for d in dead) == [
        ("121", "label 'yes' is not a number", b"0.1,0.2,0.3,yes"),
        ("51", "2 fields, expected 4", b"0.1,0.2")]
    cli("job", "create", job, "--algorithm", "linear_learner", "--topic", topic, "--epochs", "3",
        "--param", "predictor_type=binary_classifier")
    procs = [start_worker(job, tmp_path)]
    final = wait_status(stack.redis_client(), job, lambda s: s["state"] in ("finished", "failed"), 120, "job end")
    assert stop_all(procs) == [0]
    assert final["state"] == "finished", final
    # every pass counts what it read; the dead letter is written once, by the first pass
    assert (final["records_applied"], final["records_dead_lettered"]) == (3 * 397, 3)
    dead = read_dlq(stack, f"{topic}.dlq", 3)
    assert [d["streamlearn.job"] for d in dead if "streamlearn.job" in d] == [job]
    assert dead[-1]["streamlearn.reason"] == "NaN or inf in features"
    consumer = Consumer(stack.kafka_client_conf(**{"group.id": f"w-{uuid.uuid4().hex}"}))
    try:
        assert consumer.get_watermark_offsets(TopicPartition(f"{topic}.dlq", 0), timeout=10)[1] == 3
    finally:
        consumer.close()
