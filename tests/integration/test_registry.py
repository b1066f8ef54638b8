"""The model registry on the real stack: lineage recorded by the runtime and queried from the
command line and Python, evaluation on a topic with the leakage check (training offsets of
the model and of its ancestors flagged, held-out offsets not), rolling-origin backtests whose
windows never evaluate on data they trained on, and bad inputs that record nothing."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

import streamlearn as sl
from streamlearn.registry.records import Registry
from streamlearn.snapshots.store import JOBS_KEY, ModelStore
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic

from tests.integration.procs import cli, start_worker, stop_all, wait_status

PARAMS = ("--param", "n_features=3", "--param", "predictor_type=binary_classifier")


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3)).astype(np.float32)
    return X, (X @ np.array([1.5, -2.0, 0.5]) + 0.3 * rng.standard_normal(n) > 0).astype(np.float32)


def _produce(stack, topic: str, n: int, seed: int, partitions: int = 2) -> None:
    ensure_topic(stack.kafka_client_conf(), topic, partitions=partitions)
    X, y = _data(n, seed)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, X, y, batch_size=100)


def _train(stack, tmp_path, job: str, topic: str, *extra: str) -> dict:
    cli("job", "create", job, "--algorithm", "linear_learner", "--topic", topic, "--epochs", "1", *PARAMS, *extra)
    procs = [start_worker(job, tmp_path / job)]
    final = wait_status(stack.redis_client(), job, lambda s: s["state"] in ("finished", "failed"), 180, "job end")
    assert stop_all(procs) == [0] and final["state"] == "finished", final
    return final


def _evaluations(client, job: str) -> int:
    return len(Registry(client).evaluations(job))


def test_lineage_recorded_queried_and_leakage_checked(stack, tmp_path):
    client = stack.redis_client()
    topic, other = f"reg-{uuid.uuid4().hex[:8]}", f"reg-{uuid.uuid4().hex[:8]}"
    job, child = f"regj-{uuid.uuid4().hex[:8]}", f"regc-{uuid.uuid4().hex[:8]}"
    _produce(stack, topic, 3000, seed=1)
    final = _train(stack, tmp_path, job, topic)
    assert job.encode() in client.smembers(JOBS_KEY)  # written at job create, by the control plane
    _produce(stack, topic, 1000, seed=2)  # after the job's end offsets: held out
    _produce(stack, other, 1000, seed=3)
    _train(stack, tmp_path, child, other, "--from-snapshot", job)

    # the snapshot's lineage: data ranges, counts, event time (from the commits), code, host
    entry = ModelStore(client).metadata(job, final["snapshot_version"])
    data = entry["data"]
    assert data["topic"] == topic and data["records_applied"] == 3000 and data["records_dead_lettered"] == 0
    assert {p: rs for p, rs in data["partitions"].items()} == {p: [[0, o]] for p, o in final["end_offsets"].items()}
    et = data["event_time"]
    assert et is not None and 0 < et["min"] <= et["max"] and set(et["partitions"]) == set(final["end_offsets"])
    assert data["schemas"] and all(s.startswith("0x") for s in data["schemas"])
    assert entry["provenance"]["host"] and entry["provenance"]["user"]
    assert entry["provenance"]["code"]["streamlearn"] and "numpy" in entry["provenance"]["libraries"]
    job_entry = Registry(client).job_entry(job)
    assert job_entry["algorithm"] == "linear_learner" and job_entry["end_offsets"] == final["end_offsets"]

    # evaluation on the job's own training offsets: every record leaked
    train_offsets = ",".join(f"{p}:0-{o}" for p, o in final["end_offsets"].items())
    res = cli("evaluate", job, "--topic", topic, "--offsets", train_offsets)
    assert f"leakage: 3000 of 3000 evaluation records were training records of {job}@1" in res.stdout
    # held-out offsets (produced after the job's end): no leakage
    held = ",".join(f"{p}:{o}-{o + 5}" for p, o in final["end_offsets"].items())
    ev = json.loads(cli("evaluate", job, "--topic", topic, "--offsets", held, "--json").stdout)
    assert ev["leakage"] is None and ev["data"]["records"] == 1000 and ev["scores"]["accuracy"] > 0.8
    # the child was trained on another topic from the job's model: its ancestor's data leaks
    anc = sl.connect().evaluate(f"{child}@1", topic)
    assert anc["leakage"] == {"records": 3000, "of": 4000,
                              "models": [{"model": f"{job}@1", "records": 3000, "by": ["offsets"]}]}
    mine = sl.connect().evaluate(f"{child}@1", other)
    assert mine["leakage"]["models"][0]["model"] == f"{child}@1" and mine["leakage"]["records"] == 1000

    # queries: models, lineage, compare (CLI and Python)
    rows = json.loads(cli("models", "--job", job, "--json").stdout)
    assert [(r["model"], r["status"], r["evaluations"]) for r in rows] == [(f"{job}@1", "blessed", 2)]
    assert "log_loss" in rows[0]["holdout"] and rows[0]["evaluated"]["accuracy"] == ev["scores"]["accuracy"]
    assert cli("models", "--job", job, "--where", "accuracy>0.8 and records_applied>=3000", "--json").stdout.count(
        f'"{job}@1"') == 1
    assert json.loads(cli("models", "--job", job, "--where", "accuracy>1.5", "--json").stdout) == []
    assert json.loads(cli("models", "--job", job, "--status", "rejected", "--json").stdout) == []
    assert json.loads(cli("models", "--job", job, "--since", "1h", "--json").stdout)[0]["model"] == f"{job}@1"
    assert json.loads(cli("models", "--job", job, "--since", "2999-01-01", "--json").stdout) == []
    with sl.connect() as conn:
        assert sorted(r["model"] for r in conn.models(algorithm="linear_learner", where="accuracy > 0.8")
                      if r["job"] in (job, child)) == sorted([f"{job}@1", f"{child}@1"])
        info = conn.lineage(f"{child}@1")
        assert [p["model"] for p in info["parents"]] == [f"{job}@1"] and info["parents"][0]["link"] == "trained from"
        assert [d["topic"] for d in info["training_data"]] == [other, topic]
        assert [e["id"] for e in info["evaluations"]] == ["E1", "E2"]
        assert conn.lineage(job)["children"] == [f"{child}@1"]
        conn.evaluate(job, topic)  # the whole topic, as the child was: the same evaluation data
        diff = conn.compare(f"{job}@1", f"{child}@1")
    assert diff["params"] == {} and len(diff["same_data"]) == 1
    assert diff["same_data"][0]["data"]["topic"] == topic and "accuracy" in diff["same_data"][0]["scores"]
    text = cli("lineage", f"{child}@1").stdout
    assert f"{job}@1  (trained from" in text and "leakage: 3000 of 4000" in text and "children: none" in text
    assert "accuracy:" in cli("compare", job, child).stdout


def test_bad_inputs_one_line_exit_2_nothing_recorded(stack, tmp_path):
    client = stack.redis_client()
    topic, wide, job = (f"bad-{uuid.uuid4().hex[:8]}", f"bad-{uuid.uuid4().hex[:8]}", f"badj-{uuid.uuid4().hex[:8]}")
    _produce(stack, topic, 1000, seed=4)
    ensure_topic(stack.kafka_client_conf(), wide, partitions=1)
    with Producer(stack.kafka, stack.kafka_conf) as p:  # 5 features: not what a 3-feature model reads
        p.send_batch(wide, np.ones((50, 5), np.float32), np.ones(50, np.float32), batch_size=10)
    _train(stack, tmp_path, job, topic)
    for args in (("evaluate", "nope-" + uuid.uuid4().hex[:6], "--topic", topic),
                 ("evaluate", f"{job}@99", "--topic", topic),
                 ("evaluate", f"{job}@x", "--topic", topic),
                 ("evaluate", job, "--topic", "missing-" + uuid.uuid4().hex[:6]),
                 ("evaluate", job, "--topic", wide),
                 ("evaluate", job, "--topic", topic, "--metric", "bogus"),
                 ("evaluate", job, "--topic", topic, "--offsets", "0:5-2"),
                 ("evaluate", job, "--topic", topic, "--offsets", "7:0-1"),
                 ("evaluate", job, "--topic", topic, "--since", "2999-01-01"),
                 ("evaluate", job, "--topic", topic, "--since", "yesterday-ish"),
                 ("models", "--where", "accuracy>>1"), ("models", "--where", "__import__('os')"),
                 ("models", "--job", job, "--where", "perplexity<3"),
                 ("lineage", f"{job}@7"), ("compare", job, "nope@1"),
                 ("backtest", job, "--algorithm", "linear_learner", "--topic", topic, "--windows", "2",
                  "--horizon", "100", *PARAMS),
                 ("backtest", "bt-" + uuid.uuid4().hex[:6], "--algorithm", "linear_learner", "--topic", topic,
                  "--windows", "20", "--horizon", "100", *PARAMS),
                 ("backtest", "bt-" + uuid.uuid4().hex[:6], "--algorithm", "linear_learner", "--topic", topic,
                  "--windows", "2", "--horizon", "soon", *PARAMS)):
        res = cli(*args, check=False)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, (args, res.stderr)
    assert _evaluations(client, job) == 0
    assert [m for m in ModelStore(client).jobs() if m.startswith("bt-")] == [] or all(
        ModelStore(client).latest_version(m) is None for m in ModelStore(client).jobs() if m.startswith("bt-"))


def test_backtest_windows_never_overlap_their_training_data(stack):
    client = stack.redis_client()
    topic, name = f"bt-{uuid.uuid4().hex[:8]}", f"bt-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), topic, partitions=2)
    X, y = _data(3000, seed=5)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, X, y, batch_size=50)
    res = cli("backtest", name, "--algorithm", "linear_learner", "--topic", topic, "--windows", "3",
              "--horizon", "500", *PARAMS, "--json")
    summary = json.loads(res.stdout)
    windows = summary["windows"]
    assert [w["model"] for w in windows] == [f"{name}@{k}" for k in (1, 2, 3)]

    def coords(partitions: dict) -> set[tuple[int, int]]:
        return {(int(p), o) for p, rs in partitions.items() for a, b in rs for o in range(a, b)}

    seen: set = set()
    for w in windows:
        train, test = coords(w["train_partitions"]), coords(w["test_partitions"])
        assert not train & test and w["leakage"] is None  # never evaluated on what it trained on
        assert seen <= train  # each window continues from the previous one's data
        assert w["test_records"] >= 500 and w["scores"]["accuracy"] > 0.7
        seen = train | test
    assert windows[0]["train_records"] + sum(w["test_records"] for w in windows) == 3000  # one pass
    assert summary["mean"]["accuracy"] == pytest.approx(np.mean([w["scores"]["accuracy"] for w in windows]))
    # recorded: the models with their lineage, each window's evaluation
    info = sl.connect().lineage(f"{name}@3")
    assert [p["model"] for p in info["parents"]] == [f"{name}@2", f"{name}@1"]
    assert [e["id"] for e in info["evaluations"]] == ["E3"] and info["evaluations"][0]["leakage"] is None
    assert info["backtest"]["window"] == 3
    assert Registry(client).backtest(name)["mean"] == summary["mean"]
    assert "window 2" in cli("backtest", "x" + name, "--algorithm", "linear_learner", "--topic", topic,
                             "--windows", "2", "--horizon", "400", *PARAMS).stdout
