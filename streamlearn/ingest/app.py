"""The ingest app: JSON events on a raw topic -> validated Avro training messages.

Producers that do not speak the project's Avro wire format (web services emitting JSON)
write one JSON object per Kafka message to a *raw* topic. A faust app (faust-streaming,
``import faust``) consumes it and, for every raw event, does exactly one of:

* **forward** it to the training topic as an Avro single-object ``training_record``
  (``batch_size=1``, the default: every field kept, Kafka key = the event's ``key`` or
  else the raw message's key) or, with ``batch_size > 1``, gathered with the other valid
  events of the same raw partition that arrived within ``batch_within_s`` into one
  ``training_batch`` (the fast path for workers; the batch's ``event_time`` is the newest
  of its events', per-event times are not kept);
* **dead-letter** it: the raw bytes and key go unchanged to ``<raw topic>.dlq`` with the
  reason in the ``streamlearn.reason`` header and ``streamlearn.records: 1`` (the worker's
  convention, :func:`streamlearn.wire.decode.rejection_headers`), plus
  ``streamlearn.source`` = ``topic/partition/offset`` of the raw event.

Nothing is lost: events are counted per raw partition in a faust ``Table``
(``<app id>-counts``: keys ``forwarded:<p>`` and ``dead_lettered:<p>``, changelogged in
Kafka, so the counts survive restarts), and the totals are logged every ``log_every_s``
and when the app stops (``ingest totals: forwarded=N dead_lettered=M``).

A JSON event (see :func:`validate_event`)::

    {"features": [0.5, 1, -2.25], "label": 1, "weight": 2.0, "key": "user-7", "event_time": 1718000000000}
    {"indices": [0, 7], "values": [1.0, 0.5], "n_features": 10, "label": 0}

Delivery guarantees
-------------------
``processing_guarantee="at_least_once"`` (the default): the app acknowledges a raw event
only after the agent has handed its output to the producer, and faust flushes the producer
(waits for the broker's acknowledgement of every forwarded / dead-lettered message) *before*
it commits the raw offsets (``faust/transport/consumer.py``: ``producer.flush()`` then
commit). So a crash never loses an event, but a crash (or a rebalance that revokes a
partition) between forwarding and the offset commit makes the restarted app forward the
uncommitted events **again**: the training topic (and the DLQ, and the counts) may hold
**duplicates** of the events of at most one commit interval (``broker_commit_every``
events / ``broker_commit_interval`` seconds) per partition. The training job itself counts
every *message* of the training topic exactly once; it cannot tell an ingest duplicate
from a genuinely repeated event.

Exactly once: ``processing_guarantee="exactly_once"`` makes faust use Kafka transactions
(one transactional producer per raw partition, ``transactional_id`` =
``<app id>-<group>-<partition>``): the forwarded messages, the DLQ messages, the counts'
changelog and the raw offsets commit atomically. Consumers of the training topic must then
read with ``isolation.level=read_committed`` (librdkafka's default) so that aborted attempts
are invisible. Status on Kafka 4.3.1 (KRaft): the mode starts (one transactional producer
per assigned partition), forwards and dead-letters correctly and commits
(``tests/integration/test_ingest.py``), **but it is not established that the forwarded
messages are inside the transactions**: faust picks a send's ``transactional_id`` from the
*destination* topic's partition and assignor group, and the training topic is not a source
of this app; one run showed commit markers in the training and DLQ topics, another showed
none in the training topic. Until that is settled, treat the training topic as
at-least-once in both modes (the worker's exactly-once guarantee starts at the training
topic).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamlearn.wire.decode import (
    R_BOTH_FORMS, R_MISSING_LABEL, R_NEGATIVE_W, R_NO_FEATURES, R_NONFINITE_W, R_NONFINITE_X, R_NONFINITE_Y,
    R_SPARSE_LENGTHS, R_SPARSE_RANGE, Rejection, rejection_headers,
)
from streamlearn.wire.serde import encode_training_batch, encode_training_record

log = logging.getLogger("streamlearn.ingest")

FIELDS = frozenset(("features", "indices", "values", "n_features", "label", "weight", "key", "event_time"))
_F32_MAX = float(np.finfo(np.float32).max)
_I64 = 2 ** 63
AT_LEAST_ONCE = "at_least_once"
EXACTLY_ONCE = "exactly_once"

# Reasons specific to JSON events (the shared ones come from decode).
R_NOT_JSON = "not JSON"
R_NOT_OBJECT = "event is not a JSON object"
R_UNKNOWN_FIELDS = "unknown field(s)"
R_F32_RANGE = "feature out of float32 range"


class InvalidEvent(ValueError):
    """A raw event that cannot become a training example; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class IngestConfig:
    """What a valid event is, and how valid ones are forwarded.

    ``n_features``: the width every event must have; ``label_required``: events without a
    label are dead-lettered; ``batch_size``: 1 = one ``training_record`` per event, > 1 = up
    to that many events (of one raw partition, arriving within ``batch_within_s``) per
    ``training_batch``; ``allow_extra_fields``: ignore unknown top-level fields instead of
    dead-lettering the event (the default rejects them: a typo such as ``"lable"`` would
    otherwise silently drop labels).
    """

    n_features: int
    label_required: bool = False
    batch_size: int = 1
    batch_within_s: float = 0.2
    allow_extra_fields: bool = False


