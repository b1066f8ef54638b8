"""Publish a snapshot: the model store first (durable, by version), then the snapshot topic.

The snapshot topic (``streamlearn.snapshots``; another with ``STREAMLEARN_SNAPSHOT_TOPIC``
or per job with ``job create --snapshot-topic``, so that Kafka ACLs can give each tenant its
own) is keyed by job, so one job's snapshots stay in order within a partition; it is
log-compacted (a subscriber that starts late still finds every job's newest snapshot) and
carries 64 MiB messages (``max.message.bytes``) as the producer compressed them: lz4 when a
sample of the snapshot compresses (a sparse model's zeros), uncompressed otherwise. A model's
float arrays hardly compress (lz4 took 9 % off a factorization machine's 38 MB, zstd 16 % for
0.1 s more), and the codec costs a pass on both ends (the broker decompresses a batch to check
a compacted topic's keys): its 38 MB published 0.04-0.08 s faster uncompressed. A topic that
names its own codec makes the broker recompress every other one. Those settings are applied
when the topic is created (by the first publisher when missing) or by the admin command
``streamlearn snapshot-topic setup``; publishers never describe or alter a shared topic's
configuration.

A snapshot larger than one message (64 MiB, or ``$STREAMLEARN_SNAPSHOT_MESSAGE_BYTES``), or
one the model store keeps in parts (a large model on a Redis Cluster), is produced in parts
(:mod:`streamlearn.snapshots.parts`), all to one
partition: its :data:`~streamlearn.snapshots.parts.PART_BYTES` pieces under the keys
``<job>/part/<i>`` (one key per index, so compaction keeps the newest of each), acknowledged
before the manifest is produced under the job's key. Subscribers assemble the parts the
manifest names and verify the whole snapshot.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from typing import Any

from confluent_kafka import KafkaException, Producer

from streamlearn.config import KafkaUnreachable
from streamlearn.snapshots.format import SnapshotError, decode_snapshot
from streamlearn.snapshots.parts import WHOLE_BYTES, Manifest, split, whole_bytes
from streamlearn.snapshots.store import ModelStore
from streamlearn.streams.access import refusal
from streamlearn.streams.topics import TopicError, ensure_topic, set_topic_config

__all__ = ["SNAPSHOT_TOPIC", "TOPIC_ENV", "MAX_MESSAGE_BYTES", "TOPIC_CONFIG", "SnapshotPublishError", "snapshot_topic",
           "ensure_snapshot_topic", "setup_snapshot_topic", "publish_snapshot", "produce_snapshot", "part_key",
           "warm_producer", "snapshot_codec", "COMPRESSIBLE"]

log = logging.getLogger(__name__)

SNAPSHOT_TOPIC = "streamlearn.snapshots"
TOPIC_ENV = "STREAMLEARN_SNAPSHOT_TOPIC"
MAX_MESSAGE_BYTES = WHOLE_BYTES  # 64 MiB: one definition, in parts.py, which cannot import this module
TOPIC_CONFIG = {
    "max.message.bytes": str(MAX_MESSAGE_BYTES),
    "compression.type": "producer",  # kept as produced: the broker does not recompress
    "cleanup.policy": "compact",  # keyed by job: the newest snapshot of every job stays
}
PRODUCER_DEFAULTS = {
    "message.max.bytes": MAX_MESSAGE_BYTES,
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
    existing one (compaction, 64 MiB messages, compressed by the producer). Returns the topic's name."""
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
    produce_snapshot(producer_conf, job, data, entry, timeout=timeout, topic=topic, in_parts=store.spreads(len(data)))


#: a snapshot is sent lz4-compressed when samples of it compress to at most this share with
#: zlib, whose entropy coding takes 10-20 % off float parameters that lz4 hardly shrinks (9 % of
#: a factorization machine): worth lz4's pass are snapshots of many repeats (a sparse model's zeros)
COMPRESSIBLE = 0.5
_SAMPLES, _SAMPLE_BYTES = 8, 8 << 10

