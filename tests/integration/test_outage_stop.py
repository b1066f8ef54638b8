"""A worker asked to stop (SIGTERM) while Redis is down leaves cleanly: exit 0, no
traceback. Nothing it holds was committed, so its records are consumed again from the
stored offsets; an error exit here made the chaos suite count an operator's scale-down
during a Redis restart as a crash."""
from __future__ import annotations

import signal
import time
import uuid

import numpy as np
import pytest

from streamlearn.devstack import stack as st
from streamlearn.runtime.jobs import create_job, job_status
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
from tests.integration.procs import start_worker, wait_for

pytestmark = pytest.mark.integration


def test_sigterm_while_redis_is_down_exits_cleanly(make_stack, tmp_path):
    ls = make_stack(redis_aof=True)
    s = ls.settings
    client = s.redis_client()
    topic, job = f"o-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    ensure_topic(s.kafka_client_conf(), topic, partitions=2)
    with Producer(s.kafka, s.kafka_conf) as producer:
        producer.send_batch(topic, np.arange(2000, dtype=np.float32).reshape(-1, 1), batch_size=100)
    create_job(client, s.kafka_client_conf(), job, "median", topic, {}, until="never")
    worker = start_worker(job, tmp_path, env=s.env())
    try:
        wait_for(lambda: job_status(client, job)["records_applied"] == 2000, 60, "the records applied")
        st.stop_redis(ls.home, kill=True)
        time.sleep(2.0)  # the worker's next heartbeat meets the outage and it starts retrying
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
        st.start_redis(ls.home)
    log = next(tmp_path.glob("worker-*.log")).read_text()
    assert code == 0, log[-2000:]
    assert "stopping during an outage" in log and "Traceback" not in log
    assert job_status(s.redis_client(), job)["records_applied"] == 2000  # nothing applied twice
