"""The faust ingest app on the real local Kafka: JSON events -> Avro training topic + DLQ.

The app runs as ``python -m streamlearn.ingest.app`` (what ``streamlearn ingest`` calls)
in a subprocess; the run is bounded: once the app's consumer group has committed the raw
topic's end offsets, the test sends SIGTERM and the app flushes, commits and exits.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from streamlearn.batch import SparseRows
from streamlearn.devstack.procs import terminate
from streamlearn.wire.decode import decode_messages
from streamlearn.ingest.app import default_app_id, dlq_topic
from streamlearn.streams.topics import end_offsets, ensure_topic
from tests.integration.procs import wait_for

pytestmark = pytest.mark.integration

D = 4
REPO = Path(__file__).resolve().parents[2]


def make_events(n_good: int, seed: int = 0):
    """(raw messages as (key, value bytes), expected good rows by key, expected reasons by key)."""
    rng = np.random.default_rng(seed)
    raw, good, bad = [], {}, {}
    for i in range(n_good):
        key = f"g{i}"
        x = np.round(rng.normal(size=D), 3).astype(np.float32)
        ev: dict = {"key": key, "label": float(i % 2), "event_time": 1_700_000_000_000 + i}
        if i % 3 == 0:  # sparse form
            nz = np.flatnonzero(rng.random(D) < 0.5)
            x = np.zeros(D, dtype=np.float32)
            x[nz] = np.round(rng.normal(size=len(nz)), 3)
            ev.update(indices=nz.tolist(), values=x[nz].tolist(), n_features=D)
        else:
            ev["features"] = x.tolist()
        if i % 5 == 0:
            ev["weight"] = 0.5
        good[key] = (x, ev["label"], ev.get("weight", 1.0))
        raw.append((key.encode(), json.dumps(ev).encode()))
    bad_events = [
        (b"{not json", "not JSON (Expecting property name enclosed in double quotes at char 1)"),
        (json.dumps({"features": [1, 2]}).encode(), f"dimension 2 != {D}"),
        (json.dumps({"features": [1, 2, 3, 4]}).encode(), "missing label"),
        (b'{"features": [1, 2, NaN, 4], "label": 1}', "NaN or inf in features"),
        (json.dumps({"indices": [0, D], "values": [1, 1], "label": 0}).encode(), f"sparse index out of range [0, {D})"),
        (json.dumps({"features": [1, 2, 3, 4], "label": 1, "weight": -2}).encode(), "negative weight"),
        (json.dumps({"features": [1, 2, 3, 4], "label": 1, "lable": 1}).encode(), "unknown field(s): 'lable'"),
        (json.dumps([1, 2, 3, 4]).encode(), "event is not a JSON object"),
    ]
    for j, (value, why) in enumerate(bad_events):
        key = f"b{j}"
        bad[key] = why
        # spread the bad ones through the stream
        raw.insert((j * 37) % (len(raw) + 1), (key.encode(), value))
    return raw, good, bad


def produce(stack, topic: str, raw) -> None:
    p = Producer(stack.kafka_client_conf(**{"linger.ms": 5}))
    for key, value in raw:
        p.produce(topic, value, key=key)
    assert p.flush(30) == 0


def read_all(stack, topic: str) -> list:
    """Every committed message of ``topic`` (read_committed), up to its end offsets now."""
    conf = stack.kafka_client_conf()
    ends = end_offsets(conf, topic)
    c = Consumer(stack.kafka_client_conf(**{"group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False,
                                            "isolation.level": "read_committed"}))
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    out, done = [], {p for p, e in ends.items() if e == 0}
    try:
        def step():
            for m in c.consume(500, timeout=0.5):
                if m.error() is not None:
                    continue
                out.append(m)
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
            # the last offsets of a transactional topic are commit markers, never delivered
            for tp in c.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    done.add(tp.partition)
            return len(done) == len(ends)
        wait_for(step, 30, f"reading {topic}", interval=0)
    finally:
        c.close()
    return out


def committed(stack, group: str, topic: str, partitions) -> dict[int, int] | None:
    """The group's committed offsets (None while the broker's group coordinator is not ready)."""
    c = Consumer(stack.kafka_client_conf(**{"group.id": group, "enable.auto.commit": False}))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    except KafkaException:
        return None
    finally:
        c.close()


def run_ingest(stack, tmp_path: Path, raw_topic: str, out_topic: str, *extra: str) -> str:
    """Run the app until its group committed the raw topic's end offsets; SIGTERM; its log."""
    log_path = tmp_path / f"ingest-{uuid.uuid4().hex[:6]}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlearn", "ingest", raw_topic, "--to", out_topic,
                                 "--n-features", str(D), "--label-required", *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    try:
        ends = end_offsets(stack.kafka_client_conf(), raw_topic)
        group = default_app_id(raw_topic, out_topic)

        def caught_up():
            if proc.poll() is not None:
                raise AssertionError(f"ingest exited early ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            return committed(stack, group, raw_topic, ends) == ends
        try:
            wait_for(caught_up, 40, "the ingest app to commit the raw topic's end offsets", interval=0.3)
        except AssertionError:
            raise AssertionError(log_path.read_text()[-4000:]) from None
    finally:
        code = terminate(proc, 30)  # SIGTERM: the ingest app leaves cleanly
    assert code == 0, log_path.read_text()[-3000:]
    return log_path.read_text()


def dense_rows(X) -> np.ndarray:
    if not isinstance(X, SparseRows):
        return np.asarray(X)
    out = np.zeros(X.shape, dtype=np.float32)
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        out[i, X.indices[lo:hi]] = X.values[lo:hi]
    return out


def check_outputs(stack, raw_topic, out_topic, good, bad, log: str, *, batched: bool) -> None:
    msgs = read_all(stack, out_topic)
    res = decode_messages([m.value() for m in msgs], D, accepts_sparse=True, needs_label=True)
    assert res.rejected == []
    batch = res.batch
    assert len(batch) == len(good)  # every good event exactly once (no crash here: no duplicates)
    assert sorted(batch.keys) == sorted(good)
    X = dense_rows(batch.X)
    for i, key in enumerate(batch.keys):
        x, y, w = good[key]
        np.testing.assert_array_equal(X[i], x, err_msg=key)
        assert batch.y[i] == y and batch.w[i] == w, key
    if batched:
        assert len(msgs) < len(good)  # training_batch messages carry many events
    else:
        assert len(msgs) == len(good)
        assert {m.key().decode() for m in msgs} == set(good)  # the event key is the Kafka key

    dead = read_all(stack, dlq_topic(raw_topic))
    reasons = {m.key().decode(): dict((k, v.decode()) for k, v in m.headers()) for m in dead}
    assert {k: h["streamlearn.reason"] for k, h in reasons.items()} == bad
    assert all(h["streamlearn.records"] == "1" and h["streamlearn.source"].startswith(f"{raw_topic}/")
               for h in reasons.values())
    assert f"ingest totals: forwarded={len(good)} dead_lettered={len(bad)}" in log
    return msgs


def test_ingest_forwards_good_events_and_dead_letters_bad_ones(stack, tmp_path):
    raw_topic, out_topic = f"raw-{uuid.uuid4().hex[:8]}", f"train-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), raw_topic, 2)
    raw, good, bad = make_events(300)
    produce(stack, raw_topic, raw)
    log = run_ingest(stack, tmp_path, raw_topic, out_topic)
    check_outputs(stack, raw_topic, out_topic, good, bad, log, batched=False)
    assert len(end_offsets(stack.kafka_client_conf(), out_topic)) == 2  # created like the raw topic
    # faust's, mode's and aiokafka's bookkeeping (109 lines for a run like this) only with -v
    assert "Starting..." not in log and "Subscription" not in log and "\x1b" not in log, log
    assert len(log.splitlines()) <= 6, log


def test_ingest_exactly_once_with_batches(stack, tmp_path):
    """Kafka transactions (faust ``processing_guarantee="exactly_once"``) on Kafka 4.3."""
    raw_topic, out_topic = f"raw-{uuid.uuid4().hex[:8]}", f"train-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), raw_topic, 2)
    raw, good, bad = make_events(300, seed=1)
    produce(stack, raw_topic, raw)
    log = run_ingest(stack, tmp_path, raw_topic, out_topic, "--exactly-once", "--batch-size", "64", "-v")
    assert "TransactionManager" in log  # faust's own INFO lines, shown with -v
    check_outputs(stack, raw_topic, out_topic, good, bad, log, batched=True)
    # NOT asserted: that the training topic's writes were transactional (commit markers).
    # faust derives a send's transactional_id from the *destination* topic's assignor group;
    # the training topic is no source of this app, and one run showed markers, another none.


def test_missing_raw_topic_is_a_user_error(stack):
    res = subprocess.run([sys.executable, "-m", "streamlearn", "ingest", f"nope-{uuid.uuid4().hex[:8]}",
                          "--to", "x", "--n-features", "3"], capture_output=True, text=True, timeout=60,
                         cwd=str(REPO))
    assert res.returncode == 2
    assert "does not exist" in res.stderr
