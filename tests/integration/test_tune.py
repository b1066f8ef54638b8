"""``streamlearn tune`` on the real stack: trials are jobs over one topic, scored at rungs
of records applied, losers paused (not killed), a paused trial resumed later continuing from
its offsets, warm start from a finished study, and bad input as one line with exit 2."""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from streamlearn import datasets as D
from streamlearn.runtime.jobs import job_status
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic
from tests.integration.procs import cli, cli_json, stop_all, wait_for

pytestmark = pytest.mark.integration

N_TRAIN, N_VALID = 6000, 2000
SPACE = ["--param-range", "learning_rate=0.001:3:log", "--param-range", "l2=0.000001:0.1:log"]


def _study_worker(study: str, log_dir) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"study-{uuid.uuid4().hex[:6]}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", "--study", study], stdout=log,
                            stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def topics(stack):
    X, y = D.dense_classification(N_TRAIN + N_VALID, d=10, seed=8)
    names = {k: f"tune-{k}-{uuid.uuid4().hex[:8]}" for k in ("train", "valid")}
    for key, (a, b) in {"train": (0, N_TRAIN), "valid": (N_TRAIN, N_TRAIN + N_VALID)}.items():
        ensure_topic(stack.kafka_client_conf(), names[key], partitions=2)
        with Producer(stack.kafka, stack.kafka_conf) as p:
            p.send_batch(names[key], X[a:b], y[a:b], batch_size=50)
    return names


@pytest.fixture(scope="module")
def finished_study(stack, topics, tmp_path_factory):
    study = f"st-{uuid.uuid4().hex[:6]}"
    cli("tune", "create", study, "--algorithm", "linear_learner", "--topic", topics["train"], "--metric", "accuracy",
        *SPACE, "--param", "num_models=2", "--param", "mini_batch_size=100", "--param", "epochs=1",
        "--trials", "6", "--parallel", "2", "--min-records", "500", "--reduction-factor", "3",
        "--validation-topic", topics["valid"])
    logs = tmp_path_factory.mktemp("study-logs")
    assert stop_all([_study_worker(study, logs), _study_worker(study, logs)], timeout=600) == [0, 0]
    return study


def test_a_study_pauses_losers_at_rungs_and_completes_the_best(stack, finished_study):
    status = cli_json("tune", "status", finished_study)
    assert status["state"] == "finished" and status["rungs"] == [500, 1500, 4500]
    trials = status["trials"]
    assert len(trials) == 6 and status["configurations_explored"] == 12  # 6 trials x 2 packed models
    states = [t["state"] for t in trials]
    assert "pruned" in states and "completed" in states, states
    client = stack.redis_client()
    for t in trials:
        job = job_status(client, t["job"])
        assert t["rungs"], t  # every trial was scored at its first rung at least
        if t["state"] == "pruned":  # a loser is paused, not killed, before the end of its data
            assert job["state"] == "paused" and job["records_applied"] < N_TRAIN
        else:
            assert t["state"] == "completed" and job["state"] == "finished" and job["records_applied"] == N_TRAIN
    assert status["records_applied"] < status["records_full_training"] == 6 * N_TRAIN
    best = cli_json("tune", "best", finished_study)
    completed = {t["job"]: t["metric"] for t in trials if t["state"] == "completed"}
    assert best["job"] == status["best"] and best["metric"] == max(completed.values())
    assert best["snapshot_version"] == 1 and best["job_params"]["num_models"] == 2
    assert set(best["params"]) == {"learning_rate", "l2"}
    assert best["job_params"]["learning_rate"] == best["params"]["learning_rate"]


