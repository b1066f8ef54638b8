"""End to end: producer -> Kafka -> worker process(es) -> Redis state -> finalized snapshot.

Our figure is rows / (produce time + job time), where produce time is ``send_batch`` +
``flush`` of the whole set (batch messages) and job time runs from ``create_job`` to the
job being finished with its final snapshot stored (worker start-up, group join, every
update and commit, finalize). The reference is the ingest limit of the same topic
(:mod:`benchmarks.limits`). A second row gives the training leg alone against the same
limit (the limit only consumes; it does not produce).
"""
from __future__ import annotations

import time

from benchmarks import _streams as st
from benchmarks._core import Context, Row, check, fmt_rate, fmt_s
from benchmarks.limits import dense_ingest, median_ingest


def ll_params(ctx: Context) -> dict:
    return {"n_features": ctx.p["dense_d"], "predictor_type": "binary_classifier"}


def ll_job(ctx: Context, workers: int = 1, env: dict | None = None) -> st.JobRun:
    Xtr, ytr, _, _ = st.dense(ctx)
    prod = st.produce(ctx, "dense", Xtr, ytr)
    tag = "dense" + ("-" + "-".join(f"{k}{v}" for k, v in sorted(env.items())).lower().replace("_", "") if env else "")
    return ctx.memo(("job:ll", workers, tag), lambda: st.run_job(ctx, prod, "linear_learner", ll_params(ctx), workers,
                                                                 env=env, tag=tag))


def ll_local(ctx: Context) -> dict:
    """In-process fit_local on the same rows, the worker's update size (500 rows)."""
    def make():
        from streamlearn import datasets
        from streamlearn.algorithms import make_algorithm
        from streamlearn.local_training import fit_local

        Xtr, ytr, Xte, yte = st.dense(ctx)
        algo = make_algorithm("linear_learner", ll_params(ctx))
        t0 = time.perf_counter()
        model = fit_local(algo, datasets.batches(Xtr, ytr, 500))
        dt = time.perf_counter() - t0
        return {"seconds": dt, "rate": len(Xtr) / dt, "model": model}
    return ctx.memo("local:ll", make)


def accuracy(ctx: Context, model) -> float:
    from streamlearn.batch import Batch

    _, _, Xte, yte = st.dense(ctx)
    return float(model.score(Batch(Xte, yte), "accuracy"))


def case_linear_learner(ctx: Context) -> list[Row]:
    lim = dense_ingest(ctx)
    Xtr, ytr, _, _ = st.dense(ctx)
    prod = st.produce(ctx, "dense", Xtr, ytr)
    job = ll_job(ctx, 1)
    e2e = prod.records / (prod.seconds + job.seconds)
    train = prod.records / job.seconds
    acc = accuracy(ctx, job.model)
    local = ll_local(ctx)
    r = e2e / lim["rate"]
    return [
        Row("e2e.linear_learner", fmt_rate(e2e), f"ingest {fmt_rate(lim['rate'])}", r, ">= 0.50", check(r, 0.5),
            f"{prod.records:,}x{prod.n_features} rows, 1 worker, 32 packed models: produce "
            f"{fmt_s(prod.seconds)} + job {fmt_s(job.seconds)}; test accuracy {acc:.4f}"),
        Row("e2e.linear_learner[train leg]", fmt_rate(train), f"ingest {fmt_rate(lim['rate'])}",
            train / lim["rate"], "", "info", "create_job -> final snapshot stored, without the producer"),
        Row("e2e.linear_learner[fit_local]", fmt_rate(local["rate"]), f"ingest {fmt_rate(lim['rate'])}",
            local["rate"] / lim["rate"], "", "info",
            f"same rows in-process (LocalState, 500-row steps), {fmt_s(local['seconds'])}: the algorithm's own cost"),
    ]


def case_median(ctx: Context) -> list[Row]:
    lim = median_ingest(ctx)
    X = st.median_data(ctx)
    prod = st.produce(ctx, "median", X)
    job = ctx.memo("job:median", lambda: st.run_job(ctx, prod, "median", {}, 1))
    e2e = prod.records / (prod.seconds + job.seconds)
    train = prod.records / job.seconds
    r = e2e / lim["rate"]
    return [
        Row("e2e.median", fmt_rate(e2e), f"ingest {fmt_rate(lim['rate'])}", r, ">= 0.70", check(r, 0.7),
            f"{prod.records:,} scalars, 1 worker: produce {fmt_s(prod.seconds)} + job {fmt_s(job.seconds)}; "
            f"estimate {job.model.median:.4f} (true 1.0)"),
        Row("e2e.median[train leg]", fmt_rate(train), f"ingest {fmt_rate(lim['rate'])}", train / lim["rate"], "",
            "info", "create_job -> final snapshot stored, without the producer"),
    ]


CASES = {"e2e.linear_learner": case_linear_learner, "e2e.median": case_median}
