"""The buffered commit point (shared by LocalState and RedisState), on the memory backend."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn.statestore.base import StateError
from streamlearn.statestore import buffered
from streamlearn.statestore.buffered import CommitInfo
from streamlearn.statestore.local import LocalState, MemoryBackend


def test_pull_sees_own_pending_pushes_and_commit_applies_them_once():
    backend = MemoryBackend()
    a, b = LocalState(backend), LocalState(backend)
    a.initialize("w", np.zeros((10, 2)), chunk_rows=3)
    a.push("w", np.ones((10, 2)))
    assert a.pull("w").sum() == 20 and b.pull("w").sum() == 0  # not visible before commit
    a.commit(CommitInfo(offsets={0: 5}, records_applied=5))
    b.refresh()
    assert b.pull("w").sum() == 20
    assert backend.offsets == {0: 5} and backend.records_applied == 5
    a.commit()  # nothing pending: nothing applied twice
    b.refresh()
    assert b.pull("w").sum() == 20


def test_row_pushes_touch_only_their_chunks_and_duplicates_add_up():
    state = LocalState()
    state.initialize("e", np.zeros((100, 3)), chunk_rows=10)
    state.push("e", np.ones((3, 3)), rows=np.array([5, 5, 97]))
    assert state.pending_chunks("e") == [0, 9]
    state.commit()
    got = state.pull("e", rows=np.array([97, 5, 6]))
    np.testing.assert_array_equal(got[:, 0], [1.0, 2.0, 0.0])


@pytest.mark.parametrize("agg,init,pushes,expected", [
    ("sum", 0.0, [1.0, 2.0], 3.0),
    ("min", np.inf, [4.0, 2.0, 3.0], 2.0),
    ("max", -np.inf, [4.0, 6.0, 3.0], 6.0),
    ("replace", 0.0, [4.0, 6.0], 6.0),
])
def test_aggregators(agg, init, pushes, expected):
    state = LocalState()
    state.initialize("x", np.full(2, init), aggregator=agg)
    for v in pushes:
        state.push("x", np.full(2, v))
    state.commit()
    assert state.pull("x").tolist() == [expected, expected]


def test_clear_errors():
    state = LocalState()
    state.initialize("s", 1.0)
    with pytest.raises(StateError, match="unknown state key"):
        state.push("t", 1.0)
    with pytest.raises(StateError, match="scalar"):
        state.pull("s", rows=np.array([0]))
    with pytest.raises(StateError, match="aggregator"):
        state.initialize("u", 0.0, aggregator="avg")
    state.initialize("m", np.zeros((4, 2)))
    with pytest.raises(StateError, match="out of range"):
        state.push("m", np.zeros((1, 2)), rows=np.array([4]))


_REFERENCE_OPS = {"sum": np.add, "min": np.minimum, "max": np.maximum}


@pytest.mark.parametrize("agg", ["sum", "min", "max", "replace"])
@pytest.mark.parametrize("seed", range(4))
def test_random_pushes_pulls_and_commits_match_a_plain_array(agg, seed):
    """Two workers on one backend, random dense and row pushes (sorted, unsorted, with
    duplicates), commits and refreshes: every pull equals a plain numpy model of
    "global value combined with my pending pushes"."""
    rng = np.random.default_rng(seed)
    backend = MemoryBackend()
    workers = [LocalState(backend), LocalState(backend)]
    shape = (37, 3)
    workers[0].initialize("k", np.zeros(shape), aggregator=agg, chunk_rows=int(rng.integers(1, 9)))
    workers[0].commit()
    glob = np.zeros(shape)
    pending = [None, None]  # per worker: list of (rows or None, delta) in push order

    def apply(base, pushes):
        out = base.copy()
        for rows, delta in pushes or []:
            if rows is None:
                rows, delta = np.arange(shape[0]), delta
            for r, d in zip(rows, delta):
                if agg == "replace":
                    out[r] = np.where(np.isnan(d), out[r], d)
                else:
                    out[r] = _REFERENCE_OPS[agg](out[r], d)
        return out

    for _ in range(60):
        i = int(rng.integers(2))
        w = workers[i]
        op = rng.random()
        if op < 0.45:
            if rng.random() < 0.3:
                rows, delta = None, rng.normal(size=shape)
                w.push("k", delta)
            else:
                rows = rng.integers(0, shape[0], int(rng.integers(1, 12)))
                if rng.random() < 0.5:
                    rows = np.unique(rows)
                delta = rng.normal(size=(len(rows), shape[1]))
                w.push("k", delta, rows=rows)
            pending[i] = (pending[i] or []) + [(rows, delta)]
        elif op < 0.65:
            w.commit()
            glob = apply(glob, pending[i])
            pending[i] = None
        else:
            w.refresh()  # a pull after refresh sees every commit so far
            expected = apply(glob, pending[i])
            rows = rng.integers(0, shape[0], 5)
            np.testing.assert_allclose(w.pull("k", rows=rows), expected[rows])
            np.testing.assert_allclose(w.pull("k"), expected)


def test_a_pulled_array_never_changes_under_its_holder():
    """Whole-key pulls hand out the worker's own copy read-only (no copy); later commits and
    re-reads must write into a new copy, not into what a caller (e.g. a model) holds."""
    backend = MemoryBackend()
    a, b = LocalState(backend), LocalState(backend)
    a.initialize("w", np.zeros((6, 2)), chunk_rows=2)
    a.commit()
    held = a.pull("w")
    with pytest.raises(ValueError):
        held[0, 0] = 1.0
    a.push("w", np.ones((6, 2)))
    a.commit()  # writes the new values into a's copy of the key
    b.push("w", np.ones((2, 2)), rows=np.array([0, 5]))
    b.commit()
    a.refresh()
    now = a.pull("w")  # re-reads what b changed
    assert held.sum() == 0.0
    assert now.sum() == 12.0 + 4.0


class _CountingBackend(MemoryBackend):
    """The memory backend, counting the chunks a commit reads back under its lock."""

    def __init__(self) -> None:
        super().__init__()
        self.commit_reads = 0

    def transact(self, touched, compute, info):
        def counted(read, versions):
            def reading(key, dests, filled):
                self.commit_reads += len(dests)
                return read(key, dests, filled)
            return compute(reading, versions)
        super().transact(touched, counted, info)


def test_a_lone_writer_reads_nothing_back_but_a_concurrent_commit_forces_a_read():
    backend = _CountingBackend()
    a, b = LocalState(backend), LocalState(backend)
    a.initialize("w", np.zeros((8, 2)), chunk_rows=2)
    a.commit()
    a.pull("w")  # every chunk loaded at version 0
    a.push("w", np.ones((8, 2)))
    a.commit()
    assert backend.commit_reads == 0  # held at the key's version: nothing read back
    a.push("w", np.ones((2, 2)), rows=np.array([0, 7]))
    a.commit()  # chunks 0 and 3 were written by a's last commit: still current
    assert backend.commit_reads == 0
    b.push("w", np.ones((1, 2)), rows=np.array([7]))
    b.commit()  # b never loaded anything: it must read chunk 3
    assert backend.commit_reads == 1
    a.push("w", np.ones((1, 2)), rows=np.array([7]))
    a.commit()  # b moved the key's version: a's copy of chunk 3 is stale and is read again
    assert backend.commit_reads == 2
    b.refresh()
    np.testing.assert_array_equal(b.pull("w")[:, 0], [2, 1, 1, 1, 1, 1, 1, 4])


def test_after_a_commit_a_worker_keeps_only_what_is_current_as_of_that_commit():
    backend = MemoryBackend()
    a, b = LocalState(backend), LocalState(backend)
    a.initialize("w", np.zeros((8, 1)), chunk_rows=2)
    a.pull("w")  # all 4 chunks at version 0
    a.push("w", np.ones((1, 1)), rows=np.array([0]))
    a.commit()  # only a wrote since version 0: chunks 1-3 stay held, no re-read needed
    assert a._views["w"].loaded.all()
    b.push("w", np.full((1, 1), 5.0), rows=np.array([7]))
    b.commit()  # chunk 3 changes behind a's back
    a.push("w", np.ones((1, 1)), rows=np.array([0]))
    a.commit()  # the key moved past what a held: a keeps only the chunk it wrote
    assert a._views["w"].loaded.tolist() == [True, False, False, False]
    np.testing.assert_array_equal(a.pull("w")[:, 0], [2, 0, 0, 0, 0, 0, 0, 5])  # no refresh needed


@pytest.mark.parametrize("aggregator, start, pushes, expected", [
    ("sum", 1.0, [2.0, 3.0], 6.0),
    ("min", 5.0, [7.0, 4.0], 4.0),
    ("max", 5.0, [3.0, 6.0], 6.0),
    ("replace", 5.0, [3.0, 8.0], 8.0),
])
def test_a_commit_over_every_held_chunk_combines_the_whole_key_at_once(aggregator, start, pushes, expected):
    """Every chunk dirty and held at the current version: one whole-array combine
    (``_KeyView.apply_held``); the stored value and a second worker's view agree."""
    backend = MemoryBackend()
    a = LocalState(backend)
    a.initialize("k", np.full((10, 3), start), aggregator=aggregator, chunk_rows=4)
    a.commit()
    a.pull("k")
    for value in pushes:
        a.push("k", np.full((10, 3), value))
        a.commit()
    np.testing.assert_array_equal(a.pull("k"), np.full((10, 3), expected))
    np.testing.assert_array_equal(LocalState(backend).pull("k"), np.full((10, 3), expected))


