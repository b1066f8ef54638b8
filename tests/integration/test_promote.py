"""``streamlearn promote SOURCE --to JOB`` on the real stack: another job's model becomes
JOB's next version, re-encoded as JOB's (metadata job = JOB, parent = the source, lineage
kept), published to JOB's subscribers when JOB's gate passes it and stored unpublished when
it does not; bad input is one line, exit 2, and stores nothing."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

import streamlearn as sl
from streamlearn import datasets as D
from streamlearn.runtime.record import JobRecord
from streamlearn.snapshots.store import ModelStore
from streamlearn.snapshots.subscriber import ModelSubscriber
from streamlearn.snapshots.verified import stored_snapshot
from tests.integration.procs import cli, labelled_topic, train_job

pytestmark = pytest.mark.integration

GATE = "auc>=published-0.005"


def _topic(stack, X, y) -> str:
    return labelled_topic(stack, X, y, "promote")


def _train(job: str, tmp_path, *args: str, algorithm: str = "linear_learner") -> None:
    train_job(job, tmp_path, algorithm, *args)


def test_promote_publishes_another_jobs_model_on_the_jobs_line_through_its_gate(stack, tmp_path):
    client = stack.redis_client()
    store = ModelStore(client)
    X, y = D.dense_classification(13000, d=10, seed=5, signal=6.0)
    noise = np.random.default_rng(1).integers(0, 2, 6000).astype(np.float64)
    first, more, noisy = _topic(stack, X[:1000], y[:1000]), _topic(stack, X[1000:12000], y[1000:12000]), \
        _topic(stack, X[:6000], noise)
    validation = _topic(stack, X[12000:], y[12000:])
    tag = uuid.uuid4().hex[:6]
    prod, cand, worse = f"prod-{tag}", f"cand-{tag}", f"worse-{tag}"
    # gated on the AUC of held-out records: models trained on different data are compared on the same records
    _train(prod, tmp_path, "--topic", first, "--gate", GATE, "--gate-topic", validation, "--param", "num_models=4")
    _train(cand, tmp_path, "--topic", more, "--from-snapshot", prod)  # a better model, on its own line
    _train(worse, tmp_path, "--topic", noisy, "--from-snapshot", prod)  # no gate of its own: published there

    with ModelSubscriber(prod, stack.kafka, stack.kafka_conf) as sub:
        sub.wait_for(1, timeout=60)
        out = cli("promote", cand, "--to", prod)
        assert f"promoted {cand}@1 to job {prod}: published snapshot version 2 (gate: blessed)" in out.stdout
        sub.wait_for(2, timeout=60)
        assert sub.version == 2 and sub.metadata["job"] == prod

    meta = store.metadata(prod, 2)
    assert meta["parent"] == meta["promoted_from"] == {"job": cand, "version": 1}
    assert meta["replaces"] == {"job": prod, "version": 1} and meta["trained_from"] == {"job": prod, "version": 1}
    assert meta["data"]["topic"] == more and meta["gate"]["status"] == "blessed"
    assert meta["gate"]["data"]["compared_with"] == f"{prod}@1"  # the job's published version, same records
    assert meta["gate"]["data"]["scores"]["auc"] > meta["gate"]["data"]["compared_scores"]["auc"]
    assert meta["gate"]["data"]["leakage"] is None  # the source's lineage never trained on the gate topic
    promoted, source = (stored_snapshot(store, j, v, with_state=True) for j, v in ((prod, 2), (cand, 1)))
    assert promoted.metadata["job"] == prod and promoted.metadata["version"] == 2  # re-encoded as the job's own
    np.testing.assert_array_equal(promoted.arrays["weights"], source.arrays["weights"])
    assert source.state and set(promoted.state) == set(source.state)  # continuable, like its source
    parents = [(p["model"], p["link"]) for p in sl.connect().lineage(f"{prod}@2")["parents"]]
    assert parents == [(f"{cand}@1", "promoted from"), (f"{prod}@1", "trained from")], parents

    # a worse model: the job's gate rejects it; stored, never published (from Python)
    entry = sl.connect().promote(worse, to=prod)
    assert entry["version"] == 3 and entry["gate"]["status"] == "rejected" and "auc" in entry["gate"]["reason"]
    assert JobRecord(client, prod).snapshot_versions() == (2, 2)
    assert JobRecord(client, prod).snapshot_versions(stored=True) == (3, 2)
    res = cli("promote", worse, "--to", prod, check=False)
    assert res.returncode == 1 and "rejected by its gate" in res.stdout

    # bad input: one line, exit 2, nothing stored
    kmeans = f"km-{tag}"
    _train(kmeans, tmp_path, "--topic", first, "--param", "k=2", algorithm="kmeans")
    for args, message in (((cand, "--to", f"nope-{tag}"), "unknown job"),
                          ((f"nope-{tag}", "--to", prod), "unknown model"),
                          ((f"{cand}@9", "--to", prod), "has no snapshot version 9"),
                          ((f"{prod}@1", "--to", prod), "own snapshot already"),
                          ((kmeans, "--to", prod), "is a kmeans model")):
        res = cli("promote", *args, check=False)
        assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert store.latest_version(prod) == 4  # the second rejected promotion above, nothing after
