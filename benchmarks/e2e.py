"""End to end: producer -> Kafka -> worker process(es) -> Redis state -> snapshot.

The headline figure is the live pipeline (:func:`benchmarks._streams.run_live`): rows /
(first send -> every record applied and a snapshot of that state stored), with the
producer and an already-running worker working at the same time, as a streaming job
runs. Two more rows keep the stricter sequential view: the bounded job after the topic
was produced (rows / (produce time + create_job -> final snapshot), worker start-up and
group join included; producing and consuming cannot overlap there, so it stays below
~0.5 of the limit however fast training is), and its training leg alone. The reference
is the ingest limit of the same data (:mod:`benchmarks.limits`), which only consumes.
"""
from __future__ import annotations

import time

from benchmarks import _streams as st
from benchmarks._core import Context, Row, check, fit_ours, fmt_rate, fmt_s
from benchmarks.limits import dense_ingest, median_ingest


def ll_params(ctx: Context) -> dict:
    return {"n_features": ctx.p["dense_d"], "predictor_type": "binary_classifier"}


def ll_job(ctx: Context, workers: int = 1, env: dict | None = None) -> st.JobRun:
    Xtr, ytr, _, _ = st.dense(ctx)
    prod = st.produce(ctx, "dense", Xtr, ytr)
    tag = "dense" + ("-" + "-".join(f"{k}{v}" for k, v in sorted(env.items())).lower().replace("_", "") if env else "")
    return ctx.memo(("job:ll", workers, tag), lambda: st.run_job(ctx, prod, "linear_learner", ll_params(ctx), workers,
                                                                 env=env, tag=tag))


def ll_live(ctx: Context) -> st.LiveRun:
    """The live pipeline run of the linear learner on the dense set (shared by the peers)."""
    Xtr, ytr, _, _ = st.dense(ctx)
    return ctx.memo("live:ll", lambda: st.run_live(ctx, "dense", Xtr, ytr, "linear_learner", ll_params(ctx)))


def ll_local(ctx: Context) -> dict:
    """In-process fit_local on the same rows, in the worker's update steps (``step_rows``)."""
    def make():
        from streamlearn import datasets
        from streamlearn.algorithms import make_algorithm

        Xtr, ytr, Xte, yte = st.dense(ctx)
        algo = make_algorithm("linear_learner", ll_params(ctx))
        t0 = time.perf_counter()
        model = fit_ours(algo, datasets.batches(Xtr, ytr, algo.step_rows))
        dt = time.perf_counter() - t0
        return {"seconds": dt, "rate": len(Xtr) / dt, "model": model, "steps": algo.step_rows}
    return ctx.memo("local:ll", make)


def accuracy(ctx: Context, model) -> float:
    from streamlearn.batch import Batch

    _, _, Xte, yte = st.dense(ctx)
    return float(model.score(Batch(Xte, yte), "accuracy"))


def _live_row(name: str, live: st.LiveRun, lim: dict, target: float, what: str) -> Row:
    rate = live.records / live.seconds
    r = rate / lim["rate"]
    return Row(name, fmt_rate(rate), f"ingest {fmt_rate(lim['rate'])}", r, f">= {target:.2f}", check(r, target),
               f"live: {what}, {live.workers} worker already running; {live.timeline()}")


def case_linear_learner(ctx: Context) -> list[Row]:
    lim = dense_ingest(ctx)
    Xtr, ytr, _, _ = st.dense(ctx)
    live = ll_live(ctx)
    prod = st.produce(ctx, "dense", Xtr, ytr)
    job = ll_job(ctx, 1)
    e2e = prod.records / (prod.seconds + job.seconds)
    train = prod.records / job.seconds
    acc = accuracy(ctx, job.model)
    local = ll_local(ctx)
    return [
        _live_row("e2e.linear_learner", live, lim, 0.5,
                  f"{live.records:,}x{prod.n_features} rows, 32 packed models, test accuracy "
                  f"{accuracy(ctx, live.model):.4f}"),
        Row("e2e.linear_learner[sequential]", fmt_rate(e2e), f"ingest {fmt_rate(lim['rate'])}", e2e / lim["rate"], "",
            "info", f"produce the topic, then a bounded job: produce {fmt_s(prod.seconds)} + job "
                    f"{fmt_s(job.seconds)} (worker start-up and group join included); test accuracy {acc:.4f}"),
        Row("e2e.linear_learner[train leg]", fmt_rate(train), f"ingest {fmt_rate(lim['rate'])}",
            train / lim["rate"], "", "info", "create_job -> final snapshot stored, without the producer"),
        Row("e2e.linear_learner[fit_local]", fmt_rate(local["rate"]), f"ingest {fmt_rate(lim['rate'])}",
            local["rate"] / lim["rate"], "", "info",
            f"same rows in-process (LocalState, {local['steps']}-row steps), {fmt_s(local['seconds'])}: "
            "the algorithm's own cost"),
    ]


def case_median(ctx: Context) -> list[Row]:
    lim = median_ingest(ctx)
    X = st.median_data(ctx)
    live = ctx.memo("live:median", lambda: st.run_live(ctx, "median", X, None, "median", {}))
    prod = st.produce(ctx, "median", X)
    job = ctx.memo("job:median", lambda: st.run_job(ctx, prod, "median", {}, 1))
    e2e = prod.records / (prod.seconds + job.seconds)
    train = prod.records / job.seconds
    return [
        _live_row("e2e.median", live, lim, 0.7,
                  f"{live.records:,} scalars, estimate {live.model.median:.4f} (true 1.0)"),
        Row("e2e.median[sequential]", fmt_rate(e2e), f"ingest {fmt_rate(lim['rate'])}", e2e / lim["rate"], "",
            "info", f"produce the topic, then a bounded job: produce {fmt_s(prod.seconds)} + job "
                    f"{fmt_s(job.seconds)}; estimate {job.model.median:.4f} (true 1.0)"),
        Row("e2e.median[train leg]", fmt_rate(train), f"ingest {fmt_rate(lim['rate'])}", train / lim["rate"], "",
            "info", "create_job -> final snapshot stored, without the producer"),
    ]


CASES = {"e2e.linear_learner": case_linear_learner, "e2e.median": case_median}
