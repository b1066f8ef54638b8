"""Sharded state on a local Redis Cluster of 1, 3 and 6 masters (issue 17).

- ``cluster.push_pull``: :func:`benchmarks.state.measure` (a dense push + commit and a cold
  pull of one ``state_floats`` key) against a Redis Cluster of N masters started for the case
  (``redis-server`` nodes on loopback, no Kafka), beside the single Redis of the run's stack.
  On this machine every node shares the same 2 cores (and the other work on them), so the
  figure is what sharding costs in round trips and read-backs, not what N machines give:
  N nodes on one host cannot add bandwidth. benchmarks/README.md has the cost model for a
  real 50-node cluster.
- ``cluster.live_linear``: the live linear learner (:func:`benchmarks._streams.run_live`,
  ``e2e.linear_learner``'s figure: one worker already running, producer and training at
  once, until a snapshot of every record is stored) on the dense set, with the state on the
  run's single Redis and on Redis Clusters of 1, 3 and 6 masters (Kafka: the run's stack).
  The same 2-core bound holds: the figure is what a sharded commit costs one worker here.
"""
from __future__ import annotations

import time

from benchmarks import _streams as st
from benchmarks._core import Context, Row, fmt_bw, fmt_rate
from benchmarks.e2e import accuracy, ll_params
from benchmarks.state import measure

MASTERS = (1, 3, 6)


def _cluster(ctx: Context, masters: int):
    """(settings, rstate) of a fresh cluster of ``masters`` masters under the run's temp dir."""
    from streamlearn.config import Settings
    from streamlearn.devstack.redis_cluster import launch_cluster, prepare_cluster, wait_cluster

    rstate = prepare_cluster(ctx.tmp / f"cluster-{masters}", masters, 0, aof=False, appendfsync="everysec",
                             password=None, user=None)
    launch_cluster(rstate)
    try:
        wait_cluster(rstate, time.monotonic() + 120)
    except BaseException:
        _stop(rstate)
        raise
    return Settings(kafka=ctx.settings.kafka, redis=rstate["url"]), rstate


def _stop(rstate: dict) -> None:
    from streamlearn.devstack.procs import stop_pid
    from streamlearn.devstack.state import REDIS_MARKER

    for node in rstate["cluster"]["nodes"]:
        stop_pid(node["pid"], REDIS_MARKER)


def case_push_pull(ctx: Context) -> list[Row]:
    n = ctx.p["state_floats"]
    one = measure(ctx, n)
    rows = [Row("cluster.push.single", fmt_bw(one["push_bw"]), note=f"{n:.0e} floats, one redis-server: "
                f"push+commit {one['push_s'] * 1e3:.0f} ms, cold pull {one['pull_s'] * 1e3:.0f} ms")]
    for masters in MASTERS:
        settings, rstate = _cluster(ctx, masters)
        try:
            m = measure(ctx, n, settings=settings)
        finally:
            _stop(rstate)
        rows.append(Row(f"cluster.push.{masters}", fmt_bw(m["push_bw"]), f"single {fmt_bw(one['push_bw'])}",
                        m["push_bw"] / one["push_bw"], note=f"{masters} master(s), {m['chunks']} chunks: push+commit "
                        f"{m['push_s'] * 1e3:.0f} ms (reads back under WATCH), cold pull {m['pull_s'] * 1e3:.0f} ms "
                        f"({fmt_bw(m['pull_bw'])}, single {fmt_bw(one['pull_bw'])})"))
    return rows


#: live runs per configuration (the best is reported: the other helpers' load comes and goes)
LIVE_RUNS = 2


def case_live_linear(ctx: Context) -> list[Row]:
    Xtr, ytr, _, _ = st.dense(ctx)

    def best(tag: str) -> tuple[float, str]:
        runs = [st.run_live(ctx, f"dense-{tag}{i}", Xtr, ytr, "linear_learner", ll_params(ctx))
                for i in range(LIVE_RUNS)]
        top = max(runs, key=lambda r: r.records / r.seconds)
        return top.records / top.seconds, (f"best of {', '.join(fmt_rate(r.records / r.seconds) for r in runs)}; "
                                           f"test accuracy {accuracy(ctx, top.model):.4f}; {top.timeline()}")

    base, note = best("single")
    rows = [Row("cluster.live_linear.single", fmt_rate(base), note=f"{len(Xtr):,}x{Xtr.shape[1]} rows, one "
                f"redis-server, {note}")]
    for masters in MASTERS:
        settings, rstate = _cluster(ctx, masters)
        try:
            with ctx.redis_of(settings):
                rate, note = best(f"c{masters}-")
        finally:
            _stop(rstate)
        rows.append(Row(f"cluster.live_linear.{masters}", fmt_rate(rate), f"single {fmt_rate(base)}", rate / base,
                        note=f"{masters} master(s), {note}"))
    return rows


CASES = {"cluster.push_pull": case_push_pull, "cluster.live_linear": case_live_linear}
