"""(e) Bad records land in ``<topic>.dlq`` with a reason; applied + dead-lettered == produced."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer

from streamlearn.runtime.jobs import create_job
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
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
        producer.send_batch(topic, np.array([[1.0], [np.inf], [3.0]], dtype=np.float32), batch_size=3)
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
