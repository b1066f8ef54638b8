"""Row journals (``initialize(..., journal=True)``): a commit writes the rows it changed as one
patch, holders catch up from the patches alone, folds bring the chunks up to date, and the
values are those of the same pushes on a key without a journal, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn.statestore.base import StateError
from streamlearn.statestore.local import LocalState, MemoryBackend

ROWS, WIDTH = 1_000, 3


class CountingBackend(MemoryBackend):
    """Counts the whole-key reads of journaled keys (chunks + patches)."""

    def __init__(self) -> None:
        super().__init__()
        self.full_reads = 0

    def read_journaled(self, key, dests):
        self.full_reads += 1
        return super().read_journaled(key, dests)


def _declare(backend, journal: bool, dtype: str = "float32") -> None:
    state = LocalState(backend)
    start = np.random.default_rng(1).standard_normal((ROWS, WIDTH)).astype(dtype)
    state.initialize("w", start, dtype=dtype, chunk_rows=64, journal=journal)
    state.commit()


def _pushes(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        rows = np.unique(rng.integers(0, ROWS, 30))
        yield rows, rng.standard_normal((len(rows), WIDTH)) * 1e-3


def test_a_commit_writes_its_rows_as_a_patch_and_holders_catch_up_from_patches():
    backend = CountingBackend()
    _declare(backend, journal=True)
    writer, reader = LocalState(backend), LocalState(backend)
    start = reader.pull("w").copy()
    chunks_before = {i: c.copy() for i, c in backend._chunks["w"].items()}
    rows, delta = next(_pushes(2))
    writer.push("w", delta, rows=rows)
    writer.commit()
    assert all(np.array_equal(chunks_before[i], c) for i, c in backend._chunks["w"].items())  # no chunk rewritten
    reader.refresh()
    reads = backend.full_reads
    got = reader.pull("w", rows=rows)
    assert backend.full_reads == reads  # from the patch alone
    np.testing.assert_array_equal(got, (start[rows] + delta).astype(np.float32))
    untouched = np.setdiff1d(np.arange(ROWS), rows)
    np.testing.assert_array_equal(reader.pull("w")[untouched], start[untouched])


def test_journaled_values_equal_plain_ones_bit_for_bit_across_folds():
    plain, journaled = MemoryBackend(), CountingBackend()
    _declare(plain, journal=False)
    _declare(journaled, journal=True)
    writers = [LocalState(journaled) for _ in range(2)]
    reference = LocalState(plain)
    for i, (rows, delta) in enumerate(_pushes(3, n=200)):  # 200 x ~30 rows: several folds of a 1,000-row key
        for state in (reference, writers[i % 2]):
            state.refresh()
            state.pull("w", rows=rows)  # as an update reads before it steps: a writer holding the key current folds
            state.push("w", delta, rows=rows)
            state.commit()
    assert journaled._journals["w"]["base"] > 0  # folded
    fresh = LocalState(journaled)
    np.testing.assert_array_equal(fresh.pull("w"), reference.pull("w"))
    for state in writers:
        state.refresh()
        np.testing.assert_array_equal(state.pull("w"), reference.pull("w"))
    # the chunks hold the last fold: at most one fold's worth of patches is kept
    kept = [f for f in journaled._journals["w"] if isinstance(f, int)]
    assert min(kept) > journaled._journals["w"]["previous"]


def test_a_holder_behind_a_dropped_patch_reads_the_key_again():
    backend = CountingBackend()
    _declare(backend, journal=True)
    laggard, writer = LocalState(backend), LocalState(backend)
    laggard.pull("w")
    for rows, delta in _pushes(4, n=150):  # two folds: the patches after the laggard's version are dropped
        writer.pull("w", rows=rows)
        writer.push("w", delta, rows=rows)
        writer.commit()
    laggard.refresh()
    reads = backend.full_reads
    np.testing.assert_array_equal(laggard.pull("w"), LocalState(backend).pull("w"))
    assert backend.full_reads == reads + 2  # the laggard's reload and the fresh state's read


def test_a_whole_key_pull_still_held_does_not_change_under_its_holder():
    backend = MemoryBackend()
    _declare(backend, journal=True)
    reader, writer = LocalState(backend), LocalState(backend)
    held = reader.pull("w")
    before = held.copy()
    rows, delta = next(_pushes(5))
    writer.push("w", delta, rows=rows)
    writer.commit()
    reader.refresh()
    assert not np.array_equal(reader.pull("w"), before)
    np.testing.assert_array_equal(held, before)  # the caller's array: copied before the patch went in


def test_the_version_of_a_journaled_key_is_that_of_its_patches():
    backend = MemoryBackend()
    _declare(backend, journal=True)
    writer = LocalState(backend)
    for rows, delta in _pushes(6, n=3):
        writer.push("w", delta, rows=rows)
        writer.commit()
    reader = LocalState(backend)
    assert reader.version("w") == 3
    np.testing.assert_array_equal(reader.pull("w"), LocalState(backend).pull("w"))


def test_a_journal_needs_rows_that_add_up():
    state = LocalState()
    for value, aggregator in ((0.0, "sum"), (np.zeros((4, 2)), "max")):
        with pytest.raises(StateError, match="row journal"):
            state.initialize("x", value, aggregator=aggregator, journal=True)