@dataclass(frozen=True)
class TrainingEvent:
    """A validated event: dense ``features`` or sparse ``indices``/``values`` (lists)."""

    features: list | None = None
    indices: list | None = None
    values: list | None = None
    n_features: int | None = None
    label: float | None = None
    weight: float = 1.0
    key: str | None = None
    event_time: int | None = None

    @property
    def sparse(self) -> bool:
        return self.features is None

    def encode_record(self) -> bytes:
        """The Avro single-object ``training_record`` of this event."""
        if self.sparse:
            return encode_training_record(indices=self.indices, values=self.values, n_features=self.n_features,
                                          label=self.label, weight=self.weight, key=self.key,
                                          event_time=self.event_time)
        return encode_training_record(self.features, label=self.label, weight=self.weight, key=self.key,
                                      event_time=self.event_time)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number_list(name: str, x: Any) -> list:
    if not isinstance(x, list):
        raise InvalidEvent(f"{name} is not a list")
    for v in x:
        if not _is_number(v):
            raise InvalidEvent(f"{name} holds a non-number ({type(v).__name__})")
    out = [float(v) for v in x]  # OverflowError impossible: JSON ints that large become floats first
    for v in out:
        if v - v != 0.0:
            raise InvalidEvent(R_NONFINITE_X)
        if abs(v) > _F32_MAX:
            raise InvalidEvent(R_F32_RANGE)
    return out


