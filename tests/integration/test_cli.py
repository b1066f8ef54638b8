"""The CLI on the real stack: produce a file, create/list/status, unbounded jobs with periodic
and on-demand snapshots, and clear errors (exit status 2) for user mistakes."""
from __future__ import annotations

import json
import signal
import uuid

import numpy as np
import pytest

from streamlearn.snapshots.store import ModelStore
from tests.integration.procs import cli, start_worker, stop_all, wait_for, wait_status

pytestmark = pytest.mark.integration

STATUS_KEYS = {"state", "records_applied", "records_dead_lettered", "partitions", "end_offsets", "members",
               "snapshot_version", "records_per_second"}


def test_produce_file_create_status_and_list(stack, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    y = (X @ [1.0, -2.0, 0.5] > 0).astype(int)
    csv = tmp_path / "train.csv"
    csv.write_text("a,b,c,label\n" + "\n".join(f"{r[0]:.6f},{r[1]:.6f},{r[2]:.6f},{t}" for r, t in zip(X, y)) + "\n")
    topic, job = f"cli-{uuid.uuid4().hex[:8]}", f"cli-{uuid.uuid4().hex[:8]}"
    out = cli("produce", topic, "--from", str(csv), "--label-column", "label", "--partitions", "3", "--batch-size", "100")
    assert "3000" in out.stdout
    cli("job", "create", job, "--algorithm", "linear_learner", "--topic", topic,
        "--param", "n_features=3", "--param", "predictor_type=binary_classifier")
    status = json.loads(cli("job", "status", job, "--json").stdout)
    assert STATUS_KEYS <= set(status) and status["state"] == "running"
    assert sum(status["end_offsets"].values()) == 30  # 30 messages of 100 records
    assert any(j["job"] == job for j in json.loads(cli("job", "list", "--json").stdout))
    procs = [start_worker(job, tmp_path)]
    final = wait_status(stack.redis_client(), job, lambda s: s["state"] == "finished", 120, "job to finish")
    assert stop_all(procs) == [0]
    # a small bounded SGD job reads its range several times (epochs sized from the data)
    assert final["epochs"] > 1 and final["records_applied"] == 3000 * final["epochs"]
    assert final["partitions"] == final["end_offsets"]
    models = json.loads(cli("models", "--job", job, "--json").stdout)
    assert [m["version"] for m in models] == [final["snapshot_version"]]
    assert models[0]["algorithm"] == "linear_learner" and models[0]["records_applied"] == 3000 * final["epochs"]


def _unbounded_median_job(stack, tmp_path, rows: int, batch_size: int, snapshot_every: float):
    """(topic, job, worker processes) of a running ``--until never`` median job over
    ``rows`` produced values, with periodic snapshots."""
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    topic, job = f"unb-{uuid.uuid4().hex[:8]}", f"unb-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), topic, partitions=2)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, np.full((rows, 1), 5.0, dtype=np.float32), batch_size=batch_size)
    cli("job", "create", job, "--algorithm", "median", "--topic", topic, "--until", "never",
        "--snapshot-every", str(snapshot_every))
    return topic, job, [start_worker(job, tmp_path)]


def test_unbounded_job_snapshots_periodically_and_on_demand(stack, tmp_path):
    from streamlearn.streams.producer import Producer

    topic, job, procs = _unbounded_median_job(stack, tmp_path, 500, 50, 1)
    client = stack.redis_client()
    store = ModelStore(client)
    wait_status(client, job, lambda s: s["records_applied"] == 500, 60, "first records")
    with Producer(stack.kafka, stack.kafka_conf) as p:  # data keeps arriving: the job keeps training
        p.send_batch(topic, np.full((300, 1), 5.0, dtype=np.float32), batch_size=50)
    wait_status(client, job, lambda s: s["records_applied"] == 800, 60, "later records")
    wait_for(lambda: len(store.versions(job)) >= 2, 30, "two periodic snapshots")
    out = cli("snapshot", job)
    version = int(out.stdout.split("version")[1].split()[0])
    assert store.latest_version(job) >= version
    assert store.metadata(job, version)["records_applied"] == 800
    assert store.metadata(job, version)["parent"]["version"] == version - 1
    assert json.loads(cli("job", "status", job, "--json").stdout)["state"] == "running"
    procs[0].send_signal(signal.SIGTERM)
    assert stop_all(procs) == [0]
    assert json.loads(cli("job", "status", job, "--json").stdout)["members"] == []


def test_concurrent_snapshots_take_turns_so_versions_follow_the_data(stack, tmp_path):
    """Periodic snapshots by the worker and on-demand ones from three threads at once: each
    reads the state after the one before it was stored, so every version's parent is the
    version before it and records_applied never goes down from one version to the next."""
    from concurrent.futures import ThreadPoolExecutor

    from streamlearn.runtime.finalize import publish
    from streamlearn.runtime.jobs import load_spec

    _, job, procs = _unbounded_median_job(stack, tmp_path, 2000, 20, 0.2)
    client = stack.redis_client()
    wait_status(client, job, lambda s: s["records_applied"] > 0, 60, "first records")
    spec = load_spec(client, job)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: publish(stack, stack.redis_client(), spec, final=False), range(9)))
    procs[0].send_signal(signal.SIGTERM)
    assert stop_all(procs) == [0]
    store = ModelStore(client)
    versions = sorted(store.versions(job))
    assert len(versions) >= 9 and versions == list(range(1, len(versions) + 1))
    meta = [store.metadata(job, v) for v in versions]
    assert [m["parent"] for m in meta[1:]] == [{"job": job, "version": v} for v in versions[:-1]]
    applied = [m["records_applied"] for m in meta]
    assert applied == sorted(applied)


