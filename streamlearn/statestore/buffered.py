"""Buffered pushes and the commit point, shared by every State implementation.

A worker's pushes are held in a local buffer (per key, per chunk of rows) and applied
to the global state in one atomic step together with the offsets of the records that
produced them (``commit``). Each aggregator has an identity element, so a buffer starts
as "no change" and a pull sees ``combine(global, pending)``.

Backends (memory, Redis) only store chunks and run the atomic read-modify-write; all
array logic lives here once.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Callable, Iterable, Protocol, TypeVar

import numpy as np

from streamlearn.backends import kernels
from streamlearn.statestore import journal
from streamlearn.statestore.base import KeySpec, StateError

#: fills each destination array (chunk id -> a writable C-contiguous array of the chunk's
#: shape and the key's dtype) with that chunk's stored value, calling ``filled(chunk id)``
#: as each one is done (so combining a chunk overlaps the transfer of the next)
Reader = Callable[[str, dict[int, np.ndarray], Callable[[int], object]], None]
Writes = dict[str, dict[int, np.ndarray]]
#: a commit's computation: (read chunks under the lock, the touched keys' versions there) -> writes
Compute = Callable[[Reader, dict[str, int]], Writes]

_IDENTITY = {"sum": 0.0, "step": 0.0, "min": np.inf, "max": -np.inf, "replace": np.nan}
#: aggregators whose deltas add up (``step``: merged at commit instead when others wrote first, :meth:`_KeyView.merge`)
ADDITIVE = ("sum", "step")
#: the largest key a worker reads whole while idle (:meth:`BufferedState.prefetch`)
PREFETCH_MAX_BYTES = 256 << 20
T = TypeVar("T")


def combine(aggregator: str, current: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Aggregate ``delta`` into ``current`` (both the same shape)."""
    if aggregator in ADDITIVE:
        return current + delta
    if aggregator == "min":
        return np.minimum(current, delta)
    if aggregator == "max":
        return np.maximum(current, delta)
    return np.where(np.isnan(delta), current, delta)  # replace; NaN = "not replaced"


@dataclass
class CommitInfo:
    """What a commit records besides the state: the batch's offsets and counts.

    ``fence`` maps each partition to the epoch this worker got when it was assigned the
    partition; a backend rejects the commit (``FencedError``) if any epoch moved on.
    ``data_epochs`` maps a partition to the data pass (``--epochs``) its new offset belongs
    to, written with the offset; ``dead_letter_reason`` is the reason of one record this
    commit dead-letters (the job keeps the first ever, for ``job status``). ``event_times``
    maps a partition to the (earliest, latest) Kafka timestamp, in ms, of the messages whose
    records this commit applies: the job's event-time range grows with the commit that
    applies the records, so it is exactly as true as the offsets (data lineage).
    """

    offsets: dict[int, int] = field(default_factory=dict)
    fence: dict[int, int] = field(default_factory=dict)
    records_applied: int = 0
    records_dead_lettered: int = 0
    data_epochs: dict[int, int] = field(default_factory=dict)
    dead_letter_reason: str | None = None
    #: (member, its whole data profile including this batch), written with the offsets it covers;
    #: None: the profile is not written this time (written at most every few seconds)
    profile: tuple[str, bytes] | None = None
    event_times: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: a check-and-set: state key -> the version (commits that wrote it) this commit was
    #: computed from; if any moved, the commit applies nothing and raises ``StaleCommit``
    #: (what makes a synchronous round's step apply once, :mod:`streamlearn.runtime.rounds`)
    expect: dict[str, int] = field(default_factory=dict)


