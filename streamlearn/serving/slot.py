"""The model a server answers with, and where new versions come from.

:class:`ModelSlot` holds one immutable :class:`Served` (model, version, metadata) and
replaces it by a single assignment, so a request that took ``slot.current`` keeps that
model to the end however many swaps happen meanwhile. Every candidate version passes the
slot's *gate*, a predicate on the decoded snapshot: the default reads the snapshot
metadata's ``gate`` entry (a validation gate records its decision there) and refuses only a
snapshot it marks as failed; a stricter gate is any ``Callable[[Served], bool]``.

Versions come from a :class:`~streamlearn.snapshots.subscriber.ModelSubscriber`
(:class:`SnapshotFollower`: every newer verified snapshot on the topic) or from the model
store (:func:`load_version`: one pinned version).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, NamedTuple

from streamlearn.monitoring.gate import REJECTED, status_of
from streamlearn.runtime.predict import load_job_model
from streamlearn.snapshots.store import ModelStore

__all__ = ["Served", "ModelSlot", "SnapshotFollower", "gate_status", "metadata_gate", "load_version"]

log = logging.getLogger("streamlearn.serving")


class Served(NamedTuple):
    model: Any
    version: int
    metadata: dict[str, Any]

    @property
    def width(self) -> int | None:
        """The input width the model takes (None: not recorded; then any width is passed on)."""
        attrs = getattr(self.model, "attrs", None) or {}
        params = self.metadata.get("params") or {}
        for value in (attrs.get("n_features"), params.get("n_features"), params.get("dim")):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None


Gate = Callable[[Served], bool]

def gate_status(metadata: dict[str, Any]) -> str:
    """The validation gate's decision on the snapshot (``blessed``, ``rejected``, ``forced``),
    or ``"ungated"`` for a snapshot written before the gate existed."""
    return status_of(metadata) or "ungated"


def metadata_gate(served: Served) -> bool:
    """The default gate: serve every verified snapshot except one its metadata marks failed."""
    return gate_status(served.metadata) != REJECTED


class ModelSlot:
    """The served model; ``offer`` swaps in a newer version that passes the gate."""

    def __init__(self, gate: Gate = metadata_gate):
        self._gate = gate
        self._current: Served | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Served, bool], None]] = []
        self.swaps = 0  # replacements of a served model (the first load is not one)
        self.gate_rejections = 0

    @property
    def current(self) -> Served | None:
        return self._current

    def on_change(self, listener: Callable[[Served, bool], None]) -> None:
        """``listener(served, swapped)`` after every change (``swapped``: a model was replaced)."""
        self._listeners.append(listener)

    def offer(self, served: Served) -> bool:
        """Serve ``served`` if it is newer than the current model and passes the gate."""
        if not self._gate(served):
            self.gate_rejections += 1
            log.warning("serving: version %d of %s did not pass the gate (%s)", served.version,
                        served.metadata.get("job"), gate_status(served.metadata))
            return False
        with self._lock:
            previous = self._current
            if previous is not None and served.version <= previous.version:
                return False
            self._current = served
            if previous is not None:
                self.swaps += 1
        log.info("serving: now version %d of %s", served.version, served.metadata.get("job"))
        for listener in self._listeners:
            listener(served, previous is not None)
        return True


class SnapshotFollower:
    """Offers each newer model a subscriber loads to the slot, from a background thread.
    ``error`` is set when the subscriber stopped (the server then reports unhealthy)."""

    def __init__(self, slot: ModelSlot, subscriber: Any):
        self.slot = slot
        self.subscriber = subscriber
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = 0
        while not self._stop.is_set():
            try:
                self.subscriber.wait_for(version=seen + 1, timeout=1.0)
            except TimeoutError:
                continue
            except RuntimeError as exc:  # the subscriber's thread died (a fatal consumer error)
                self.error = exc
                log.error("serving: the snapshot subscriber stopped: %s", exc.__cause__ or exc)
                return
            cur = self.subscriber.current
            seen = cur.version
            self.slot.offer(Served(cur.model, cur.version, cur.metadata))

    def close(self) -> None:
        self._stop.set()
        self.subscriber.close()
        self._thread.join(timeout=30)


def load_version(redis_client: Any, job: str, version: int) -> Served:
    """Version ``version`` of ``job`` from the model store, verified and loaded."""
    model = load_job_model(redis_client, job, version)
    return Served(model, version, ModelStore(redis_client).metadata(job, version))
