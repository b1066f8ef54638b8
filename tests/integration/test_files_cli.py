"""Users' files through the CLI on the real stack, with scikit-learn's bundled breast cancer
data (569 rows, 30 features, binary target): a header-less CSV loses no row, a pandas index
column is dropped, predict drops the label column, evaluate reports Model.score's metrics, a
dimension mismatch is one line, a closed pipe ends quietly, and Kafka or Redis unreachable
is one line with exit status 3 within seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer

from streamlearn.batch import Batch
from streamlearn.runtime.predict import load_job_model
from streamlearn.snapshots.store import ModelStore
from streamlearn.wire.decode import decode_messages
from tests.integration.procs import cli, start_worker, stop_all, wait_status

pytestmark = pytest.mark.integration

N_ROWS, N_FEATURES = 569, 30
#: nothing listens on port 1 (a privileged port): the connection is refused at once
UNREACHABLE_KAFKA = "127.0.0.1:1"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame  # 30 feature columns, then "target"


@pytest.fixture(scope="module")
def files(data, tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    paths = {"labelled": d / "bc.csv", "headerless": d / "bc-noheader.csv", "indexed": d / "bc-index.csv",
             "long": d / "bc-long.csv", "extra": d / "bc-extra.csv"}
    data.to_csv(paths["labelled"], index=False)
    data.to_csv(paths["headerless"], index=False, header=False)
    data.to_csv(paths["indexed"])  # pandas' default: the index as an unnamed first column
    data.assign(batch_id=1).to_csv(paths["extra"], index=False)
    data.sample(frac=10, replace=True, random_state=0).to_csv(paths["long"], index=False)  # > a pipe's buffer
    return paths


@pytest.fixture(scope="module")
def job(stack, files, tmp_path_factory):
    """A finished linear learner trained on the header-less CSV (labels in column c30)."""
    topic, name = f"bc-{uuid.uuid4().hex[:8]}", f"bc-{uuid.uuid4().hex[:8]}"
    out = cli("produce", topic, "--from", str(files["headerless"]), "--label-column", f"c{N_FEATURES}",
              "--partitions", "2", "--batch-size", "50")
    assert f"produced {N_ROWS} records" in out.stdout
    assert out.stderr.strip().splitlines() == [
        f"streamlearn: {files['headerless']}: no header found: treating the first row as data, "
        f"columns named c0..c{N_FEATURES}"]
    cli("job", "create", name, "--algorithm", "linear_learner", "--topic", topic,
        "--param", f"n_features={N_FEATURES}", "--param", "predictor_type=binary_classifier")
    procs = [start_worker(name, tmp_path_factory.mktemp("workers"))]
    status = wait_status(stack.redis_client(), name, lambda s: s["state"] == "finished", 180, "job to finish")
    assert stop_all(procs) == [0]
    return {"name": name, "topic": topic, "status": status}


def topic_rows(stack, topic: str, n_messages: int, n_features: int) -> Batch:
    consumer = Consumer(stack.kafka_client_conf(**{"group.id": f"read-{uuid.uuid4().hex}",
                                                   "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(values) < n_messages and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
    finally:
        consumer.close()
    result = decode_messages(values, n_features, False, True)
    assert not result.rejected
    return result.batch


def test_headerless_csv_loses_no_row(job):
    status = job["status"]
    assert status["records_applied"] == N_ROWS * status["epochs"] and status["records_dead_lettered"] == 0


def test_pandas_index_column_is_dropped(stack, data, files):
    topic = f"bc-index-{uuid.uuid4().hex[:8]}"
    out = cli("produce", topic, "--from", str(files["indexed"]), "--label-column", "target", "--batch-size", "100")
    assert f"produced {N_ROWS} records" in out.stdout
    assert out.stderr.strip().splitlines() == [
        f"streamlearn: {files['indexed']}: dropped column '': a pandas index, not a feature"]
    batch = topic_rows(stack, topic, 6, N_FEATURES)  # 569 rows in messages of 100
    features = data.drop(columns="target").to_numpy(np.float32)
    assert batch.X.shape == (N_ROWS, N_FEATURES)
    assert np.array_equal(batch.X, features) and np.array_equal(batch.y, data["target"].to_numpy(np.float64))


def test_predict_drops_the_label_column(job, files, data):
    out = cli("predict", job["name"], "--from", str(files["labelled"]), "--label-column", "target")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == N_ROWS and {r["prediction"] for r in rows} <= {0, 1}
    accuracy = np.mean([r["prediction"] for r in rows] == data["target"].to_numpy())
    assert accuracy > 0.8, accuracy  # a model that learned something, applied to the right columns


def test_evaluate_reports_model_score(stack, job, files, data):
    out = json.loads(cli("evaluate", job["name"], "--from", str(files["labelled"]), "--label-column", "target",
                         "--json").stdout)
    model = load_job_model(stack.redis_client(), job["name"])
    batch = Batch(data.drop(columns="target").to_numpy(np.float32), data["target"].to_numpy(np.float64))
    expected = {m: model.score(batch, m) for m in model.metric_names()}
    assert set(out) == {"accuracy", "log_loss", "auc", "hinge"} == set(expected)
    for metric, value in expected.items():
        assert out[metric] == pytest.approx(value, rel=1e-9), metric
    only = cli("evaluate", job["name"], "--from", str(files["labelled"]), "--label-column", "target",
               "--metric", "auc").stdout
    assert only.strip() == f"auc: {expected['auc']}"
    bad = cli("evaluate", job["name"], "--from", str(files["labelled"]), "--label-column", "target",
              "--metric", "r2", check=False)
    assert bad.returncode == 2 and "do not report metric 'r2'" in bad.stderr and len(bad.stderr.splitlines()) == 1


def one_line_exit_2(res: subprocess.CompletedProcess, message: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert message in res.stderr, res.stderr


def test_dimension_mismatch_is_one_line(job, files):
    res = cli("predict", job["name"], "--from", str(files["labelled"]), check=False)  # the label left in
    one_line_exit_2(res, f"the model expects {N_FEATURES} features, {files['labelled']} has {N_FEATURES + 1} "
                         f"columns (did you mean --label-column?)")
    res = cli("evaluate", job["name"], "--from", str(files["extra"]), "--label-column", "target", check=False)
    one_line_exit_2(res, f"the model expects {N_FEATURES} features, {files['extra']} has {N_FEATURES + 1} "
                         f"feature columns besides the label")


def test_closed_pipe_ends_quietly(job, files):
    script = (f"{sys.executable} -m streamlearn predict {job['name']} --from {files['long']} "
              f"--label-column target 2>{files['long']}.err | head -2; echo \"status=${{PIPESTATUS[0]}}\"")
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=os.environ)
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and all("prediction" in json.loads(line) for line in lines[:2]), res.stdout
    assert lines[2] == "status=141"
    assert (files["long"].parent / f"{files['long'].name}.err").read_text() == ""


def timed(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    res = cli(*args, env=env, check=False)
    return res, time.monotonic() - started


def assert_unreachable(res: subprocess.CompletedProcess, seconds: float, service: str, label: str) -> None:
    print(f"{service} unreachable: {label}: exit {res.returncode} after {seconds:.2f} s, "
          f"{len(res.stderr.splitlines())} stderr line(s)")
    assert res.returncode == 3, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"cannot reach {service}" in res.stderr
    assert seconds < 25


def test_kafka_unreachable(stack, job, files):
    env = {"STREAMLEARN_KAFKA": UNREACHABLE_KAFKA}
    versions = ModelStore(stack.redis_client()).versions(job["name"])
    for label, args in (
            ("produce", ("produce", "nowhere", "--from", str(files["labelled"]), "--label-column", "target")),
            ("job create", ("job", "create", f"nowhere-{uuid.uuid4().hex[:6]}", "--algorithm", "median",
                            "--topic", job["topic"])),
            ("snapshot", ("snapshot", job["name"]))):
        assert_unreachable(*timed(*args, env=env), "Kafka", label)
    assert ModelStore(stack.redis_client()).versions(job["name"]) == versions  # no version nobody receives
    # what needs only Redis still works without Kafka
    for args in (("predict", job["name"], "--from", str(files["labelled"]), "--label-column", "target"),
                 ("evaluate", job["name"], "--from", str(files["labelled"]), "--label-column", "target"),
                 ("models", "--job", job["name"]), ("job", "status", job["name"])):
        res, _ = timed(*args, env=env)
        assert res.returncode == 0 and res.stderr == "", res.stderr
    verbose, _ = timed("-v", "job", "create", "nowhere", "--algorithm", "median", "--topic", job["topic"], env=env)
    assert verbose.returncode == 3 and "Connection refused" in verbose.stderr  # librdkafka's lines, with -v


def test_redis_unreachable(stack, job, files):
    env = {"STREAMLEARN_REDIS": UNREACHABLE_REDIS}
    model_input = ("--from", str(files["labelled"]), "--label-column", "target")
    for label, args in (
            ("job create", ("job", "create", f"nowhere-{uuid.uuid4().hex[:6]}", "--algorithm", "median",
                            "--topic", job["topic"])),
            ("job status", ("job", "status", job["name"])),
            ("snapshot", ("snapshot", job["name"])),
            ("predict", ("predict", job["name"], *model_input)),
            ("evaluate", ("evaluate", job["name"], *model_input)),
            ("models", ("models",))):
        assert_unreachable(*timed(*args, env=env), "Redis", label)


def test_worker_still_rides_out_an_unreachable_broker(job, tmp_path):
    """Only the short-lived commands fail fast: a worker started while no broker answers keeps
    waiting past their bound, without librdkafka's lines, and stops cleanly."""
    import signal

    name = f"rides-{uuid.uuid4().hex[:8]}"
    cli("job", "create", name, "--algorithm", "median", "--topic", job["topic"], "--until", "never")
    proc = start_worker(name, tmp_path, env={"STREAMLEARN_KAFKA": UNREACHABLE_KAFKA})
    time.sleep(15)
    assert proc.poll() is None, (tmp_path / "worker-0.log").read_text()
    proc.send_signal(signal.SIGTERM)
    assert stop_all([proc]) == [0]
    log = (tmp_path / "worker-0.log").read_text()
    assert "|FAIL|" not in log and "Traceback" not in log, log