def validate_event(raw: bytes | str | dict, config: IngestConfig) -> TrainingEvent:
    """Parse and check one raw event; raises :class:`InvalidEvent` with the reason.

    Accepted: a JSON object with dense ``features`` (list of ``n_features`` finite numbers)
    *or* sparse ``indices`` (distinct ints in ``[0, n_features)``) + ``values`` (finite
    numbers, same length) + optional ``n_features`` (must equal the configured width);
    optional ``label`` (finite number or null; required with ``label_required``),
    ``weight`` (finite number >= 0, default 1), ``key`` (string or null), ``event_time``
    (integer UTC milliseconds or null). JSON's ``NaN``/``Infinity`` literals are rejected
    as non-finite values.
    """
    d = int(config.n_features)
    if isinstance(raw, dict):
        ev = raw
    else:
        try:
            # UTF-8 only (RFC 8259 for exchanged JSON); json.loads would guess UTF-16/32 from bytes
            ev = json.loads(bytes(raw).decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw)
        except json.JSONDecodeError as exc:
            raise InvalidEvent(f"{R_NOT_JSON} ({exc.msg} at char {exc.pos})") from None
        except UnicodeDecodeError:
            raise InvalidEvent(f"{R_NOT_JSON} (not UTF-8)") from None
        except (ValueError, TypeError) as exc:
            raise InvalidEvent(f"{R_NOT_JSON} ({type(exc).__name__})") from None
        except RecursionError:
            raise InvalidEvent(f"{R_NOT_JSON} (nested too deeply)") from None
    if not isinstance(ev, dict):
        raise InvalidEvent(R_NOT_OBJECT)
    if not config.allow_extra_fields:
        extra = sorted(k for k in ev if k not in FIELDS)
        if extra:
            raise InvalidEvent(f"{R_UNKNOWN_FIELDS}: {', '.join(map(repr, extra[:5]))}")

    features, indices = ev.get("features"), ev.get("indices")
    values, width = ev.get("values"), ev.get("n_features")
    out: dict = {}
    if features is not None:
        if indices is not None or values is not None:
            raise InvalidEvent(f"event has {R_BOTH_FORMS}")
        out["features"] = _number_list("features", features)
        if len(out["features"]) != d:
            raise InvalidEvent(f"dimension {len(out['features'])} != {d}")
    elif indices is not None or values is not None:
        if indices is None or values is None:
            raise InvalidEvent("sparse event needs both indices and values")
        if not isinstance(indices, list) or not all(_is_int(i) for i in indices):
            raise InvalidEvent("indices is not a list of integers")
        vals = _number_list("values", values)
        if len(vals) != len(indices):
            raise InvalidEvent(f"{R_SPARSE_LENGTHS} ({len(indices)} != {len(vals)})")
        if width is not None:
            if not _is_int(width):
                raise InvalidEvent("n_features is not an integer")
            if width != d:
                raise InvalidEvent(f"sparse n_features {width} != {d}")
        if indices and (min(indices) < 0 or max(indices) >= d):
            raise InvalidEvent(f"{R_SPARSE_RANGE} [0, {d})")
        if len(set(indices)) != len(indices):
            raise InvalidEvent("duplicate sparse index")
        out.update(indices=list(indices), values=vals, n_features=d)
    else:
        raise InvalidEvent(f"event has {R_NO_FEATURES}")

    label = ev.get("label")
    if label is None:
        if config.label_required:
            raise InvalidEvent(R_MISSING_LABEL)
    elif not _is_number(label):
        raise InvalidEvent(f"label is not a number ({type(label).__name__})")
    elif not math.isfinite(label):
        raise InvalidEvent(R_NONFINITE_Y)
    else:
        out["label"] = float(label)

    weight = ev.get("weight", 1.0)
    if weight is None:
        weight = 1.0
    if not _is_number(weight):
        raise InvalidEvent(f"weight is not a number ({type(weight).__name__})")
    if not math.isfinite(weight):
        raise InvalidEvent(R_NONFINITE_W)
    if weight < 0:
        raise InvalidEvent(R_NEGATIVE_W)
    out["weight"] = float(weight)

    key = ev.get("key")
    if key is not None and not isinstance(key, str):
        raise InvalidEvent(f"key is not a string ({type(key).__name__})")
    out["key"] = key

    t = ev.get("event_time")
    if t is not None:
        if not _is_int(t):
            raise InvalidEvent("event_time is not integer milliseconds")
        if not -_I64 <= t < _I64:
            raise InvalidEvent("event_time out of range")
        out["event_time"] = t
    return TrainingEvent(**out)


def check_event(raw: bytes | str | dict, config: IngestConfig) -> tuple[TrainingEvent | None, str | None]:
    """``(event, None)`` for a valid raw event, ``(None, reason)`` otherwise. Never raises."""
    try:
        return validate_event(raw, config), None
    except InvalidEvent as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - whatever a hostile payload triggers is a rejection
        return None, f"invalid event ({type(exc).__name__})"


def encode_batch(events: list[TrainingEvent], n_features: int) -> bytes:
    """One ``training_batch`` of valid events (dense unless any is sparse: then CSR)."""
    from streamlearn.batch import SparseRows

    n = len(events)
    if any(e.sparse for e in events):
        indptr = np.zeros(n + 1, dtype=np.int64)
        idx: list = []
        vals: list = []
        for i, e in enumerate(events):
            if e.sparse:
                idx.extend(e.indices)
                vals.extend(e.values)
            else:
                nz = [j for j, v in enumerate(e.features) if v != 0.0]
                idx.extend(nz)
                vals.extend(e.features[j] for j in nz)
            indptr[i + 1] = len(idx)
        X = SparseRows(indptr, np.asarray(idx, dtype=np.int64), np.asarray(vals, dtype=np.float32), n_features)
    else:
        X = np.asarray([e.features for e in events], dtype=np.float32).reshape(n, n_features)
    y = None
    if any(e.label is not None for e in events):
        y = [math.nan if e.label is None else e.label for e in events]
    w = [e.weight for e in events] if any(e.weight != 1.0 for e in events) else None
    keys = [e.key for e in events] if any(e.key is not None for e in events) else None
    times = [e.event_time for e in events if e.event_time is not None]
    return encode_training_batch(X, y, w, keys, event_time=max(times) if times else None)


# -- the faust app ------------------------------------------------------------------------------
def dlq_topic(raw_topic: str) -> str:
    return f"{raw_topic}.dlq"


