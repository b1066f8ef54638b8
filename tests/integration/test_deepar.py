"""DeepAR on the real stack: points produced from a long-format CSV by the CLI (bad points
dead-lettered with reasons), a worker stopped mid-job (another takes over its partitions)
and a worker SIGKILLed mid-job both end with exactly the stored contexts of an
uninterrupted job (every point once) and a model as good within tolerance; ``streamlearn
forecast`` writes one JSON line per series from the snapshot; two workers in synchronous
rounds (``aggregation=sync``) count every point once and forecast as one worker does, also
with ``streamlearn forecast``."""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest

pytest.importorskip("torch")

from streamlearn import datasets as D  # noqa: E402
from streamlearn.algorithms.deepar import decode_id  # noqa: E402
from streamlearn.runtime.jobs import create_job, set_paused  # noqa: E402
from streamlearn.runtime.predict import load_job_model  # noqa: E402
from streamlearn.statestore.redis_state import RedisState  # noqa: E402
from streamlearn.streams.timeseries import ms_to_iso  # noqa: E402
from tests.integration.procs import cli, start_worker, stop_all, wait_for, wait_status  # noqa: E402

pytestmark = pytest.mark.integration

N_SERIES, LENGTH, H = 24, 50, 5
PARAMS = {"prediction_length": H, "context_length": 10, "lags_seq": [1, 2, 3, 7], "num_cells": 16,
          "max_series": 128, "learning_rate": 0.01, "num_samples": 200}
SLOW = {"STREAMLEARN_WORKER_MAX_MESSAGES": "20"}
BAD = 3


@pytest.fixture(scope="module")
def points_topic(stack, tmp_path_factory):
    pts = D.seasonal_series(N_SERIES, LENGTH, period=7, seed=11)
    path = tmp_path_factory.mktemp("deepar") / "series.csv"
    lines = ["item,when,value"] + [f"{s},{ms_to_iso(t)},{y}" for s, t, y in zip(pts.series, pts.time, pts.target)]
    lines += ["s1,not-a-date,1.0", "s2,2021-01-03,5.0", "s3,2031-01-01,inf"]  # unparsable, backwards, inf
    path.write_text("\n".join(lines) + "\n")
    topic = f"deepar-points-{np.random.default_rng().integers(1 << 30)}"
    out = cli("produce", topic, "--from", str(path), "--series-column", "item", "--time-column", "when",
              "--target-column", "value", "--partitions", "3")
    assert f"produced {N_SERIES * LENGTH + BAD} points of {N_SERIES} series" in out.stdout
    return topic, pts


def _run(stack, topic, job, tmp_path, interrupt: str | None):
    client = stack.redis_client()
    spec = create_job(client, stack.kafka_client_conf(), job, "deepar", topic, dict(PARAMS))
    assert spec.params["partitions"] == 3  # the topic's: each claims context rows in its own third
    first = start_worker(job, tmp_path, SLOW if interrupt else None)
    procs = [first]
    if interrupt:
        wait_status(client, job, lambda s: s["records_applied"] >= 200, 180, "a first part of the points")
        first.send_signal(signal.SIGTERM if interrupt == "stop" else signal.SIGKILL)
        first.wait(60)
        procs.append(start_worker(job, tmp_path))
    status = wait_status(client, job, lambda s: s["state"] == "finished", 600, "the job to finish")
    stop_all(procs)
    if interrupt:
        assert status["records_applied"] + status["records_dead_lettered"] > 200
    return status


def _contexts(client, job) -> dict[str, np.ndarray]:
    state = RedisState(client, job)
    slots, ctx = state.pull("slots"), state.pull("ctx")
    return {decode_id(slots[r]): ctx[r] for r in np.flatnonzero(slots[:, 0] != 0)}


def test_partition_move_and_sigkill_keep_context_and_count_every_point_once(stack, points_topic, tmp_path,
                                                                            unique_name):
    topic, pts = points_topic
    client = stack.redis_client()
    runs = {}
    for mode in (None, "stop", "kill"):
        job = f"{unique_name}-{mode or 'straight'}"
        status = _run(stack, topic, job, tmp_path / str(mode), mode)
        assert status["records_applied"] == N_SERIES * LENGTH, mode
        assert status["records_dead_lettered"] == BAD, mode
        assert status["partitions"] == status["end_offsets"]
        runs[mode] = job
    reference = _contexts(client, runs[None])
    assert sorted(reference) == sorted(f"s{i}" for i in range(N_SERIES))
    assert all(row[1] == LENGTH for row in reference.values())  # age: every point of the series, once
    for mode in ("stop", "kill"):
        got = _contexts(client, runs[mode])
        assert sorted(got) == sorted(reference)
        for s in reference:
            np.testing.assert_array_equal(got[s], reference[s], err_msg=f"{mode}: context of {s}")
    # the model: the same data in another interleaving of partitions; its forecasts as good
    models = {m: load_job_model(client, j) for m, j in runs.items()}
    tail = D.seasonal_series(N_SERIES, LENGTH + H, period=7, seed=11)  # the true next H values
    scores = {m: model.score(tail) for m, model in models.items()}
    for mode in ("stop", "kill"):
        assert abs(scores[mode] - scores[None]) <= 0.25 * scores[None] + 0.01, scores
    assert models[None].attrs["points"] == N_SERIES * LENGTH


