"""Follow a job's snapshots on Kafka and hot-swap to the newest model, in a background thread.

Every partition of the snapshot topic (:func:`~streamlearn.snapshots.publisher.snapshot_topic`)
is assigned manually (no consumer-group rebalances, no commits: each subscriber reads
independently; its group id starts with ``$STREAMLEARN_GROUP_PREFIX``, default
``streamlearn``, so one prefix ACL covers it). Messages of other jobs are skipped by key
before anything is decoded; each of this job's snapshots is decoded and verified (checksum,
signature: see :mod:`streamlearn.snapshots.signing`; signed metadata naming this job; a
version the model store holds, see :mod:`streamlearn.snapshots.verified`) and swapped in
only when its version is higher than the current one, so duplicates and out-of-order
deliveries never move the model backwards. The current (model, version, metadata) is one
immutable tuple replaced in a single assignment, so a reader never sees a mix of two.

A snapshot published in parts (:mod:`streamlearn.snapshots.parts`) is held part by part
until its manifest arrives, then assembled and verified as a whole. One with a part missing
(a subscriber that started mid-publish) or altered is read from the model store when the
subscriber has it, else rejected like any snapshot that fails verification.
"""
from __future__ import annotations

import copy
import logging
import os
import threading
import time
import uuid
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from streamlearn.config import kafka_logging
from streamlearn.snapshots.format import _FROM_ENV, decode_snapshot, load_model
from streamlearn.snapshots.parts import Manifest, PartialSnapshot, PartsBuffer, is_manifest
from streamlearn.snapshots.publisher import MAX_MESSAGE_BYTES, part_key, snapshot_topic
from streamlearn.snapshots.shadow import ShadowStats
from streamlearn.snapshots.signing import require_verifier
from streamlearn.snapshots.store import ModelStore, SnapshotNotFound
from streamlearn.snapshots.verified import check_streamed_version
from streamlearn.streams.access import RefusalWatch, refusal

__all__ = ["ModelSubscriber", "LoadedModel", "GROUP_PREFIX_ENV", "group_prefix"]

GROUP_PREFIX_ENV = "STREAMLEARN_GROUP_PREFIX"

log = logging.getLogger(__name__)

_FETCH_BYTES = MAX_MESSAGE_BYTES + (4 << 20)
_REFRESH_PARTITIONS_S = 10.0


def group_prefix() -> str:
    """What the group ids of subscribers and servers start with (``$STREAMLEARN_GROUP_PREFIX``)."""
    return os.environ.get(GROUP_PREFIX_ENV, "").strip() or "streamlearn"


class LoadedModel(NamedTuple):
    model: Any
    version: int
    metadata: dict[str, Any]


