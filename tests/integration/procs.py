"""Real worker processes for integration tests: start, signal, wait on job status."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from streamlearn.runtime.jobs import job_status
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import ensure_topic


def start_worker(job: str, log_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m streamlearn worker JOB`` as a child process with its own log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(log_dir.glob("worker-*.log")))
    log = open(log_dir / f"worker-{n}.log", "w")
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", job], stdout=log, stderr=subprocess.STDOUT,
                            env=full_env)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_status(client, job: str, predicate: Callable[[dict], bool], timeout: float, what: str,
                workers: list[subprocess.Popen] = ()) -> dict:
    """Wait for ``job``'s status to satisfy ``predicate``; fails at once when one of ``workers``
    exits with an error (a crashed worker would otherwise leave the wait to its timeout)."""
    def check():
        failed = [p.returncode for p in workers if p.poll() not in (None, 0)]
        assert not failed, f"a worker exited with {failed[0]} while waiting for {what}"
        status = job_status(client, job)
        return status if predicate(status) else None
    return wait_for(check, timeout, what)


def train_to_end(settings, job: str, log_dir: Path, workers: int = 2) -> dict:
    """Run ``workers`` worker processes until the job finishes; they must all exit 0."""
    client = settings.redis_client()
    procs = [start_worker(job, log_dir) for _ in range(workers)]
    try:
        status = wait_status(client, job, lambda s: s["state"] == "finished", 300, "job to finish", procs)
    finally:
        codes = stop_all(procs)
    assert codes == [0] * workers
    return status


def stop_all(procs: list[subprocess.Popen], timeout: float = 20) -> list[int]:
    """Wait for workers to exit by themselves (a finished job ends them); kill stragglers."""
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "streamlearn", *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"streamlearn {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


def cli_json(*args: str) -> dict:
    return json.loads(cli(*args, "--json").stdout)


def labelled_topic(stack, X, y, prefix: str, partitions: int = 2, batch_size: int = 200) -> str:
    """A fresh topic ``PREFIX-<random>`` holding the rows of ``X`` and labels ``y``."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ensure_topic(stack.kafka_client_conf(), name, partitions=partitions)
    with Producer(stack.kafka, stack.kafka_conf) as p:
        p.send_batch(name, X, y, batch_size=batch_size)
    return name


def train_job(job: str, log_dir: Path, algorithm: str, *args: str, timeout: float = 180) -> None:
    """``job create JOB --algorithm ALGORITHM --epochs 1 ARGS…`` run to its end by one worker."""
    cli("job", "create", job, "--algorithm", algorithm, "--epochs", "1", *args)
    assert stop_all([start_worker(job, log_dir)], timeout=timeout) == [0]
