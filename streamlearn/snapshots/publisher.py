"""Publish a snapshot: the model store first (durable, by version), then the snapshot topic.

The snapshot topic (``streamlearn.snapshots``; another with ``STREAMLEARN_SNAPSHOT_TOPIC``
or per job with ``job create --snapshot-topic``, so that Kafka ACLs can give each tenant its
own) is keyed by job, so one job's snapshots stay in order within a partition; it is
log-compacted (a subscriber that starts late still finds every job's newest snapshot) and
carries 64 MiB messages (``max.message.bytes``) zstd-compressed. Those settings are applied
when the topic is created (by the first publisher when missing) or by the admin command
``streamlearn snapshot-topic setup``; publishers never describe or alter a shared topic's
configuration.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from confluent_kafka import KafkaException, Producer

from streamlearn.config import KafkaUnreachable
from streamlearn.snapshots.format import SnapshotError, decode_snapshot
from streamlearn.snapshots.store import ModelStore
from streamlearn.streams.access import refusal
from streamlearn.streams.topics import TopicError, ensure_topic, set_topic_config

__all__ = ["SNAPSHOT_TOPIC", "TOPIC_ENV", "MAX_MESSAGE_BYTES", "TOPIC_CONFIG", "SnapshotPublishError", "snapshot_topic",
           "ensure_snapshot_topic", "setup_snapshot_topic", "publish_snapshot", "produce_snapshot"]

log = logging.getLogger(__name__)

SNAPSHOT_TOPIC = "streamlearn.snapshots"
TOPIC_ENV = "STREAMLEARN_SNAPSHOT_TOPIC"
MAX_MESSAGE_BYTES = 64 << 20  # 67108864
TOPIC_CONFIG = {
    "max.message.bytes": str(MAX_MESSAGE_BYTES),
    "compression.type": "zstd",
    "cleanup.policy": "compact",  # keyed by job: the newest snapshot of every job stays
}
PRODUCER_DEFAULTS = {
    "message.max.bytes": MAX_MESSAGE_BYTES,
    "compression.type": "zstd",
    "acks": "all",
    # one message per short-lived producer: an idempotent producer first fetches a producer
    # id (~0.5 s per snapshot here), and a duplicate from a retry is harmless anyway
    # (subscribers only move to higher versions)
    "enable.idempotence": False,
    "linger.ms": 0,
}


class SnapshotPublishError(RuntimeError):
    """The snapshot could not be stored or delivered."""


def snapshot_topic(name: str | None = None) -> str:
    """The snapshot topic: ``name`` (a job's own), else ``$STREAMLEARN_SNAPSHOT_TOPIC``, else
    ``streamlearn.snapshots``."""
    return name or os.environ.get(TOPIC_ENV, "").strip() or SNAPSHOT_TOPIC


#: (cluster, topic) pairs this process has seen exist: an admin client and a metadata request
#: cost ~60 ms, as much as finalizing a k-means model, on every periodic snapshot. A failed
#: produce forgets the pair (checked again next time).
_CHECKED: set[tuple[str, str]] = set()


def ensure_snapshot_topic(kafka_conf: dict[str, Any], topic: str | None = None, partitions: int = 1,
                          timeout: float = 30.0) -> None:
    """Create the snapshot topic with :data:`TOPIC_CONFIG` when missing (once per process,
    cluster and topic). An existing topic is left as it is."""
    topic = snapshot_topic(topic)
    checked = (str(kafka_conf.get("bootstrap.servers")), topic)
    if checked in _CHECKED:
        return
    _check_snapshot_topic(kafka_conf, topic, partitions, timeout)
    _CHECKED.add(checked)


def _check_snapshot_topic(kafka_conf: dict[str, Any], topic: str, partitions: int, timeout: float) -> None:
    try:
        ensure_topic(kafka_conf, topic, partitions, config=TOPIC_CONFIG, timeout=timeout)
    except (TopicError, KafkaUnreachable) as exc:  # an outage for the worker: it retries
        raise SnapshotPublishError(f"cannot create topic {topic}: {exc}") from exc


def setup_snapshot_topic(kafka_conf: dict[str, Any], topic: str | None = None, partitions: int = 1,
                         timeout: float = 30.0) -> str:
    """The admin command: create the snapshot topic, or set :data:`TOPIC_CONFIG` on an
    existing one (compaction, 64 MiB messages, zstd). Returns the topic's name."""
    topic = snapshot_topic(topic)
    ensure_topic(kafka_conf, topic, partitions, config=TOPIC_CONFIG, timeout=timeout)
    set_topic_config(kafka_conf, topic, TOPIC_CONFIG, timeout)
    return topic


def _jsonable_equal(a: Any, b: Any) -> bool:
    return json.loads(json.dumps(a, sort_keys=True, default=str)) == json.loads(json.dumps(b, sort_keys=True, default=str))


def publish_snapshot(
    producer_conf: dict[str, Any],
    redis_client: Any,
    job: str,
    data: bytes,
    metadata: dict[str, Any],
    *,
    timeout: float = 60.0,
    topic: str | None = None,
) -> None:
    """Store ``data`` in the :class:`ModelStore` under ``metadata["version"]``, then produce it
    to the snapshot ``topic`` (:func:`snapshot_topic`; key = job, headers version/algorithm) and wait for the
    broker's acknowledgement. Raises :class:`SnapshotPublishError` (or :class:`SnapshotError`
    for bytes that are not a valid snapshot of this job/version) on any failure.

    The bytes are decoded and verified first, so nothing unloadable is ever published;
    the registry entry is the snapshot's own metadata plus any extra keys of ``metadata``
    (which must not contradict it)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SnapshotPublishError(f"snapshot is {len(data)} bytes; the topic carries at most {MAX_MESSAGE_BYTES}")
    snap = decode_snapshot(data)
    entry = dict(snap.metadata)
    for k, v in metadata.items():
        if k in entry and not _jsonable_equal(entry[k], v):
            raise SnapshotError(f"metadata[{k!r}]={v!r} contradicts the snapshot's own {entry[k]!r}")
        entry.setdefault(k, v)
    if entry.get("job") not in (None, job):
        raise SnapshotError(f"snapshot belongs to job {entry.get('job')!r}, not {job!r}")
    entry["job"] = job
    version = entry.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise SnapshotError(f"snapshot metadata has no int version (got {version!r})")

    store = ModelStore(redis_client)
    store.register_job(job)
    store.put(job, data, entry)
    produce_snapshot(producer_conf, job, data, entry, timeout=timeout, topic=topic)


def produce_snapshot(
    producer_conf: dict[str, Any], job: str, data: bytes, metadata: dict[str, Any], *, timeout: float = 60.0,
    topic: str | None = None,
) -> None:
    """Produce already-stored snapshot bytes to the snapshot ``topic`` (:func:`snapshot_topic`;
    key = job, headers version/algorithm), creating the topic when missing, and wait for the
    acknowledgement."""
    topic = snapshot_topic(topic)
    version = metadata.get("version")
    if len(data) > MAX_MESSAGE_BYTES:
        raise SnapshotPublishError(f"snapshot is {len(data)} bytes; the topic carries at most {MAX_MESSAGE_BYTES}")
    conf = {**PRODUCER_DEFAULTS, **producer_conf}
    conf["message.max.bytes"] = max(int(conf.get("message.max.bytes", 0)), MAX_MESSAGE_BYTES + (1 << 20))
    ensure_snapshot_topic(conf, topic)
    producer = Producer(conf)
    outcome: dict[str, Any] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        outcome["err"], outcome["msg"] = err, msg

    headers = [("version", str(version).encode())]
    if metadata.get("algorithm") is not None:
        headers.append(("algorithm", str(metadata["algorithm"]).encode()))
    try:
        try:
            producer.produce(topic, key=job.encode("utf-8"), value=data, headers=headers,
                             on_delivery=on_delivery)
            remaining = producer.flush(timeout)
        except (KafkaException, BufferError) as exc:
            raise SnapshotPublishError(f"cannot produce snapshot {job}@{version}: {exc}") from exc
        if remaining or "err" not in outcome:
            raise SnapshotPublishError(f"snapshot {job}@{version} not delivered within {timeout}s")
        refused = refusal(outcome["err"], str(conf.get("bootstrap.servers")), f"topic {topic}")
        if refused is not None:
            raise refused  # not an outage: retrying cannot succeed
        if outcome["err"] is not None:
            raise SnapshotPublishError(f"snapshot {job}@{version} delivery failed: {outcome['err']}")
    except SnapshotPublishError:
        _CHECKED.discard((str(conf.get("bootstrap.servers")), topic))
        raise
    log.info(
        "published snapshot %s@%s (%d bytes) to %s[%d]@%d",
        job, version, len(data), topic, outcome["msg"].partition(), outcome["msg"].offset(),
    )
