"""``watermarks`` right after a topic was created: the broker may answer "not leader" for
a moment (seen in a benchmark run: create_job failed on a topic made 10 ms before). Those
answers are retried; other errors fail at once with the partition named. The broker is
replaced by a stub consumer here because the transient state cannot be produced on demand."""
from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamlearn.streams import topics


class _Consumer:
    answers: list = []

    def __init__(self, conf):
        pass

    def get_watermark_offsets(self, tp, timeout, cached):
        answer = self.answers.pop(0)
        if isinstance(answer, int):
            raise KafkaException(KafkaError(answer))
        return answer

    def close(self):
        pass


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(topics, "Consumer", _Consumer)
    monkeypatch.setattr(topics, "partitions", lambda conf, topic, timeout: [0])
    return _Consumer


def test_not_leader_right_after_creation_is_retried(stub):
    stub.answers = [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, (0, 7)]
    assert topics.watermarks({"bootstrap.servers": "x"}, "t", timeout=5.0) == {0: (0, 7)}
    assert stub.answers == []


def test_other_errors_fail_at_once_naming_the_partition(stub):
    stub.answers = [KafkaError.TOPIC_AUTHORIZATION_FAILED, (0, 7)]
    with pytest.raises(topics.TopicError, match=r"t\[0\]"):
        topics.watermarks({"bootstrap.servers": "x"}, "t", timeout=5.0)
    assert stub.answers == [(0, 7)]


def test_a_leader_that_never_comes_fails_after_the_timeout(stub):
    stub.answers = [KafkaError.NOT_LEADER_FOR_PARTITION] * 1000
    with pytest.raises(topics.TopicError, match="Not leader|NOT_LEADER"):
        topics.watermarks({"bootstrap.servers": "x"}, "t", timeout=0.3)