#: the snapshot producers of the configuration used last (its key without the codec, and a
#: producer per codec), kept for the process: a new producer's first message waited ~0.1 s for
#: its connection and the topic's metadata, on every snapshot. One configuration only: a
#: process that talks to several clusters (tests, tools) must not keep a producer reconnecting
#: to each cluster it stopped using
_PRODUCERS: tuple[tuple, dict[str, Producer]] | None = None
_PRODUCER_LOCK = threading.Lock()


def snapshot_codec(data: bytes) -> str:
    """The snapshot producer's codec for ``data``: "lz4" when a few samples of it compress
    (zlib's fastest level, ~0.2 ms) to at most :data:`COMPRESSIBLE`, else "none"."""
    view = memoryview(data)
    if len(view) <= _SAMPLES * _SAMPLE_BYTES:
        samples = [view]
    else:
        step = (len(view) - _SAMPLE_BYTES) // (_SAMPLES - 1)
        samples = [view[i * step:i * step + _SAMPLE_BYTES] for i in range(_SAMPLES)]
    raw = sum(len(sample) for sample in samples)
    packed = sum(len(zlib.compress(sample, 1)) for sample in samples)
    return "lz4" if packed <= COMPRESSIBLE * raw else "none"


def _producer_conf(producer_conf: dict[str, Any], codec: str) -> dict[str, Any]:
    """The snapshot producer's configuration: ``producer_conf`` over the defaults and ``codec``
    (a ``compression.type`` in ``producer_conf`` wins)."""
    conf = {**PRODUCER_DEFAULTS, "compression.type": codec, **producer_conf}
    conf["message.max.bytes"] = max(int(conf.get("message.max.bytes", 0)), MAX_MESSAGE_BYTES + (1 << 20))
    return conf


def _conf_key(conf: dict[str, Any]) -> tuple:
    """The key of ``conf`` but its codec."""
    return tuple(sorted((k, repr(v)) for k, v in conf.items() if k != "compression.type"))


def _producer(conf: dict[str, Any]) -> Producer:
    global _PRODUCERS
    key, codec = _conf_key(conf), str(conf.get("compression.type"))
    with _PRODUCER_LOCK:
        if _PRODUCERS is None or _PRODUCERS[0] != key:
            _PRODUCERS = (key, {})
        if codec not in _PRODUCERS[1]:
            _PRODUCERS[1][codec] = Producer(conf)
        return _PRODUCERS[1][codec]


def _forget_producer(conf: dict[str, Any]) -> None:
    with _PRODUCER_LOCK:
        if _PRODUCERS is not None and _PRODUCERS[0] == _conf_key(conf):
            _PRODUCERS[1].pop(str(conf.get("compression.type")), None)


def warm_producer(producer_conf: dict[str, Any], topic: str | None = None, data: bytes | None = None) -> None:
    """Have the producer for snapshot ``data`` (its codec: :func:`snapshot_codec`; without
    ``data``, the uncompressed one: float parameters') connect and fetch ``topic``'s metadata
    in the background, so that the snapshot is sent at once. A finalize calls this before it
    reads the state, and again with the snapshot's bytes before it stores them."""
    conf = _producer_conf(producer_conf, "none" if data is None else snapshot_codec(data))
    producer = _producer(conf)

    def fetch() -> None:
        try:
            # made with its configuration first: a producer's metadata request for a missing
            # topic lets a broker with auto.create.topics.enable create it with the defaults
            ensure_snapshot_topic(conf, topic)
            producer.list_topics(snapshot_topic(topic), timeout=10)
        except (KafkaException, SnapshotPublishError):
            pass  # the produce itself reports what is wrong

    threading.Thread(target=fetch, name="snapshot-producer-warm-up", daemon=True).start()


def part_key(job: str, index: int) -> bytes:
    """The message key of part ``index`` of ``job``'s snapshots (job names hold no ``/``)."""
    return f"{job}/part/{index}".encode("utf-8")


