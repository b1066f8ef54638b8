"""Kafka topic admin, written once for every topic the project creates (training topics,
dead letters, the snapshot topic): idempotent creation, a config floor, partitions, offsets,
consumer groups.

``conf`` arguments are librdkafka client configurations (a dict with at least
``bootstrap.servers``) or just the bootstrap string.
"""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from streamlearn.config import KafkaUnreachable, kafka_logging
from streamlearn.errors import UserError
from streamlearn.streams.access import refusal

#: how long a short-lived command waits for a first answer from Kafka before it reports the
#: broker unreachable (a refused connection is reported after about one second)
REACH_TIMEOUT_S = 10.0


class TopicError(UserError, RuntimeError):
    """A topic that is missing, too small, or cannot be created."""


#: how long a training topic the project creates keeps its records (Kafka's ``retention.ms``):
#: training data is ephemeral (read once by the jobs, never stored by us), so a topic does not
#: grow without bound; a topic that exists keeps the retention it has
DEFAULT_RETENTION = "7d"
_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def retention_ms(retention: "str | int") -> int:
    """Kafka's ``retention.ms`` for a retention written as ``7d``, ``12h``, ``30m``, ``45s``,
    ``500ms``, ``2w``, a number of milliseconds, or ``never`` (-1: kept until deleted)."""
    if isinstance(retention, bool):
        raise TopicError(f"retention must be a duration like 7d or 12h, or never; got {retention!r}")
    if isinstance(retention, int):
        ms = retention
    else:
        text = str(retention).strip().lower()
        if text in ("never", "forever", "infinite", "-1"):
            return -1
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):] or "ms"
        if unit not in _UNITS_MS or not number.isdigit():
            raise TopicError(f"retention must be a duration like 7d, 12h, 30m, 45s, 500ms or 2w (or never); "
                             f"got {retention!r}")
        ms = int(number) * _UNITS_MS[unit]
    if ms < 1:
        raise TopicError(f"retention must be positive (or never), got {retention!r}")
    return ms


def training_topic_config(retention: "str | int | None" = DEFAULT_RETENTION) -> dict:
    """The topic config a training topic is created with (None: the broker's default retention)."""
    return {} if retention is None else {"retention.ms": retention_ms(retention)}


def _conf(conf) -> dict:
    if isinstance(conf, str):
        return {"bootstrap.servers": conf}
    out = dict(conf)
    if "bootstrap.servers" not in out:
        raise TopicError("Kafka client configuration has no 'bootstrap.servers'")
    return out


# Properties that mean something to producers/consumers only; the admin client warns on them.
_CLIENT_ONLY = ("enable.idempotence", "linger.ms", "compression.type", "acks", "group.id", "auto.offset.reset",
                "enable.auto.commit", "batch.size", "batch.num.messages", "queue.buffering.max.ms",
                "queue.buffering.max.messages", "queue.buffering.max.kbytes", "message.timeout.ms",
                "delivery.timeout.ms", "retries", "max.in.flight.requests.per.connection", "isolation.level",
                "partitioner", "compression.codec")


class _Admin(AdminClient):
    """An admin client that remembers librdkafka's reports that every broker is down or
    that the credentials were rejected."""

    def __init__(self, conf: dict):
        self.servers = conf["bootstrap.servers"]
        self.all_down: KafkaError | None = None
        self.rejected: KafkaError | None = None
        super().__init__({**conf, "error_cb": self._on_error})

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
            self.all_down = err
        elif refusal(err, self.servers) is not None:
            self.rejected = err


def _admin(conf) -> _Admin:
    return _Admin(kafka_logging({k: v for k, v in _conf(conf).items() if k not in _CLIENT_ONLY}))


def _metadata(admin: _Admin, timeout: float):
    """All-topics metadata, or :class:`KafkaUnreachable` as soon as librdkafka reports every
    broker down (or after ``REACH_TIMEOUT_S``): a blocking ``list_topics`` would only give up
    at its own timeout, while the connection failures pile up unseen in the client's queue."""
    deadline = time.monotonic() + min(timeout, REACH_TIMEOUT_S)
    while True:
        try:
            return admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT)):
                raise TopicError(f"Kafka metadata request failed: {exc}") from None
        admin.poll(0)  # serves the error callback
        if admin.rejected is not None:
            raise refusal(admin.rejected, admin.servers)
        if admin.all_down is not None or time.monotonic() >= deadline:
            why = admin.all_down.str() if admin.all_down is not None else f"no answer within {REACH_TIMEOUT_S:.0f} s"
            raise KafkaUnreachable(f"cannot reach Kafka at {admin.servers}: {why}")


def require_kafka(conf, timeout: float = REACH_TIMEOUT_S) -> None:
    """Return once a Kafka broker answers; :class:`KafkaUnreachable` within ``timeout``
    seconds (sooner when the connection is refused) when none does."""
    _metadata(_admin(conf), timeout)


def _topic_partitions(admin: _Admin, name: str, timeout: float) -> list[int] | None:
    # All-topics metadata: asking for one topic by name makes a broker with
    # auto.create.topics.enable create it (with the broker's default partition count).
    t = _metadata(admin, timeout).topics.get(name)
    if t is None or t.error is not None and t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        return None
    if t.error is not None and t.error.code() != KafkaError.LEADER_NOT_AVAILABLE:
        raise TopicError(f"topic {name!r}: {t.error.str()}")
    return sorted(t.partitions)


