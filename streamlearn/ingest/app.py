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

What a valid event is: :mod:`streamlearn.ingest.events`.

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

import logging
import os
import tempfile
import time
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from streamlearn.config import ConfigError, Settings
from streamlearn.ingest.events import IngestConfig, check_event, encode_batch
from streamlearn.runtime.metrics import serve_metrics
from streamlearn.streams.topics import dlq_topic, ensure_topic, partitions, training_topic_config
from streamlearn.wire.decode import Rejection, rejection_headers

log = logging.getLogger("streamlearn.ingest")

#: the app's Prometheus counter (``_total``), labelled ``app`` and ``outcome``
INGEST_EVENTS = "streamlearn_ingest_events"

AT_LEAST_ONCE = "at_least_once"
EXACTLY_ONCE = "exactly_once"


# -- the faust app ------------------------------------------------------------------------------
def default_app_id(raw_topic: str, training_topic: str) -> str:
    return f"streamlearn-ingest-{raw_topic}-to-{training_topic}"


def faust_broker(bootstrap: str) -> str:
    """``host:port[,host:port]`` (our settings' form) -> faust's ``kafka://host:port;...``."""
    if "://" in bootstrap:
        return bootstrap
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


def faust_credentials(kafka_conf: dict[str, Any]) -> Any:
    """faust's ``broker_credentials`` for the librdkafka security properties every other
    client uses (``STREAMLEARN_KAFKA_SECURITY_PROTOCOL``, ``_SASL_MECHANISM``,
    ``_SASL_USERNAME``/``_PASSWORD``, ``_SSL_CA_LOCATION``, ``_SSL_CERTIFICATE_LOCATION``/
    ``_SSL_KEY_LOCATION``, ``_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM=none``); None for plain text.
    :class:`~streamlearn.config.ConfigError` for what aiokafka cannot do."""
    import ssl

    from faust.auth import SASLCredentials, SSLCredentials

    protocol = str(kafka_conf.get("security.protocol", "PLAINTEXT")).upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol not in ("SSL", "SASL_SSL", "SASL_PLAINTEXT"):
        raise ConfigError(f"ingest: security.protocol {protocol!r} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        try:
            context = ssl.create_default_context(cafile=kafka_conf.get("ssl.ca.location"))
            if kafka_conf.get("ssl.certificate.location"):
                context.load_cert_chain(kafka_conf["ssl.certificate.location"], kafka_conf.get("ssl.key.location"),
                                        kafka_conf.get("ssl.key.password"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"ingest: cannot load the TLS files (STREAMLEARN_KAFKA_SSL_*): {exc}") from None
        if str(kafka_conf.get("ssl.endpoint.identification.algorithm", "https")).lower() == "none":
            context.check_hostname = False
    if protocol == "SSL":
        return SSLCredentials(context)
    mechanism = str(kafka_conf.get("sasl.mechanism", kafka_conf.get("sasl.mechanisms", "PLAIN"))).upper()
    if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ConfigError(f"ingest: sasl.mechanism {mechanism!r} is not supported (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)")
    return SASLCredentials(username=kafka_conf.get("sasl.username"), password=kafka_conf.get("sasl.password"),
                           ssl_context=context, mechanism=mechanism)


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
    import faust  # start-up cost: faust (and its aiokafka) loads only when the app is built

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
    app.ingest_metrics = CollectorRegistry()  # Prometheus (``ingest --metrics-port``); a registry per app
    events = Counter(INGEST_EVENTS, "raw events by outcome (forwarded, dead_lettered)",
                     ["app", "outcome"], registry=app.ingest_metrics)

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
        events.labels(app_id, kind).inc(n)

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


def run_worker(app) -> None:
    """Run ``app`` as a faust worker in this process until SIGINT/SIGTERM (then it flushes,
    commits and exits). Raises ``SystemExit``. Logging is the application's to set up (the
    CLI does, once): faust's own set-up would replace the root logger's handlers and print
    every service's start and stop at INFO."""
    import faust  # start-up cost: faust (and its aiokafka) loads only when the app is built

    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.spinner = None  # it writes a terminal escape (show cursor) even into a log file
    worker.execute_from_commandline()


def run(raw_topic: str, topic: str, config: IngestConfig, settings: Settings, *, exactly_once: bool = False,
        app_id: str | None = None, metrics_port: int | None = None) -> int:
    """What ``streamlearn ingest RAW_TOPIC --to TOPIC …`` runs; returns its exit status.

    Creates TOPIC (as many partitions as RAW_TOPIC) and RAW_TOPIC.dlq when missing, then runs
    the faust worker until SIGINT/SIGTERM. A missing RAW_TOPIC raises :class:`~streamlearn.streams.topics.TopicError` (a
    user error), an unreachable Kafka :class:`~streamlearn.config.KafkaUnreachable`.
    """
    conf = settings.kafka_client_conf()
    credentials = faust_credentials(conf)  # a bad TLS file: one line, before anything is created
    n = len(partitions(conf, raw_topic))  # rejected credentials or ACLs: one line, nothing created
    n_out = ensure_topic(conf, topic, n, training_topic_config())
    ensure_topic(conf, dlq_topic(raw_topic), n)
    app = create_app(raw_topic, topic, config, broker=settings.kafka, app_id=app_id, partitions=n, out_partitions=n_out,
                     processing_guarantee=EXACTLY_ONCE if exactly_once else AT_LEAST_ONCE,
                     broker_credentials=credentials)
    if metrics_port is not None:
        log.info("Prometheus metrics at http://0.0.0.0:%d/metrics", serve_metrics(app.ingest_metrics, metrics_port))
    started = time.monotonic()
    try:
        run_worker(app)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        log.info("ingest worker stopped after %.1f s", time.monotonic() - started)
        return code
    return 0


__all__ = ["create_app", "run_worker", "run", "dlq_topic", "default_app_id", "faust_broker", "faust_credentials",
           "AT_LEAST_ONCE",
           "EXACTLY_ONCE"]
