"""The gate on a validation topic (``job create … --gate-topic T``) on the real stack: a
factorization machine — whose snapshots carry no holdout score — gated on
``auc>=published-0.005``; each snapshot and the model it is compared with are scored with
``Model.score`` on the same held-out records. A continuation on good data is blessed, one
on shuffled labels is rejected; gate data that is training data, or that the model cannot
read, and metrics the model does not report are one line, exit 2, and no job."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from streamlearn import datasets as D
from streamlearn.runtime.record import JobRecord
from streamlearn.snapshots.store import ModelStore
from tests.integration.procs import cli, labelled_topic, train_job

pytestmark = pytest.mark.integration

GATE = "auc>=published-0.005"


def _topic(stack, X, y) -> str:
    return labelled_topic(stack, X, y, "gtopic", batch_size=100)


def _train(job: str, tmp_path, *args: str) -> None:
    train_job(job, tmp_path, "factorization_machines", *args)


def _refused(stack, job: str, *args: str, message: str) -> None:
    res = cli("job", "create", job, *args, check=False)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert JobRecord(stack.redis_client(), job).spec_json() is None


def test_fm_gated_on_validation_auc_blesses_a_better_continuation_and_rejects_shuffled_labels(stack, tmp_path):
    client = stack.redis_client()
    X, y = D.dense_classification(12000, d=10, seed=5, signal=6.0)
    shuffled = np.random.default_rng(1).permutation(y[500:5000])  # the same rows, labels unrelated to them
    first, better, noisy = _topic(stack, X[:500], y[:500]), _topic(stack, X[500:5000], y[500:5000]), \
        _topic(stack, X[500:5000], shuffled)
    validation = _topic(stack, X[10000:], y[10000:])
    tag = uuid.uuid4().hex[:6]
    a, b, c = (f"{k}-{tag}" for k in ("fm", "fm-better", "fm-noisy"))

    _train(a, tmp_path, "--topic", first, "--gate", GATE, "--gate-topic", validation)
    decision = ModelStore(client).metadata(a, 1)["gate"]
    assert decision["status"] == "blessed", decision
    assert decision["data"]["topic"] == validation and decision["data"]["records"] == 2000
    assert decision["data"]["compared_with"] is None and decision["data"]["leakage"] is None
    first_auc = decision["data"]["scores"]["auc"]
    assert 0.5 < first_auc < 1.0
    assert [ch["expr"] for ch in decision["checks"]] == ["finite", "records_applied>=1", "held_out", GATE]

    # continued on more good data: scored beside its parent on the same records, blessed
    _train(b, tmp_path, "--topic", better, "--from-snapshot", a, "--gate", GATE, "--gate-topic", validation)
    decision = ModelStore(client).metadata(b, 1)["gate"]
    assert decision["status"] == "blessed", decision
    assert decision["data"]["compared_with"] == f"{a}@1"
    assert decision["data"]["compared_scores"]["auc"] == pytest.approx(first_auc)  # the parent, same records
    assert decision["data"]["scores"]["auc"] > first_auc
    assert JobRecord(client, b).snapshot_versions() == (1, 1)

    # continued on shuffled labels: its validation AUC falls below the parent's, rejected, never produced
    _train(c, tmp_path, "--topic", noisy, "--from-snapshot", a, "--gate", GATE, "--gate-topic", validation,
           "--gate-offsets", "0:0-5,1:0-5")  # 10 messages of 100 records
    decision = ModelStore(client).metadata(c, 1)["gate"]
    assert decision["status"] == "rejected", decision
    check = next(ch for ch in decision["checks"] if ch["expr"] == GATE)
    assert check["passed"] is False and check["value"] < first_auc - 0.005 and f"{a}@1" in check["detail"]
    assert decision["data"]["partitions"] == {"0": [[0, 5]], "1": [[0, 5]]}
    assert decision["data"]["records"] == 1000 and "auc" in decision["reason"]
    assert JobRecord(client, c).snapshot_versions() == (None, None)

    # gate data that the parent trained on is not held out: refused
    _refused(stack, f"leak-{tag}", "--algorithm", "factorization_machines", "--topic", better, "--from-snapshot", a,
             "--gate", GATE, "--gate-topic", first, message=f"500 of 500 gate records are training records of {a}@1")


def test_bad_gate_data_is_one_line_exit_2_and_no_job(stack):
    X, y = D.dense_classification(600, d=10, seed=3)
    train, held = _topic(stack, X[:400], y[:400]), _topic(stack, X[400:], y[400:])
    narrow = _topic(stack, X[:50, :3], y[:50])
    fm = ("--algorithm", "factorization_machines", "--topic", train)
    tag = uuid.uuid4().hex[:6]
    cases = [
        ((*fm, "--gate", GATE, "--gate-topic", train), "400 of 400 gate records are training records of"),
        ((*fm, "--gate", GATE, "--gate-topic", "missing-" + tag), "missing-" + tag),
        ((*fm, "--gate", "bogus>=1", "--gate-topic", held), "metric 'bogus' is not measured for this job"),
        ((*fm, "--gate", GATE, "--gate-topic", narrow), "no record fits factorization_machines"),
        ((*fm, "--gate", "records_applied>=10", "--gate-topic", held), "--gate-topic needs a --gate on a metric"),
        ((*fm, "--gate", GATE, "--gate-offsets", "0:0-10"), "--gate-offsets goes with --gate-topic"),
        ((*fm, "--gate", GATE, "--gate-topic", held, "--gate-offsets", "5:0-10"), "has no partition 5"),
        ((*fm, "--gate", GATE), "--gate-topic T scores any metric"),
    ]
    for i, (args, message) in enumerate(cases):
        _refused(stack, f"badgd-{tag}-{i}", *args, message=message)
