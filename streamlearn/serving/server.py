"""``streamlearn serve JOB``: load or follow a job's model and serve it over HTTP (uvicorn).

The socket is bound before anything else, so ``--port 0`` works: the first line on stdout
is ``serving job J at http://HOST:PORT/v1/models/J (…)`` with the port actually bound
(:class:`~streamlearn.serving.process.ServerProcess` reads it). SIGTERM / SIGINT stop the
server gracefully: requests in flight are answered first.
"""
from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any

from streamlearn.config import Settings
from streamlearn.errors import UserError
from streamlearn.runtime.jobs import JobError, load_spec
from streamlearn.serving.app import BatchPolicy, create_app
from streamlearn.serving.canary import Canary
from streamlearn.serving.metrics import ServeMetrics
from streamlearn.serving.slot import ModelSlot, SnapshotFollower, load_version
from streamlearn.snapshots.signing import require_verifier
from streamlearn.snapshots.store import ModelStore
from streamlearn.snapshots.subscriber import ModelSubscriber

__all__ = ["ServeOptions", "serve"]


@dataclass(frozen=True)
class ServeOptions:
    """Where to listen, which model (``version``: pinned; None: follow the snapshot topic),
    the batching policy and an optional candidate (``canary``: the share of requests)."""

    host: str = "127.0.0.1"
    port: int = 8080
    version: int | None = None
    policy: BatchPolicy = BatchPolicy()
    candidate: int | None = None
    canary: float = 0.1
    shadow: bool = False


def serve(settings: Settings, job: str, options: ServeOptions) -> None:
    """Serve ``job`` until SIGTERM / SIGINT."""
    import uvicorn

    client = settings.redis_client()
    spec = load_spec(client, job)  # an unknown job is a one-line user error, before binding anything
    require_verifier(job)
    slot = ModelSlot()
    follower = None
    if options.version is not None:
        slot.offer(load_version(client, job, options.version))
        if slot.current is None:
            raise JobError(f"version {options.version} of job {job!r} did not pass the gate")
    metrics = ServeMetrics(options.policy.max_batch)
    canary = None
    if options.candidate is not None:
        canary = Canary(load_version(client, job, options.candidate), options.canary, options.shadow, metrics)
    sock = _listen(options.host, options.port)
    host, port = sock.getsockname()[:2]
    if options.version is None:
        follower = SnapshotFollower(slot, ModelSubscriber(job, settings.kafka, settings.kafka_conf,
                                                          from_beginning=True, topic=spec.snapshot_topic,
                                                          store=ModelStore(client)))
    app = create_app(job, slot, options.policy, canary, follower,
                     mode="follow" if options.version is None else f"pinned to version {options.version}",
                     metrics=metrics)
    mode = "following its snapshots" if follower else f"version {options.version}"
    print(f"serving job {job} at http://{_url_host(host)}:{port}/v1/models/{job} ({mode})", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    try:
        _graceful_server()(config).run(sockets=[sock])
    finally:
        if follower is not None:
            follower.close()
        sock.close()
        print(f"stopped serving job {job}", file=sys.stderr, flush=True)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Made with ``proto=IPPROTO_TCP`` (``socket.create_server``
    leaves it 0): asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP,
    and without it a keep-alive connection waits out the client's delayed ACK (~45 ms a
    request instead of ~1 ms on loopback)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class ServeError(UserError):
    """The server cannot start as asked (the port is taken, the host is not this machine's)."""


def _graceful_server():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully, so the process
        would end by the signal (status -15) without closing the snapshot subscriber: this
        one only asks uvicorn to exit and returns."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    return Server


def _url_host(host: Any) -> str:
    return f"[{host}]" if ":" in str(host) else str(host)
