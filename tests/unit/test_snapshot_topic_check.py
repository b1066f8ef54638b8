"""The snapshot topic is checked once per process and cluster, and again after a failed publish."""
from __future__ import annotations

import pytest

from streamlearn.snapshots import publisher


def test_the_topic_is_checked_once_until_a_publish_fails(monkeypatch):
    checks: list[str] = []
    monkeypatch.setattr(publisher, "_check_snapshot_topic", lambda conf, *a: checks.append(conf["bootstrap.servers"]))
    monkeypatch.setattr(publisher, "_CHECKED", set())
    conf = {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300, "socket.connection.setup.timeout.ms": 1000}
    publisher.ensure_snapshot_topic(conf)
    publisher.ensure_snapshot_topic(conf)
    publisher.ensure_snapshot_topic({**conf, "bootstrap.servers": "127.0.0.1:2"})
    assert checks == ["127.0.0.1:1", "127.0.0.1:2"]
    with pytest.raises(publisher.SnapshotPublishError):  # nothing listens on port 1
        publisher.produce_snapshot(conf, "job", b"x", {"version": 1}, timeout=2.0)
    publisher.ensure_snapshot_topic(conf)
    assert checks == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1"]
