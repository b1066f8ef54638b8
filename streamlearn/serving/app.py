"""The prediction server's HTTP API (a Starlette ASGI app; uvicorn runs it).

====================================  ==================================================
``POST /v1/models/{job}:predict``     JSON ``{"instances": …}``, an ``np.save`` body or an
                                      Avro ``training_batch`` (serving/inputs.py) ->
                                      ``{"predictions": [...], "model_version": V}``
``GET /v1/models/{job}``              version, algorithm, params, lineage, gate status
``GET /v1/models``                    the job this server serves
``GET /healthz`` / ``GET /readyz``    alive / a model is loaded (503 until then)
``GET /metrics``                      Prometheus text format
====================================  ==================================================

Every refusal is ``{"error": "<one line>"}`` with 400 (bad input), 404 (another job), 413
(body over ``max_body_bytes``), 415 (content type) or 503 (no model yet); an unexpected
exception answers 500 for that request only.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from streamlearn.serving.batching import MicroBatcher
from streamlearn.serving.canary import Canary, Route
from streamlearn.serving.inputs import BadRequest, parse_body
from streamlearn.serving.metrics import ServeMetrics
from streamlearn.serving.slot import ModelSlot, gate_status

__all__ = ["BatchPolicy", "create_app"]

log = logging.getLogger("streamlearn.serving")


@dataclass(frozen=True)
class BatchPolicy:
    """How requests are gathered into model calls, and how large one may be."""

    max_batch: int = 64  # examples per model call (a larger request is one call of its own)
    max_wait_ms: float = 2.0  # the longest a batch waits for requests already on their way
    max_body_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.max_body_bytes < 1:
            raise ValueError("max_batch and max_body_bytes must be >= 1 and max_wait_ms >= 0")


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def create_app(job: str, slot: ModelSlot, policy: BatchPolicy = BatchPolicy(), canary: Canary | None = None,
               follower: Any = None, mode: str = "follow", metrics: ServeMetrics | None = None) -> Starlette:
    """The ASGI app serving ``job``'s model from ``slot``. ``follower``: the
    :class:`~streamlearn.serving.slot.SnapshotFollower` whose failure makes ``/healthz`` 503;
    ``metrics``: the registry the canary counts into (a new one when None)."""
    metrics = metrics or ServeMetrics(policy.max_batch)
    batcher = MicroBatcher(policy.max_batch, policy.max_wait_ms / 1000.0,
                           on_batch=lambda rows, requests: (metrics.batch_rows.observe(rows),
                                                            metrics.batch_requests.observe(requests)),
                           on_compared=canary.record if canary is not None else None)

    def on_change(served, swapped: bool) -> None:
        metrics.version.set(served.version)
        if swapped:
            metrics.swaps.inc()

    slot.on_change(on_change)
    if slot.current is not None:
        metrics.version.set(slot.current.version)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > policy.max_body_bytes:
            raise BadRequest(f"body of {declared} bytes is over the limit of {policy.max_body_bytes}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > policy.max_body_bytes:
                raise BadRequest(f"body is over the limit of {policy.max_body_bytes} bytes", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        response = await _predict(request)
        metrics.requests.labels(str(response.status_code)).inc()
        if response.status_code == 200:
            metrics.latency.observe(time.perf_counter() - t0)
        return response

    def _served(request: Request):
        """(the model now served, None) or (None, the error response: another job, no model yet)."""
        if request.path_params["name"] != job:
            return None, _error(f"this server serves job {job!r}, not {request.path_params['name']!r}", 404)
        served = slot.current  # read once: a swap may land meanwhile
        if served is None:
            return None, _error(f"no model of job {job!r} is loaded yet", 503)
        return served, None

    async def _predict(request: Request) -> Response:
        served, refused = _served(request)
        if refused is not None:
            return refused
        try:
            with batcher.arriving():
                X = parse_body(await read_body(request), request.headers.get("content-type", ""), served.width)
        except BadRequest as exc:
            return _error(str(exc), exc.status)
        route = canary.route(served) if canary is not None else Route(served)
        try:
            records = await batcher.predict(route, X)
        except Exception as exc:  # the model raised on these rows: this request fails, nothing else
            log.exception("serving: version %d failed on a batch", route.serve.version)
            return _error(f"internal error: {type(exc).__name__}: {exc}"[:300], 500)
        metrics.rows.inc(len(records))
        return JSONResponse({"predictions": records, "model_version": route.serve.version},
                            headers={"x-model-version": str(route.serve.version)})

    async def info(request: Request) -> Response:
        served, refused = _served(request)
        if refused is not None:
            return refused
        md = served.metadata
        body = {
            "job": job, "version": served.version, "algorithm": md.get("algorithm"), "params": md.get("params"),
            "n_features": served.width, "mode": mode, "created_at": md.get("created_at"),
            "lineage": {"parent": md.get("parent"), "topic": md.get("topic"),
                        "records_applied": md.get("records_applied"), "final": md.get("final")},
            "gate": gate_status(md), "swaps": slot.swaps, "gate_rejections": slot.gate_rejections,
            "candidate": canary.describe() if canary is not None else None,
        }
        return JSONResponse(body)

    async def models(request: Request) -> Response:
        return JSONResponse({"models": [job]})

    async def healthz(request: Request) -> Response:
        if follower is not None and follower.error is not None:
            return _error(f"the snapshot subscriber stopped: {follower.error.__cause__ or follower.error}", 503)
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        served = slot.current
        if served is None:
            return _error(f"no model of job {job!r} is loaded yet", 503)
        return JSONResponse({"status": "ready", "version": served.version})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("serving: %s %s failed", request.method, request.url.path)
        return _error(f"internal error: {type(exc).__name__}: {exc}"[:300], 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(routes=[
        HttpRoute("/v1/models/{name}:predict", predict, methods=["POST"]),
        HttpRoute("/v1/models/{name}", info, methods=["GET"]),
        HttpRoute("/v1/models", models, methods=["GET"]),
        HttpRoute("/healthz", healthz, methods=["GET"]),
        HttpRoute("/readyz", readyz, methods=["GET"]),
        HttpRoute("/metrics", prometheus, methods=["GET"]),
    ], exception_handlers={Exception: server_error}, lifespan=lifespan)
    app.state.metrics = metrics
    app.state.batcher = batcher
    return app
