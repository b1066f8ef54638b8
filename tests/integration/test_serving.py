"""``streamlearn serve`` / ``conn.serve`` on the real stack: a job trained by real workers,
readiness before its first snapshot, predictions over HTTP equal to the stored model's, hot
swaps while concurrent clients keep sending (no failed request, every answer tagged with a
version that exists and equal to that version's predictions), and ``streamlearn export``."""
from __future__ import annotations

import concurrent.futures
import json
import threading
import urllib.request

import numpy as np
import pytest

import streamlearn as sl
from streamlearn import datasets as D
from streamlearn.runtime.predict import load_job_model
from tests.integration.procs import cli, wait_for

pytestmark = pytest.mark.integration

D_FEATURES = 12


@pytest.fixture
def conn(stack):
    with sl.connect() as c:
        yield c


def _same(got: list[dict], want: list[dict]) -> bool:
    """Same predictions; scores equal up to float rounding (a row summed inside a larger batch)."""
    return len(got) == len(want) and all(
        g["prediction"] == w["prediction"] and np.isclose(g["score"], w["score"], rtol=1e-12)
        for g, w in zip(got, want))


def _get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read().decode()
            return r.status, (json.loads(body) if r.headers.get_content_type() == "application/json" else body)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_follows_snapshots_and_swaps_under_load_without_a_failed_request(conn, unique_name, tmp_path):
    X, y = D.dense_classification(4000, d=D_FEATURES, seed=21)
    conn.create_topic(unique_name, partitions=2)
    conn.produce(unique_name, X[:2000], y[:2000], batch_size=250)
    job = conn.create_job(unique_name, sl.LinearLearner(n_features=D_FEATURES, num_models=4), topic=unique_name,
                          until="never")
    server = conn.serve(job, port=0, max_batch=32, max_wait_ms=5, log_dir=tmp_path)

    try:
        client = server.client()
        # no snapshot yet: alive, not ready, predictions refused with 503
        assert _get(server.url + "/healthz")[0] == 200
        assert _get(server.url + "/readyz")[0] == 503
        with pytest.raises(sl.ServiceUnavailable, match="no model"):
            client.predict(X[:2])

        job.run_workers(1, log_dir=tmp_path)
        wait_for(lambda: job.status()["records_applied"] >= 2000, 240, "the first 2,000 records applied")
        assert job.snapshot() == 1
        server.wait_ready(timeout=60)
        v1 = load_job_model(conn.redis, unique_name, 1)
        got = client.predict_records(X[:200])
        assert got.version == 1 and got.records == v1.predict_records(X[:200])  # np.save body: exact
        np.testing.assert_array_equal(client.predict(X[:200]), v1.evaluate(X[:200]))
        info = client.info()
        assert info["version"] == 1 and info["algorithm"] == "linear_learner" and info["gate"] == "blessed"
        assert info["lineage"]["topic"] == unique_name and info["lineage"]["records_applied"] >= 2000
        assert info["lineage"]["parent"] is None and info["params"]["n_features"] == D_FEATURES

        conn.produce(unique_name, X[2000:], y[2000:], batch_size=250)  # more data: the next model differs
        wait_for(lambda: job.status()["records_applied"] >= 4000, 240, "all 4,000 records applied")

        # concurrent clients while two new versions are published; each stops by itself
        stop = threading.Event()
        replies: list[tuple[int, int, dict]] = []
        failures: list[str] = []

        def load(worker: int) -> None:
            c = sl.Client(server.url, unique_name)
            for i in range(2000):  # bounded: at most 2,000 requests a client
                if stop.is_set():
                    return
                start = (worker * 97 + i * 13) % 3900
                try:
                    replies.append((start, 0, c.predict_records(X[start:start + 4]).__dict__))
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    failures.append(f"{type(exc).__name__}: {exc}")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(load, w) for w in range(8)]
            wait_for(lambda: len(replies) >= 100, 60, "requests before the swap")
            assert job.snapshot() == 2
            assert job.snapshot() == 3
            wait_for(lambda: client.info()["version"] == 3, 60, "the server to swap to version 3")
            seen = len(replies)
            wait_for(lambda: len(replies) >= seen + 100, 60, "requests after the swap")
            stop.set()
            for f in futures:
                f.result(timeout=60)
        assert failures == []
        models = {v: load_job_model(conn.redis, unique_name, v) for v in (1, 2, 3)}
        versions = {r["version"] for _, _, r in replies}
        assert versions <= {1, 2, 3} and 1 in versions and 3 in versions
        for start, _, r in replies:
            assert _same(r["records"], models[r["version"]].predict_records(X[start:start + 4])), (start, r["version"])
        status, metrics = _get(server.url + "/metrics")
        assert status == 200 and "streamlearn_serve_model_version 3.0" in metrics
        swaps = float(next(l.split()[1] for l in metrics.splitlines() if l.startswith("streamlearn_serve_swaps_total")))
        assert swaps in (1.0, 2.0)  # 2 -> 3 may arrive before 2 was swapped in: subscribers keep only the newest
        assert 'streamlearn_serve_requests_total{code="200"}' in metrics
    finally:
        code = server.stop()
        job.stop_workers()
    assert code == 0, server.log_path.read_text()[-2000:]


def test_pinned_version_cli_errors_and_onnx_export(conn, unique_name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    X, y = D.dense_classification(1500, d=D_FEATURES, seed=5)
    conn.create_topic(unique_name, partitions=1)
    conn.produce(unique_name, X, 1 + y, batch_size=250)  # labels 1/2: predictions in that coding
    job = conn.create_job(unique_name, "linear_learner", topic=unique_name, params={"n_features": "auto"})
    [worker] = job.run_workers(1, log_dir=tmp_path)
    job.wait(timeout=300)
    assert worker.wait(timeout=60) == 0
    model = load_job_model(conn.redis, unique_name, 1)

    with conn.serve(unique_name, port=0, version=1, log_dir=tmp_path).wait_ready(60) as server:
        assert server.client().info()["mode"] == "pinned to version 1"
        np.testing.assert_array_equal(server.client().predict(X[:100]), model.evaluate(X[:100]))
        assert set(server.client().predict(X[:100])) <= {1, 2}

    res = cli("serve", f"{unique_name}-nope", "--port", "0", check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown job" in res.stderr
    res = cli("serve", unique_name, "--port", "0", "--canary", "10%", check=False)
    assert res.returncode == 2 and "--candidate" in res.stderr

    out = tmp_path / "model.onnx"
    cli("export", unique_name, "--format", "onnx", "--output", str(out))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    prediction, score = session.run(["prediction", "score"], {"X": X})
    np.testing.assert_array_equal(prediction, model.evaluate(X))
    np.testing.assert_allclose(score, [r["score"] for r in model.predict_records(X)], atol=1e-5)
    assert {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}["version"] == "1"