# -- the "step" aggregator: concurrent workers' steps merge, a lone worker's add up ----------
def _workers(n: int, init: np.ndarray, dtype: str = "float64"):
    backend = MemoryBackend()
    states = [LocalState(backend) for _ in range(n)]
    states[0].initialize("p", init, aggregator="step", dtype=dtype, chunk_rows=2)
    states[0].initialize("n", 0.0)
    states[0].commit()
    return backend, states


def test_a_lone_workers_steps_add_up_like_a_sum_key():
    _, (a,) = _workers(1, np.zeros((4, 2)))
    for k in range(3):
        a.pull("p")
        a.push("p", np.full((4, 2), k + 1.0))
        a.commit()
    np.testing.assert_array_equal(LocalState(a.backend).pull("p"), np.full((4, 2), 6.0))


def test_concurrent_steps_from_one_start_average_where_both_stepped_and_add_where_one_did():
    base = np.arange(8, dtype=np.float64).reshape(4, 2)
    _, (a, b) = _workers(2, base)
    for s in (a, b):  # both read the same state, then step: rows 0-1 both, row 2 only a, row 3 only b
        s.pull("p")
        s.push("n", 1.0)
    a.push("p", np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [0.0, 0.0]]))
    b.push("p", np.array([[5.0, 5.0], [4.0, 4.0], [0.0, 0.0], [7.0, 7.0]]))
    a.commit()
    b.commit()
    got = LocalState(a.backend).pull("p")
    np.testing.assert_allclose(got, base + np.array([[3.0, 3.0], [3.0, 3.0], [3.0, 3.0], [7.0, 7.0]]))
    assert float(LocalState(a.backend).pull("n")) == 2.0  # a "sum" key still counts every push