@pytest.mark.parametrize("args,message", [
    (("job", "status", "no-such-job"), "unknown job"),
    (("worker", "no-such-job"), "unknown job"),
    (("job", "create", "j1", "--algorithm", "nope", "--topic", "t"), "unknown algorithm"),
    (("job", "create", "j2", "--algorithm", "median", "--topic", "t", "--param", "learning_rate=abc"), "learning_rate"),
    (("job", "create", "j3", "--algorithm", "median", "--topic", "t", "--param", "colour=red"), "unknown parameter"),
    (("job", "create", "j4", "--algorithm", "median", "--topic", "missing-topic-xyz"), "missing-topic-xyz"),
    (("job", "create", "bad name!", "--algorithm", "median", "--topic", "t"), "invalid job name"),
    (("predict", "no-such-job", "--from", "x.csv"), "unknown job"),
])
def test_user_errors_are_one_clear_line(stack, args, message):
    res = cli(*args, check=False)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_incremental_training_from_a_snapshot_keeps_lineage(stack, tmp_path):
    from streamlearn.statestore.redis_state import RedisState
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    client = stack.redis_client()
    names = {k: f"inc-{k}-{uuid.uuid4().hex[:6]}" for k in ("t1", "t2", "j1", "j2")}
    for topic, n in ((names["t1"], 600), (names["t2"], 400)):
        ensure_topic(stack.kafka_client_conf(), topic, partitions=2)
        with Producer(stack.kafka, stack.kafka_conf) as p:
            p.send_batch(topic, np.full((n, 1), 7.0, dtype=np.float32), batch_size=50)
    cli("job", "create", names["j1"], "--algorithm", "median", "--topic", names["t1"])
    stop_all([start_worker(names["j1"], tmp_path)])
    first = RedisState(client, names["j1"]).pull("median")

    wrong = cli("job", "create", "inc-wrong", "--algorithm", "linear_learner", "--topic", names["t2"],
                "--param", "n_features=1", "--from-snapshot", names["j1"], check=False)
    assert wrong.returncode == 2 and "is a median model" in wrong.stderr

    cli("job", "create", names["j2"], "--algorithm", "median", "--topic", names["t2"], "--from-snapshot", names["j1"])
    assert float(RedisState(client, names["j2"]).pull("median")) == float(first)  # starts where j1 ended
    stop_all([start_worker(names["j2"], tmp_path)])
    status = json.loads(cli("job", "status", names["j2"], "--json").stdout)
    assert status["state"] == "finished" and status["records_applied"] == 400
    assert float(RedisState(client, names["j2"]).pull("n")) == 1000  # 600 from the parent + 400 new
    chain = ModelStore(client).lineage(names["j2"])
    assert [(m["job"], m["version"]) for m in chain] == [(names["j2"], 1), (names["j1"], 1)]


def test_kmeans_job_predicts_any_k_up_to_k_max(stack, tmp_path):
    from streamlearn.datasets import clustered
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    X = clustered(4000, d=4, n_clusters=8, seed=2)
    topic, job = f"km-{uuid.uuid4().hex[:8]}", f"km-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), topic, partitions=2)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, X, batch_size=200)
    cli("job", "create", job, "--algorithm", "kmeans", "--topic", topic,
        "--param", "n_features=4", "--param", "k_max=8", "--param", "k=8")
    stop_all([start_worker(job, tmp_path)])
    csv = tmp_path / "points.csv"
    csv.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in X[:300]) + "\n")
    for k in (3, 8):
        out = cli("predict", job, "--from", str(csv), "--param", f"k={k}").stdout.splitlines()
        clusters = {json.loads(line)["prediction"] for line in out}
        assert len(out) == 300 and clusters <= set(range(k)) and len(clusters) == k
    bad = cli("predict", job, "--from", str(csv), "--param", "k=9", check=False)
    assert bad.returncode == 2 and "k_max" in bad.stderr
