"""RedisState on a real Redis: atomic push + offsets, concurrent sums, fencing, barrier."""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from streamlearn.statestore.base import FencedError, StateError
from streamlearn.statestore.buffered import CommitInfo
from streamlearn.statestore.keys import StoreKeys
from streamlearn.statestore.redis_state import RedisState

pytestmark = pytest.mark.integration


@pytest.fixture
def job(stack):
    return f"state-{uuid.uuid4().hex[:8]}"


def test_concurrent_pushes_sum_exactly(stack, job):
    client = stack.redis_client()
    init = RedisState(client, job)
    init.initialize("v", np.zeros(5000))
    init.initialize("rows", np.zeros((1000, 4)), chunk_rows=16)

    def worker(seed: int) -> None:
        state = RedisState(stack.redis_client(), job, f"m{seed}")
        for i in range(40):
            state.push("v", np.ones(5000))
            state.push("rows", np.ones((3, 4)), rows=np.array([seed, 500 + i, 999]))
            state.commit(CommitInfo(offsets={seed: i + 1}, records_applied=1))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = RedisState(client, job)
    np.testing.assert_array_equal(state.pull("v"), np.full(5000, 160.0))
    rows = state.pull("rows")
    assert rows[999, 0] == 160 and rows[500:540, 0].tolist() == [4.0] * 40 and rows[:4, 0].tolist() == [40.0] * 4
    assert {int(k): int(v) for k, v in client.hgetall(StoreKeys(job).offsets).items()} == {0: 40, 1: 40, 2: 40, 3: 40}
    assert int(client.hget(StoreKeys(job).counters, "records_applied")) == 160


def test_reassigned_partition_fences_the_old_owner(stack, job):
    client = stack.redis_client()
    RedisState(client, job).initialize("n", 0.0)
    keys = StoreKeys(job)
    old_epoch = client.hincrby(keys.epochs, "0", 1)
    zombie = RedisState(client, job, "zombie")
    zombie.push("n", 10.0)
    client.hincrby(keys.epochs, "0", 1)  # the partition moved to another worker
    with pytest.raises(FencedError):
        zombie.commit(CommitInfo(offsets={0: 10}, fence={0: old_epoch}, records_applied=10))
    assert float(RedisState(client, job).pull("n")) == 0.0
    assert client.hget(keys.offsets, "0") is None


def test_min_max_replace_aggregators_and_errors(stack, job):
    client = stack.redis_client()
    s = RedisState(client, job)
    s.initialize("lo", np.full(3, np.inf), aggregator="min")
    s.initialize("hi", np.full(3, -np.inf), aggregator="max")
    s.initialize("last", np.zeros(3), aggregator="replace")
    s.push("lo", [3, 1, 2])
    s.push("lo", [2, 5, 2])
    s.push("hi", [3, 1, 2])
    s.push("last", [7, 8, 9])
    s.commit()
    fresh = RedisState(client, job)
    assert fresh.pull("lo").tolist() == [2, 1, 2] and fresh.pull("hi").tolist() == [3, 1, 2]
    assert fresh.pull("last").tolist() == [7, 8, 9]
    with pytest.raises(StateError, match="unknown state key"):
        fresh.pull("nope")
    with pytest.raises(StateError, match="shape"):
        fresh.push("lo", np.zeros(4))
    with pytest.raises(StateError, match="already initialized"):
        fresh.initialize("lo", np.zeros(3))


def test_barrier_waits_for_live_members_and_survives_a_leaver(stack, job):
    a, b, c = (RedisState(stack.redis_client(), job, m) for m in ("a", "b", "c"))
    for s in (a, b, c):
        s.backend.heartbeat()
    passed: list[str] = []

    def wait(state: RedisState, name: str) -> None:
        state.barrier()
        passed.append(name)

    ta, tb = threading.Thread(target=wait, args=(a, "a")), threading.Thread(target=wait, args=(b, "b"))
    ta.start()
    tb.start()
    time.sleep(0.5)
    assert passed == []  # c has not arrived
    c.backend.leave()  # c leaves the job instead: the others go on
    ta.join(5)
    tb.join(5)
    assert sorted(passed) == ["a", "b"]


def test_a_commit_retried_after_a_conflict_applies_its_delta_once(stack, job):
    """A worker holding a key at its current version skips reading it back. If its EXEC
    fails because another watched key changed (here: a rival commits to ``u`` only, so
    ``w``'s version does not move), the retry must read ``w`` again, not take the values
    the failed attempt already added its delta to."""
    client = stack.redis_client()
    a = RedisState(client, job)
    a.initialize("w", np.zeros((64, 2)), chunk_rows=8)
    a.initialize("u", np.zeros(4))
    a.pull("w")
    a.pull("u")  # a holds every chunk of both at version 0
    a.push("w", np.ones((64, 2)))
    a.push("u", np.ones(4))
    other = RedisState(stack.redis_client(), job)
    backend = a.backend
    calls = []
    original = backend.transact

    def transact_with_a_rival(touched, compute, info):
        def compute_then_rival(read, versions):
            writes = compute(read, versions)
            calls.append(dict(versions))
            if len(calls) == 1:  # the rival commits after a computed, before a's EXEC
                other.push("u", np.full(4, 10.0))
                other.commit()
            return writes
        original(touched, compute_then_rival, info)

    backend.transact = transact_with_a_rival
    a.commit()
    assert len(calls) == 2  # EXEC failed once, then went through
    assert calls[1]["w"] == calls[0]["w"] and calls[1]["u"] == calls[0]["u"] + 1
    fresh = RedisState(stack.redis_client(), job)
    np.testing.assert_array_equal(fresh.pull("w"), np.ones((64, 2)))
    np.testing.assert_array_equal(fresh.pull("u"), np.full(4, 11.0))
    a.push("w", np.ones((64, 2)))
    a.commit()  # a's copy is current again (its own commit): nothing read back, still exact
    np.testing.assert_array_equal(RedisState(stack.redis_client(), job).pull("w"), np.full((64, 2), 2.0))