def test_a_third_concurrent_worker_gets_an_equal_share():
    _, (a, b, c) = _workers(3, np.zeros((2, 1)))
    for s in (a, b, c):
        s.pull("p")
    for s, v in ((a, 3.0), (b, 6.0), (c, 12.0)):
        s.push("p", np.full((2, 1), v))
    for s in (a, b, c):
        s.commit()
    np.testing.assert_allclose(LocalState(a.backend).pull("p"), np.full((2, 1), 7.0))  # (3 + 6 + 12) / 3


def test_a_worker_that_read_after_anothers_commit_adds_its_whole_step():
    _, (a, b) = _workers(2, np.zeros((2, 2)), dtype="float32")
    a.pull("p")
    a.push("p", np.ones((2, 2)))
    a.commit()
    b.pull("p")  # reads a's commit: b's step builds on it, nothing concurrent
    b.push("p", np.full((2, 2), 2.0))
    b.commit()
    got = LocalState(a.backend).pull("p")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full((2, 2), 3.0, np.float32))


class _ReadCountingBackend(MemoryBackend):
    """The memory backend, counting the chunks read outside a commit (pulls, prefetch)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self, key, dests):
        self.reads += len(dests)
        return super().read(key, dests)


def test_prefetch_reads_the_keys_nothing_of_is_held_and_then_steps_read_nothing():
    backend = _ReadCountingBackend()
    a, b = LocalState(backend), LocalState(backend)
    a.initialize("w", np.arange(16.0).reshape(8, 2), chunk_rows=2)
    a.initialize("n", 0.0)
    a.commit()
    a.prefetch()
    assert backend.reads == 4 + 1  # every chunk of w and the scalar
    np.testing.assert_array_equal(a.pull("w", rows=np.array([7, 0])), [[14.0, 15.0], [0.0, 1.0]])
    assert float(a.pull("n")) == 0.0 and backend.reads == 5  # the step found everything held
    a.prefetch()
    assert backend.reads == 5  # all held: nothing read again
    b.push("w", np.ones((1, 2)), rows=np.array([7]))
    b.commit()
    a.push("w", np.ones((1, 2)), rows=np.array([0]))
    a.commit()  # b moved w: a holds only the chunk it wrote; n, not written, is to be read again
    reads = backend.reads
    a.prefetch()
    assert backend.reads == reads + 1  # n; w, partly held, is left to the steps that need it
    np.testing.assert_array_equal(a.pull("w")[:, 0], [1, 2, 4, 6, 8, 10, 12, 15])


def test_prefetch_leaves_keys_over_its_limit_to_the_steps(monkeypatch):
    """A key larger than PREFETCH_MAX_BYTES (a sharded model larger than a worker's memory)
    is never read whole while idle: the steps read the rows they touch."""
    monkeypatch.setattr(buffered, "PREFETCH_MAX_BYTES", 8 * 8)
    backend = _ReadCountingBackend()
    a = LocalState(backend)
    a.initialize("big", np.zeros((9, 1)), chunk_rows=3)  # 72 bytes
    a.initialize("small", np.zeros((8, 1)), chunk_rows=4)  # 64 bytes
    a.commit()
    a.prefetch()
    assert backend.reads == 2  # the two chunks of small
    a.pull("big", rows=np.array([4]))
    assert backend.reads == 3  # one chunk of big, by the step


def test_prefetch_clears_the_delta_a_commit_left_and_pushes_after_it_add_up():
    """Idle time takes what the next step would otherwise pay: a commit that wrote most of a
    key leaves its values in the delta (``stale``), and prefetch clears it (and touches every
    page of a delta never used); the pushes after it commit the right values."""
    a = LocalState()
    a.initialize("w", np.zeros((8, 2)), chunk_rows=2)
    a.commit()
    a.prefetch()
    view = a._views["w"]
    assert not view.stale and not view.delta.any()
    a.push("w", np.ones((8, 2)))
    a.commit()
    assert view.stale  # every chunk written: clearing the delta was left for later
    a.prefetch()
    assert not view.stale and not view.delta.any()
    a.push("w", np.full((1, 2), 2.0), rows=np.array([3]))
    a.commit()
    np.testing.assert_array_equal(LocalState(a.backend).pull("w")[:, 0], [1, 1, 1, 3, 1, 1, 1, 1])
