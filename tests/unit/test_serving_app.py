"""The prediction server's ASGI app in-process (no Kafka, no Redis): models from fit_local in
a ModelSlot, requests through httpx's ASGI transport on one event loop, as uvicorn runs it."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

import streamlearn as sl
from streamlearn import datasets as D
from streamlearn.batch import SparseRows, as_features
from streamlearn.serving.app import BatchPolicy, create_app
from streamlearn.serving.canary import Canary
from streamlearn.serving.slot import ModelSlot, Served
from streamlearn.wire.serde import encode_training_batch, encode_training_record

httpx = pytest.importorskip("httpx")  # the serve extra; .ci/run installs it

D_FEATURES = 8
X, Y = D.dense_classification(1200, d=D_FEATURES, seed=2)
PATH = "/v1/models/j:predict"


def _model(seed: int, rows: int = 600):
    order = np.random.default_rng(seed).permutation(len(X))[:rows]
    algo = sl.LinearLearner(n_features=D_FEATURES, predictor_type="binary_classifier", num_models=2)
    return sl.fit_local(algo, [sl.Batch.of(X[order], Y[order])])


MODELS = {1: _model(1), 2: _model(2, 1200)}


def _served(version: int, **metadata) -> Served:
    return Served(MODELS[version], version, {"job": "j", "algorithm": "linear_learner", "params": {},
                                             "topic": "t", "records_applied": 600 * version, **metadata})


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def same(got: list[dict], want: list[dict]) -> bool:
    """The same predictions, and scores equal up to float rounding: BLAS sums a row of a
    64-row batch in another order than the row alone, so the last bits may differ."""
    return len(got) == len(want) and all(
        g.keys() == w.keys() and g["prediction"] == w["prediction"] and np.isclose(g["score"], w["score"], rtol=1e-12)
        for g, w in zip(got, want))


def run(scenario, slot: ModelSlot, **kwargs):
    """Run ``await scenario(client, app)`` against a started app."""
    app = create_app("j", slot, **kwargs)

    async def main():
        app.state.batcher.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                return await scenario(client, app)
        finally:
            await app.state.batcher.stop()
    return asyncio.run(main())


def test_not_ready_until_a_model_is_loaded_then_predictions_equal_predict_records():
    slot = ModelSlot()

    async def scenario(client, app):
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        r = await client.post(PATH, json={"instances": X[:2].tolist()})
        assert r.status_code == 503 and "no model" in r.json()["error"]
        slot.offer(_served(1))
        assert (await client.get("/readyz")).json() == {"status": "ready", "version": 1}
        want = MODELS[1].predict_records(X[:50])
        dense = await client.post(PATH, json={"instances": X[:50].tolist()})
        binary = await client.post(PATH, content=_npy(X[:50]), headers={"content-type": "application/x-numpy"})
        avro = await client.post(PATH, content=encode_training_batch(X[:50], y=Y[:50]),  # labels are ignored
                                 headers={"content-type": "application/avro"})
        for reply in (dense, binary, avro):
            assert reply.status_code == 200, reply.text
            assert reply.json() == {"predictions": want, "model_version": 1}
            assert reply.headers["x-model-version"] == "1"
        import scipy.sparse as sp

        csr = sp.csr_matrix(X[:50] * (np.abs(X[:50]) > 0.5))  # about a third of the values are zero
        sparse = [{"indices": csr[i].indices.tolist(), "values": csr[i].data.tolist()} for i in range(50)]
        reply = await client.post(PATH, json={"instances": sparse})
        assert reply.json() == {"predictions": MODELS[1].predict_records(csr), "model_version": 1}
        avro_sparse = await client.post(PATH, content=encode_training_batch(as_features(csr)),
                                        headers={"content-type": "application/avro"})
        assert avro_sparse.json() == reply.json()
        one = await client.post(PATH, content=encode_training_record(X[7]),
                                headers={"content-type": "application/avro"})
        assert one.json()["predictions"] == MODELS[1].predict_records(X[7:8])  # a training_record is one row
        info = (await client.get("/v1/models/j")).json()
        assert info["version"] == 1 and info["algorithm"] == "linear_learner" and info["n_features"] == D_FEATURES
        assert info["lineage"] == {"parent": None, "topic": "t", "records_applied": 600, "final": None}
        assert info["gate"] == "ungated"
        assert (await client.get("/v1/models/other")).status_code == 404
    run(scenario, slot)


BAD = [
    (b"{", "application/json", 400, "malformed JSON"),
    (b"[1, 2]", "application/json", 400, '{"instances"'),
    (b'{"instances": []}', "application/json", 400, "empty batch"),
    (b'{"instances": [[1, 2]]}', "application/json", 400, "expects 8 features, the instances have 2"),
    (b'{"instances": [[1, 2], [1]]}', "application/json", 400, "differ in length"),
    (b'{"instances": [["1", 2, 3, 4, 5, 6, 7, 8]]}', "application/json", 400, "list of numbers"),
    (b'{"instances": [[NaN, 2, 3, 4, 5, 6, 7, 8]]}', "application/json", 400, "NaN or infinity"),
    (b'{"instances": [[1e300, 2, 3, 4, 5, 6, 7, 8]]}', "application/json", 400, "beyond float32"),
    (b'{"instances": [{"indices": [8], "values": [1]}]}', "application/json", 400, "integers in [0, 8)"),
    (b'{"instances": [{"indices": [1, 1], "values": [1, 2]}]}', "application/json", 400, "appears twice"),
    (b'{"instances": [{"indices": [1], "values": [1]}, [1]]}', "application/json", 400, "mix dense"),
    (b"1,2,3", "text/csv", 415, "unsupported content type"),
    (b"not npy at all", "application/x-numpy", 400, "not an .npy body"),
    (_npy(np.array([["a"] * 8])), "application/x-numpy", 400, "not a numeric array"),
    (_npy(np.zeros(8)), "application/x-numpy", 400, "must be 2-D"),
    (_npy(np.zeros((2, 8)))[:-8], "application/x-numpy", 400, "claims shape (2, 8)"),
    (_npy(np.full((1, 8), np.inf)), "application/x-numpy", 400, "NaN or infinity"),
    (b" " * 5000, "application/json", 413, "over the limit of 4096"),
    (b"\xc3\x01" + bytes(8) + b"\x02", "application/avro", 400, "unknown schema fingerprint"),
    (encode_training_batch(np.zeros((2, 8)))[:-9], "application/avro", 400, "malformed Avro body"),
    (encode_training_batch(np.zeros((2, 8))) + b"\x00", "application/avro", 400, "trailing bytes"),
    (b"not avro", "application/avro", 400, "not Avro single-object encoded"),
    (encode_training_batch(np.zeros((2, 3))), "application/avro", 400, "dimension 3 != 8"),
    (encode_training_batch(np.full((1, 8), np.nan)), "application/avro", 400, "NaN or inf in features"),
    (encode_training_batch(np.zeros((0, 8))), "application/avro", 400, "empty batch"),
    (encode_training_batch(SparseRows(np.array([0, 1]), np.array([8]), np.ones(1, np.float32), 8)),
     "application/avro", 400, "sparse index out of range"),
]


def test_bad_inputs_get_one_line_reasons_and_the_server_goes_on():
    slot = ModelSlot()
    slot.offer(_served(1))

    async def scenario(client, app):
        for body, kind, status, reason in BAD:
            r = await client.post(PATH, content=body, headers={"content-type": kind})
            assert r.status_code == status, (body[:40], r.text)
            error = r.json()["error"]
            assert reason in error and "\n" not in error, (body[:40], error)
        pickled = _npy(np.array([[{"x": 1}] * 8], dtype=object))  # np.save pickles object arrays
        r = await client.post(PATH, content=pickled, headers={"content-type": "application/x-numpy"})
        assert r.status_code == 400 and "not a numeric array" in r.json()["error"]  # never unpickled
        ok = await client.post(PATH, json={"instances": X[:1].tolist()})
        assert ok.status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'streamlearn_serve_requests_total{code="400"}' in metrics
    run(scenario, slot, policy=BatchPolicy(max_body_bytes=4096))


def test_concurrent_requests_share_batches_and_a_swap_fails_none():
    slot = ModelSlot()
    slot.offer(_served(1))
    want = {v: m.predict_records(X) for v, m in MODELS.items()}

    async def one(client, i: int):
        rows = slice(i % 1100, i % 1100 + 3)
        r = await client.post(PATH, json={"instances": X[rows].tolist()})
        assert r.status_code == 200, r.text
        body = r.json()
        return body["model_version"], same(body["predictions"], want[body["model_version"]][rows])

    async def scenario(client, app):
        first = await asyncio.gather(*(one(client, i) for i in range(64)))
        slot.offer(_served(2))  # between two waves, and again while a wave is in flight below
        tasks = [asyncio.ensure_future(one(client, i)) for i in range(64, 192)]
        await asyncio.sleep(0)
        slot.offer(_served(2, gate={"status": "blessed"}))  # an equal version: no swap
        second = await asyncio.gather(*tasks)
        info = (await client.get("/v1/models/j")).json()
        metrics = (await client.get("/metrics")).text
        return first, second, info, metrics

    first, second, info, metrics = run(scenario, slot, policy=BatchPolicy(max_batch=32, max_wait_ms=20))
    assert all(ok for _, ok in first + second)  # each answer is exactly its tagged version's
    assert {v for v, _ in first} == {1} and {v for v, _ in second} == {2}
    assert info["swaps"] == 1 and info["version"] == 2
    assert "streamlearn_serve_swaps_total 1.0" in metrics and "streamlearn_serve_model_version 2.0" in metrics
    count = float(next(line.split()[1] for line in metrics.splitlines()
                       if line.startswith("streamlearn_serve_batch_requests_count")))
    assert count < 192  # requests were answered together, not one model call each


def test_requests_keep_the_model_they_arrived_with():
    slot = ModelSlot()
    slot.offer(_served(1))

    async def scenario(client, app):
        batcher = app.state.batcher
        with batcher.arriving():  # holds the batch open while requests queue
            tasks = [asyncio.ensure_future(client.post(PATH, json={"instances": X[i:i + 1].tolist()}))
                     for i in range(10)]
            for _ in range(50):
                await asyncio.sleep(0)
            slot.offer(_served(2))
            tasks += [asyncio.ensure_future(client.post(PATH, json={"instances": X[i:i + 1].tolist()}))
                      for i in range(10, 20)]
            for _ in range(50):
                await asyncio.sleep(0)
        return [r.json() for r in await asyncio.gather(*tasks)]

    replies = run(scenario, slot, policy=BatchPolicy(max_batch=64, max_wait_ms=1000))
    assert [r["model_version"] for r in replies] == [1] * 10 + [2] * 10
    for i, r in enumerate(replies):
        assert same(r["predictions"], MODELS[r["model_version"]].predict_records(X[i:i + 1]))


def test_the_gate_keeps_a_failed_snapshot_out():
    slot = ModelSlot()
    assert slot.offer(_served(1, gate={"status": "blessed", "checks": [], "reason": None}))
    assert not slot.offer(_served(2, gate={"status": "rejected", "checks": [], "reason": "finite: NaN in w"}))
    assert slot.current.version == 1 and slot.gate_rejections == 1 and slot.swaps == 0
    strict = ModelSlot(gate=lambda served: served.metadata.get("gate", {}).get("status") == "blessed")
    assert not strict.offer(_served(1)) and strict.offer(_served(2, gate={"status": "blessed"}))


def test_canary_routes_its_share_and_reports_agreement():
    slot = ModelSlot()
    slot.offer(_served(2))
    from streamlearn.serving.metrics import ServeMetrics

    metrics = ServeMetrics(64)
    canary = Canary(_served(1), 0.25, shadow=False, metrics=metrics)

    async def scenario(client, app):
        versions = []
        for i in range(40):
            r = await client.post(PATH, json={"instances": X[i * 10:i * 10 + 10].tolist()})
            versions.append(r.json()["model_version"])
        return versions, (await client.get("/v1/models/j")).json(), (await client.get("/metrics")).text

    versions, info, text = run(scenario, slot, canary=canary, metrics=metrics)
    assert versions.count(1) == 10 and versions.count(2) == 30
    agree = np.mean([a["prediction"] == b["prediction"] for i in range(40) if versions[i] == 1
                     for a, b in zip(MODELS[1].predict_records(X[i * 10:i * 10 + 10]),
                                     MODELS[2].predict_records(X[i * 10:i * 10 + 10]))])
    assert info["candidate"] == {"version": 1, "mode": "canary", "share": 0.25, "examples_compared": 100,
                                 "agreement": pytest.approx(agree)}
    assert "streamlearn_serve_candidate_rows_total 100.0" in text


def test_a_model_that_raises_fails_its_request_only():
    class Broken:
        attrs = {"n_features": D_FEATURES}

        def predict_records(self, batch):
            raise FloatingPointError("boom")

    slot = ModelSlot()
    slot.offer(Served(Broken(), 1, {"job": "j"}))

    async def scenario(client, app):
        r = await client.post(PATH, json={"instances": X[:1].tolist()})
        assert r.status_code == 500 and "FloatingPointError: boom" in r.json()["error"]
        slot.offer(_served(2))
        assert (await client.post(PATH, json={"instances": X[:1].tolist()})).status_code == 200
    run(scenario, slot)
