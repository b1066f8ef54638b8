"""The prediction server (``streamlearn serve``) under load, on loopback, against MLflow's.

Two models, each fit in-process and stored as snapshot version 1 of a job in the model store:
a linear learner (d = 100, dense, binary) and factorization machines (2^20 hashed sparse
features, 40 tokens a row, 8 factors, binary). A ``streamlearn serve`` child process
(``--max-batch 256 --max-wait-ms 2``) serves each in turn; Debian's ``wrk`` (closed loop,
C = 1, 16, 64 connections, a fixed time each, ``benchmarks/wrk_bodies.lua`` posting 64
different bodies in turn) sends 16 rows a request in each body kind: JSON dense instances
and an ``np.save`` body (linear), JSON sparse instances and an Avro ``training_batch`` in
CSR form (FM).

The peer is MLflow's model server (``mlflow models serve --env-manager local``: one uvicorn
worker, its default) of an equivalent model saved by ``benchmarks/mlflow_peer_models.py``
(a scikit-learn LogisticRegression with the same weights; a pyfunc FM with the same w0, w,
V), run after ours on the same machine with the same wrk and the same rows: the linear
case's JSON bodies byte for byte, the FM rows as ``dataframe_records`` of the same
``{"indices", "values"}`` objects (MLflow turns ragged ``instances`` into arrays and refuses
them). MLflow reads no binary body, so the np.save and Avro rows have no peer figure.
Before any load, the first body of every kind must get the same predictions from both
servers. mlflow is no streamlearn dependency: ``STREAMLEARN_BENCH_MLFLOW_PYTHON`` names a
Python that has mlflow and scikit-learn (a throwaway venv, benchmarks/README.md); without
it the rows say the peer is not installed.

The swap case publishes new versions (stored and produced to the snapshot topic, as
finalize does) while 16 httpx clients keep sending (wrk cannot report the version each
reply carries), and counts failures.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks._core import Context, Row

ROWS_PER_REQUEST = 16
N_BODIES = 64
CLIENTS = (1, 16, 64)
WRK_THREADS = 2  # one wrk thread keeps ~10^4-10^5 requests/s in flight: the servers are the bound
MLFLOW_PYTHON = "STREAMLEARN_BENCH_MLFLOW_PYTHON"
HERE = Path(__file__).resolve().parent
FM_FEATURES = 2 ** 20


# -- the served jobs ----------------------------------------------------------------------------
def _fit(ctx: Context, algorithm: str):
    """(algorithm instance, its params, features, labels) of a served model."""
    import streamlearn as sl
    from streamlearn import datasets as D

    if algorithm == "linear_learner":
        X, y = D.dense_classification(20_000, d=100, seed=0)
        return sl.LinearLearner(n_features=100), {"n_features": 100}, X, y
    rows = 5_000 if ctx.profile_name == "smoke" else 50_000
    X, y = D.sparse_classification(rows, n_features=FM_FEATURES, seed=0)
    params = {"n_features": FM_FEATURES, "num_factors": 8}
    return sl.FactorizationMachines(**params), params, X, y


def _served_job(ctx: Context, algorithm: str) -> dict:
    def make():
        import streamlearn as sl
        from streamlearn import datasets as D
        from streamlearn.runtime.finalize import ensure_published
        from streamlearn.runtime.jobs import create_job
        from streamlearn.runtime.record import JobRecord
        from streamlearn.snapshots.format import encode, snapshot_of
        from streamlearn.snapshots.store import ModelStore
        from streamlearn.streams.topics import ensure_topic

        algo, params, X, y = _fit(ctx, algorithm)
        model = sl.fit_local(algo, list(D.batches(X, y, 1000)))
        s = ctx.settings
        client = s.redis_client()
        name = ctx.name(f"serve-{algorithm.replace('_', '-')}")
        ensure_topic(s.kafka_client_conf(), name, partitions=1)
        create_job(client, s.kafka_client_conf(), name, algorithm, name, {k: str(v) for k, v in params.items()},
                   until="never")

        def publish() -> int:
            store = ModelStore(client)
            version = store.next_version(name)
            snap = snapshot_of(model, {"job": name, "algorithm": algorithm, "version": version, "params": params,
                                       "topic": name})
            data = encode(snap)
            JobRecord(client, name).record_snapshot(version, False,
                                                    lambda pipe: store.put(name, data, snap.metadata, pipe=pipe))
            ensure_published(s, client, name, just_stored=(version, data, snap.metadata))
            return version

        publish()
        return {"name": name, "algorithm": algorithm, "model": model, "X": X, "publish": publish}
    return ctx.memo(f"serve:job:{algorithm}", make)


class _Server:
    def __init__(self, ctx: Context, job: str):
        from streamlearn.serving.process import ServerProcess

        self.handle = ServerProcess(job, ["--port", "0", "--max-batch", "256", "--max-wait-ms", "2"],
                                    ctx.worker_env(), ctx.tmp / f"serve-{job}.log")
        self.handle.wait_ready(120)
        self.url = self.handle.url

    def close(self) -> None:
        self.handle.stop()


# -- request bodies: one list of N_BODIES bodies (16 rows each) per kind --------------------------
def _npy(rows: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, rows)
    return buf.getvalue()


def _sparse_objects(csr) -> list[dict]:
    return [{"indices": csr.indices[a:b].tolist(), "values": csr.data[a:b].tolist()}
            for a, b in zip(csr.indptr[:-1], csr.indptr[1:])]


def _request_rows(X) -> list:
    """N_BODIES slices of 16 rows: dense arrays, or scipy CSR matrices with duplicate
    (row, column) entries summed (a JSON sparse instance may name an index once)."""
    if isinstance(X, np.ndarray):
        return [X[i:i + ROWS_PER_REQUEST] for i in range(0, N_BODIES * ROWS_PER_REQUEST, ROWS_PER_REQUEST)]
    import scipy.sparse as sp

    csr = sp.csr_matrix((X.values, X.indices, X.indptr), shape=X.shape)
    csr.sum_duplicates()
    return [csr[i:i + ROWS_PER_REQUEST] for i in range(0, N_BODIES * ROWS_PER_REQUEST, ROWS_PER_REQUEST)]


def _bodies(algorithm: str, X) -> dict[str, tuple[str, list[bytes]]]:
    """kind -> (content type, bodies); kind "mlflow" is the peer's JSON of the same rows."""
    from streamlearn.batch import as_features
    from streamlearn.wire.serde import encode_training_batch

    rows = _request_rows(X)
    if algorithm == "linear_learner":
        dense = [json.dumps({"instances": r.tolist()}).encode() for r in rows]
        return {"json": ("application/json", dense), "npy": ("application/x-numpy", [_npy(r) for r in rows]),
                "mlflow": ("application/json", dense)}
    return {"json": ("application/json", [json.dumps({"instances": _sparse_objects(r)}).encode() for r in rows]),
            "avro": ("application/avro", [encode_training_batch(as_features(r)) for r in rows]),
            "mlflow": ("application/json",
                       [json.dumps({"dataframe_records": _sparse_objects(r)}).encode() for r in rows])}


