"""A ``streamlearn serve`` child process, as :meth:`Connection.serve` starts it."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from streamlearn.devstack.procs import terminate
from streamlearn.errors import StreamlearnError
from streamlearn.serving.client import Client

__all__ = ["ServerProcess"]

_SERVING = re.compile(r"^serving job \S+ at (http://\S+?)/v1/models/")


class ServerProcess:
    """The server's handle: ``url``, ``client()``, ``stop()``. Its output goes to ``log_path``."""

    def __init__(self, job: str, args: list[str], env: dict[str, str], log_path: Path, timeout: float = 120.0):
        self.job = job
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "streamlearn", "serve", job, *args],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.url = self._wait_bound(timeout)

    def _wait_bound(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                found = _SERVING.match(line)
                if found:
                    return found.group(1)
            if self.process.poll() is not None:
                lines = self.log_path.read_text().strip().splitlines()
                raise StreamlearnError(f"the server of {self.job!r} exited with {self.process.returncode}: "
                                       f"{lines[-1] if lines else 'no output'}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the server of {self.job!r} did not bind within {timeout} s; see {self.log_path}")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def client(self) -> Client:
        return Client(self.url, self.job)

    def wait_ready(self, timeout: float = 60.0) -> "ServerProcess":
        """Block until a model is loaded (``/readyz`` answers 200)."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while not client.ready():
            if not self.running or time.monotonic() > deadline:
                raise TimeoutError(f"the server of {self.job!r} had no model within {timeout} s")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (requests in flight are answered first); kill after ``timeout`` seconds."""
        return terminate(self.process, timeout)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerProcess({self.job!r}, url={self.url!r}, pid={self.process.pid})"
