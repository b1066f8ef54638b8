"""The validation gate on the real stack: a NaN model and a worse model are stored as
``rejected`` and never produced to the snapshot topic; a better model is ``blessed`` and
published; ``snapshot --force --reason`` publishes a rejected one as ``forced``; a
malformed ``--gate`` creates nothing."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from streamlearn import datasets as D
from streamlearn.runtime.record import JobRecord
from streamlearn.snapshots.format import decode_snapshot
from streamlearn.snapshots.store import ModelStore
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
from tests.integration.procs import cli, start_worker, stop_all

pytestmark = pytest.mark.integration

GATE = "accuracy>=published-0.005"


def _topic(stack, X, y) -> str:
    name = f"gate-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), name, partitions=2)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(name, X, y, batch_size=200)
    return name


def _train(job: str, tmp_path, *args: str) -> None:
    cli("job", "create", job, "--algorithm", "linear_learner", "--epochs", "1", *args)
    assert stop_all([start_worker(job, tmp_path)], timeout=120) == [0]


def _gate(client, job: str, version: int) -> dict:
    return ModelStore(client).metadata(job, version)["gate"]


def test_gate_rejects_nan_and_worse_models_and_blesses_a_better_one(stack, tmp_path):
    client = stack.redis_client()
    X, y = D.dense_classification(13000, d=10, seed=5, signal=6.0)
    noise = np.random.default_rng(1).integers(0, 2, 6000).astype(np.float64)  # labels unrelated to X
    good_a, good_c, noisy = _topic(stack, X[:1000], y[:1000]), _topic(stack, X[1000:], y[1000:]), \
        _topic(stack, X[:6000], noise)
    tag = uuid.uuid4().hex[:6]
    a, b, c, nan = (f"{k}-{tag}" for k in ("a", "worse", "better", "nan"))

    _train(a, tmp_path, "--topic", good_a, "--gate", GATE, "--param", "num_models=4")
    assert _gate(client, a, 1)["status"] == "blessed"
    assert JobRecord(client, a).snapshot_versions() == (1, 1)

    # continued on labels that carry no signal: its holdout accuracy falls below the parent's
    _train(b, tmp_path, "--topic", noisy, "--from-snapshot", a, "--gate", GATE)
    decision = _gate(client, b, 1)
    assert decision["status"] == "rejected", decision
    check = next(ch for ch in decision["checks"] if ch["expr"] == GATE)
    assert check["passed"] is False and check["value"] < 0.9 and f"{a}@1" in check["detail"]
    assert "accuracy" in decision["reason"]
    assert JobRecord(client, b).snapshot_versions() == (None, None)  # stored, never produced
    assert JobRecord(client, b).snapshot_versions(stored=True) == (1, None)

    # --force --reason: a new version, a copy of the rejected model, published as forced
    out = cli("snapshot", b, "--force", "--reason", "label noise is expected this week")
    assert "published snapshot version 2" in out.stdout and "forced" in out.stdout
    forced = ModelStore(client).metadata(b, 2)
    assert forced["gate"]["status"] == "forced" and forced["gate"]["reason"] == "label noise is expected this week"
    assert forced["forced_from"] == 1 and JobRecord(client, b).snapshot_versions() == (2, 2)
    same = [decode_snapshot(ModelStore(client).get(b, v)).arrays["weights"] for v in (1, 2)]
    np.testing.assert_array_equal(same[0], same[1])

    # the forced model continued on good data again: better than its parent, blessed and published
    _train(c, tmp_path, "--topic", good_c, "--from-snapshot", b, "--gate", GATE)
    decision = _gate(client, c, 1)
    assert decision["status"] == "blessed", decision
    assert f"{b}@2" in decision["checks"][-1]["detail"]
    assert JobRecord(client, c).snapshot_versions() == (1, 1)

    # a learning rate that overflows: NaN weights never reach a subscriber
    _train(nan, tmp_path, "--topic", good_a, "--param", "learning_rate=1e300", "--param", "optimizer=sgd",
           "--param", "normalize=false", "--param", "num_models=1")
    decision = _gate(client, nan, 1)
    assert decision["status"] == "rejected" and decision["checks"][0]["expr"] == "finite"
    assert decision["checks"][0]["passed"] is False and "non-finite" in decision["reason"]
    assert JobRecord(client, nan).snapshot_versions() == (None, None)


@pytest.mark.parametrize("expr, message", [
    ("accuracy=0.9", "expected METRIC OP NUMBER"),
    ("__import__('os')<1", "expected METRIC OP NUMBER"),
    ("accuracy>=published-", "expected METRIC OP NUMBER"),
    ("auc>=0.8", "metric 'auc' is not measured for this job"),
])
def test_a_malformed_gate_is_one_line_exit_2_and_creates_nothing(stack, expr, message):
    X, y = D.dense_classification(200, d=3, seed=2)
    topic = _topic(stack, X, y)
    job = f"badgate-{uuid.uuid4().hex[:6]}"
    res = cli("job", "create", job, "--algorithm", "linear_learner", "--topic", topic, "--gate", expr, check=False)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert JobRecord(stack.redis_client(), job).spec_json() is None
