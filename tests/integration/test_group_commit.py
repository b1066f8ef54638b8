"""Group commit: the windows that arrive while a worker applies one share its commit, and a
rebalance in between drops what was applied (nothing counted twice). An in-process
``Worker`` on the real stack, with a counter whose first update waits for the test, so
that records arrive while it is busy; the rebalance comes from a second member of the
job's consumer group (a real Kafka consumer)."""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from streamlearn.algorithms import register
from streamlearn.algorithms.counter import Counter, CounterModel
from streamlearn.runtime.jobs import create_job, load_spec
from streamlearn.runtime.worker import Worker
from streamlearn.statestore.redis_state import RedisState
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic, partitions
from tests.integration.procs import wait_for, wait_status

pytestmark = pytest.mark.integration


class _GatedCounter(Counter):
    """The counter, whose first update blocks until ``gate`` is set (``entered`` says it waits)."""

    name = "_test_gated_counter"
    entered = threading.Event()
    gate = threading.Event()

    def update(self, state, batch) -> None:
        cls = type(self)
        if not cls.entered.is_set():
            cls.entered.set()
            assert cls.gate.wait(120), "the test never opened the gate"
        super().update(state, batch)


class _GatedCounterModel(CounterModel):
    algorithm = "_test_gated_counter"


class _GatedPoisonedCounter(_GatedCounter):
    """The gated counter, whose update raises on a record of value -1 (a poison pill)."""

    name = "_test_gated_poisoned_counter"
    entered = threading.Event()
    gate = threading.Event()

    def update(self, state, batch) -> None:
        if (np.asarray(batch.X) < 0).any():
            raise ValueError("poisoned record")
        super().update(state, batch)


class _GatedPoisonedCounterModel(CounterModel):
    algorithm = "_test_gated_poisoned_counter"


register(_GatedCounter, _GatedCounterModel)
register(_GatedPoisonedCounter, _GatedPoisonedCounterModel)


@pytest.fixture(params=[_GatedCounter])
def gated(request):
    cls = request.param
    cls.entered.clear()
    cls.gate.clear()
    yield cls
    cls.gate.set()  # a failed test leaves no worker blocked


def _produce(stack, topic: str, values: np.ndarray) -> None:
    with Producer(stack.kafka, stack.kafka_conf) as producer:
        producer.send_batch(topic, values.reshape(-1, 1).astype(np.float32), batch_size=1)
        producer.flush()


def _running(stack, job: str) -> tuple[Worker, threading.Thread]:
    worker = Worker(job, stack)
    thread = threading.Thread(target=worker.run, name=f"worker-{job}", daemon=True)
    thread.start()
    return worker, thread


def _fetched(stack, topic: str, messages: int) -> None:
    """Wait until the topic holds ``messages``, then give the worker's consumer (blocked in an
    update, fetching in the background) time to fetch them."""
    conf = stack.kafka_client_conf()
    probe = Consumer({**conf, "group.id": f"probe-{uuid.uuid4().hex[:8]}"})
    try:
        wait_for(lambda: sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                             for p in partitions(conf, topic)) >= messages, 60, f"{messages} messages on {topic}")
    finally:
        probe.close()
    time.sleep(2.0)


def test_windows_that_arrive_during_an_update_share_one_commit(stack, gated):
    client, conf = stack.redis_client(), stack.kafka_client_conf()
    topic, job = f"group-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    ensure_topic(conf, topic, partitions=1)
    _produce(stack, topic, np.array([1.0]))
    create_job(client, conf, job, gated.name, topic, {"dim": 1}, until="never")
    worker, thread = _running(stack, job)
    try:
        assert gated.entered.wait(120), "the worker never took its first window"
        _produce(stack, topic, np.arange(2.0, 32.0))  # 30 more, one record a message
        _fetched(stack, topic, 31)
        gated.gate.set()
        wait_status(client, job, lambda s: s["records_applied"] == 31, 60, "31 records applied")
        commits = worker.metrics.registry.get_sample_value("streamlearn_worker_commit_seconds_count", {"job": job})
        assert commits == 1  # one window of 1 message, then 30 that arrived meanwhile: one commit
        assert float(RedisState(client, job).pull("sum")[0]) == float(np.arange(1.0, 32.0).sum())
    finally:
        worker.stop()
        thread.join(60)