# -- the load generator ---------------------------------------------------------------------------
def _wrk(url: str, path: str, content_type: str, files: list[Path], clients: int, seconds: float) -> dict:
    cmd = ["wrk", "-t", str(min(clients, WRK_THREADS)), "-c", str(clients), "-d", f"{seconds:g}s", "--timeout", "30s",
           "-s", str(HERE / "wrk_bodies.lua"), url, "--", path, content_type, *map(str, files)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-200:]}")
    r = json.loads(line.split(" ", 1)[1])
    wall = r["duration_us"] / 1e6
    return {"requests": r["requests"], "failures": r["status_errors"] + r["socket_errors"], "rps": r["requests"] / wall,
            "p50": r["p50_us"] / 1000, "p99": r["p99_us"] / 1000}


def _measure(ctx: Context, url: str, path: str, content_type: str, files: list[Path]) -> dict[int, dict]:
    """wrk at every concurrency, after a 1 s warm-up at the highest."""
    seconds = 3 if ctx.profile_name == "smoke" else 20
    _wrk(url, path, content_type, files, max(CLIENTS), 1)
    return {c: _wrk(url, path, content_type, files, c, seconds) for c in CLIENTS}


def _post(url: str, path: str, content_type: str, body: bytes) -> dict:
    import httpx

    r = httpx.post(url + path, content=body, headers={"content-type": content_type}, timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"POST {path} ({content_type}) answered {r.status_code}: {r.text[:200]}")
    return r.json()