def default_app_id(raw_topic: str, training_topic: str) -> str:
    return f"streamlearn-ingest-{raw_topic}-to-{training_topic}"


def faust_broker(bootstrap: str) -> str:
    """``host:port[,host:port]`` (our settings' form) -> faust's ``kafka://host:port;...``."""
    if "://" in bootstrap:
        return bootstrap
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


def create_app(raw_topic: str, training_topic: str, config: IngestConfig, *, broker: str,
               app_id: str | None = None, partitions: int | None = None, out_partitions: int | None = None,
               processing_guarantee: str = AT_LEAST_ONCE, log_every_s: float = 10.0, **faust_settings: Any):
    """The faust app forwarding valid JSON events of ``raw_topic`` to ``training_topic``.

    ``broker``: faust URL(s) (``kafka://127.0.0.1:9092``) or plain bootstrap servers;
    ``partitions``: the raw topic's partition count (the counts table is co-partitioned with
    it; default: faust's ``topic_partitions``); ``out_partitions``: the training topic's
    (keyless events go to ``raw partition % out_partitions``; default: let the producer
    choose). The consumer group id is ``app_id``. Extra keyword arguments are faust
    settings (``store`` defaults to ``memory://``, the web server is off, and ``datadir``
    defaults to a folder under the system's temp directory: faust creates it even for the
    memory store, and it would otherwise litter the working directory).
    Run it with :func:`run_worker` or ``app.main()``.
    """
    import faust

    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {config.batch_size}")
    app_id = app_id or default_app_id(raw_topic, training_topic)
    settings: dict = {"store": "memory://", "web_enabled": False, "processing_guarantee": processing_guarantee,
                      "topic_replication_factor": 1, "producer_acks": -1, "consumer_auto_offset_reset": "earliest",
                      "broker_commit_every": 10000, "broker_commit_interval": 1.0, "producer_linger": 0.005,
                      "datadir": os.path.join(tempfile.gettempdir(), "{conf.name}-data")}
    if partitions:
        settings["topic_partitions"] = int(partitions)
    settings.update(faust_settings)
    app = faust.App(app_id, broker=faust_broker(broker), **settings)

    raw = app.topic(raw_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    out = app.topic(training_topic, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(dlq_topic(raw_topic), key_serializer="raw", value_serializer="raw")
    counts = app.Table("counts", default=int, partitions=partitions or None,
                       help="events per outcome and raw partition: forwarded:<p>, dead_lettered:<p>")
    app.ingest_counts = counts  # for callers and tests

    def totals() -> dict:
        t = {"forwarded": 0, "dead_lettered": 0}
        for k, v in list(counts.items()):
            kind = str(k).split(":", 1)[0]
            t[kind] = t.get(kind, 0) + int(v)
        return t

    app.ingest_totals = totals

    def out_partition(src: int) -> int | None:
        return None if not out_partitions else src % int(out_partitions)

    def count(kind: str, event, n: int = 1) -> None:
        # A table write goes to the changelog partition of faust's *current* event; in
        # batch mode that is whichever event was buffered last, so name the event whose
        # partition the key belongs to (each key then lives in one changelog partition).
        from faust.streams import _current_event  # faust's context variable

        token = _current_event.set(weakref.ref(event))
        try:
            counts[f"{kind}:{event.message.partition}"] += n
        finally:
            _current_event.reset(token)

    async def dead_letter(event, reason: str) -> None:
        m = event.message
        headers = rejection_headers(Rejection(m.offset, reason, 1)) + [
            ("streamlearn.source", f"{m.topic}/{m.partition}/{m.offset}".encode())]
        await dlq.send(key=m.key, value=m.value, headers=headers)
        count("dead_lettered", event)

    @app.agent(raw, name="ingest")
    async def ingest(stream):
        if config.batch_size == 1:
            async for event in stream.events():
                ev, reason = check_event(event.message.value, config)
                if ev is None:
                    await dead_letter(event, reason)
                    continue
                m = event.message
                key = ev.key.encode() if ev.key is not None else m.key
                await out.send(key=key, value=ev.encode_record(),
                               partition=None if key is not None else out_partition(m.partition))
                count("forwarded", event)
        else:
            async for events in stream.take_events(config.batch_size, within=config.batch_within_s):
                good: dict[int, list] = {}
                for event in events:
                    ev, reason = check_event(event.message.value, config)
                    if ev is None:
                        await dead_letter(event, reason)
                    else:
                        good.setdefault(event.message.partition, []).append((event, ev))
                for p, pairs in good.items():
                    await out.send(key=None, value=encode_batch([ev for _, ev in pairs], config.n_features),
                                   partition=out_partition(p))
                    count("forwarded", pairs[-1][0], len(pairs))

    @app.timer(interval=log_every_s)
    async def report():
        t = totals()
        log.info("ingest totals: forwarded=%d dead_lettered=%d", t["forwarded"], t["dead_lettered"])

    @app.on_before_shutdown.connect
    def final_report(app_, **kwargs) -> None:  # noqa: ARG001
        t = totals()
        print(f"ingest totals: forwarded={t['forwarded']} dead_lettered={t['dead_lettered']}", flush=True)

    return app


def run_worker(app, loglevel: str = "info") -> None:
    """Run ``app`` as a faust worker in this process until SIGINT/SIGTERM (then it flushes,
    commits and exits). Raises ``SystemExit``."""
    import faust

    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamlearn ingest",
                                description="Validate JSON events of RAW_TOPIC and forward them as Avro training "
                                            "messages to TOPIC; invalid ones go to RAW_TOPIC.dlq (faust app).")
    p.add_argument("raw_topic", metavar="RAW_TOPIC")
    p.add_argument("--to", dest="topic", required=True, metavar="TOPIC")
    p.add_argument("--n-features", type=int, required=True, metavar="D")
    p.add_argument("--label-required", action="store_true")
    p.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="events per training_batch message (1 = one training_record per event)")
    p.add_argument("--allow-extra-fields", action="store_true")
    p.add_argument("--exactly-once", action="store_true",
                   help="Kafka transactions (processing_guarantee=exactly_once) instead of at-least-once")
    p.add_argument("--app-id", default=None, help="faust app id = consumer group (default: derived from the topics)")
    p.add_argument("--loglevel", default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    """``streamlearn ingest RAW_TOPIC --to TOPIC --n-features D [--label-required] ...``.

    Creates TOPIC (as many partitions as RAW_TOPIC) and RAW_TOPIC.dlq when missing, then
    runs the faust worker until SIGINT/SIGTERM. A missing RAW_TOPIC or a bad argument is a
    user error: one line on stderr, exit status 2; Kafka unreachable: one line, exit status 3.
    """
    from streamlearn.config import KafkaUnreachable, Settings
    from streamlearn.streams.topics import TopicError, ensure_topic, partitions

    args = _parser().parse_args(argv)
    if args.n_features < 1 or args.batch_size < 1:
        print("streamlearn ingest: --n-features and --batch-size must be >= 1", file=sys.stderr)
        return 2
    if args.raw_topic == args.topic:
        print("streamlearn ingest: RAW_TOPIC and --to TOPIC must differ", file=sys.stderr)
        return 2
    try:
        settings = Settings.resolve()
        conf = settings.kafka_client_conf()
        n = len(partitions(conf, args.raw_topic))
        n_out = ensure_topic(conf, args.topic, n)
        ensure_topic(conf, dlq_topic(args.raw_topic), n)
    except TopicError as exc:
        print(f"streamlearn ingest: {exc}", file=sys.stderr)
        return 2
    except KafkaUnreachable as exc:
        print(f"streamlearn ingest: {exc}", file=sys.stderr)
        return 3
    if settings.kafka_conf:
        log.warning("STREAMLEARN_KAFKA_* client properties are librdkafka settings and are not passed to faust "
                    "(aiokafka); configure faust's broker_credentials for secured clusters")
    config = IngestConfig(args.n_features, label_required=args.label_required, batch_size=args.batch_size,
                          allow_extra_fields=args.allow_extra_fields)
    app = create_app(args.raw_topic, args.topic, config, broker=settings.kafka, app_id=args.app_id,
                     partitions=n, out_partitions=n_out,
                     processing_guarantee=EXACTLY_ONCE if args.exactly_once else AT_LEAST_ONCE)
    started = time.monotonic()
    try:
        run_worker(app, loglevel=args.loglevel)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        log.info("ingest worker stopped after %.1f s", time.monotonic() - started)
        return code
    return 0


__all__ = ["IngestConfig", "TrainingEvent", "InvalidEvent", "validate_event", "check_event", "encode_batch",
           "create_app", "run_worker", "main", "dlq_topic", "default_app_id", "faust_broker"]

if __name__ == "__main__":
    sys.exit(main())
