"""``ModelSubscriber(shadow=True)`` on the real broker: a newer snapshot runs beside the
served model on the same inputs; the served answers do not change until ``promote``."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from streamlearn.algorithms.median import MedianModel
from streamlearn.batch import Batch
from streamlearn.snapshots import ModelSubscriber
from streamlearn.snapshots.format import KEY_ENV, encode_snapshot
from streamlearn.snapshots.publisher import publish_snapshot

pytestmark = pytest.mark.integration


def _publish(stack, job: str, median: float, version: int) -> None:
    metadata = {"job": job, "version": version, "records_applied": 10}
    publish_snapshot(stack.kafka_client_conf(), stack.redis_client(), job, encode_snapshot(MedianModel(median, 10), metadata),
                     metadata)


def _until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_shadow_serves_the_current_model_and_reports_agreement_of_the_candidate(stack, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    job = f"shadow-{uuid.uuid4().hex[:8]}"
    batch = Batch(np.zeros((40, 1), dtype=np.float32))
    _publish(stack, job, 2.0, 1)
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf, shadow=True) as sub:
        sub.wait_for(1, timeout=60)
        assert sub.candidate is None
        np.testing.assert_array_equal(sub.evaluate(batch), np.full(40, 2.0))
        assert sub.agreement()["rows"] == 0  # no candidate: nothing compared

        _publish(stack, job, 2.01, 2)  # within 1 %: agrees
        _until(lambda: sub.candidate is not None, "version 2 in shadow")
        assert sub.version == 1 and sub.candidate.version == 2
        np.testing.assert_array_equal(sub.evaluate(batch), np.full(40, 2.0))  # still the served model's answers
        sub.evaluate(batch)
        report = sub.agreement()
        assert report == {"current": 1, "candidate": 2, "rows": 80, "agreement": 1.0,
                          "mean_abs_diff": pytest.approx(0.01), "candidate_errors": 0}

        _publish(stack, job, 3.0, 3)  # a newer candidate replaces version 2, and its counts
        _until(lambda: sub.candidate.version == 3, "version 3 in shadow")
        np.testing.assert_array_equal(sub.evaluate(batch), np.full(40, 2.0))
        report = sub.agreement()
        assert (report["candidate"], report["rows"], report["agreement"]) == (3, 40, 0.0)

        assert sub.promote() == 3
        assert sub.version == 3 and sub.candidate is None
        np.testing.assert_array_equal(sub.evaluate(batch), np.full(40, 3.0))
