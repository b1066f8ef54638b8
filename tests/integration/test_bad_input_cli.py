"""User errors through the CLI, in-process (``streamlearn.cli.main``) on the real stack: one
clear line on stderr, exit status 2, no traceback. Extends test_cli.py's table (which runs
subprocesses) with the cases it does not cover."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from streamlearn import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def topic(stack):
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    name = f"badcli-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), name, partitions=1)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(name, np.ones((20, 1), dtype=np.float32), batch_size=10)
    return name


def run(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def one_clear_line(code: int, err: str, expect: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expect in err, err


@pytest.mark.parametrize("params,expect", [
    (["learning_rate=nan"], "learning_rate"),
    (["learning_rate=inf"], "learning_rate"),
    (["learning_rate=-1"], "learning_rate"),
    (["learning_rate=1e400"], "learning_rate"),
    (["initial_guess=nan"], "initial_guess"),
    (["synchronized=maybe"], "synchronized"),
    (["learning_rate"], "NAME=VALUE"),
    (["=3"], "NAME=VALUE"),
    (["colour=red", "size=1"], "unknown parameter"),
])
def test_bad_median_params(stack, topic, capsys, params, expect):
    argv = ["job", "create", f"bad-{uuid.uuid4().hex[:6]}", "--algorithm", "median", "--topic", topic]
    for p in params:
        argv += ["--param", p]
    one_clear_line(*run(capsys, *argv), expect)


@pytest.mark.parametrize("algorithm,params,expect", [
    ("linear_learner", ["mini_batch_size=0"], "mini_batch_size"),
    ("linear_learner", ["n_features=0", "predictor_type=regressor"], "n_features"),
    ("linear_learner", ["n_features=abc", "predictor_type=regressor"], "n_features"),
    ("linear_learner", ["n_features=3", "predictor_type=telepathy"], "predictor_type"),
    ("counter", ["dim=0"], "dim"),
    ("counter", ["dim=3", "n_ids=-1"], "n_ids"),
    ("counter", ["dim=3", "n_ids=10"], "id_column"),
    ("no_such_algorithm", [], "unknown algorithm"),
    ("", [], "unknown algorithm"),
])
def test_bad_algorithm_params(stack, topic, capsys, algorithm, params, expect):
    argv = ["job", "create", f"bad-{uuid.uuid4().hex[:6]}", "--algorithm", algorithm, "--topic", topic]
    for p in params:
        argv += ["--param", p]
    one_clear_line(*run(capsys, *argv), expect)


@pytest.mark.parametrize("extra,expect", [
    (["--snapshot-every", "-1"], "snapshot-every"),
    (["--snapshot-every", "nan"], "snapshot-every"),
    (["--snapshot-every", "0"], "snapshot-every"),
    (["--from-snapshot", "no-such-parent-job"], "no snapshot"),
    (["--from-snapshot", "x@notanumber"], "JOB@VERSION"),
    (["--from-snapshot", "bad name!@1"], "invalid job name"),
])
def test_bad_job_options(stack, topic, capsys, extra, expect):
    argv = ["job", "create", f"bad-{uuid.uuid4().hex[:6]}", "--algorithm", "median", "--topic", topic, *extra]
    one_clear_line(*run(capsys, *argv), expect)


@pytest.mark.parametrize("argv,expect", [
    (["job", "pause", "no-such-job-x"], "unknown job"),
    (["job", "resume", "no-such-job-x"], "unknown job"),
    (["snapshot", "no-such-job-x"], "unknown job"),
    (["job", "status", "a" * 101], "invalid job name"),
    (["job", "status", "{slot}"], "invalid job name"),
    (["worker", "../../etc"], "invalid job name"),
    (["produce", "some-topic", "--from", "/no/such/file.csv"], "/no/such/file.csv"),
])
def test_unknown_jobs_and_bad_names(stack, capsys, argv, expect):
    one_clear_line(*run(capsys, *argv), expect)


def test_name_taken_and_finished_job_controls(stack, topic, capsys, tmp_path):
    job = f"taken-{uuid.uuid4().hex[:6]}"
    assert run(capsys, "job", "create", job, "--algorithm", "median", "--topic", topic)[0] == 0
    one_clear_line(*run(capsys, "job", "create", job, "--algorithm", "median", "--topic", topic), "already exists")
    # a snapshot version that does not exist, for a job that has none yet
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1\n")
    code, err = run(capsys, "predict", job, "--from", str(rows))
    one_clear_line(code, err, "no snapshot")
    code, err = run(capsys, "predict", job, "--from", str(rows), "--version", "99")
    assert code == 2 and "Traceback" not in err


def test_predict_with_a_bad_input_file(stack, capsys, tmp_path):
    from tests.integration.procs import start_worker, stop_all

    topic = job = f"predbad-{uuid.uuid4().hex[:6]}"
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    ensure_topic(stack.kafka_client_conf(), topic, partitions=1)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(topic, np.ones((20, 1), dtype=np.float32), batch_size=10)
    assert run(capsys, "job", "create", job, "--algorithm", "median", "--topic", topic)[0] == 0
    stop_all([start_worker(job, tmp_path)])
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"x,y\n1,2,3\n\xff\xfe\x00garbage\n")
    code, err = run(capsys, "predict", job, "--from", str(bad))
    assert code == 2 and "Traceback" not in err, err
    weird = tmp_path / "rows.unknownext"
    weird.write_text("1\n")
    code, err = run(capsys, "predict", job, "--from", str(weird))
    assert code == 2 and "Traceback" not in err, err
