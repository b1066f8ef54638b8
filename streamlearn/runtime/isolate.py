"""Update steps that cannot be stalled by a record: a step that raises is bisected down to
the records that make it raise (to be dead-lettered), and the rest is applied.

A failed ``update`` may have pushed part of its deltas before raising; those must not
reach the state, so every trial runs after a :meth:`BufferedState.checkpoint` and a
failure rolls the pending pushes back to it. The fast path (no step raises) costs nothing
extra; after the first failure the window's pushes are dropped and its steps run again
one by one under checkpoints.

When is a failure the algorithm's bug rather than the record's? Two rules, both about
*the same* exception (type and message):

- ``update`` raises it on an empty batch: no data caused it;
- :data:`BUG_RUN` records in a row raise it, with no record applied in between
  (:class:`FailureRun`, kept per worker across windows).

Either raises :class:`AlgorithmBug` (the job is marked failed) instead of dead-lettering a
whole stream because of a bug. A few poison records in a row stay data; a bounded job whose
every record failed (fewer than ``BUG_RUN``) ends failed anyway: no model from zero records.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import redis
from confluent_kafka import KafkaException

from streamlearn.algorithms.base import Algorithm
from streamlearn.batch import Batch, SparseRows
from streamlearn.statestore.buffered import BufferedState
from streamlearn.wire.serde import encode_training_record

#: what an update may raise that says nothing about the data: infrastructure, handled by the
#: worker's outage recovery (a pull inside ``update`` talks to Redis)
_NOT_DATA = (redis.RedisError, KafkaException)
#: this many records in a row failing the same way, none applied in between, is a bug
BUG_RUN = 1000


class AlgorithmBug(RuntimeError):
    """``update`` fails whatever the data (see the module's rules); the message is the
    exception's last line."""


@dataclass(frozen=True)
class Failure:
    """Row ``row`` of the window (positions in the steps' order) made ``update`` raise."""

    row: int
    record: Batch  # that one record
    reason: str  # the exception as "Type: message" (its last line)

    def encoded(self) -> bytes:
        """The record as a single-record ``training_record`` message (for the dead-letter
        topic: a batch message holds many records, only this one failed)."""
        b = self.record
        label = None if b.y is None or np.isnan(b.y[0]) else float(b.y[0])
        weight = 1.0 if b.w is None else float(b.w[0])
        key = None if b.keys is None else b.keys[0]
        if isinstance(b.X, SparseRows):
            return encode_training_record(indices=b.X.indices, values=b.X.values, n_features=b.X.n_features,
                                          label=label, weight=weight, key=key)
        return encode_training_record(b.X[0], label=label, weight=weight, key=key)


def describe(exc: BaseException) -> str:
    """An exception as one line: its type and the last line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def apply_steps(algorithm: Algorithm, state: BufferedState, steps: list[Batch]) -> list[Failure]:
    """Run ``update`` over ``steps``; returns the records that could not be applied (their
    pushes are not pending; every other record's are). Raises :class:`AlgorithmBug`."""
    try:
        for step in steps:
            algorithm.update(state, step)
        return []
    except _NOT_DATA:
        raise
    except Exception:  # noqa: BLE001 - any exception of the algorithm's code is isolated
        state.discard()
    failures: list[Failure] = []
    start = 0
    for step in steps:
        failures += _isolate(algorithm, state, step, start)
        start += len(step)
    return failures


def _isolate(algorithm: Algorithm, state: BufferedState, step: Batch, start: int) -> list[Failure]:
    reason = _attempt(algorithm, state, step)
    if reason is None:
        return []
    if _attempt(algorithm, state, step.take(np.zeros(0, dtype=np.int64))) == reason:
        raise AlgorithmBug(f"update raises {reason} on an empty batch")
    failures: list[Failure] = []
    _bisect(algorithm, state, step, np.arange(len(step)), reason, start, failures)
    return failures


class FailureRun:
    """The records of one worker that failed ``update`` in a row with the same reason."""

    def __init__(self, limit: int = BUG_RUN):
        self.limit = limit
        self.reason: str | None = None
        self.length = 0

    def observe(self, n_records: int, failures: list[Failure]) -> None:
        """Count a window of ``n_records`` decoded records; raise :class:`AlgorithmBug` once
        ``limit`` records in a row failed the same way."""
        if n_records == 0:
            return
        reasons = {f.reason for f in failures}
        if len(failures) == n_records and len(reasons) == 1:
            reason = reasons.pop()
            self.length = (self.length if reason == self.reason else 0) + n_records
            self.reason = reason
        else:  # the run starts again after the window's last record applied (or reason change)
            self.reason, self.length = None, 0
            for f in reversed(failures):  # failures are in row order
                if f.row != n_records - 1 - self.length or self.reason not in (None, f.reason):
                    break
                self.reason, self.length = f.reason, self.length + 1
        if self.length >= self.limit:
            raise AlgorithmBug(f"update raises {self.reason} on every record ({self.length} in a row)")


def _bisect(algorithm: Algorithm, state: BufferedState, step: Batch, rows: np.ndarray, reason: str, start: int,
            failures: list[Failure]) -> None:
    """``rows`` of ``step`` failed together with ``reason``: apply each half that succeeds,
    split the others down to single records."""
    if len(rows) == 1:
        failures.append(Failure(start + int(rows[0]), step.take(rows), reason))
        return
    for half in np.array_split(rows, 2):
        half_reason = _attempt(algorithm, state, step.take(half))
        if half_reason is not None:
            _bisect(algorithm, state, step, half, half_reason, start, failures)


def _attempt(algorithm: Algorithm, state: BufferedState, batch: Batch) -> str | None:
    """Update with ``batch``: None if it went through (its pushes pending), else the reason
    (and nothing of it pending)."""
    mark = state.checkpoint()
    try:
        algorithm.update(state, batch)
        return None
    except _NOT_DATA:
        raise
    except Exception as exc:  # noqa: BLE001
        state.rollback(mark)
        return describe(exc)


__all__ = ["AlgorithmBug", "BUG_RUN", "Failure", "FailureRun", "apply_steps", "describe"]
