"""Seeing what a job does, against the real stack: a worker's Prometheus endpoint scraped
during a job, the job's history in Redis, ``job watch``, and ``streamlearn report`` opened in
real headless Chromium."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamlearn.runtime.history import read_history
from streamlearn.runtime.jobs import job_status
from tests.integration.procs import cli, stop_all, wait_for, wait_status
from tests.support.chromium import render

pytestmark = pytest.mark.integration

HISTORY_ENV = {"STREAMLEARN_HISTORY_EVERY_S": "0.3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """name -> {labels (sorted items): value} of every sample on the endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def worker(job: str, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", job, *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**os.environ, **HISTORY_ENV})


@pytest.fixture(scope="module")
def trained(stack, tmp_path_factory):
    """A linear-learner job run by one worker serving metrics, scraped while it trains and
    watched by ``job watch`` until it ends; plus k-means and PCA jobs on the same topic."""
    tmp = tmp_path_factory.mktemp("observe")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 6))
    y = (X @ [1.0, -2.0, 0.5, 0.0, 1.0, 0.3] > 0).astype(int)
    csv = tmp / "train.csv"
    csv.write_text("a,b,c,d,e,f,label\n" + "\n".join(",".join(f"{v:.5f}" for v in r) + f",{t}"
                                                     for r, t in zip(X, y)) + "\n")
    suffix = os.urandom(4).hex()
    topic, job = f"obs-{suffix}", f"obs-ll-{suffix}"
    cli("produce", topic, "--from", str(csv), "--label-column", "label", "--partitions", "2", "--batch-size", "100")
    cli("job", "create", job, "--algorithm", "linear_learner", "--topic", topic, "--epochs", "40",
        "--param", "predictor_type=binary_classifier")
    client = stack.redis_client()
    port = free_port()
    proc = worker(job, tmp / "worker.log", "--metrics-port", str(port))
    watch = subprocess.Popen([sys.executable, "-m", "streamlearn", "job", "watch", job, "--every", "0.3"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    scrapes = []
    try:
        def scraped_while_training():
            if proc.poll() is not None:
                raise AssertionError((tmp / "worker.log").read_text()[-3000:])
            try:
                m = scrape(port)
            except OSError:
                return None
            scrapes.append((job_status(client, job)["state"], m))
            applied = m.get("streamlearn_worker_records_applied_total", {}).get((("job", job),), 0)
            return scrapes[-1][0] == "running" and applied > 0 and "streamlearn_worker_partition_lag" in m
        wait_for(scraped_while_training, 90, "a scrape of the worker during the job", interval=0.2)
        final = wait_status(client, job, lambda s: s["state"] == "finished", 300, "the job to finish")
        watched = watch.communicate(timeout=60)[0]
        assert stop_all([proc]) == [0], (tmp / "worker.log").read_text()[-3000:]
    finally:
        for p in (proc, watch):
            if p.poll() is None:
                p.kill()
                p.wait()
    others = {}
    for algorithm, params in (("kmeans", ["k=4", "k_max=10"]), ("pca", ["n_components=4"])):
        name = f"obs-{algorithm}-{suffix}"
        cli("job", "create", name, "--algorithm", algorithm, "--topic", topic,
            *[a for p in params for a in ("--param", p)])
        others[algorithm] = (name, worker(name, tmp / f"{algorithm}.log"))
    for name, p in others.values():
        wait_status(client, name, lambda s: s["state"] == "finished", 300, f"{name} to finish")
    assert stop_all([p for _, p in others.values()]) == [0, 0]
    return {"job": job, "final": final, "scrapes": scrapes, "watch": (watch.returncode, watched), "tmp": tmp,
            "others": {a: n for a, (n, _) in others.items()}, "client": client}


def test_worker_serves_prometheus_metrics_during_the_job(trained):
    job = (("job", trained["job"]),)
    state, m = trained["scrapes"][-1]
    assert state == "running"
    assert m["streamlearn_worker_records_applied_total"][job] > 0
    assert m["streamlearn_worker_records_dead_lettered_total"][job] == 0
    assert m["streamlearn_worker_commit_seconds_count"][job] >= 1
    assert m["streamlearn_worker_update_seconds_count"][job] == m["streamlearn_worker_commit_seconds_count"][job]
    assert "streamlearn_worker_commit_conflicts_total" in m
    assert {dict(k)["partition"] for k in m["streamlearn_worker_partition_lag"]} <= {"0", "1"}
    assert m["streamlearn_job_members"][job] == 1
    assert m["streamlearn_job_running"][job] == 1
    # the job's own counter (read at scrape) is at least what this worker had counted before it
    assert m["streamlearn_job_records_applied"][job] >= m["streamlearn_worker_records_applied_total"][job]


def test_history_records_progress_and_holdout_per_packed_model(trained):
    samples = read_history(trained["client"], trained["job"])
    final = trained["final"]
    assert len(samples) >= 3
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    applied = [s["records_applied"] for s in samples]
    assert applied == sorted(applied) and applied[-1] == final["records_applied"] == 4000 * 40
    last = samples[-1]
    assert last["state"] == "finished" and set(last["lag"].values()) == {0}
    assert samples[0]["lag"] and sum(samples[0]["lag"].values()) > 0
    holdout = last["holdout"]
    assert holdout["metric"] == "log_loss" and len(holdout["values"]) == final["params"]["num_models"]
    chosen = holdout["values"][holdout["selected"]]
    assert chosen == min(v for v in holdout["values"] if v is not None)
    assert all(s["members"] in (0, 1) for s in samples)


def test_job_watch_follows_the_job_until_it_ends(trained):
    code, out = trained["watch"]
    assert code == 0, out
    assert "finished" in out and "partitions" in out and "log_loss" in out
    once = cli("job", "watch", trained["job"], "--once").stdout
    assert "finished" in once and "100.0 %" in once and "160,000 applied" in once


def test_report_renders_in_headless_chromium(trained):
    tmp = trained["tmp"]
    pages = {}
    for kind, job in (("linear_learner", trained["job"]), *trained["others"].items()):
        out = tmp / f"{kind}.html"
        cli("report", job, "--output", str(out))
        pages[kind] = render(out)
        (tmp / f"{kind}.png").write_bytes(pages[kind].screenshot)
    for kind, page in pages.items():
        assert page.errors == [], (kind, page.errors)
        assert page.images and all(i["complete"] and i["width"] > 100 for i in page.images), (kind, page.images)
        assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and page.size[1] > 800
        assert "Data lineage" in page.text and "Parameters" in page.text and "Gate decisions" in page.text
    ll = pages["linear_learner"]
    assert [i["alt"] for i in ll.images] == ["learning curve", "throughput", "lag", "members"]
    assert "(chosen)" in ll.text
    assert "k-means elbow" in [i["alt"] for i in pages["kmeans"].images]
    assert "PCA scree plot" in [i["alt"] for i in pages["pca"].images]
