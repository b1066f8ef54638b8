"""The local stack's home and state file: where it runs and what it started.

``$STREAMLEARN_HOME`` (default ``~/.local/state/streamlearn/stack``) holds::

    <home>/state.json            pids, ports, settings (mode 0600: may hold the Redis password)
    <home>/kafka/{server.properties,log4j2.properties,kafka.log,data/}
    <home>/redis/{redis.conf,redis.log,data/}

The state file is also how clients find a running local stack
(:func:`streamlearn.config.local_stack_settings`), so this module and
:mod:`~streamlearn.devstack.procs` import nothing above the standard library but the
error types.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator, Mapping

from streamlearn.devstack.procs import alive
from streamlearn.errors import UserError

STATE_FILE = "state.json"
#: what the command lines of the state file's pids show while they are the stack's processes
KAFKA_MARKER = "kafka.Kafka"
REDIS_MARKER = "redis-server"


class StackError(UserError, RuntimeError):
    """The local stack could not be started/stopped (message includes the relevant log tail)."""


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """``$STREAMLEARN_HOME``, else ``$XDG_STATE_HOME/streamlearn/stack`` (``~/.local/state/…``)."""
    env = os.environ if env is None else env
    if env.get("STREAMLEARN_HOME"):
        return Path(env["STREAMLEARN_HOME"]).expanduser()
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "streamlearn" / "stack"


def resolve_home(home: Path | str | None, env: Mapping[str, str] | None = None) -> Path:
    return (Path(home).expanduser() if home is not None else default_home(env)).absolute()


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$STREAMLEARN_CACHE`` (default ``~/.cache/streamlearn``); Kafka lives in ``kafka-<ver>/``."""
    env = os.environ if env is None else env
    root = env.get("STREAMLEARN_CACHE") or str(Path.home() / ".cache" / "streamlearn")
    return Path(root).expanduser().absolute()


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def state_path(home: Path) -> Path:
    return home / STATE_FILE


def read_state(home: Path) -> dict | None:
    try:
        return json.loads(state_path(home).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(f"unreadable stack state file {state_path(home)}: {exc}") from None


def write_state(home: Path, state: dict) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".{STATE_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh, indent=2, sort_keys=True)
    os.replace(tmp, state_path(home))


def require_state(h: Path) -> dict:
    state = read_state(h)
    if state is None:
        raise StackError(f"no local stack in {h}: run `streamlearn stack up` first")
    return state


def redis_pids(rstate: dict) -> list[int | None]:
    """The pids of the stack's Redis: one server, or every node of a local Redis Cluster."""
    if "cluster" in rstate:
        return [node.get("pid") for node in rstate["cluster"]["nodes"]]
    return [rstate.get("pid")]


def redis_alive(rstate: dict) -> bool:
    """Whether the stack's Redis runs (a cluster: any of its nodes; a failover keeps it up)."""
    return any(alive(pid, REDIS_MARKER) for pid in redis_pids(rstate))


def both_alive(state: dict) -> bool:
    return alive(state["kafka"].get("pid"), KAFKA_MARKER) and redis_alive(state["redis"])


def live_state(home: Path | str | None = None, env: Mapping[str, str] | None = None) -> dict | None:
    """The state of the local stack in ``home`` when both of its processes run, else None."""
    try:
        state = read_state(resolve_home(home, env))
    except StackError:
        return None
    return state if state is not None and both_alive(state) else None


def stale_hint(home: Path | str | None = None, env: Mapping[str, str] | None = None) -> str:
    """A sentence for error messages when a state file exists but the stack is not running."""
    h = resolve_home(home, env)
    if state_path(h).exists():
        return f" (the local stack in {h} is not running; `streamlearn stack up` restarts it)"
    return ""
