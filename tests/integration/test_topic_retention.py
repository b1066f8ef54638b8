"""Training topics the project creates keep their records for an explicit retention
(``produce --retention``, ``Connection.produce(retention=...)``; default 7 days), read back
from the real broker's topic config."""
from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

import streamlearn as sl
from streamlearn.streams.topics import DEFAULT_RETENTION, TopicError, retention_ms
from tests.integration.procs import cli

pytestmark = pytest.mark.integration


def _retention_of(settings, topic: str) -> int:
    admin = AdminClient(settings.kafka_client_conf())
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(30)
    return int(entries["retention.ms"].value)


def test_produce_sets_the_default_and_an_explicit_retention(stack, unique_name, tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    cli("produce", unique_name + "-default", "--from", str(data), "--label-column", "label", "--partitions", "2")
    assert _retention_of(stack, unique_name + "-default") == retention_ms(DEFAULT_RETENTION) == 7 * 86_400_000
    cli("produce", unique_name + "-12h", "--from", str(data), "--label-column", "label", "--retention", "12h")
    assert _retention_of(stack, unique_name + "-12h") == 12 * 3_600_000
    bad = cli("produce", unique_name + "-bad", "--from", str(data), "--label-column", "label", "--retention", "7 days",
              check=False)
    assert bad.returncode == 2 and "retention" in bad.stderr and "Traceback" not in bad.stderr


def test_python_produce_creates_the_topic_with_its_retention(stack, unique_name):
    X = np.random.default_rng(0).normal(size=(50, 3))
    y = (X[:, 0] > 0).astype(float)
    with sl.connect() as conn:
        assert conn.produce(unique_name, X, y, partitions=1, retention="2w") == 50
        assert _retention_of(stack, unique_name) == 14 * 86_400_000
        conn.produce(unique_name, X, y, partitions=1, retention="1d")  # an existing topic keeps its own
        assert _retention_of(stack, unique_name) == 14 * 86_400_000
        conn.produce(unique_name + "-kept", X, y, partitions=1, retention="never")
        assert _retention_of(stack, unique_name + "-kept") == -1


@pytest.mark.parametrize("text, ms", [("7d", 604_800_000), ("90m", 5_400_000), ("45s", 45_000), ("500ms", 500),
                                      ("2w", 1_209_600_000), (1000, 1000), ("7", 7), ("never", -1)])
def test_retention_durations(text, ms):
    assert retention_ms(text) == ms


@pytest.mark.parametrize("text", ["", "d", "7days", "-3d", "1.5h", 0, True])
def test_bad_retention_is_a_user_error(text):
    with pytest.raises(TopicError):
        retention_ms(text)