def _write(ctx: Context, tag: str, bodies: list[bytes]) -> list[Path]:
    folder = ctx.tmp / "bodies" / tag
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.bin" for i in range(len(bodies))]
    for p, b in zip(paths, bodies):
        p.write_bytes(b)
    return paths


# -- the MLflow peer ------------------------------------------------------------------------------
def _mlflow_python() -> tuple[str | None, str]:
    """(the peer's Python, "") or (None, why the peer is not run)."""
    python = os.environ.get(MLFLOW_PYTHON)
    if not python:
        return None, f"MLflow peer not installed (set {MLFLOW_PYTHON} to a Python with mlflow and scikit-learn)"
    probe = subprocess.run([python, "-c", "import mlflow, sklearn"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return None, f"MLflow peer not installed: {python} cannot import mlflow and sklearn"
    return python, ""


def _peer_weights(job: dict) -> dict[str, np.ndarray]:
    from streamlearn.algorithms._common import model_coding

    model = job["model"]
    classes = np.asarray(model_coding(model.attrs).decode(np.array([0, 1])))
    if job["algorithm"] == "linear_learner":
        return {"coef": model.weights[:, :1].T, "intercept": model.bias[:1], "classes": classes}
    return {"w0": np.array([model.w0]), "w": model.w, "v": model.v, "classes": classes}


class _MlflowServer:
    """``mlflow models serve`` of the job's equivalent model, in a process group of its own
    (it execs uvicorn from a bash child)."""

    def __init__(self, ctx: Context, python: str, job: dict):
        folder = ctx.tmp / f"mlflow-{job['algorithm']}"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "weights.npz", **_peer_weights(job))
        model_dir = folder / "model"
        shutil.rmtree(model_dir, ignore_errors=True)
        saved = subprocess.run([python, str(HERE / "mlflow_peer_models.py"), job["algorithm"],
                                str(folder / "weights.npz"), str(model_dir)], capture_output=True, text=True,
                               timeout=300)
        if saved.returncode != 0:
            raise RuntimeError(f"saving the MLflow model failed: {saved.stderr.strip()[-300:]}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.log_path = folder / "serve.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [python, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "-h", "127.0.0.1", "-p", str(port),
                 "--env-manager", "local"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        self._wait_ready(180)

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.close()
                tail = self.log_path.read_text().strip().splitlines()[-1:]
                raise RuntimeError(f"mlflow models serve exited with {self.process.returncode}: {tail}")
            try:
                if httpx.get(self.url + "/ping", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.close()
        raise TimeoutError(f"mlflow models serve was not up within {timeout} s; see {self.log_path}")

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _same_answers(ours: list[dict], other: list) -> bool:
    """``other`` (records, or sklearn's bare classes) has our predictions, and our scores to
    1e-5 where it has scores (MLflow's FM computes in float64 from the JSON-printed values)."""
    if len(ours) != len(other):
        return False
    if all(isinstance(p, dict) for p in other):
        return all(o["prediction"] == p["prediction"] and abs(o["score"] - p["score"]) <= 1e-5
                   for o, p in zip(ours, other))
    return [o["prediction"] for o in ours] == list(other)


# -- the cases ------------------------------------------------------------------------------------
def _case(ctx: Context, algorithm: str, label: str) -> list[Row]:
    job = _served_job(ctx, algorithm)
    bodies = _bodies(algorithm, job["X"])
    files = {kind: _write(ctx, f"{label}-{kind}", b) for kind, (_, b) in bodies.items()}
    path = f"/v1/models/{job['name']}:predict"
    ours: dict[str, dict[int, dict]] = {}
    server = _Server(ctx, job["name"])
    try:
        first = {kind: _post(server.url, path, ctype, b[0])["predictions"]
                 for kind, (ctype, b) in bodies.items() if kind != "mlflow"}
        if not all(_same_answers(first["json"], answer) for answer in first.values()):
            raise RuntimeError("our server answered the body kinds of the same rows differently")
        for kind, (ctype, _) in bodies.items():
            if kind != "mlflow":
                ctx.log(f"{label}: ours, {kind} bodies")
                ours[kind] = _measure(ctx, server.url, path, ctype, files[kind])
    finally:
        server.close()

    peer = None
    python, peer_note = _mlflow_python()
    if python is not None:
        ctype = bodies["mlflow"][0]
        try:
            ctx.log(f"{label}: MLflow peer")
            mlflow = _MlflowServer(ctx, python, job)
            try:
                answer = _post(mlflow.url, "/invocations", ctype, bodies["mlflow"][1][0])["predictions"]
                if not _same_answers(first["json"], answer):
                    raise RuntimeError(f"MLflow answered other predictions for the same rows: {answer[:3]}...")
                peer = _measure(ctx, mlflow.url, "/invocations", ctype, files["mlflow"])
            finally:
                mlflow.close()
        except Exception as exc:  # the peer's failure is reported in its rows, ours stand
            peer_note = f"MLflow peer failed: {type(exc).__name__}: {str(exc)[:200]}"
    return _rows(label, ours, peer, peer_note)


def _rows(label: str, ours: dict[str, dict[int, dict]], peer: dict[int, dict] | None, peer_note: str) -> list[Row]:
    fmt = lambda r: f"{r['rps']:.0f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, {r['failures']} failed"
    rows = []
    for kind, by_clients in ours.items():
        for clients, r in by_clients.items():
            note = f"{clients} clients, {r['requests']} requests of {ROWS_PER_REQUEST} rows: ours {fmt(r)}; "
            ref, ratio = "", None
            if kind != "json":
                note += "MLflow reads no binary body"
            elif peer is None:
                note += peer_note
            else:
                p = peer[clients]
                ref, ratio = f"{p['rps'] * ROWS_PER_REQUEST:,.0f} rows/s", r["rps"] / p["rps"]
                note += f"MLflow {fmt(p)}"
            ours_rate = f"{r['rps'] * ROWS_PER_REQUEST:,.0f} rows/s"
            rows.append(Row(f"serve.{label}.{kind}.c{clients}", ours_rate, ref, ratio,
                            status="info" if r["failures"] == 0 else "FAIL", note=note))
    return rows


def _wrk_missing(case: str) -> list[Row] | None:
    if shutil.which("wrk") is None:
        return [Row(case, status="skip", note="wrk not installed (apt-get install wrk)")]
    return None


def case_linear_learner(ctx: Context) -> list[Row]:
    return _wrk_missing("serve.linear_learner") or _case(ctx, "linear_learner", "linear_learner")


def case_fm(ctx: Context) -> list[Row]:
    return _wrk_missing("serve.fm") or _case(ctx, "factorization_machines", "fm")


async def _load(url: str, job: str, bodies: list[bytes], clients: int, requests: int, deadline_s: float,
                on_reply: Callable[[float, int], None]) -> dict:
    """Closed-loop httpx clients sending np.save bodies, each reply's version to ``on_reply``."""
    import httpx

    latencies: list[float] = []
    failures = 0
    sent = 0
    stop_at = time.perf_counter() + deadline_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        async def one_client():
            nonlocal sent, failures
            while sent < requests and time.perf_counter() < stop_at:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await http.post(f"/v1/models/{job}:predict", content=body,
                                        headers={"content-type": "application/x-numpy"})
                    ok = r.status_code == 200
                    if ok:
                        on_reply(t0, r.json()["model_version"])
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                failures += not ok
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"requests": len(lat), "failures": failures, "seconds": wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "rps": len(lat) / wall}


def case_swap(ctx: Context) -> list[Row]:
    job = _served_job(ctx, "linear_learner")
    server = _Server(ctx, job["name"])
    swaps: list[tuple[float, int]] = []
    seen = {"version": 0}

    def on_reply(t0: float, version: int) -> None:
        if version > seen["version"]:
            seen["version"] = version
            swaps.append((t0, version))

    requests = 1200 if ctx.profile_name == "smoke" else 12_000
    try:
        async def main():
            load = asyncio.ensure_future(_load(server.url, job["name"], [_npy(r) for r in _request_rows(job["X"])], 16,
                                               requests, 60, on_reply))
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


CASES = {"serve.linear_learner": case_linear_learner, "serve.fm": case_fm, "serve.swap": case_swap}