def test_a_paused_trial_resumed_later_continues_from_its_offsets(stack, finished_study, tmp_path):
    client = stack.redis_client()
    pruned = [t for t in cli_json("tune", "status", finished_study)["trials"] if t["state"] == "pruned"]
    job = pruned[0]["job"]
    before = job_status(client, job)
    cli("tune", "resume", finished_study, job)
    assert stop_all([_study_worker(finished_study, tmp_path)], timeout=300) == [0]
    after = job_status(client, job)
    # every record exactly once: the paused offsets were continued, not started over
    assert after["state"] == "finished" and after["records_applied"] == N_TRAIN > before["records_applied"]
    assert after["initialize_calls"] == 1 and after["records_dead_lettered"] == 0
    row = next(t for t in cli_json("tune", "status", finished_study)["trials"] if t["job"] == job)
    assert row["state"] == "completed" and row["resumed"] and row["metric"] is not None
    again = cli("tune", "resume", finished_study, job, check=False)
    assert again.returncode == 2 and "not pruned" in again.stderr


def test_warm_start_seeds_a_new_study_with_the_finished_trials(stack, topics, finished_study, tmp_path):
    old = cli_json("tune", "status", finished_study)
    study = f"ws-{uuid.uuid4().hex[:6]}"
    out = cli("tune", "create", study, "--algorithm", "linear_learner", "--topic", topics["train"],
              "--metric", "accuracy", *SPACE, "--param", "num_models=2", "--param", "epochs=1", "--trials", "2",
              "--min-records", "500", "--validation-topic", topics["valid"], "--warm-start", finished_study,
              "--scheduler", "hyperband")
    finished = sum(t["state"] in ("pruned", "completed") for t in old["trials"])
    assert f"warm-started with {finished} trials" in out.stdout
    assert stop_all([_study_worker(study, tmp_path)], timeout=300) == [0]
    status = cli_json("tune", "status", study)
    assert status["warm_started"] == finished and status["state"] == "finished" and len(status["trials"]) == 2
    other = cli("tune", "create", f"ws2-{uuid.uuid4().hex[:6]}", "--algorithm", "linear_learner",
                "--topic", topics["train"], "--metric", "accuracy", "--param-range", "learning_rate=0.01:1:log",
                "--trials", "2", "--warm-start", finished_study, check=False)
    assert other.returncode == 2 and "search space differs" in other.stderr


def test_a_killed_study_worker_leaves_its_trials_to_the_next_one(stack, topics, tmp_path):
    study = f"kill-{uuid.uuid4().hex[:6]}"
    cli("tune", "create", study, "--algorithm", "linear_learner", "--topic", topics["train"], "--metric", "accuracy",
        *SPACE, "--param", "num_models=1", "--param", "epochs=1", "--trials", "3", "--min-records", "500",
        "--scheduler", "median")  # scored on the linear learner's holdout (no validation topic)
    first = _study_worker(study, tmp_path)
    client = stack.redis_client()
    wait_for(lambda: any((r["records_applied"] or 0) > 0 for r in cli_json("tune", "status", study)["trials"]),
             120, "a trial to apply records")
    first.kill()  # SIGKILL: no cleanup, its lease and its Kafka membership expire
    first.wait()
    assert stop_all([_study_worker(study, tmp_path)], timeout=300) == [0]
    status = cli_json("tune", "status", study)
    assert status["state"] == "finished" and len(status["trials"]) == 3
    for t in status["trials"]:
        job = job_status(client, t["job"])
        assert t["state"] in ("completed", "pruned") and t["rungs"]
        assert job["records_applied"] == N_TRAIN if t["state"] == "completed" else job["state"] == "paused"
        assert job["initialize_calls"] == 1


@pytest.mark.parametrize("args, message", [
    (["--param-range", "no_such_param=0:1"], "unknown parameter(s) ['no_such_param']"),
    (["--param-range", "learning_rate=1:1"], "is empty"),
    (["--param-range", "learning_rate=0.1:1", "--metric", "mae"], "does not report metric 'mae'"),
    (["--param-range", "learning_rate=0.1:1", "--topic", "no-such-topic-here"], "no-such-topic-here"),
])
def test_bad_study_input_is_one_line_and_exit_2(stack, topics, args, message):
    base = {"--topic": topics["train"], "--metric": "accuracy"}
    for flag in ("--topic", "--metric"):
        if flag in args:
            base.pop(flag)
    res = cli("tune", "create", f"bad-{uuid.uuid4().hex[:6]}", "--algorithm", "linear_learner", "--trials", "3",
              *[x for kv in base.items() for x in kv], *args, check=False)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
