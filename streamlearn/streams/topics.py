"""Kafka topic helpers: idempotent creation, partitions, offsets.

``conf`` arguments are librdkafka client configurations (a dict with at least
``bootstrap.servers``) or just the bootstrap string.
"""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


class TopicError(RuntimeError):
    """A topic that is missing, too small, or cannot be created."""


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


def _admin(conf) -> AdminClient:
    c = {k: v for k, v in _conf(conf).items() if k not in _CLIENT_ONLY}
    return AdminClient(c)


def _topic_partitions(admin: AdminClient, name: str, timeout: float) -> list[int] | None:
    # All-topics metadata: asking for one topic by name makes a broker with
    # auto.create.topics.enable create it (with the broker's default partition count).
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"cannot reach Kafka for topic {name!r}: {exc}") from None
    t = md.topics.get(name)
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
        raise TopicError(f"topic {topic!r} does not exist")
    return found


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


#: what a topic created a moment ago may answer before its leaders are serving
_NEW_TOPIC_ERRORS = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                     KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION)


def watermarks(conf, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` watermarks of ``topic``; high = the next offset to be written."""
    parts = partitions(conf, topic, timeout)
    c = {k: v for k, v in _conf(conf).items() if k not in _CLIENT_ONLY}
    consumer = Consumer({**c, "group.id": f"streamlearn-offsets-{uuid.uuid4().hex}", "enable.auto.commit": False})
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


__all__ = ["TopicError", "ensure_topic", "partitions", "end_offsets", "watermarks", "delete_group"]
