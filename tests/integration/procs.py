"""Real worker processes for integration tests: start, signal, wait on job status."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from streamlearn.runtime.jobs import job_status


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


def wait_status(client, job: str, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
    return wait_for(lambda: (lambda s: s if predicate(s) else None)(job_status(client, job)), timeout, what)


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