def test_two_sync_workers_count_every_point_once_and_forecast_as_one_worker(stack, points_topic, tmp_path,
                                                                          unique_name):
    """aggregation=sync, 1 then 2 workers that joined before the first point (created paused):
    the same contexts (every point once), the same training windows, every round's step in
    the model, and forecasts as good within tolerance (the rounds' shares follow Kafka's
    delivery, so the parameters are not bit-equal here; tests/unit/test_deepar.py checks
    that)."""
    topic, _ = points_topic
    client = stack.redis_client()
    contexts, models = {}, {}
    for workers in (1, 2):
        job = f"{unique_name}-sync{workers}"
        create_job(client, stack.kafka_client_conf(), job, "deepar", topic, {**PARAMS, "aggregation": "sync"})
        set_paused(client, job, True)
        procs = [start_worker(job, tmp_path / f"w{workers}-{i}") for i in range(workers)]
        try:
            wait_status(client, job, lambda s: len(s["members"]) == workers, 120, f"{workers} members")
            wait_for(lambda: all(p.poll() is None for p in procs), 5, "workers running")
            set_paused(client, job, False)
            status = wait_status(client, job, lambda s: s["state"] == "finished", 600, "the job to finish", procs)
        finally:
            codes = stop_all(procs, timeout=60)
        assert codes == [0] * workers
        assert status["records_applied"] == N_SERIES * LENGTH and status["records_dead_lettered"] == BAD
        assert status["partitions"] == status["end_offsets"] and status["finalize_calls"] == 1
        contexts[workers], models[workers] = _contexts(client, job), load_job_model(client, job)
        state = RedisState(client, job)
        assert float(state.pull("round")) >= float(state.pull("t")) > 0  # a step per round that had windows
    assert sorted(contexts[2]) == sorted(contexts[1])
    for s in contexts[1]:
        np.testing.assert_array_equal(contexts[2][s], contexts[1][s], err_msg=f"context of {s}")
    assert models[2].attrs["windows"] == models[1].attrs["windows"] == N_SERIES * (LENGTH - H + 1)
    tail = D.seasonal_series(N_SERIES, LENGTH + H, period=7, seed=11)
    scores = {w: m.score(tail) for w, m in models.items()}
    assert abs(scores[2] - scores[1]) <= 0.25 * scores[1] + 0.01, scores
    # exact_rounds (the default): float64 steps, parameters kept float32 values, which the float32 model forecasts with
    np.testing.assert_array_equal(models[2].theta, models[2].theta.astype(np.float32))
    lines = cli("forecast", f"{unique_name}-sync2", "--all", "--samples", "20").stdout.splitlines()
    assert sorted(json.loads(x)["series"] for x in lines) == sorted(f"s{i}" for i in range(N_SERIES))


def test_forecast_command_writes_one_json_line_per_series(stack, points_topic, tmp_path, unique_name):
    topic, _ = points_topic
    _run(stack, topic, unique_name, tmp_path, None)
    out = tmp_path / "fc.jsonl"
    cli("forecast", unique_name, "--all", "--horizon", "3", "--quantiles", "0.1,0.5,0.9", "--samples", "50",
        "--output", str(out))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["series"] for r in recs) == sorted(f"s{i}" for i in range(N_SERIES))
    for r in recs:
        assert r["start"] == ms_to_iso(int(np.datetime64("2021-01-01", "ms").astype(np.int64)) + LENGTH * 86_400_000)
        q = [np.array(r["quantiles"][k]) for k in ("0.1", "0.5", "0.9")]
        assert all(len(v) == 3 for v in q) and np.all(q[0] <= q[1]) and np.all(q[1] <= q[2])
    one = cli("forecast", unique_name, "--series", "s3", "--samples", "20").stdout.splitlines()
    assert len(one) == 1 and json.loads(one[0])["series"] == "s3" and len(json.loads(one[0])["mean"]) == H
    bad = cli("forecast", unique_name, "--series", "nope", check=False)
    assert bad.returncode == 2 and "no series" in bad.stderr


def test_a_second_pass_is_refused_at_job_create(stack, points_topic, unique_name):
    topic, _ = points_topic
    out = cli("job", "create", unique_name, "--algorithm", "deepar", "--topic", topic, "--until", "end",
              "--epochs", "2", check=False)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "epochs must be 1" in out.stderr
    assert stack.redis_client().keys(f"*{unique_name}*") == []  # nothing of the job was created
