"""In-process state: the same semantics as Redis, for local training and unit tests.

Used by ``train_local`` (fit an algorithm on in-memory batches) and by the conformance
suite's fast checks. Jobs on Kafka always use :class:`~streamlearn.statestore.redis_state.RedisState`.
"""
from __future__ import annotations

import threading

import numpy as np

from streamlearn.statestore import journal
from streamlearn.statestore.base import KeySpec, StaleCommit, StateError
from streamlearn.statestore.buffered import BufferedState, CommitInfo, Compute


class MemoryBackend:
    def __init__(self) -> None:
        self._specs: dict[str, KeySpec] = {}
        self._chunks: dict[str, dict[int, np.ndarray]] = {}
        self._versions: dict[str, int] = {}
        self._journals: dict[str, dict] = {}  # journaled key -> {version: patch, "base": v, "previous": v}
        self.offsets: dict[int, int] = {}
        self.records_applied = 0
        self.records_dead_lettered = 0
        self._lock = threading.Lock()

    def specs(self) -> dict[str, KeySpec]:
        return dict(self._specs)

    def declare(self, spec: KeySpec, chunks: dict[int, np.ndarray]) -> None:
        self._specs[spec.name] = spec
        if spec.shape:  # one copy of the key, held as chunk views (4,096 copies of 18 kB cost 3x more)
            whole = np.concatenate([np.asarray(chunks[i], dtype=spec.dtype) for i in sorted(chunks)])
            c = spec.chunk_rows_
            self._chunks[spec.name] = {i: whole[i * c:(i + 1) * c] for i in sorted(chunks)}
        else:
            self._chunks[spec.name] = {i: np.array(c, dtype=spec.dtype) for i, c in chunks.items()}

    def read(self, key: str, dests: dict[int, np.ndarray]) -> int:
        with self._lock:
            self._fill(key, dests)
            return self._versions.get(key, 0)

    def _fill(self, key: str, dests: dict[int, np.ndarray], filled=None) -> None:
        for i, dest in dests.items():
            dest[...] = self._chunks[key][i]
            if filled is not None:
                filled(i)

    def journal_since(self, key: str, version: int) -> tuple[int, int, list[bytes]] | None:
        """(current version, base, the patches after ``version``) of a journaled key; None
        when one of them is gone (folded and dropped)."""
        with self._lock:
            current, kept = self._versions.get(key, 0), self._journals.get(key, {})
            patches = journal.since(kept, version, current)
            return None if patches is None else (current, journal.meta(kept, journal.BASE), patches)

    def read_journaled(self, key: str, dests: dict[int, np.ndarray]) -> tuple[int, int, list[bytes]]:
        """Fill ``dests`` with the chunks; (version, base, the patches since base), one instant."""
        with self._lock:
            self._fill(key, dests)
            current, kept = self._versions.get(key, 0), self._journals.get(key, {})
            base = journal.meta(kept, journal.BASE)
            patches = journal.since(kept, base, current)
            if patches is None:
                raise StateError(f"state key {key!r}: patches after version {base} are missing from its journal")
            return current, base, patches

    def transact(self, touched: dict[str, list[int]], compute: Compute, info: CommitInfo,
                 patches: dict[str, bytes] | None = None) -> None:
        with self._lock:
            moved = [key for key, v in info.expect.items() if self._versions.get(key, 0) != v]
            if moved:
                raise StaleCommit(f"state keys {moved} were written since this commit read them; nothing applied")
            versions = {key: self._versions.get(key, 0) for key in touched}
            writes = compute(self._fill, versions)
            for key, chunks in writes.items():
                # copies (into the held chunks, which nobody else sees): the written arrays are the
                # committing worker's own, and it goes on using them
                held = self._chunks[key]
                for i, c in chunks.items():
                    held[i][...] = c
                self._versions[key] = self._versions.get(key, 0) + 1
            for key, blob in (patches or {}).items():
                kept = self._journals.setdefault(key, {})
                kept[versions[key] + 1] = blob
                if key not in writes:
                    self._versions[key] = versions[key] + 1
                    continue
                base, previous = journal.meta(kept, journal.BASE), journal.meta(kept, journal.PREVIOUS)
                for v in range(previous + 1, base + 1):  # the patches the last fold had folded
                    kept.pop(v, None)
                kept[journal.BASE], kept[journal.PREVIOUS] = versions[key] + 1, base
            self.offsets.update(info.offsets)
            self.records_applied += info.records_applied
            self.records_dead_lettered += info.records_dead_lettered

    def barrier(self) -> None:
        """A single in-process member is always at the barrier."""

    def live_members(self) -> int:
        return 1

    def lease(self, name: str) -> bool:
        """One in-process member holds every lease."""
        return True


class LocalState(BufferedState):
    """A :class:`BufferedState` over memory. Several LocalStates may share one backend
    to imitate several workers in a unit test."""

    def __init__(self, backend: MemoryBackend | None = None):
        super().__init__(backend or MemoryBackend())
