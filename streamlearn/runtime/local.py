"""Train an algorithm in this process on in-memory batches (no Kafka, no Redis).

The same initialize / update / commit / finalize sequence a job runs, so a model fitted
here equals what a one-worker job computes on the same batches. Used by tests,
benchmarks and notebooks.
"""
from __future__ import annotations

from typing import Iterable

from streamlearn.algorithms import make_algorithm
from streamlearn.algorithms.base import Algorithm, Model, ParamError
from streamlearn.algorithms.checks import synthetic_batches
from streamlearn.batch import Batch
from streamlearn.runtime.rounds import Rounds
from streamlearn.snapshots.format import Snapshot, load_model
from streamlearn.statestore.buffered import CommitInfo
from streamlearn.statestore.local import LocalState


def fit_local(algorithm: Algorithm, batches: Iterable[Batch], state: LocalState | None = None,
              commit_every: int = 64) -> Model:
    """Initialize (unless ``state`` is given, i.e. resuming), update on every batch, finalize.

    Pushes are committed every ``commit_every`` batches and at the end, as a worker commits
    once per consumed window of messages rather than after every update step: a pull sees
    this worker's pending pushes, so the model does not depend on the cadence, while a
    commit of a large row-sparse key costs one pass over every chunk it touched. A
    synchronous algorithm (``aggregation=sync``) makes each batch one round, committed and
    closed: what one worker of a job does.
    """
    if commit_every < 1:
        raise ValueError(f"commit_every must be >= 1, got {commit_every}")
    unresolved = algorithm.unresolved()
    if unresolved:
        raise ParamError(f"{algorithm.name}: {', '.join(unresolved)} = 'auto' is inferred from the topic at job "
                         f"create; in-process, pass a value")
    if state is None:
        state = LocalState()
        algorithm.initialize(state)
        state.commit()
    rounds = Rounds(algorithm, state) if algorithm.synchronous else None
    for i, batch in enumerate(batches, 1):
        if rounds is not None:
            expect = rounds.begin()
            algorithm.update(state, batch)
            state.commit(CommitInfo(expect=expect), keep_held=True)
            rounds.end()
            continue
        algorithm.update(state, batch)
        if i % commit_every == 0:
            state.commit()
    state.commit()
    return algorithm.finalize(state)


def continue_local(algorithm: Algorithm, snapshot: Snapshot, batches: Iterable[Batch],
                   state: LocalState | None = None, commit_every: int = 64) -> Model:
    """Incremental training in this process: start from ``snapshot``'s training state as
    ``job create --from-snapshot`` does (``initialize_from``), then update on ``batches``
    and finalize. ``state``: an empty LocalState to train in (to inspect it afterwards)."""
    state = LocalState() if state is None else state
    algorithm.initialize_from(state, load_model(snapshot), snapshot.state)
    state.commit()
    return fit_local(algorithm, batches, state=state, commit_every=commit_every)


def sample_model(algorithm: Algorithm) -> Model:
    """A model of ``algorithm``'s (resolved) parameters fitted here on 32 synthetic rows: what
    its models report (``metric_names``) before any real one exists."""
    batches, _ = synthetic_batches(algorithm, n_batches=1, rows=32)
    return fit_local(make_algorithm(algorithm.name, algorithm.get_params()), batches)
