"""Scaling with the number of worker processes: speed (linear learner, the dense topic) and
what is learned (``scaling.quality``: linear learner test accuracy and factorization machines
AUC with 1, 2 and 4 workers against the 1-worker run).

Each worker count trains a fresh job over the same topic; the figure is the training leg
(create_job -> final snapshot stored) in rows/s, the reference the one-worker run. The
topic has 4 partitions, so up to 4 workers each own at least one. On a machine with C
cores, more than C workers (plus the broker and Redis, which need CPU too) cannot speed
up CPU-bound update steps; the row notes say how many cores there were.
"""
from __future__ import annotations

import os

import numpy as np

from benchmarks import _streams as st
from benchmarks._core import Context, Row, fmt_rate, fmt_s
from benchmarks.e2e import accuracy, ll_job, ll_params

#: how far from the 1-worker model an N-worker model may be (test accuracy, AUC)
QUALITY_TOLERANCE = 0.003


def case_workers(ctx: Context) -> list[Row]:
    cores = len(os.sched_getaffinity(0))
    base = None
    rows = []
    for w in ctx.p["scaling_workers"]:
        job = ll_job(ctx, w)
        rate = job.records / job.seconds
        base = base or rate
        rows.append(Row(f"scaling.workers[{w}]", fmt_rate(rate), f"1 worker {fmt_rate(base)}", rate / base, "", "info",
                        f"{w} worker process(es) on {cores} cores: {fmt_s(job.seconds)}, "
                        f"test accuracy {accuracy(ctx, job.model):.4f}"))
    # the same runs with the BLAS library's default thread count (STREAMLEARN_WORKER_BLAS_THREADS=0);
    # the worker's default is 1 BLAS thread: with the broker, Redis and librdkafka's threads on
    # the same cores, OpenBLAS' spinning threads cost far more than they give
    for w in ctx.p["scaling_workers"]:
        job = ll_job(ctx, w, env={"STREAMLEARN_WORKER_BLAS_THREADS": "0"})
        rate = job.records / job.seconds
        rows.append(Row(f"scaling.workers[{w}, BLAS default threads]", fmt_rate(rate), f"1 worker {fmt_rate(base)}",
                        rate / base, "", "info",
                        f"as above with STREAMLEARN_WORKER_BLAS_THREADS=0 (OpenBLAS picks {cores} threads per worker): "
                        f"{fmt_s(job.seconds)}"))
    return rows


def case_quality(ctx: Context) -> list[Row]:
    """The same bounded jobs with 1, 2 and 4 workers, all joined before the job starts (so they
    train concurrently from the first record): the N-worker model's test figure minus the
    1-worker one (ratio = 1 + that difference; target: at least 1 - tolerance). Linear
    learner: the dense topic (scaling.workers'); factorization machines: the first
    ``river_rows`` rows of the sparse set (peers.fm's), k = 8, AUC on its test rows; and the
    same with ``aggregation=sync`` (synchronous rounds of ``message_rows`` rows) on the same
    rows in messages of ``message_rows / max workers`` rows (rows/s in the note: its cost)."""
    return _quality(ctx, ("linear_learner", "factorization_machines", "factorization_machines, sync"))


def case_quality_fm(ctx: Context) -> list[Row]:
    """scaling.quality's factorization-machines rows alone (default and ``aggregation=sync``):
    what the sync rounds cost against the default, without the dense linear-learner jobs."""
    return _quality(ctx, ("factorization_machines", "factorization_machines, sync"))