@pytest.mark.parametrize("protocol", [2, 3])
def test_cold_reads_and_commits_of_a_many_chunk_key_on_resp2_and_resp3(stack, job, protocol):
    """Chunks are read straight from the socket into the worker's arrays (resp_into.py):
    a cold pull and a commit that reads under WATCH give the stored values on both
    protocols, for float64 and float32 keys of several chunks."""
    client = stack.redis_client(protocol=protocol)
    a = RedisState(client, job)
    start = np.arange(300_000, dtype=np.float64).reshape(100_000, 3)
    a.initialize("w", start, chunk_rows=4096)
    a.initialize("f", start[:, 0], dtype="float32")
    a.commit()
    for _ in range(2):
        other = RedisState(stack.redis_client(protocol=protocol), job)
        other.push("w", np.ones_like(start))  # holds nothing: the commit reads every chunk
        other.push("f", np.full(100_000, 0.5))
        other.commit()
    fresh = RedisState(client, job)
    np.testing.assert_array_equal(fresh.pull("w"), start + 2)
    np.testing.assert_array_equal(fresh.pull("f"), (start[:, 0] + 1).astype(np.float32))
    assert fresh.pull("w", rows=np.array([0, 99_999])).tolist() == [[2, 3, 4], [299_999, 300_000, 300_001]]
    # finalize's consistent cut: every key, the offsets and the counters in one MULTI
    other.commit(CommitInfo(offsets={0: 7, 2: 9}, records_applied=5))
    cut = RedisState(client, job)
    offsets, counters = cut.load_consistent()
    assert offsets == {0: 7, 2: 9} and counters["records_applied"] == 5 and counters["commits"] == 4
    np.testing.assert_array_equal(cut.pull("w"), start + 2)
    np.testing.assert_array_equal(cut.pull("f"), (start[:, 0] + 1).astype(np.float32))


def test_a_missing_or_damaged_chunk_is_a_state_error_and_the_client_goes_on(stack, job):
    client = stack.redis_client()
    a = RedisState(client, job)
    a.initialize("w", np.zeros((100, 2)), chunk_rows=10)
    a.initialize("n", 5.0)
    keys = StoreKeys(job)
    client.hdel(keys.state("w"), "3")
    with pytest.raises(StateError, match="chunk 3 is missing"):
        RedisState(client, job).pull("w")
    client.hset(keys.state("w"), "3", b"\x00" * 7)
    b = RedisState(client, job)
    b.push("w", np.ones((100, 2)))
    with pytest.raises(StateError, match="chunk 3 .*wrong size"):
        b.commit()
    with pytest.raises(StateError, match="chunk 3 .*wrong size"):
        RedisState(client, job).load_consistent()
    assert float(RedisState(client, job).pull("n")) == 5.0  # the connection is still in step


@pytest.mark.parametrize("protocol", [2, 3])
def test_exec_multi_sends_buffers_as_they_are_and_reports_conflicts_and_errors(stack, job, protocol):
    """The commit's writer: more buffers than one sendmsg takes (1,500 values of 5,000
    bytes, by reference) and small arguments of every type land byte for byte; a watched
    key that changed is a WatchError; a command refused when queued, or failing when run,
    is its ResponseError, and the connection stays in step for the next command."""
    import redis

    from streamlearn.statestore.resp_into import exec_multi

    client = stack.redis_client(protocol=protocol)
    rng = np.random.default_rng(1)
    blobs = [rng.integers(0, 256, 5000, dtype=np.uint8) for _ in range(1500)]
    pairs = [x for i, b in enumerate(blobs) for x in (i, memoryview(b))]
    key = f"{job}:blobs"
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        replies = exec_multi(conn, [("HSET", key, *pairs), ("HSET", key, "small", b"x\r\ny"),
                                    ("HINCRBY", key, "count", np.int64(7)), ("SET", f"{job}:s", "é"),
                                    ("HINCRBYFLOAT", key, "f", 0.25)])
        assert replies == [1500, 1, 7, b"OK", b"0.25"] and client.get(f"{job}:s") == "é".encode()
        with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
            exec_multi(conn, [("HINCRBY", key, "count", 1), ("HSET", key)])
        with pytest.raises(redis.ResponseError, match="not an integer"):
            exec_multi(conn, [("HINCRBY", key, "small", 1)])
        conn.send_command("WATCH", f"{job}:s")
        assert conn.read_response() == b"OK"
        client.set(f"{job}:s", "changed")  # another client: the watched key moves
        with pytest.raises(redis.WatchError):
            exec_multi(conn, [("HINCRBY", key, "count", 100)])
        assert exec_multi(conn, [("HINCRBY", key, "count", 1)]) == [8]  # still in step
    finally:
        pool.release(conn)
    stored = client.hmget(key, list(range(1500)) + ["small"])
    assert all(s == b.tobytes() for s, b in zip(stored, blobs)) and stored[-1] == b"x\r\ny"
    assert client.get(f"{job}:s") == b"changed"
