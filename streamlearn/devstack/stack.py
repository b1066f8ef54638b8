"""The local stack: one Apache Kafka 4.x broker (KRaft, single node) and one Redis.

Used by ``streamlearn stack up|down|status|fetch|restart-kafka|restart-redis`` and by the
integration-test fixtures. Both listen on free ports on 127.0.0.1 (never 9092/6379 by
assumption), run in their own session (they outlive the command that started them) and log to
files in the stack home. By concern: :mod:`~streamlearn.devstack.jars` (Kafka's jars from Maven
Central), :mod:`~streamlearn.devstack.kafka` (the broker's config and start),
:mod:`~streamlearn.devstack.redis_server` (Redis'), :mod:`~streamlearn.devstack.procs` (process
supervision), :mod:`~streamlearn.devstack.state` (the home and its state file).
"""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Callable

from streamlearn.config import Settings, mask_url
from streamlearn.devstack.jars import KAFKA_VERSION, check_prerequisites, ensure_kafka
from streamlearn.devstack.kafka import launch_kafka, prepare_kafka, wait_kafka
from streamlearn.devstack.procs import STOP_TIMEOUT_S, alive, free_ports, listening, log_tail, port_free, stop_pid
from streamlearn.devstack.redis_cluster import kill_master, launch_cluster, prepare_cluster, reshard, wait_cluster
from streamlearn.devstack.redis_server import BAD_PW_CHARS, launch_redis, prepare_redis, wait_redis
from streamlearn.devstack.state import (
    KAFKA_MARKER, REDIS_MARKER, StackError, flock, read_state, redis_alive, redis_pids, require_state, resolve_home,
    state_path, write_state,
)

__all__ = ["KAFKA_VERSION", "StackError", "check_prerequisites", "ensure_kafka", "up", "down", "status",
           "restart_kafka", "restart_redis", "stop_kafka", "start_kafka", "stop_redis", "start_redis",
           "fail_over_redis", "reshard_redis"]

START_TIMEOUT_S = 120.0


def _bind_failed(log: Path) -> bool:
    tail = log_tail(log, 200)
    return "Address already in use" in tail or "BindException" in tail


def up(
    home: Path | str | None = None,
    *,
    redis_password: str | None = None,
    redis_user: str | None = None,
    redis_aof: bool | None = None,
    redis_appendfsync: str | None = None,
    redis_cluster: int = 0,
    redis_replicas: int = 0,
    redis_maxmemory: str | None = None,
    timeout: float = START_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
) -> Settings:
    """Start the local stack in ``home`` (idempotent) and return its :class:`Settings`.

    ``redis_password`` (with optional ``redis_user``: an ACL user, the default user is then
    disabled) protects Redis; ``redis_aof`` turns on the append-only file (``appendfsync``
    defaults to ``always`` with AOF, so a SIGKILLed Redis loses nothing acknowledged).
    Already running → its settings are returned; asking for different Redis options than
    the running stack has raises :class:`StackError`. ``redis_cluster`` = N > 0 starts a
    Redis Cluster of N masters with ``redis_replicas`` replicas each (and ``redis_maxmemory``
    per node, e.g. ``"64mb"``) instead of one server (:mod:`~streamlearn.devstack.redis_cluster`). Raises :class:`StackError` (with the
    log tail) if a component does not come up within ``timeout`` seconds.
    """
    h = resolve_home(home)
    if redis_password is not None:
        if not redis_password or BAD_PW_CHARS & set(redis_password):
            raise StackError("redis_password must be non-empty, without whitespace, quotes, "
                             "backslashes or '#'")
    if redis_user is not None and (not redis_user or BAD_PW_CHARS & set(redis_user)):
        raise StackError("redis_user must be non-empty, without whitespace or quotes")
    if redis_user is not None and redis_password is None:
        raise StackError("redis_user needs a redis_password")
    if redis_appendfsync not in (None, "always", "everysec", "no"):
        raise StackError("redis_appendfsync must be one of always, everysec, no")

    problems = check_prerequisites()
    if problems:
        raise StackError("cannot start the local stack: " + "; ".join(problems))

    h.mkdir(parents=True, exist_ok=True)
    with flock(h / ".lock"):
        state = read_state(h)
        if state is not None:
            kalive = alive(state["kafka"].get("pid"), KAFKA_MARKER)
            ralive = redis_alive(state["redis"])
            if kalive and ralive:
                _check_same_options(state, redis_password, redis_user, redis_aof)
                return Settings.of_stack(state)
            # partially/fully dead stack: stop what is left, start again below (same data)
            stop_pid(state["kafka"].get("pid"), KAFKA_MARKER)
            _stop_redis_pids(state["redis"])
            prev = state
        else:
            prev = None

        libs = ensure_kafka(progress)
        aof = bool(redis_aof) if redis_aof is not None else bool(prev and prev["redis"]["aof"])
        fsync = redis_appendfsync or ("always" if aof else "everysec")
        password = redis_password if redis_password is not None else (
            prev["redis"].get("password") if prev else None)
        user = redis_user if redis_user is not None else (prev["redis"].get("user") if prev else None)

        t0 = time.monotonic()
        for attempt in range(3):
            if prev and attempt == 0 and "cluster" not in prev["redis"] and all(port_free(p) for p in (
                    prev["kafka"]["port"], prev["kafka"]["controller_port"], prev["redis"]["port"])):
                kport, cport, rport = (prev["kafka"]["port"], prev["kafka"]["controller_port"],
                                       prev["redis"]["port"])
            else:
                kport, cport, rport = free_ports(3)
            if progress:
                where = (f"a Redis Cluster of {redis_cluster} masters" if redis_cluster
                         else f"Redis on 127.0.0.1:{rport}")
                progress(f"starting Kafka {KAFKA_VERSION} on 127.0.0.1:{kport} and {where} (home {h})…")
            kstate = prepare_kafka(h, kport, cport, libs)
            if redis_cluster:
                rstate = prepare_cluster(h, redis_cluster, redis_replicas, aof=aof, appendfsync=fsync,
                                         password=password, user=user, maxmemory=redis_maxmemory)
            else:
                rstate = prepare_redis(h, rport, aof=aof, appendfsync=fsync, password=password,
                                        user=user)
            state = {"version": 1, "home": str(h), "started_at": time.time(),
                     "kafka": kstate, "redis": rstate,
                     "settings": {"kafka": f"127.0.0.1:{kport}", "redis": rstate["url"]}}
            kstate["pid"] = launch_kafka(h, kstate)
            rstate["pid"] = launch_cluster(rstate) if redis_cluster else launch_redis(h, rstate)
            write_state(h, state)
            deadline = time.monotonic() + timeout
            try:
                if redis_cluster:
                    wait_cluster(rstate, deadline)
                else:
                    wait_redis(rstate, rstate["pid"], deadline)
                wait_kafka(kstate, kstate["pid"], deadline)
            except StackError:
                retry = attempt < 2 and (_bind_failed(Path(kstate["log"]))
                                         or _bind_failed(Path(rstate["log"])))
                stop_pid(kstate["pid"], KAFKA_MARKER, timeout=10)
                _stop_redis_pids(rstate, timeout=10)
                if retry:
                    continue
                with contextlib.suppress(OSError):
                    state_path(h).unlink()
                raise
            state["startup_seconds"] = round(time.monotonic() - t0, 2)
            write_state(h, state)
            return Settings.of_stack(state)
    raise StackError("unreachable")  # pragma: no cover


