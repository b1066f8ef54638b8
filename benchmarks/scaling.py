"""Scaling with the number of worker processes (linear learner, the dense topic).

Each worker count trains a fresh job over the same topic; the figure is the training leg
(create_job -> final snapshot stored) in rows/s, the reference the one-worker run. The
topic has 4 partitions, so up to 4 workers each own at least one. On a machine with C
cores, more than C workers (plus the broker and Redis, which need CPU too) cannot speed
up CPU-bound update steps; the row notes say how many cores there were.
"""
from __future__ import annotations

import os

from benchmarks._core import Context, Row, fmt_rate, fmt_s
from benchmarks.e2e import accuracy, ll_job


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


CASES = {"scaling.workers": case_workers}