def test_a_rebalance_during_a_group_drops_what_it_applied(stack, gated):
    """A member joins while the worker holds applied, uncommitted windows: the consume that
    brings the next ones serves the rebalance, the partitions start again from their stored
    offsets, and what was applied is dropped, not committed under the new epochs (which
    would count the re-delivered records twice)."""
    client, conf = stack.redis_client(), stack.kafka_client_conf()
    topic, job = f"group-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    ensure_topic(conf, topic, partitions=2)
    values = np.arange(1.0, 41.0)
    _produce(stack, topic, values[:2])
    create_job(client, conf, job, gated.name, topic, {"dim": 1}, until="never")
    worker, thread = _running(stack, job)
    other = Consumer({**conf, "group.id": load_spec(client, job).group_id, "enable.auto.commit": False,
                      "partition.assignment.strategy": "roundrobin", "session.timeout.ms": 10_000})
    stop_polling = threading.Event()
    try:
        assert gated.entered.wait(120), "the worker never took its first window"
        _produce(stack, topic, values[2:])
        other.subscribe([topic])
        poller = threading.Thread(target=lambda: [other.poll(0.1) for _ in iter(stop_polling.is_set, True)],
                                  daemon=True)
        poller.start()  # joins the group: the worker's next consume serves the rebalance
        _fetched(stack, topic, len(values))
        gated.gate.set()
        wait_for(lambda: worker.metrics.registry.get_sample_value(
            "streamlearn_worker_batches_dropped_total", {"job": job, "reason": "rebalanced"}), 60,
            "the applied windows dropped at the rebalance")
        stop_polling.set()
        poller.join(10)
        other.close()  # the worker gets every partition back, from the stored offsets
        wait_status(client, job, lambda s: s["records_applied"] == len(values), 120, "every record applied")
        state = RedisState(client, job)
        assert float(state.pull("n")) == len(values) and float(state.pull("sum")[0]) == float(values.sum())
    finally:
        stop_polling.set()
        worker.stop()
        thread.join(60)


@pytest.mark.parametrize("gated", [_GatedPoisonedCounter], indirect=True)
def test_a_record_that_fails_in_a_later_window_loses_none_of_the_earlier_windows(stack, gated):
    """Isolating a record whose update raises drops the pending pushes, which in a group are
    the earlier windows' too: the worker applies the windows again, each with its own commit,
    so every good record is in the state once and the bad one is dead-lettered once."""
    client, conf = stack.redis_client(), stack.kafka_client_conf()
    topic, job = f"group-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    ensure_topic(conf, topic, partitions=1)
    values = np.arange(1.0, 32.0)
    values[20] = -1.0
    _produce(stack, topic, values[:1])
    create_job(client, conf, job, gated.name, topic, {"dim": 1}, until="never")
    worker, thread = _running(stack, job)
    try:
        assert gated.entered.wait(120), "the worker never took its first window"
        _produce(stack, topic, values[1:])  # 30 more, one record a message, the 20th poisoned
        _fetched(stack, topic, len(values))
        gated.gate.set()
        status = wait_status(client, job, lambda s: s["records_applied"] + s["records_dead_lettered"] == len(values),
                             60, "every record applied or dead-lettered")
        assert status["records_applied"] == len(values) - 1 and status["records_dead_lettered"] == 1
        good = values[values > 0]
        state = RedisState(client, job)
        assert float(state.pull("n")) == len(good) and float(state.pull("sum")[0]) == float(good.sum())
    finally:
        worker.stop()
        thread.join(60)