def produce_snapshot(
    producer_conf: dict[str, Any], job: str, data: bytes, metadata: dict[str, Any], *, timeout: float = 60.0,
    topic: str | None = None, in_parts: bool = False,
) -> None:
    """Produce already-stored snapshot bytes to the snapshot ``topic`` (:func:`snapshot_topic`;
    key = job, headers version/algorithm), creating the topic when missing, and wait for the
    acknowledgement. In parts (see the module's docstring) when ``in_parts`` or when the
    snapshot exceeds one message."""
    topic = snapshot_topic(topic)
    version = metadata.get("version")
    conf = _producer_conf(producer_conf, snapshot_codec(data))
    ensure_snapshot_topic(conf, topic)
    producer = _producer(conf)
    headers = [("version", str(version).encode())]
    if metadata.get("algorithm") is not None:
        headers.append(("algorithm", str(metadata["algorithm"]).encode()))
    size, parts = len(data), 1
    try:
        if in_parts or len(data) > whole_bytes():
            partition = _partition_of(producer, topic, job, version, timeout)
            pieces = split(data)
            keys = [part_key(job, i) for i in range(len(pieces))]
            _deliver(producer, conf, topic, job, version, timeout, partition,
                     [(k, bytes(p), [*headers, ("part", str(i).encode())])
                      for i, (k, p) in enumerate(zip(keys, pieces))])
            data = Manifest.of(job, int(version), data, pieces, [k.decode() for k in keys]).to_bytes()
            headers.append(("parts", str(len(pieces)).encode()))
            parts = len(pieces)
        else:
            partition = -1  # the partitioner's choice by key
        msg = _deliver(producer, conf, topic, job, version, timeout, partition,
                       [(job.encode("utf-8"), data, headers)])
    except SnapshotPublishError:
        _CHECKED.discard((str(conf.get("bootstrap.servers")), topic))
        _forget_producer(conf)
        raise
    log.info("published snapshot %s@%s (%d bytes in %d part(s)) to %s[%d]@%d", job, version, size, parts, topic,
             msg.partition(), msg.offset())


def _partition_of(producer: Producer, topic: str, job: str, version: Any, timeout: float) -> int:
    """The one partition all messages of a snapshot in parts go to (the job's, by a stable hash)."""
    try:
        partitions = producer.list_topics(topic, timeout=timeout).topics[topic].partitions
    except (KafkaException, KeyError) as exc:
        raise SnapshotPublishError(f"cannot read the partitions of {topic} for snapshot {job}@{version}: {exc}") from exc
    return zlib.crc32(job.encode("utf-8")) % len(partitions)


def _deliver(producer: Producer, conf: dict[str, Any], topic: str, job: str, version: Any, timeout: float,
             partition: int, messages: list[tuple[bytes, bytes, list]]) -> Any:
    """Produce ``messages`` (key, value, headers) and wait until the broker acknowledged each;
    returns the last one's delivery report."""
    outcomes: list[tuple[Any, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        for key, value, headers in messages:
            producer.produce(topic, key=key, value=value, headers=headers, partition=partition,
                             on_delivery=lambda err, msg: outcomes.append((err, msg)))
        # the producer is the process's (see _PRODUCERS): what is still queued may be another
        # thread's, and another thread's flush may serve these reports, so count the reports
        producer.flush(timeout)
        while len(outcomes) < len(messages) and time.monotonic() < deadline:
            producer.poll(0.05)
    except (KafkaException, BufferError) as exc:
        raise SnapshotPublishError(f"cannot produce snapshot {job}@{version}: {exc}") from exc
    if len(outcomes) < len(messages):
        raise SnapshotPublishError(f"snapshot {job}@{version} not delivered within {timeout}s")
    for err, _ in outcomes:
        refused = refusal(err, str(conf.get("bootstrap.servers")), f"topic {topic}")
        if refused is not None:
            raise refused  # not an outage: retrying cannot succeed
        if err is not None:
            raise SnapshotPublishError(f"snapshot {job}@{version} delivery failed: {err}")
    return outcomes[-1][1]