def _stop_redis_pids(rstate: dict, *, kill: bool = False, timeout: float = STOP_TIMEOUT_S) -> None:
    for pid in redis_pids(rstate):
        stop_pid(pid, REDIS_MARKER, kill=kill, timeout=timeout)


def _check_same_options(state: dict, password, user, aof) -> None:
    r = state["redis"]
    diffs = []
    if password is not None and password != r.get("password"):
        diffs.append("redis_password")
    if user is not None and user != r.get("user"):
        diffs.append("redis_user")
    if aof is not None and bool(aof) != bool(r.get("aof")):
        diffs.append(f"redis_aof (running: {bool(r.get('aof'))})")
    if diffs:
        raise StackError(f"the local stack in {state['home']} is already running with different "
                         f"{', '.join(diffs)}; run `streamlearn stack down` first")


def down(home: Path | str | None = None, *, purge: bool = False,
         timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local stack (SIGTERM, SIGKILL after ``timeout``) and remove its state file.

    ``purge`` also deletes the Kafka and Redis data (and logs). Returns whether anything was
    running.
    """
    h = resolve_home(home)
    if not h.exists():
        return False
    with flock(h / ".lock"):
        state = read_state(h)
        was = False
        if state is not None:
            was = alive(state["kafka"].get("pid"), KAFKA_MARKER) or redis_alive(state["redis"])
            _stop_redis_pids(state["redis"], timeout=timeout)
            stop_pid(state["kafka"].get("pid"), KAFKA_MARKER, timeout=timeout)
            # the opt-in schema registry (schema_registry_server), when `up --schema-registry` started one
            stop_pid(state.get("schema_registry", {}).get("pid"), "quarkus-run.jar", timeout=timeout)
            with contextlib.suppress(FileNotFoundError):
                state_path(h).unlink()
        if purge:
            for sub in ("kafka", "redis"):
                shutil.rmtree(h / sub, ignore_errors=True)
    if purge:
        with contextlib.suppress(OSError):
            (h / ".lock").unlink()
            h.rmdir()
    return was


def status(home: Path | str | None = None) -> dict:
    """What runs in ``home``: ``{"home", "running", "kafka": {...}, "redis": {...}, "settings"}``.

    ``settings`` is masked (no password); ``running`` is true when both processes are alive.
    """
    h = resolve_home(home)
    state = read_state(h)
    if state is None:
        return {"home": str(h), "running": False, "state_file": None,
                "kafka": {"running": False}, "redis": {"running": False}, "settings": None}
    k, r = state["kafka"], state["redis"]
    kalive = alive(k.get("pid"), KAFKA_MARKER)
    ralive = redis_alive(r)
    return {
        "home": str(h),
        "state_file": str(state_path(h)),
        "running": kalive and ralive,
        "started_at": state.get("started_at"),
        "startup_seconds": state.get("startup_seconds"),
        "kafka": {"running": kalive, "listening": kalive and listening(k["port"]),
                  "pid": k.get("pid"), "port": k["port"], "controller_port": k["controller_port"],
                  "bootstrap": state["settings"]["kafka"], "version": KAFKA_VERSION,
                  "cluster_id": k.get("cluster_id"), "log": k["log"], "data": k["data"]},
        "redis": {"running": ralive, "listening": ralive and listening(r["port"]),
                  "pid": r.get("pid"), "port": r["port"], "url": mask_url(r["url"]),
                  "aof": r["aof"], "appendfsync": r.get("appendfsync"),
                  "auth": r.get("password") is not None, "user": r.get("user"),
                  "log": r["log"], "data": r["data"],
                  **({"cluster": {"masters": r["cluster"]["masters"], "replicas": r["cluster"]["replicas"],
                                  "nodes": [{"port": n["port"], "pid": n["pid"], "running": alive(n["pid"], REDIS_MARKER)}
                                            for n in r["cluster"]["nodes"]]}} if "cluster" in r else {})},
        "settings": Settings.of_stack(state).masked(),
    }


def stop_kafka(home: Path | str | None = None, *, kill: bool = False,
               timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop only the broker (SIGTERM, or SIGKILL with ``kill``: a crash); keeps port and data."""
    _stop_service(home, "kafka", KAFKA_MARKER, kill, timeout)


def start_kafka(home: Path | str | None = None, *, timeout: float = START_TIMEOUT_S) -> Settings:
    """(Re)start the broker of an existing stack on its old port with its old data."""
    return _start_service(home, "kafka", KAFKA_MARKER, launch_kafka, wait_kafka, timeout)


def stop_redis(home: Path | str | None = None, *, kill: bool = False,
               timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop only Redis (SIGTERM, or SIGKILL with ``kill``); keeps port, config and data."""
    _stop_service(home, "redis", REDIS_MARKER, kill, timeout)


def start_redis(home: Path | str | None = None, *, timeout: float = START_TIMEOUT_S) -> Settings:
    """(Re)start Redis of an existing stack on its old port with its old data (AOF if on)."""
    return _start_service(home, "redis", REDIS_MARKER, launch_redis, wait_redis, timeout)


def _stop_service(home: Path | str | None, name: str, marker: str, kill: bool, timeout: float) -> None:
    h = resolve_home(home)
    with flock(h / ".lock"):
        state = require_state(h)
        stop_pid(state[name].get("pid"), marker, kill=kill, timeout=timeout)


def _start_service(home: Path | str | None, name: str, marker: str, launch: Callable, wait: Callable,
                   timeout: float) -> Settings:
    """Launch service ``name`` of the stack in ``home`` on its recorded port unless it runs."""
    h = resolve_home(home)
    with flock(h / ".lock"):
        state = require_state(h)
        svc = state[name]
        if not alive(svc.get("pid"), marker):
            svc["pid"] = launch(h, svc)
            write_state(h, state)
            _wait_port_and(lambda d: wait(svc, svc["pid"], d), timeout)
        return Settings.of_stack(state)


def _wait_port_and(wait: Callable[[float], None], timeout: float) -> None:
    wait(time.monotonic() + timeout)


def restart_kafka(home: Path | str | None = None, *, kill: bool = False,
                  timeout: float = START_TIMEOUT_S) -> Settings:
    """Stop (gracefully, or SIGKILL with ``kill``) and start the broker: same port, same data."""
    stop_kafka(home, kill=kill)
    return start_kafka(home, timeout=timeout)


def restart_redis(home: Path | str | None = None, *, kill: bool = False,
                  timeout: float = START_TIMEOUT_S) -> Settings:
    """Stop (gracefully, or SIGKILL with ``kill``) and start Redis: same port, same data.

    Data survives only what Redis persisted: with ``up(redis_aof=True)`` everything
    acknowledged; without AOF a restart starts empty (no RDB snapshots are configured).
    """
    stop_redis(home, kill=kill)
    return start_redis(home, timeout=timeout)


def fail_over_redis(home: Path | str | None, slot: int) -> int:
    """Local Redis Cluster: SIGKILL the master of ``slot``, wait for its replica's promotion,
    restart the killed node (it rejoins as a replica). Returns the killed node's port."""
    h = resolve_home(home)
    with flock(h / ".lock"):
        state = require_state(h)
        try:
            return kill_master(state["redis"], slot)
        finally:
            write_state(h, state)  # the restarted node's pid, even if it failed to sync in time


def reshard_redis(home: Path | str | None, slot: int) -> tuple[int, int]:
    """Local Redis Cluster: move ``slot`` to another master (``redis-cli --cluster reshard``)."""
    h = resolve_home(home)
    with flock(h / ".lock"):
        return reshard(require_state(h)["redis"], slot)
