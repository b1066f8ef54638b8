"""Limits: what the hardware + Kafka + Redis allow before any of our code runs.

- ``limits.ingest``: raw consume rate of the dense training topic (and of the median
  topic) into numpy with confluent-kafka, no validation, no training, no Redis.
- ``limits.redis``: raw Redis SET / GET bandwidth with large values, pipelined, through
  redis-py (the client RedisState uses).
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks import _streams as st
from benchmarks._core import Context, Row, fmt_bw, fmt_rate


def _hiredis() -> bool:
    """Whether redis-py parses replies with hiredis (C) here: the raw figures depend on it."""
    from redis.utils import HIREDIS_AVAILABLE

    return bool(HIREDIS_AVAILABLE)


def dense_ingest(ctx: Context) -> dict:
    Xtr, ytr, _, _ = st.dense(ctx)
    return st.raw_consume(ctx, st.produce(ctx, "dense", Xtr, ytr))


def median_ingest(ctx: Context) -> dict:
    return st.raw_consume(ctx, st.produce(ctx, "median", st.median_data(ctx)))


#: repetitions of a Redis bandwidth measurement, the best counting (the raw limit here and
#: state.push_pull's figures: the same number on both sides of a ratio)
BEST_OF = 5


def redis_bandwidth(ctx: Context) -> dict:
    """SET then GET of ``redis_total_mb`` in values of ``redis_value_mb``, pipelined (and, for
    GET, also one by one: redis-py reads large replies faster that way at times); best of
    ``BEST_OF``, SET and GET each."""
    def make():
        client = ctx.settings.redis_client()
        size = ctx.p["redis_value_mb"] << 20
        n = max(1, ctx.p["redis_total_mb"] // ctx.p["redis_value_mb"])
        value = np.random.default_rng(0).bytes(size)
        keys = [f"bench:raw:{ctx.run_id}:{i}" for i in range(n)]
        best_set = best_get = float("inf")
        for _ in range(BEST_OF):
            t0 = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.set(k, value)
            pipe.execute()
            t1 = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.get(k)
            got = pipe.execute()
            t2 = time.perf_counter()
            assert all(len(g) == size for g in got)
            for k in keys:
                client.get(k)
            t3 = time.perf_counter()
            best_set, best_get = min(best_set, t1 - t0), min(best_get, t2 - t1, t3 - t2)
        client.delete(*keys)
        total = size * n
        return {"set": total / best_set, "get": total / best_get,
                "set_get": 2 * total / (best_set + best_get), "value_bytes": size, "values": n}
    return ctx.memo("redis_bw", make)


def case_ingest(ctx: Context) -> list[Row]:
    rows = []
    for name, fn in (("dense", dense_ingest), ("median", median_ingest)):
        r = fn(ctx)
        prod = st.produce(ctx, name, *_data_for(ctx, name))
        rows.append(Row(f"limits.ingest[{name}]", fmt_rate(r["rate"]), "", None, "", "info",
                        f"raw confluent-kafka consume+np.frombuffer of {r['rows']:,} rows "
                        f"({prod.messages} msgs, {fmt_bw(r['bytes_per_s'])}) in {r['seconds']:.2f} s; "
                        f"producing them took {prod.seconds:.2f} s ({fmt_rate(prod.records / prod.seconds)})"))
    return rows


def _data_for(ctx: Context, name: str):
    if name == "dense":
        Xtr, ytr, _, _ = st.dense(ctx)
        return Xtr, ytr
    return (st.median_data(ctx),)


def case_redis(ctx: Context) -> list[Row]:
    r = redis_bandwidth(ctx)
    parser = "hiredis" if _hiredis() else "no hiredis"
    note = f"{r['values']} values of {r['value_bytes'] >> 20} MiB, redis-py ({parser}), pipelined, best of {BEST_OF}"
    return [Row("limits.redis[SET]", fmt_bw(r["set"]), "", None, "", "info", note),
            Row("limits.redis[GET]", fmt_bw(r["get"]), "", None, "", "info", note)]


CASES = {"limits.ingest": case_ingest, "limits.redis": case_redis}
