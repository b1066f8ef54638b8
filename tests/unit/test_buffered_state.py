"""The buffered commit point (shared by LocalState and RedisState), on the memory backend."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn.statestore.base import StateError
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
    assert sorted(state._pending["e"]) == [0, 9]
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