class ModelSubscriber:
    """The newest verified model of ``job``, kept current from the snapshot topic.

    ``from_beginning=True`` replays the topic (so the latest retained snapshot is loaded at
    start); ``False`` only follows snapshots published after the subscriber starts.

    ``shadow=True``: once a model is served, a newer snapshot becomes the ``candidate``
    instead of replacing it; :meth:`evaluate` answers with the served model and runs the
    candidate on the same inputs, :meth:`agreement` reports how often they agree, and
    :meth:`promote` makes the candidate the served model.

    ``key``/``trusted``: HMAC keys / trusted Ed25519 keys as for
    :func:`~streamlearn.snapshots.format.decode_snapshot` (default: the environment, and then
    ``STREAMLEARN_REQUIRE_SIGNED`` without a key refuses to start); ``topic``: the job's
    snapshot topic; ``store``: the model store, which must then hold every version taken."""

    def __init__(
        self,
        job: str,
        bootstrap: str,
        kafka_conf: dict[str, Any] | None = None,
        from_beginning: bool = True,
        *,
        key: bytes | str | list | None = _FROM_ENV,
        trusted: Any = _FROM_ENV,
        topic: str | None = None,
        store: ModelStore | None = None,
        poll_interval: float = 0.5,
        shadow: bool = False,
    ):
        if key is _FROM_ENV and trusted is _FROM_ENV:
            require_verifier(job)  # production: no key, no subscriber
        self.job = job
        self.topic = snapshot_topic(topic)
        self._job_key = job.encode("utf-8")
        self._part_prefix = part_key(job, 0)[:-1]
        self._parts = PartsBuffer()
        self._key, self._trusted, self._store = key, trusted, store
        self._poll_interval = poll_interval
        self._from_beginning = from_beginning
        self._current: LoadedModel | None = None
        self.shadow = shadow
        self._candidate: LoadedModel | None = None
        self._shadow = ShadowStats()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.rejected = 0  # snapshots of this job that failed verification
        self._refused = RefusalWatch(bootstrap)
        conf = {
            "bootstrap.servers": bootstrap,
            "group.id": f"{group_prefix()}-subscriber-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "fetch.max.bytes": _FETCH_BYTES,
            "max.partition.fetch.bytes": _FETCH_BYTES,
            # librdkafka sizes its zstd output buffer at 2x the compressed batch and gives up
            # (_BAD_COMPRESSION) when that exceeds receive.message.max.bytes: leave room.
            "receive.message.max.bytes": 4 * _FETCH_BYTES,
            "queued.max.messages.kbytes": 2 * _FETCH_BYTES // 1024,
            "topic.metadata.refresh.interval.ms": 5000,
            "error_cb": self._refused,  # rejected credentials or TLS: stop (wait_for raises it)
        }
        conf.update(kafka_conf or {})
        self._consumer = Consumer(kafka_logging(conf))
        self._assigned: set[int] = set()
        self._thread = threading.Thread(target=self._run, name=f"snapshot-subscriber-{job}", daemon=True)
        self._thread.start()

    # -- public view -----------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        """(model, version, metadata) of the newest verified snapshot, read consistently."""
        return self._current

    @property
    def model(self) -> Any:
        cur = self._current
        return cur.model if cur else None

    @property
    def version(self) -> int | None:
        cur = self._current
        return cur.version if cur else None

    @property
    def metadata(self) -> dict[str, Any] | None:
        cur = self._current
        return copy.deepcopy(cur.metadata) if cur else None

    @property
    def candidate(self) -> LoadedModel | None:
        """(shadow mode) the newer snapshot evaluated beside the served one, or None."""
        return self._candidate

    def evaluate(self, batch: Any) -> Any:
        """The served model's output for ``batch``; in shadow mode the candidate (if any)
        runs on the same inputs too, for :meth:`agreement` (its failures are counted, never raised)."""
        cur, cand, stats = self._current, self._candidate, self._shadow
        if cur is None:
            raise RuntimeError(f"no model of job {self.job!r} loaded yet")
        out = cur.model.evaluate(batch)
        if cand is not None:
            try:
                stats.observe(out, cand.model.evaluate(batch))
            except Exception as exc:
                stats.failed()
                log.warning("snapshot subscriber %s: candidate version %d failed in shadow: %s", self.job,
                            cand.version, exc)
        return out

    def agreement(self) -> dict[str, Any]:
        """(shadow mode) rows evaluated by both, the share that agreed, the mean absolute
        difference, and the two versions."""
        return self._shadow.report()

    def promote(self) -> int:
        """(shadow mode) serve the candidate from now on; returns its version."""
        with self._cond:
            cand = self._candidate
            if cand is None:
                raise RuntimeError(f"no candidate of job {self.job!r} to promote")
            self._current, self._candidate = cand, None
            self._shadow = ShadowStats(cand.version)
            self._cond.notify_all()
        return cand.version

    def wait_for(self, version: int | None = None, timeout: float = 30.0) -> Any:
        """Block until a model (of at least ``version``, when given) is loaded; return it.
        Raises :class:`TimeoutError`, or the error that stopped the background thread."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                cur = self._current
                if cur is not None and (version is None or cur.version >= version):
                    return cur.model
                if self._error is not None:
                    raise RuntimeError(f"snapshot subscriber for {self.job!r} stopped") from self._error
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    have = None if cur is None else cur.version
                    raise TimeoutError(f"no snapshot of job {self.job!r} >= version {version} within {timeout}s (have {have})")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> "ModelSubscriber":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- background thread -----------------------------------------------------------------
    def _assign_new_partitions(self) -> None:
        topic = self._consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
        if topic is None or topic.error is not None:
            return  # not created yet: nothing published so far
        new = sorted(set(topic.partitions) - self._assigned)
        if not new:
            return
        # Partitions that appear after start are read from their beginning: all they hold is new.
        start = OFFSET_BEGINNING if (self._from_beginning or self._assigned) else OFFSET_END
        self._consumer.incremental_assign([TopicPartition(self.topic, p, start) for p in new])
        self._assigned.update(new)

    def _run(self) -> None:
        try:
            last_refresh = float("-inf")
            last_error: str | None = None
            while not self._stop.is_set():
                self._refused.check()
                if time.monotonic() - last_refresh >= (_REFRESH_PARTITIONS_S if self._assigned else 1.0):
                    last_refresh = time.monotonic()
                    try:
                        self._assign_new_partitions()
                    except Exception as exc:  # broker briefly unavailable: retry later
                        log.warning("snapshot subscriber %s: cannot read topic metadata: %s", self.job, exc)
                if not self._assigned:
                    self._stop.wait(self._poll_interval)
                    continue
                msg = self._consumer.poll(self._poll_interval)
                if msg is None:
                    continue
                if msg.error() is not None:
                    refused = refusal(msg.error(), self._refused.servers, f"topic {self.topic}")
                    if refused is not None:
                        raise refused
                    if msg.error().fatal():
                        raise RuntimeError(f"fatal consumer error: {msg.error()}")
                    if str(msg.error()) != last_error:  # once per distinct error, not per poll
                        last_error = str(msg.error())
                        log.warning("snapshot subscriber %s: %s", self.job, last_error)
                    continue
                last_error = None
                if msg.key() == self._job_key:
                    self._consider(msg)
                elif (msg.key() or b"").startswith(self._part_prefix):
                    self._hold_part(msg)
        except BaseException as exc:  # surfaced by wait_for
            log.exception("snapshot subscriber %s stopped", self.job)
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            try:
                self._consumer.close()
            except Exception:
                pass

    def _newest(self) -> LoadedModel | None:
        return self._current if self._candidate is None else self._candidate

    def _hold_part(self, msg: Any) -> None:
        """Keep a part of a snapshot in parts (newer than the one served) until its manifest."""
        version, newest = _header_version(msg), self._newest()
        if version is not None and (newest is None or version > newest.version):
            self._parts.add(version, msg.key().decode("utf-8", "replace"), msg.value() or b"")

    def _assemble(self, manifest: Manifest) -> bytes:
        """The snapshot ``manifest`` names, from the parts held; when some were published
        before this subscriber started (or were compacted away), from the model store, which
        holds every published version: the same bytes, verified the same way."""
        try:
            return self._parts.take(manifest)
        except PartialSnapshot as missing:
            if self._store is None:
                raise
            try:
                data = self._store.get(self.job, manifest.version)
            except SnapshotNotFound:
                raise missing from None
            log.info("snapshot subscriber %s: version %d read from the model store (%s)", self.job,
                     manifest.version, missing)
            return data

    def _consider(self, msg: Any) -> None:
        header_version = _header_version(msg)
        # Cheap skip of a duplicate/older snapshot. The header is not authenticated, so it can
        # only ever make us skip; what gets swapped in is decided by the verified metadata.
        newest = self._newest()
        if newest is not None and header_version is not None and header_version <= newest.version:
            return
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        try:
            data = msg.value() or b""
            if is_manifest(data):
                data = self._assemble(Manifest.from_bytes(data))
            snap = decode_snapshot(data, key=self._key, trusted=self._trusted, job=self.job)
            if newest is not None and isinstance(snap.version, int) and snap.version <= newest.version:
                return
            version = check_streamed_version(snap, data, None if newest is None else newest.version, self._store)
            model = load_model(snap)
        except Exception as exc:
            self.rejected += 1
            log.error("snapshot subscriber %s: rejected snapshot at %s: %s", self.job, where, exc)
            return
        with self._cond:
            if self.shadow and self._current is not None:
                if version > self._current.version:
                    self._candidate = LoadedModel(model, version, snap.metadata)
                    self._shadow = ShadowStats(self._current.version, version)
                    log.info("snapshot subscriber %s: version %d runs in shadow of %d", self.job, version,
                             self._current.version)
            elif self._current is None or version > self._current.version:
                self._current = LoadedModel(model, version, snap.metadata)
                log.info("snapshot subscriber %s: now serving version %d (from %s)", self.job, version, where)
            self._cond.notify_all()


def _header_version(msg: Any) -> int | None:
    for k, v in msg.headers() or []:
        if k == "version":
            try:
                return int(v)
            except (TypeError, ValueError):
                return None
    return None
