"""The prediction server (``streamlearn serve``) under load, on loopback.

A linear learner (d = 100, trained in-process and stored as snapshot version 1 of a job in
the model store) is served by a ``streamlearn serve`` child process; an async Python load
generator (httpx, closed loop: each of C clients sends its next request when the previous
one is answered, 16 rows a request as an np.save body) runs a bounded number of requests at
C = 1, 16, 64. The swap case publishes new versions (stored and produced to the snapshot
topic, as finalize does) while 16 clients keep sending, and counts failures.

The peer the issue names, MLflow's model server, is not run: ``pip install mlflow`` pulls
~60 packages (a Flask/gunicorn server, SQLAlchemy, alembic, pandas, pyarrow pins...) that
do not fit this 2-core machine's shared time; see benchmarks/README.md.
"""
from __future__ import annotations

import asyncio
import io
import time

import numpy as np

from benchmarks._core import Context, Row

ROWS_PER_REQUEST = 16


def _served_job(ctx: Context) -> dict:
    def make():
        import streamlearn as sl
        from streamlearn import datasets as D
        from streamlearn.runtime.jobs import create_job
        from streamlearn.runtime.finalize import ensure_published
        from streamlearn.snapshots.format import encode, snapshot_of
        from streamlearn.snapshots.store import ModelStore
        from streamlearn.statestore.keys import JobKeys
        from streamlearn.streams.topics import ensure_topic

        X, y = D.dense_classification(20_000, d=100, seed=0)
        model = sl.fit_local(sl.LinearLearner(n_features=100), [sl.Batch.of(X[i:i + 1000], y[i:i + 1000])
                                                                for i in range(0, len(X), 1000)])
        s = ctx.settings
        client = s.redis_client()
        name = ctx.name("serve")
        ensure_topic(s.kafka_client_conf(), name, partitions=1)
        create_job(client, s.kafka_client_conf(), name, "linear_learner", name, {"n_features": "100"}, until="never")

        def publish() -> int:
            store = ModelStore(client)
            version = store.next_version(name)
            snap = snapshot_of(model, {"job": name, "algorithm": "linear_learner", "version": version,
                                       "params": {"n_features": 100}, "topic": name})
            store.put(name, encode(snap), snap.metadata)
            client.hset(JobKeys(name).counters, "snapshot_version", version)
            ensure_published(s, client, name)
            return version

        publish()
        return {"name": name, "X": X, "publish": publish}
    return ctx.memo("serve:job", make)


class _Server:
    def __init__(self, ctx: Context, job: str):
        from streamlearn.serving.process import ServerProcess

        self.handle = ServerProcess(job, ["--port", "0", "--max-batch", "256", "--max-wait-ms", "2"],
                                    ctx.worker_env(), ctx.tmp / "serve.log")
        self.handle.wait_ready(60)

    def close(self) -> None:
        self.handle.stop()


async def _load(url: str, job: str, bodies: list[bytes], clients: int, requests: int, deadline_s: float,
                on_reply=None) -> dict:
    import httpx

    latencies: list[float] = []
    failures = 0
    sent = 0
    stop_at = time.perf_counter() + deadline_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        async def one_client(c: int):
            nonlocal sent, failures
            while sent < requests and time.perf_counter() < stop_at:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await http.post(f"/v1/models/{job}:predict", content=body,
                                        headers={"content-type": "application/x-numpy"})
                    ok = r.status_code == 200
                    if ok and on_reply is not None:
                        on_reply(t0, r.json()["model_version"])
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                failures += not ok
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"requests": len(lat), "failures": failures, "seconds": wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "rps": len(lat) / wall}


def _bodies(X: np.ndarray) -> list[bytes]:
    out = []
    for i in range(0, 64 * ROWS_PER_REQUEST, ROWS_PER_REQUEST):
        buf = io.BytesIO()
        np.save(buf, X[i:i + ROWS_PER_REQUEST])
        out.append(buf.getvalue())
    return out


def _requests(ctx: Context) -> int:
    return 300 if ctx.profile_name == "smoke" else 3000


def case_latency(ctx: Context) -> list[Row]:
    job = _served_job(ctx)
    server = _Server(ctx, job["name"])
    rows = []
    try:
        bodies = _bodies(job["X"])
        for clients in (1, 16, 64):
            r = asyncio.run(_load(server.handle.url, job["name"], bodies, clients, _requests(ctx), 60))
            rows.append(Row(f"serve.linear_learner.c{clients}", f"{r['rps'] * ROWS_PER_REQUEST:,.0f} rows/s",
                            status="info" if r["failures"] == 0 else "FAIL",
                            note=f"{clients} clients, {r['requests']} requests of {ROWS_PER_REQUEST} rows (d=100): "
                                 f"{r['rps']:.0f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                                 f"{r['failures']} failed; peer (MLflow) not run"))
    finally:
        server.close()
    return rows


def case_swap(ctx: Context) -> list[Row]:
    job = _served_job(ctx)
    server = _Server(ctx, job["name"])
    swaps: list[tuple[float, int]] = []
    seen = {"version": 0}

    def on_reply(t0: float, version: int) -> None:
        if version > seen["version"]:
            seen["version"] = version
            swaps.append((t0, version))

    try:
        async def main():
            load = asyncio.ensure_future(_load(server.handle.url, job["name"], _bodies(job["X"]), 16,
                                               4 * _requests(ctx), 60, on_reply))
            await asyncio.sleep(1.0)
            for _ in range(3):
                await asyncio.get_running_loop().run_in_executor(None, job["publish"])
                await asyncio.sleep(0.5)
            return await load
        r = asyncio.run(main())
    finally:
        server.close()
    return [Row("serve.swap", f"{r['failures']} failed of {r['requests']}", ratio=None, target="0 failed",
                status="pass" if r["failures"] == 0 and len(swaps) > 1 else "FAIL",
                note=f"16 clients while 3 versions were published: versions served {[v for _, v in swaps]}, "
                     f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms over the whole run, {r['rps']:.0f} req/s")]


CASES = {"serve.linear_learner": case_latency, "serve.swap": case_swap}