def _quality(ctx: Context, algorithms: tuple[str, ...]) -> list[Row]:
    from streamlearn import datasets
    from streamlearn.batch import Batch

    cores = len(os.sched_getaffinity(0))
    Xtr, ytr, Xte, yte = st.sparse(ctx)
    n = min(ctx.p["river_rows"], len(Xtr))
    fm_prod = st.produce(ctx, "sparse-scaling", datasets._rows(Xtr, 0, n), ytr[:n])
    fm_params = {"n_features": Xtr.n_features, "num_factors": 8}
    # synchronous rounds of the same step size: messages of 1/4 step (the most workers measured),
    # so that every worker's share of a round is whole messages
    step = ctx.p["message_rows"]
    sync_prod = st.produce(ctx, "sparse-scaling-sync", datasets._rows(Xtr, 0, n), ytr[:n],
                           message_rows=max(1, step // max(ctx.p["scaling_workers"])))
    sync_params = {**fm_params, "aggregation": "sync", "mini_batch_size": step}
    def ll_prod():
        Xd, yd, _, _ = st.dense(ctx)
        return st.produce(ctx, "dense", Xd, yd)

    cases = [("linear_learner", "test accuracy",
              lambda w: ctx.memo(("job:ll-together", w), lambda: st.run_job(ctx, ll_prod(), "linear_learner",
                                                                            ll_params(ctx), w, tag="dense-together",
                                                                            together=True)),
              lambda m: accuracy(ctx, m)),
             ("factorization_machines", "AUC",
              lambda w: ctx.memo(("job:fm", w), lambda: st.run_job(ctx, fm_prod, "factorization_machines", fm_params,
                                                                   w, tag="sparse", together=True)),
              lambda m: float(m.score(Batch(Xte, yte), "auc"))),
             ("factorization_machines, sync", "AUC",
              lambda w: ctx.memo(("job:fm-sync", w), lambda: st.run_job(ctx, sync_prod, "factorization_machines",
                                                                        sync_params, w, tag="sparse-sync",
                                                                        together=True)),
              lambda m: float(m.score(Batch(Xte, yte), "auc")))]
    rows = []
    for algorithm, metric, run, measure in cases:
        if algorithm not in algorithms:
            continue
        base = None
        for w in ctx.p["scaling_workers"]:
            job = run(w)
            q = measure(job.model)
            base = q if base is None else base
            diff = q - base
            rows.append(Row(f"scaling.quality[{algorithm}, {w}]", f"{metric} {q:.4f}", f"1 worker {base:.4f}",
                            1.0 + diff, f"within {QUALITY_TOLERANCE} of 1 worker",
                            "pass" if diff >= -QUALITY_TOLERANCE else "FAIL",
                            f"{w} worker process(es) on {cores} cores, {job.records:,} records in {fmt_s(job.seconds)} "
                            f"({fmt_rate(job.records / job.seconds)})"))
    return rows


def _messages(n: int, rows: int, workers: int, partitions: int) -> list[list[tuple[int, int]]]:
    """The row ranges of the ``rows``-row messages each of ``workers`` owns: messages
    round-robin over ``partitions``, worker w owning partitions p with p % workers == w."""
    starts = list(range(0, n, rows))
    return [[(a, min(a + rows, n)) for i, a in enumerate(starts) if (i % partitions) % workers == w]
            for w in range(workers)]


def _fm_start(Xtr, step_rows: int):
    """A factorization-machines algorithm (k = 8, ``step_rows``-row steps) and a MemoryBackend
    holding its initialized state."""
    from streamlearn.algorithms import make_algorithm
    from streamlearn.statestore.local import LocalState, MemoryBackend

    algo = make_algorithm("factorization_machines", {"n_features": Xtr.n_features, "num_factors": 8,
                                                     "mini_batch_size": step_rows})
    backend = MemoryBackend()
    first = LocalState(backend)
    algo.initialize(first)
    first.commit()
    return algo, backend


def _fm_concurrent(Xtr, ytr, n: int, rows: int, workers: int, window: int, partitions: int) -> object:
    """An in-process model of ``workers`` concurrent workers of a factorization-machines job:
    LocalStates over one MemoryBackend, ``rows``-row messages round-robin over ``partitions``
    (worker w owns partitions p with p % workers == w). In each round every worker applies
    its next ``window`` messages from what it holds (so it misses the others' commits of the
    round before), then all commit one after another. Returns the model."""
    from streamlearn import datasets
    from streamlearn.batch import Batch
    from streamlearn.statestore.local import LocalState

    algo, backend = _fm_start(Xtr, rows)
    states = [LocalState(backend) for _ in range(workers)]
    shares = [[Batch(datasets._rows(Xtr, a, b), ytr[a:b]) for a, b in share]
              for share in _messages(n, rows, workers, partitions)]
    for start in range(0, max(map(len, shares)), window):
        for state, share in zip(states, shares):
            for batch in share[start:start + window]:
                algo.update(state, batch)
        for state in states:
            state.commit()
    return algo.finalize(LocalState(backend))


def _fm_sync_rounds(Xtr, ytr, n: int, rows: int, workers: int, partitions: int) -> object:
    """Synchronous data-parallel rounds, in-process: in round r each of ``workers`` takes the
    next ``rows / workers`` rows of its share (``_messages``) and computes its gradient from
    the same parameters theta_r; theta_{r+1} is one Adagrad step on the rows-weighted mean of
    the round's gradients. That mean is the gradient of the round's union of rows, so the
    round is simulated as one ``rows``-row step on that union. Returns the model."""
    from streamlearn import datasets
    from streamlearn.batch import Batch
    from streamlearn.statestore.local import LocalState

    algo, backend = _fm_start(Xtr, rows)
    state = LocalState(backend)
    data = Batch(datasets._rows(Xtr, 0, n), ytr[:n])
    shares = [np.concatenate([np.arange(a, b) for a, b in share]) for share in _messages(n, rows, workers, partitions)]
    part = max(1, rows // workers)
    for r in range(0, max(map(len, shares)), part):
        algo.update(state, data.take(np.concatenate([share[r:r + part] for share in shares])))
        state.commit()
    return algo.finalize(state)


def case_quality_sim(ctx: Context) -> list[Row]:
    """Why ``scaling.quality``'s factorization machines lose AUC with workers, in-process
    (no services): the same rows and step size as that case, N concurrent workers that
    commit once for their whole share (what the live run's workers do: every message is in
    the topic when the job resumes) or after every message, against the 1-worker model and
    a 1-worker model with N-times-larger steps (what N averaged concurrent steps amount to).
    The last row per N is the design that gives the same model: synchronous rounds in which
    each worker steps on 1/N of a step's rows from the same parameters (live:
    ``aggregation=sync``, scaling.quality's sync rows)."""
    from streamlearn.batch import Batch

    Xtr, ytr, Xte, yte = st.sparse(ctx)
    n, rows = min(ctx.p["river_rows"], len(Xtr)), ctx.p["message_rows"]

    def auc(model) -> float:
        return float(model.score(Batch(Xte, yte), "auc"))

    def concurrent(workers: int, window: int, step_rows: int = rows) -> float:
        return auc(_fm_concurrent(Xtr, ytr, n, step_rows, workers, window, ctx.p["partitions"]))

    base = concurrent(1, 1)
    out = []
    for w in ctx.p["scaling_workers"][1:]:
        for label, window in (("whole share", n), ("every message", 1)):
            q = concurrent(w, window)
            out.append(Row(f"scaling.quality_sim[fm, {w}, commit {label}]", f"AUC {q:.4f}", f"1 worker {base:.4f}",
                           1.0 + q - base, "", "info", f"in-process, {w} workers in lockstep"))
        q = concurrent(1, 1, rows * w)
        out.append(Row(f"scaling.quality_sim[fm, 1, {w}x step rows]", f"AUC {q:.4f}", f"1 worker {base:.4f}",
                       1.0 + q - base, "", "info", f"one worker, {rows * w}-row steps"))
        q = auc(_fm_sync_rounds(Xtr, ytr, n, rows, w, ctx.p["partitions"]))
        out.append(Row(f"scaling.quality_sim[fm, {w}, synchronous rounds]", f"AUC {q:.4f}", f"1 worker {base:.4f}",
                       1.0 + q - base, "", "info",
                       f"in-process, {w} workers x {rows // w} rows from the same parameters per {rows}-row step"))
    return out


CASES = {"scaling.workers": case_workers, "scaling.quality": case_quality, "scaling.quality_fm": case_quality_fm,
         "scaling.quality_sim": case_quality_sim}