def _leaders_elected(admin: AdminClient, name: str, timeout: float) -> bool:
    t = admin.list_topics(timeout=timeout).topics.get(name)
    return t is not None and t.error is None and bool(t.partitions) and all(
        p.leader >= 0 and p.error is None for p in t.partitions.values())


def partitions(conf, topic: str, timeout: float = 10.0) -> list[int]:
    """The partition ids of ``topic`` (sorted). :class:`TopicError` if it does not exist."""
    found = _topic_partitions(_admin(conf), topic, timeout)
    if not found:
        hidden = " (or no ACL lets this principal describe it)" if _conf(conf).get("sasl.username") else ""
        raise TopicError(f"topic {topic!r} does not exist{hidden}")
    return found


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``: records that cannot be trained on, with the reason."""
    return f"{topic}.dlq"


def ensure_topic(admin_conf, name: str, partitions: int, config: dict | None = None,
                 replication_factor: int = -1, timeout: float = 30.0) -> int:
    """Create ``name`` with ``partitions`` partitions unless it exists; returns its
    partition count. Idempotent. :class:`TopicError` if it exists with fewer partitions."""
    if int(partitions) < 1:
        raise TopicError(f"partitions must be >= 1, not {partitions}")
    admin = _admin(admin_conf)
    existing = _topic_partitions(admin, name, timeout)
    if existing is None:
        new = NewTopic(name, num_partitions=int(partitions), replication_factor=replication_factor,
                       config={k: str(v) for k, v in (config or {}).items()})
        try:
            admin.create_topics([new], operation_timeout=timeout)[name].result(timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            refused = refusal(err, admin.servers, f"creating topic {name}")
            if refused is not None:
                raise refused from None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise TopicError(f"cannot create topic {name!r}: {err.str() if isinstance(err, KafkaError) else exc}") from None
        deadline = time.monotonic() + timeout
        while True:  # metadata catches up with the creation, and every partition has a leader
            existing = _topic_partitions(admin, name, timeout)
            ready = existing and len(existing) >= int(partitions) and _leaders_elected(admin, name, timeout)
            if ready or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if existing is None:
            raise TopicError(f"topic {name!r} was created but does not show up in the metadata")
    if len(existing) < int(partitions):
        raise TopicError(f"topic {name!r} exists with {len(existing)} partition(s), fewer than the "
                         f"{partitions} asked for; add partitions (kafka-topics --alter) or use another topic")
    return len(existing)


def set_topic_config(admin_conf, name: str, config: dict, timeout: float = 30.0) -> None:
    """Set ``config`` on topic ``name`` (an incremental alter: other settings stay). For admin
    commands only: a worker never changes a shared topic. :class:`TopicError` on failure."""
    admin = _admin(admin_conf)
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
        ConfigEntry(k, str(v), incremental_operation=AlterConfigOpType.SET) for k, v in config.items()])
    try:
        admin.incremental_alter_configs([resource], request_timeout=timeout)[resource].result(timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        raise TopicError(f"cannot set the configuration of topic {name!r}: "
                         f"{err.str() if isinstance(err, KafkaError) else exc}") from None


#: what a topic created a moment ago may answer before its leaders are serving
_NEW_TOPIC_ERRORS = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                     KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION)


def consumer_conf(conf) -> dict:
    """``conf`` without the properties of other client kinds, logging through Python's
    (a base for short-lived readers: offsets, samples)."""
    return kafka_logging({k: v for k, v in _conf(conf).items() if k not in _CLIENT_ONLY})


def watermarks(conf, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` watermarks of ``topic``; high = the next offset to be written."""
    parts = partitions(conf, topic, timeout)
    consumer = Consumer({**consumer_conf(conf), "group.id": f"streamlearn-offsets-{uuid.uuid4().hex}", "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    try:
        out = {}
        for p in parts:
            while True:
                try:
                    out[p] = tuple(int(x) for x in consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                                                  timeout=timeout, cached=False))
                    break
                except KafkaException as exc:
                    # a just-created topic: metadata may name a leader the broker does not
                    # act as yet (NOT_LEADER_FOR_PARTITION for a moment); retry those
                    err = exc.args[0] if exc.args else None
                    transient = isinstance(err, KafkaError) and (err.retriable() or err.code() in _NEW_TOPIC_ERRORS)
                    if not transient or time.monotonic() > deadline:
                        raise TopicError(f"cannot read offsets of {topic}[{p}]: {exc}") from None
                    time.sleep(0.1)
        return out
    finally:
        consumer.close()


def end_offsets(conf, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """``{partition: high watermark}`` of ``topic``."""
    return {p: hi for p, (_, hi) in watermarks(conf, topic, timeout).items()}


def delete_group(conf, group: str, timeout: float = 30.0) -> None:
    """Delete consumer group ``group`` (its committed offsets); a group that does not exist
    is fine. Members that just left may keep the group non-empty for a moment: retried
    until ``timeout``."""
    admin = _admin(conf)
    deadline = time.monotonic() + timeout
    while True:
        future = admin.delete_consumer_groups([group], request_timeout=10)[group]
        try:
            future.result()
            return
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                return
            if code != KafkaError.NON_EMPTY_GROUP or time.monotonic() > deadline:
                raise TopicError(f"cannot delete consumer group {group!r}: {exc}") from None
            time.sleep(0.5)


__all__ = ["dlq_topic", "DEFAULT_RETENTION", "TopicError", "ensure_topic", "retention_ms", "training_topic_config", "set_topic_config",
           "partitions", "end_offsets", "watermarks", "delete_group",
           "require_kafka", "consumer_conf", "REACH_TIMEOUT_S"]
