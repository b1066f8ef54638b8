"""Train an algorithm in this process on in-memory batches (no Kafka, no Redis).

The same initialize / update / commit / finalize sequence a job runs, so a model fitted
here equals what a one-worker job computes on the same batches. Used by tests,
benchmarks and notebooks.
"""
from __future__ import annotations

from typing import Iterable

from streamlearn.algorithms.base import Algorithm, Model
from streamlearn.batch import Batch
from streamlearn.statestore.local import LocalState


def fit_local(algorithm: Algorithm, batches: Iterable[Batch], state: LocalState | None = None) -> Model:
    """Initialize (unless ``state`` is given, i.e. resuming), update on every batch, finalize."""
    if state is None:
        state = LocalState()
        algorithm.initialize(state)
        state.commit()
    for batch in batches:
        algorithm.update(state, batch)
        state.commit()
    return algorithm.finalize(state)
