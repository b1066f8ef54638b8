"""Regressions for bugs the chaos runs pointed at, reproduced deterministically.

These use the session stack (nothing is restarted); the fault is injected in-process.
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from streamlearn.statestore.buffered import CommitInfo
from streamlearn.statestore import resp_into
from streamlearn.statestore.redis_state import RedisState

pytestmark = pytest.mark.chaos


def _lose_exec_reply_once(monkeypatch):
    """The next commit's EXEC is applied by Redis but its reply is lost (a Redis restart
    between the two): the connection drops after the transaction went through, which the
    commit sees as a connection error during EXEC."""
    real = resp_into.exec_multi
    calls = {"n": 0}

    def flaky(conn, commands):
        replies = real(conn, commands)
        if not calls["n"]:
            calls["n"] += 1
            conn.disconnect()
            raise redis.ConnectionError("connection lost before EXEC's reply (injected)")
        return replies

    monkeypatch.setattr(resp_into, "exec_multi", flaky)  # what exec_watched calls
    return calls


def test_commit_whose_exec_reply_is_lost_is_not_applied_twice(stack, monkeypatch):
    client = stack.redis_client()
    job = f"lost-reply-{uuid.uuid4().hex[:8]}"
    setup = RedisState(client, job)
    setup.initialize("n", 0.0)
    setup.initialize("v", np.zeros(3))
    setup.commit()
    client.hset(f"sl:{{{job}}}:offsets", mapping={"0": 100})
    client.hset(f"sl:{{{job}}}:epochs", mapping={"0": 4})

    worker = RedisState(client, job, "w1")
    worker.push("n", 10.0)
    worker.push("v", np.array([1.0, 2.0, 3.0]))
    calls = _lose_exec_reply_once(monkeypatch)
    worker.commit(CommitInfo(offsets={0: 110}, fence={0: 4}, records_applied=10))
    monkeypatch.undo()

    assert calls["n"] >= 1
    fresh = RedisState(client, job)
    assert float(fresh.pull("n")) == 10.0, "the batch was applied twice"
    assert fresh.pull("v").tolist() == [1.0, 2.0, 3.0]
    assert int(client.hget(f"sl:{{{job}}}:counters", "records_applied")) == 10
    assert int(client.hget(f"sl:{{{job}}}:offsets", "0")) == 110