class StateBackend(Protocol):
    def specs(self) -> dict[str, KeySpec]: ...

    def declare(self, spec: KeySpec, chunks: dict[int, np.ndarray]) -> None: ...

    def read(self, key: str, dests: dict[int, np.ndarray]) -> int:
        """Fill ``dests`` (see :data:`Reader`) and return the key's version (commits that
        wrote it), both as of one instant."""

    def transact(self, touched: dict[str, list[int]], compute: Compute, info: CommitInfo) -> None:
        """Atomically: the touched keys' versions, ``compute``'s reads, its writes (each
        written key's version + 1), ``info``; or nothing (conflict: compute again)."""

    def barrier(self) -> None: ...

    def live_members(self) -> int:
        """Members of the job now (heartbeats within the timeout; at least this one)."""

    def lease(self, name: str) -> bool:
        """Whether this member holds the job-wide lease ``name`` (taken now if free)."""


class _KeyView:
    """One key as this worker sees it: the global value as last read (chunk by chunk) and
    the pending delta of this worker's pushes, both as whole arrays of the key's shape.

    Whole arrays make every pull and push one vectorized numpy operation, whatever the
    number of chunks a batch touches (a 2^20-row sparse key touches thousands of chunks
    per batch; bookkeeping them one by one cost more than the update itself). Only the
    chunk masks say what is loaded and what is dirty. A sum key's delta starts as
    ``np.zeros``, whose pages the OS maps lazily, so an untouched part costs no memory.
    """

    __slots__ = ("spec", "values", "loaded", "version", "delta", "dirty", "shared", "stale", "journal")

    def __init__(self, spec: KeySpec):
        self.spec = spec
        self.values = np.empty(spec.shape, dtype=spec.dtype)
        self.loaded = np.zeros(spec.n_chunks, dtype=bool)
        # the key's version each loaded chunk was read (or written) at; -1 = not known. A
        # commit that finds the key still at that version need not read the chunk again.
        self.version = np.full(spec.n_chunks, -1, dtype=np.int64)
        identity = _IDENTITY[spec.aggregator]
        # float32 keys (large row-sparse keys) hold their pending delta in float32 too: the
        # delta is gathered and scattered at random rows every step, and float64 doubled the
        # memory those accesses touch and hold (FM on 2^20 features: a 151 MB delta for a
        # 75 MB key; fit_local FM 3-5 % faster). A row's delta sums the few pushes between
        # two commits; the stored value is float32 either way.
        dt = np.float32 if np.dtype(spec.dtype) == np.float32 else np.float64
        self.delta = np.zeros(spec.shape, dt) if identity == 0.0 else np.full(spec.shape, identity, dt)
        self.dirty = np.zeros(spec.n_chunks, dtype=bool)
        # ``delta`` still holds a committed batch's values and means "no change" everywhere:
        # clearing most of a large key is left to the next push, which for a whole-key push
        # is one copy over it instead of a fill and an add (20 ms of an 80 MB commit)
        self.stale = False
        self.shared = False  # ``values`` was handed out by a pull: copy before writing into it
        self.journal = _Journaled() if spec.journal else None

    def chunk(self, cid: int) -> slice | EllipsisType:
        """Index of chunk ``cid`` in the whole arrays (a scalar key's one chunk: ``...``,
        which keeps a 0-d view where ``()`` would give a copy)."""
        if not self.spec.shape:
            return ...
        c = self.spec.chunk_rows_
        return slice(cid * c, (cid + 1) * c)

    def load(self, backend: "StateBackend", ids: np.ndarray) -> None:
        """Read the chunks among ``ids`` that are not loaded yet."""
        missing = ids[~self.loaded[ids]].tolist()
        if missing:
            self._own()
            version = backend.read(self.spec.name, self.dests(missing))
            self.loaded[missing] = True
            self.version[missing] = version

    def dests(self, ids: list[int]) -> dict[int, np.ndarray]:
        """The chunks ``ids`` of ``values`` as destinations for a backend's read (the caller
        has made ``values`` its own)."""
        return {cid: self.values[self.chunk(cid)] for cid in ids}

    def _combine_at(self, idx: slice | EllipsisType) -> np.ndarray:
        """``values[idx]`` (the current global value, just read or held) combined in place
        with the pending delta (in float64, stored as the key's dtype); returns that view."""
        out = self.values[idx]
        if self.spec.aggregator in ADDITIVE and out.ndim == 2 and kernels.compiled():
            kernels.add_into(out, self.delta[idx])
        elif self.spec.aggregator in ADDITIVE:
            np.add(out, self.delta[idx], out=out, dtype=np.float64, casting="same_kind")
        else:
            out[...] = combine(self.spec.aggregator, out.astype(np.float64), self.delta[idx])
        return out

    def apply(self, cid: int) -> np.ndarray:
        """Chunk ``cid`` combined in place with the pending delta (see :meth:`_combine_at`)."""
        return self._combine_at(self.chunk(cid))

    def merge(self, cid: int, base: np.ndarray, behind: int) -> np.ndarray:
        """A ``step`` key's chunk ``cid``, just read (the global value G), combined in place
        with this worker's model L = base + delta, row by row: a row nobody else changed since
        this worker read it (G == base) gets the whole delta (G + delta = L); a row that
        ``behind`` other commits may have changed gets G + (L - G) / (1 + behind), the
        average of the models those commits and this one made from the same start; rows
        this worker did not step keep G.

        Why averaging: N steps taken concurrently from one state are worth about one step
        on an N-times-larger batch, not N sequential steps. Adding them is an N-times-larger
        step from a stale point (the dense linear learner's accuracy fell 0.7721 -> 0.6713
        with 4 workers); averaging is the larger-batch step, which costs nothing where a
        pass has thousands of steps (linear learner within 0.0004 with 4 workers). It does
        not give the same model where the step count itself matters: one pass of the
        factorization machines over 50 steps is, with 4 workers each committing its whole
        share once, worth ~12 steps of 4,000 rows (AUC 0.7907 in-process vs 0.7916 for one
        worker with 4,000-row steps and 0.8060 with 1,000); neither adding nor the
        Adagrad-scaled merges measured recover it (benchmarks ``scaling.quality_sim``). A row
        rarely shared gains nothing from counting ``behind`` per row instead of per key
        (+0.0003 AUC with 4 workers): the loss is in the frequent rows every worker steps."""
        idx = self.chunk(cid)
        out = self.values[idx]
        rows = max(1, len(out)) if out.ndim else 1
        g = out.reshape(rows, -1).astype(np.float64)
        d = self.delta[idx].reshape(rows, -1)
        drift = g - base.reshape(rows, -1)
        weight = np.where((drift != 0).any(1), 1.0 / (1.0 + behind), 1.0)
        weight[~(d != 0).any(1)] = 0.0
        g += weight[:, None] * (d - drift)
        out[...] = g.reshape(out.shape)
        return out

    def apply_held(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """:meth:`apply` for chunks ``ids`` already current in ``values``; one whole-array
        operation when that is every chunk (a hashed sparse batch touches every chunk of a
        2^20-row key: 4,096 per-chunk calls per key and commit otherwise)."""
        if len(ids) < self.spec.n_chunks or not self.spec.shape:
            return {cid: self.apply(cid) for cid in ids.tolist()}
        self._combine_at(...)
        return self.dests(ids.tolist())

    def hand_out(self) -> np.ndarray:
        """``values`` as a read-only array for a caller to keep: later loads and commits
        write into a copy, so what the caller holds never changes under it."""
        self.shared = True
        return read_only(self.values)

    def _own(self) -> None:
        # a journaled key is written in place every round: what was handed out is copied only
        # while a caller still holds it (a view keeps ``values`` alive: more than the slot's
        # and the call's references), not for every round's whole-key pull (42 MB)
        if self.shared and (self.journal is None or sys.getrefcount(self.values) > 2):
            self.values = self.values.copy()
        self.shared = False

    def replayed(self, version: int, base: int | None, patches: list[bytes]) -> None:
        """Add the patches that bring this journaled key (held whole) to ``version``; ``base``:
        the journal's base then (None: not read)."""
        state = self.journal
        if patches:
            self._own()
        n = journal.replay(self.spec, self.values, patches)
        if base is not None and base != state.base:
            state.base, state.rows = base, n
        else:
            state.rows += n
        state.version, state.behind = version, False
        self.version[:] = version

    def committed(self, patch: "_Patch", version: int, folded: bool) -> None:
        """This journaled key's patch went through as ``version`` + 1 (and its chunks with it
        when ``folded``): what is held takes it in if it was current, else it is read later."""
        state = self.journal
        if folded:
            self.values, self.shared = patch.folded, False
            state.base, state.rows = version + 1, 0
        elif state.version == version and self.loaded.all():
            self._own()
            journal.add_rows(self.values, patch.rows, patch.delta)
            state.rows += len(patch.rows)
        else:
            state.behind = True
        if not state.behind:
            state.version = version + 1
            self.version[:] = version + 1
        self.delta[patch.rows] = _IDENTITY[self.spec.aggregator]
        self.dirty[:] = False
        state.pushed = []

    def clear_delta(self) -> None:
        ids = np.flatnonzero(self.dirty)
        if len(ids) * 4 > len(self.dirty):
            self.stale = True
        else:
            identity = _IDENTITY[self.spec.aggregator]
            for cid in ids.tolist():
                self.delta[self.chunk(cid)] = identity
        self.dirty[:] = False

    def fresh_delta(self) -> None:
        """Make ``delta`` hold "no change" (the identity) wherever nothing is pending, as a
        row push needs (it adds into the rows it touches)."""
        if self.stale:
            self.delta.fill(_IDENTITY[self.spec.aggregator])
            self.stale = False


class BufferedState:
    """The State an algorithm sees: pull / push / barrier over a backend, plus ``commit``."""

    def __init__(self, backend: StateBackend):
        self.backend = backend
        self._specs: dict[str, KeySpec] | None = None
        self._views: dict[str, _KeyView] = {}
        self.discards = 0  # times the pending pushes were dropped: a holder of uncommitted work learns it is gone

    # -- declaration --------------------------------------------------------------------
    def keys(self) -> dict[str, KeySpec]:
        if self._specs is None:
            self._specs = self.backend.specs()
        return self._specs

    def initialize(self, key: str, value, aggregator: str = "sum", dtype: str = "float64", chunk_rows: int = 0,
                   journal: bool = False) -> None:
        arr = np.asarray(value, dtype=dtype)
        spec = KeySpec(key, tuple(arr.shape), aggregator, dtype, chunk_rows, journal)
        spec.validate()
        if key in self.keys():
            raise StateError(f"state key {key!r} is already initialized")
        self.backend.declare(spec, _split(spec, arr))
        self.keys()[key] = spec

    def spec(self, key: str) -> KeySpec:
        try:
            return self.keys()[key]
        except KeyError:
            raise StateError(f"unknown state key {key!r}; initialize declared {sorted(self.keys())}") from None

    def _view(self, key: str) -> _KeyView:
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = _KeyView(self.spec(key))
        return view

    # -- pull / push ----------------------------------------------------------------------
    def pull(self, key: str, rows: np.ndarray | None = None) -> np.ndarray:
        view = self._view(key)
        spec = view.spec
        if view.journal is not None:
            self._journal_current(view)
        if rows is None:
            if not view.loaded.all():
                view.load(self.backend, np.flatnonzero(~view.loaded))
            if not spec.shape:  # scalars (counters, step sizes) are pulled every step: keep it short
                return np.array(combine(spec.aggregator, view.values, view.delta) if view.dirty[0] else view.values,
                                dtype=spec.dtype)
            if not view.dirty.any():
                return view.hand_out()
            return read_only(combine(spec.aggregator, view.values, view.delta).astype(spec.dtype))
        rows = _check_rows(spec, rows)
        if not view.loaded.all():
            touched = np.zeros(spec.n_chunks, dtype=bool)
            touched[rows // spec.chunk_rows_] = True
            view.load(self.backend, np.flatnonzero(touched))
        if kernels.compiled() and spec.aggregator in ADDITIVE and len(spec.shape) == 2:
            # one pass over the rows instead of two gathers and an add
            if view.dirty.any():
                return kernels.gather_sum(view.values, view.delta, rows)
            return kernels.gather(view.values, rows)
        # np.take: ~2x faster than fancy indexing for a few thousand whole rows
        out = np.take(view.values, rows, axis=0)
        if view.dirty.any():  # then ``delta`` is fresh: the identity wherever nothing is pending
            pending = np.take(view.delta, rows, axis=0)
            if spec.aggregator in ADDITIVE:  # float32 + float32 rounds as float64 + cast would
                out += pending
            else:
                out = combine(spec.aggregator, out, pending).astype(spec.dtype)
        return out

    def push(self, key: str, delta, rows: np.ndarray | None = None) -> None:
        view = self._view(key)
        spec = view.spec
        agg = spec.aggregator
        delta = np.asarray(delta, dtype=np.float64)
        if rows is None:
            if delta.shape != spec.shape:
                try:
                    delta = np.broadcast_to(delta, spec.shape)
                except ValueError:
                    raise StateError(f"push to {key!r}: shape {delta.shape} does not match {spec.shape}") from None
            if view.stale:  # combine(identity, delta) is delta for every aggregator
                np.copyto(view.delta, delta)
                view.stale = False
            elif agg in ADDITIVE:
                np.add(view.delta, delta, out=view.delta)
            else:
                view.delta[...] = combine(agg, view.delta, delta)
            view.dirty[:] = True
            if view.journal is not None:
                view.journal.pushed.append(np.arange(spec.shape[0]))
            return
        rows = _check_rows(spec, rows)
        want = (len(rows),) + spec.shape[1:]
        if delta.shape != want:
            raise StateError(f"push to {key!r} rows: delta shape {delta.shape}, expected {want}")
        view.fresh_delta()
        if agg in ADDITIVE and delta.ndim == 2 and kernels.compiled():
            kernels.scatter_add(view.delta, rows, delta)
        elif agg in ADDITIVE and (len(rows) < 2 or bool((rows[1:] > rows[:-1]).all())):
            # distinct rows (what sparse updates push): no scatter-add needed; gather, add and
            # write back is ~2x faster than ``delta[rows] += delta``'s fancy read-modify-write
            pending = np.take(view.delta, rows, axis=0)
            pending += delta
            view.delta[rows] = pending
        elif agg in ADDITIVE:  # duplicate row indices add up, as a dense push would
            np.add.at(view.delta, rows, delta)
        elif agg == "min":
            np.minimum.at(view.delta, rows, delta)
        elif agg == "max":
            np.maximum.at(view.delta, rows, delta)
        else:  # replace: the last value pushed for a row wins
            view.delta[rows] = combine(agg, view.delta[rows], delta)
        view.dirty[rows // spec.chunk_rows_] = True
        if view.journal is not None:
            view.journal.pushed.append(rows.copy())  # the caller may reuse its array before the commit

    def barrier(self) -> None:
        self.backend.barrier()

    def prefetch(self) -> None:
        """Read every key of which nothing is held (a worker's idle time: before its first
        window, after a dropped batch), so that the next update step finds its rows here
        instead of reading them while records wait: a 2^20-feature factorization machine's
        first window read its 75 MB of rows in the step. Also clear the deltas a commit left
        to clear (``stale``), a new one's every page. Keys partly held are left as they are
        (another worker's commits would otherwise make every idle moment read them all), and
        so are keys over :data:`PREFETCH_MAX_BYTES`: a sparse model's steps read only the
        rows they touch, and a key larger than a worker's memory must stay that way."""
        for key in self.keys():
            view = self._view(key)
            spec = view.spec
            size = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
            if not view.loaded.any() and size <= PREFETCH_MAX_BYTES:
                view.load(self.backend, np.arange(spec.n_chunks))
                if not view.dirty.any():  # a fresh delta's pages too: lazily mapped zeros fault in
                    view.stale = True  # on the first push (0.12 s of a 2,000-row first window)
            view.fresh_delta()  # a committed window's values out of the delta, not in the next step

    def held_version(self, key: str) -> int | None:
        """The version ``key`` is held at (its first chunk), or None when it is not held."""
        view = self._views.get(key)
        return None if view is None or not view.loaded[0] else int(view.version[0])

    def version(self, key: str) -> int:
        """The version (commits that wrote it) of ``key`` as this worker holds it, read now
        if it is not held: what a check-and-set commit (``CommitInfo.expect``) expects. Meant
        for keys held whole at one version (scalars, keys pulled whole)."""
        view = self._view(key)
        if view.journal is not None:  # its chunks alone are its base, not its current value
            self._journal_current(view)
        else:
            view.load(self.backend, np.flatnonzero(~view.loaded))
        return int(view.version.min())

    # -- the commit point -----------------------------------------------------------------
    def pending_chunks(self, key: str) -> list[int]:
        """Chunk ids of ``key`` that the next commit will write (for tests and diagnostics)."""
        view = self._views.get(key)
        return [] if view is None else np.flatnonzero(view.dirty).tolist()

    def commit(self, info: CommitInfo | None = None, keep_held: bool = False) -> None:
        """Apply every pending push and ``info`` (offsets, counters) atomically.

        Afterwards keys this commit did not write are read again on their next pull (to see
        other workers' commits), unless ``keep_held``: the caller knows nobody else writes
        them until it refreshes (a synchronous round's parameters, written only by the
        round's close)."""
        info = info or CommitInfo()
        dirty = {k: v for k, v in self._views.items() if v.dirty.any()}
        # journaled keys: one patch of their changed rows (chunks only when it folds)
        patches = {k: _Patch.of(v) for k, v in dirty.items() if v.journal is not None}
        touched = {k: [] if k in patches else np.flatnonzero(v.dirty).tolist() for k, v in dirty.items()}
        written: Writes = {}
        committed_versions: dict[str, int] = {}
        # step keys: chunk -> (its value as this worker read it, the key's version then), kept
        # across retries of the transaction (a retry has already overwritten the chunks it read)
        bases: dict[str, dict[int, tuple[np.ndarray, int]]] = {}

        def compute(read: Reader, versions: dict[str, int]) -> Writes:
            # Chunks this worker holds at the key's current version are current: they need
            # not be read again (a lone writer reads nothing back). The others are read
            # straight into this worker's copy of the key and the delta is added in place as
            # each arrives (no temporaries; the add overlaps the next chunk's transfer), so until
            # the commit is known to have gone through the touched chunks count as unknown: a
            # retry reads them.
            written.clear()
            committed_versions.clear()
            committed_versions.update(versions)
            for key, ids in touched.items():
                view = dirty[key]
                if key in patches:  # folds only from what it holds current at the version under the lock
                    folded = patches[key].folded
                    if folded is not None and versions[key] == view.journal.version:
                        written[key] = {cid: folded[view.chunk(cid)] for cid in range(view.spec.n_chunks)}
                    continue
                view._own()
                ids_a = np.asarray(ids, dtype=np.int64)
                held = view.loaded[ids_a] & (view.version[ids_a] == versions[key])
                kb = bases.setdefault(key, {})
                if view.spec.aggregator == "step":  # others committed since we read: keep our base to merge
                    for cid in ids_a[~held & view.loaded[ids_a] & (view.version[ids_a] >= 0)].tolist():
                        kb[cid] = (view.values[view.chunk(cid)].copy(), int(view.version[cid]))
                view.version[ids_a] = -1
                out = written[key] = view.apply_held(ids_a[held])
                read(key, view.dests(ids_a[~held].tolist()), _applier(view, out, kb, versions[key]))
            return written

        try:
            if patches:
                self.backend.transact(touched, compute, info, {k: p.blob for k, p in patches.items()})
            else:
                self.backend.transact(touched, compute, info)
        except BaseException:
            for key, ids in touched.items():  # hold computed, not committed, values: re-read them
                dirty[key].loaded[ids] = False
            raise
        for key, view in self._views.items():
            if view.journal is not None:
                if key in patches:
                    view.committed(patches[key], committed_versions[key], key in written)
                elif not keep_held:
                    view.journal.behind = True
                continue
            if key not in written:  # no version seen under the lock: re-read, to see other workers' commits
                if not keep_held:
                    view.loaded[:] = False
                continue
            # current as of this commit: what we wrote, and what we hold at the version we
            # committed on (only our write came after it); everything else is re-read
            v = committed_versions[key]
            view.loaded &= view.version == v
            view.loaded[touched[key]] = True
            view.version[view.loaded] = v + 1
            view.clear_delta()

    def discard(self) -> None:
        """Drop pending pushes (a fenced batch) and everything read."""
        self._views = {}
        self.discards += 1

    def checkpoint(self) -> "Checkpoint":
        """What is pending now, to :meth:`rollback` to if the next update raises (its
        partial pushes must not reach the state). Copies the pending deltas: meant for the
        slow path that isolates a failing record, not for every step."""
        return Checkpoint({key: (view.delta.copy() if view.dirty.any() else None, view.dirty.copy(), view.stale)
                           for key, view in self._views.items()})

    def rollback(self, mark: "Checkpoint") -> None:
        """Forget every push made since ``mark`` (what was read stays: it is global state)."""
        for key in list(self._views):
            view = self._views[key]
            if key not in mark.views:
                if view.dirty.any():  # first used after the mark: nothing of it was pending
                    del self._views[key]
                continue
            delta, dirty, stale = mark.views[key]
            if delta is not None:
                np.copyto(view.delta, delta)
            view.dirty[:] = dirty
            view.stale = stale if delta is not None else True  # no pending change: any content is "none"

    def refresh(self, keys: "Iterable[str] | None" = None, keep: "Iterable[str]" = ()) -> None:
        """Forget what was read (of ``keys``; all but ``keep``) so the next pull sees other
        workers' commits."""
        keys, keep = (None if keys is None else set(keys)), set(keep)
        for key, view in self._views.items():
            if (keys is None or key in keys) and key not in keep:
                if view.journal is not None:
                    view.journal.behind = True  # brought up to date from its patches
                else:
                    view.loaded[:] = False

    def load_all(self, read: Callable[[dict[str, dict[int, np.ndarray]]], T]) -> T:
        """Forget everything held and let ``read`` fill every chunk of every key (one
        consistent cut: key -> chunk id -> the writable array to fill) straight into this
        worker's copies; returns what ``read`` returns."""
        self._views = {}
        dests = {}
        for key in self.keys():
            view = self._view(key)
            dests[key] = view.dests(list(range(view.spec.n_chunks)))
        out = read(dests)
        for key in dests:
            view = self._views[key]
            view.loaded[:] = True
            if view.journal is not None:  # the chunks hold its base: add the patches of the same instant
                view.replayed(*self.backend.journals[key])
        return out

    def _journal_current(self, view: _KeyView) -> None:
        """Bring a journaled key up to date: from the patches since the version held, else
        (nothing held, or a fold dropped patches it needs) the chunks and the patches since
        their base, read at one instant."""
        state = view.journal
        if view.loaded.all():
            if not state.behind:
                return
            got = self.backend.journal_since(view.spec.name, state.version)
            if got is not None:
                view.replayed(*got)
                return
        view._own()
        view.replayed(*self.backend.read_journaled(view.spec.name, view.dests(list(range(view.spec.n_chunks)))))
        view.loaded[:] = True


class _Journaled:
    """What a worker knows of a journaled key it holds (``_KeyView.journal``)."""

    __slots__ = ("version", "base", "rows", "behind", "pushed")

    def __init__(self) -> None:
        self.version = -1  # the version the whole key is held at (-1: not held)
        self.base = 0  # the version its chunks held when last seen
        self.rows = 0  # rows in the patches since ``base`` (when to fold)
        self.behind = False  # others may have committed since: read their patches before the next pull
        self.pushed: list[np.ndarray] = []  # the rows pushed since the last commit


@dataclass
class _Patch:
    """A journaled key's commit: its changed rows, their deltas (as one blob) and, when the
    patches since the last fold reach the key's size, the whole key after the commit."""

    rows: np.ndarray
    delta: np.ndarray
    blob: bytes
    folded: np.ndarray | None

    @classmethod
    def of(cls, view: _KeyView) -> "_Patch":
        state = view.journal
        rows = _distinct(state.pushed)
        delta = np.take(view.delta, rows, axis=0)
        folded = None
        if view.loaded.all() and not state.behind and state.rows + len(rows) >= view.spec.shape[0]:
            folded = np.empty_like(view.values)
            np.add(view.values, view.delta, out=folded, dtype=np.float64, casting="same_kind")
        return cls(rows, delta, journal.encode_patch(rows, delta), folded)


@dataclass(frozen=True)
class Checkpoint:
    """Pending pushes at one moment: key -> (delta copy or None if nothing was pending, dirty mask, stale)."""

    views: dict[str, tuple["np.ndarray | None", np.ndarray, bool]]


def _applier(view: _KeyView, out: dict[int, np.ndarray], bases: dict[int, tuple[np.ndarray, int]],
             version: int) -> Callable[[int], None]:
    """What a commit does with each chunk read under the lock (the key at ``version``):
    combine it with the delta, or merge it with this worker's model where ``bases`` holds
    the chunk as read (a ``step`` key)."""
    def filled(cid: int) -> None:
        base = bases.get(cid)
        out[cid] = view.apply(cid) if base is None else view.merge(cid, base[0], version - base[1])
    return filled


def _distinct(pushed: list[np.ndarray]) -> np.ndarray:
    """The rows of ``pushed`` once each, ascending; one push of ascending rows (a sparse
    update's) as it is, without a sort."""
    if len(pushed) == 1 and (len(pushed[0]) < 2 or bool((pushed[0][1:] > pushed[0][:-1]).all())):
        return pushed[0]
    return np.unique(np.concatenate(pushed)) if pushed else np.zeros(0, np.int64)


def read_only(arr: np.ndarray) -> np.ndarray:
    """What a whole-key ``pull`` returns: a read-only view, so handing out the worker's copy
    of a large key costs no copy (80 MB for 1e7 floats); writing into it raises instead of
    silently changing what later pulls see."""
    if np.ndim(arr) == 0:
        return np.array(arr)  # a scalar key: copying is free
    out = arr.view()
    out.flags.writeable = False
    return out


def _split(spec: KeySpec, arr: np.ndarray) -> dict[int, np.ndarray]:
    if not spec.shape:
        return {0: np.asarray(arr).reshape(())}
    c = spec.chunk_rows_
    return {i: arr[i * c:(i + 1) * c] for i in range(spec.n_chunks)}


def _check_rows(spec: KeySpec, rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64).ravel()
    if not spec.shape:
        raise StateError(f"key {spec.name!r} is a scalar; it has no rows")
    if len(rows) and (rows.min() < 0 or rows.max() >= spec.shape[0]):
        raise StateError(f"row index out of range for key {spec.name!r} with {spec.shape[0]} rows")
    return rows


def encode_chunk(spec: KeySpec, arr: np.ndarray) -> memoryview:
    """Chunk bytes as stored: little-endian raw values of the key's dtype (a view of the
    array's buffer, not a copy: the client sends it as it is)."""
    return memoryview(np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype).newbyteorder("<"))).cast("B")
