"""State push / pull against raw Redis bandwidth, and push cost against state size.

- ``state.push_pull``: one key of ``state_floats`` float64 values (80 MB in the full
  profile) in :class:`~streamlearn.statestore.redis_state.RedisState`. *Push* is a dense
  ``push`` + ``commit``: the commit point reads the current chunks under WATCH, adds the
  delta and writes them back in MULTI/EXEC, so it moves the key's bytes twice; its
  bandwidth (2 x bytes / time) is compared with raw pipelined SET+GET bandwidth. *Pull*
  (cold cache) moves the bytes once and is compared with raw GET.
- ``state.push_cost``: the same commit for 1e3 ... 1e7 floats (ms per commit, MB/s).
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks._core import Context, Row, check, fmt_bw
from benchmarks.limits import BEST_OF, redis_bandwidth


def _state(ctx: Context, n: int, tag: str, settings=None):
    from streamlearn.statestore.redis_state import RedisState

    client = (settings or ctx.settings).redis_client()
    job = ctx.name(f"state-{tag}")
    state = RedisState(client, job)
    state.initialize("x", np.zeros(n))
    state.commit()
    return client, job, state


def _cleanup(client, job: str) -> None:
    from streamlearn.runtime.record import JobRecord

    JobRecord(client, job).delete()  # every key of the state, on one node or a cluster


def measure(ctx: Context, n: int, reps: int = BEST_OF, settings=None) -> dict:
    """Best-of-``reps`` times of push+commit and of a cold pull for an ``n``-float key (on
    ``settings``' Redis, default the run's stack)."""
    def make():
        client, job, state = _state(ctx, n, str(n), settings)
        delta = np.random.default_rng(0).normal(size=n)
        push = pull = float("inf")
        try:
            for _ in range(reps):
                state.refresh()
                t0 = time.perf_counter()
                state.push("x", delta)
                state.commit()
                push = min(push, time.perf_counter() - t0)
                state.refresh()
                t0 = time.perf_counter()
                out = state.pull("x")
                pull = min(pull, time.perf_counter() - t0)
            assert np.allclose(out, reps * delta)
            spec = state.spec("x")
            chunks, chunk_kib = spec.n_chunks, spec.chunk_rows_ * 8 >> 10
        finally:
            _cleanup(client, job)
        nbytes = 8 * n
        return {"push_s": push, "pull_s": pull, "push_bw": 2 * nbytes / push, "pull_bw": nbytes / pull,
                "chunks": chunks, "chunk_kib": chunk_kib}
    return ctx.memo(("state", n, reps, settings and settings.redis), make)


def case_push_pull(ctx: Context) -> list[Row]:
    raw = redis_bandwidth(ctx)
    n = ctx.p["state_floats"]
    m = measure(ctx, n)
    rp, rl = m["push_bw"] / raw["set_get"], m["pull_bw"] / raw["get"]
    size = f"{n:.0e} floats ({8 * n / 1e6:.0f} MB, {m['chunks']} chunks of {m['chunk_kib']} KiB)"
    return [
        Row("state.push", fmt_bw(m["push_bw"]), f"raw SET+GET {fmt_bw(raw['set_get'])}", rp, ">= 0.50", check(rp, 0.5),
            f"{size}: push+commit {m['push_s'] * 1e3:.0f} ms (read+add+write under WATCH/MULTI)"),
        Row("state.pull", fmt_bw(m["pull_bw"]), f"raw GET {fmt_bw(raw['get'])}", rl, ">= 0.50", check(rl, 0.5),
            f"{size}: cold pull {m['pull_s'] * 1e3:.0f} ms"),
    ]


def case_push_cost(ctx: Context) -> list[Row]:
    raw = redis_bandwidth(ctx)
    rows = []
    for n in ctx.p["push_sizes"]:
        m = measure(ctx, n)
        rows.append(Row(f"state.push_cost[{n:.0e}]", f"{m['push_s'] * 1e3:.2f} ms", f"raw SET+GET {fmt_bw(raw['set_get'])}",
                        m["push_bw"] / raw["set_get"], "", "info",
                        f"push+commit of {n:,} float64 = {fmt_bw(m['push_bw'])} effective; {m['chunks']} chunk(s)"))
    return rows


CASES = {"state.push_pull": case_push_pull, "state.push_cost": case_push_cost}
