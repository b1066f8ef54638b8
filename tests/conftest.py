"""Shared fixtures.

Integration/chaos tests run against a REAL local stack (Apache Kafka 4.x KRaft + Redis),
started on free ports in a private temp home, only when a test asks for it:

* ``stack`` (session): :class:`streamlearn.config.Settings` of the session stack; while it is
  up, ``STREAMLEARN_KAFKA``/``STREAMLEARN_REDIS`` point at it (and any ``STREAMLEARN_KAFKA_*``
  client overrides from the outer environment are removed). Always stopped at the end.
* ``stack_home`` (session): the session stack's home directory (for ``stack.status``).
  Do not stop or restart the session stack: use ``make_stack`` for that.
* ``make_stack`` (function): factory ``make_stack(**up_kwargs) -> LocalStack`` starting
  an extra private stack (own home, own ports: AOF, passwords, restarts, chaos…), stopped
  and purged at teardown.
* ``redis_client`` (function): a ``redis.Redis`` (bytes) on the session stack. Nothing is
  flushed: tests use unique names (``unique_name``).
* ``unique_name`` (function): a fresh Kafka-topic-safe name derived from the test name.

Missing Java / redis-server / Maven make these fixtures FAIL (not skip): an integration
test that does not run is not coverage. ``bash .ci/run`` installs what is missing.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A watchdog per stack: if the pytest process dies without running fixture teardown
# (SIGKILL, CI timeout), it stops the stack so no JVM / redis-server is left behind.
_WATCHDOG = r"""
import os, sys, time
parent, home = int(sys.argv[1]), sys.argv[2]
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
while alive(parent):
    time.sleep(1.0)
from streamlearn.devstack import stack
stack.down(home)
"""


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "chaos" in parts:
            item.add_marker(pytest.mark.chaos)


def _require_prerequisites() -> None:
    from streamlearn.devstack import stack as st

    problems = st.check_prerequisites()
    if problems:
        pytest.fail(
            "the local stack (Kafka + Redis) needed by integration tests cannot start: "
            + "; ".join(problems)
            + ". Run `bash .ci/run` (installs redis-server) or install them.",
            pytrace=False,
        )


def _watchdog(home: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(home)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=env,
    )


def _start(home: Path, **up_kwargs):
    from streamlearn.devstack import stack as st

    _require_prerequisites()
    dog = _watchdog(home)
    try:
        settings = st.up(home, **up_kwargs)
    except BaseException as exc:
        st.down(home)
        dog.kill()
        dog.wait()
        if isinstance(exc, st.StackError):
            pytest.fail(f"the local stack failed to start in {home}:\n{exc}", pytrace=False)
        raise
    return settings, dog


def _stop(home: Path, dog: subprocess.Popen, *, purge: bool) -> None:
    from streamlearn.devstack import stack as st

    try:
        st.down(home, purge=purge)
    finally:
        dog.kill()
        dog.wait()


@pytest.fixture(scope="session")
def stack_home(tmp_path_factory) -> Path:
    """Home directory of the session stack (started by ``stack``)."""
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def stack(stack_home):
    """Settings of the session-wide private local stack; env vars point at it meanwhile."""
    settings, dog = _start(stack_home, timeout=180)
    mp = pytest.MonkeyPatch()
    try:
        for key in list(os.environ):
            if key.startswith("STREAMLEARN_KAFKA_"):
                mp.delenv(key)
        mp.setenv("STREAMLEARN_KAFKA", settings.kafka)
        mp.setenv("STREAMLEARN_REDIS", settings.redis)
        yield settings
    finally:
        mp.undo()
        # keep data and logs (pytest's basetemp keeps the last few runs) for post-mortems
        _stop(stack_home, dog, purge=False)


@dataclass
class LocalStack:
    """An extra private stack from ``make_stack``: its home, settings and controls."""

    home: Path
    settings: "object"

    def status(self) -> dict:
        from streamlearn.devstack import stack as st
        return st.status(self.home)

    def restart_redis(self, *, kill: bool = False):
        from streamlearn.devstack import stack as st
        return st.restart_redis(self.home, kill=kill)

    def restart_kafka(self, *, kill: bool = False):
        from streamlearn.devstack import stack as st
        return st.restart_kafka(self.home, kill=kill)

    def down(self, *, purge: bool = False) -> bool:
        from streamlearn.devstack import stack as st
        return st.down(self.home, purge=purge)


@pytest.fixture
def make_stack(tmp_path_factory):
    """Factory: ``make_stack(redis_aof=True, redis_password=..., ...) -> LocalStack``."""
    started: list[tuple[Path, subprocess.Popen]] = []

    def make(**up_kwargs) -> LocalStack:
        home = tmp_path_factory.mktemp("xstack")
        settings, dog = _start(home, timeout=up_kwargs.pop("timeout", 180), **up_kwargs)
        started.append((home, dog))
        return LocalStack(home=home, settings=settings)

    yield make
    errors = []
    for home, dog in reversed(started):
        try:
            _stop(home, dog, purge=True)
        except Exception as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def redis_client(stack):
    client = stack.redis_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def unique_name(request) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60].strip("-.") or "t"
    return f"{base}-{uuid.uuid4().hex[:10]}"
