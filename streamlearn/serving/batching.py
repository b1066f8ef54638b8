"""Micro-batching: concurrent prediction requests are answered by one model call.

Requests queue on the event loop; one batching task takes them as a batch of up to
``max_rows`` examples (a request is never split, so a batch may end above it) and runs the
model on a single worker thread while the next batch gathers. A batch waits up to
``max_wait_s`` for more requests, but only while more are known to be on their way (read
but not yet queued): a lone client pays no waiting time, and under concurrency the batch
fills. Each request keeps the :class:`~streamlearn.serving.canary.Route` (the model) it
took when it arrived; one batch holds one model call per route, so a swap in the middle
never moves a request to another model.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from streamlearn.batch import Batch, SparseRows
from streamlearn.runtime.predict import _concat
from streamlearn.serving.canary import Route

__all__ = ["MicroBatcher", "Pending"]

#: (route, features) -> (records answered, records of the compared model or None)
Predictor = Callable[[Route, "np.ndarray | SparseRows"], "tuple[list[dict[str, Any]], list[dict[str, Any]] | None]"]


@dataclass
class Pending:
    route: Route
    X: "np.ndarray | SparseRows"
    future: asyncio.Future
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = len(self.X) if isinstance(self.X, SparseRows) else int(self.X.shape[0])


def predict_route(route: Route, X: "np.ndarray | SparseRows"):
    """What the batcher runs by default: the route's model, and its comparison model."""
    batch = Batch(X)
    answered = route.serve.model.predict_records(batch)
    return answered, (route.compare.model.predict_records(batch) if route.compare is not None else None)


class MicroBatcher:
    def __init__(self, max_rows: int, max_wait_s: float, predictor: Predictor = predict_route,
                 on_batch: Callable[[int, int], None] | None = None,
                 on_compared: Callable[[list, list], None] | None = None):
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._predictor = predictor
        self._on_batch = on_batch or (lambda rows, requests: None)
        self._on_compared = on_compared or (lambda answered, compared: None)
        self._pending: collections.deque[Pending] = collections.deque()
        self._pending_rows = 0
        self._arriving = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="serving-model")

    # -- the request side
    def arriving(self) -> "_Arrival":
        """``with batcher.arriving():`` around reading a request's body: the batcher waits
        for requests announced this way (up to ``max_wait_s``) before closing a batch."""
        return _Arrival(self)

    async def predict(self, route: Route, X: "np.ndarray | SparseRows") -> list[dict[str, Any]]:
        """The records of ``X``'s rows, predicted by ``route`` in some micro-batch."""
        if self._task is None:
            raise RuntimeError("the batcher is not started")
        item = Pending(route, X, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._pending_rows += item.rows
        self._wake.set()
        return await item.future

    # -- lifetime (on the server's event loop)
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    # -- the batching task
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = loop.time() + self.max_wait_s
            while self._pending_rows < self.max_rows and self._arriving > 0:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            items = self._take()
            self._on_batch(sum(i.rows for i in items), len(items))
            try:
                results = await loop.run_in_executor(self._executor, self._run, items)
            except Exception as exc:  # a model that raises fails its requests, not the server
                results = [exc] * len(items)
            for item, result in zip(items, results):
                if item.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def _take(self) -> list[Pending]:
        items = [self._pending.popleft()]
        rows = items[0].rows
        while self._pending and rows + self._pending[0].rows <= self.max_rows:
            items.append(self._pending.popleft())
            rows += items[-1].rows
        self._pending_rows -= rows
        return items

    def _run(self, items: list[Pending]) -> list:
        """On the model thread: one model call per route of the batch; a result (records) or
        an exception per item."""
        by_route: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(items):
            by_route.setdefault((id(item.route.serve), id(item.route.compare)), []).append(i)
        results: list = [None] * len(items)
        for positions in by_route.values():
            group = [items[i] for i in positions]
            sparse = [isinstance(g.X, SparseRows) for g in group]
            for kind in set(sparse):  # dense and sparse requests are concatenated separately
                part = [g for g, s in zip(group, sparse) if s == kind]
                where = [p for p, s in zip(positions, sparse) if s == kind]
                try:
                    answered, compared = self._predictor(part[0].route, _concat([g.X for g in part]))
                except Exception as exc:
                    for p in where:
                        results[p] = exc
                    continue
                if compared is not None:
                    self._on_compared(answered, compared)
                start = 0
                for p, g in zip(where, part):
                    results[p] = answered[start:start + g.rows]
                    start += g.rows
        return results


class _Arrival:
    def __init__(self, batcher: MicroBatcher):
        self._batcher = batcher

    def __enter__(self) -> None:
        self._batcher._arriving += 1

    def __exit__(self, *exc: Any) -> None:
        self._batcher._arriving -= 1
        if self._batcher._wake is not None:
            self._batcher._wake.set()
