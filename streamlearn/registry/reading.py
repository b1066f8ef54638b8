"""Reading a topic's offset ranges once, in memory, with each message's coordinates and
timestamp, and decoding them as a model's workers do (evaluations, backtests and the gate's
validation data: data lineage names records by partition and offset)."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np
import redis
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition

from streamlearn.algorithms.base import Algorithm
from streamlearn.errors import UserError
from streamlearn.registry.data import Ranges, RangeError, Records, covers
from streamlearn.streams.topics import consumer_conf, watermarks
from streamlearn.wire.decode import DecodeResult, decode_messages
from streamlearn.wire.schema_store import SharedSchemas


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    timestamp: int | None  # Kafka timestamp, ms; None when the message has none
    value: bytes


def topic_ranges(kafka_conf: dict, topic: str, ranges: Ranges | None = None) -> Ranges:
    """``ranges`` checked against the topic's watermarks (a missing topic or a range outside
    what the topic holds: a one-line :class:`~streamlearn.UserError`); None: all it holds."""
    marks = watermarks(kafka_conf, topic)
    if ranges is None:
        return {p: [(lo, hi)] for p, (lo, hi) in sorted(marks.items()) if hi > lo}
    for p, rs in ranges.items():
        if p not in marks:
            raise RangeError(f"topic {topic} has no partition {p} (it has {sorted(marks)})")
        lo, hi = marks[p]
        for a, b in rs:
            if a < lo or b > hi:
                raise RangeError(f"--offsets {p}:{a}-{b}: partition {p} of {topic} holds offsets {lo}-{hi}")
    return ranges


def read_messages(kafka_conf: dict, topic: str, ranges: Ranges, timeout: float = 300.0) -> list[Message]:
    """Every message of ``topic`` in ``ranges`` (checked by :func:`topic_ranges`), in offset
    order per partition."""
    todo = {p: (rs[0][0], rs[-1][1]) for p, rs in ranges.items() if rs}
    out: list[Message] = []
    if not todo:
        return out
    consumer = Consumer({**consumer_conf(kafka_conf), "group.id": f"streamlearn-registry-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, a) for p, (a, _) in todo.items()])
    deadline = time.monotonic() + timeout
    try:
        while todo:
            if time.monotonic() > deadline:
                raise UserError(f"topic {topic}: the requested offsets were not read within {timeout:.0f} s")
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                p = m.partition()
                if p not in todo:
                    continue
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        del todo[p]  # nothing more to read (a gap at the end: transaction markers)
                    continue
                if covers(ranges[p], m.offset()):
                    kind, ts = m.timestamp()
                    out.append(Message(p, m.offset(), None if kind == TIMESTAMP_NOT_AVAILABLE or ts < 0 else ts,
                                       m.value() or b""))
                if m.offset() >= todo[p][1] - 1:
                    del todo[p]
    finally:
        consumer.close()
    out.sort(key=lambda m: (m.partition, m.offset))
    return out


def decode_for(algo: Algorithm, messages: list[Message], client: redis.Redis) -> DecodeResult:
    """The messages decoded as ``algo``'s workers decode them (its width, labels, row rule)."""
    if getattr(algo, "decode_window", None) is not None:
        raise UserError(f"{algo.name} reads its own record type: evaluating it on a topic is not supported")
    return decode_messages([m.value for m in messages], algo.n_features(), algo.accepts_sparse, algo.needs_label,
                           shared=SharedSchemas(client), labels=algo.label_coding(), row_rule=algo.row_rule())


def records_of(topic: str, messages: list[Message], result: DecodeResult) -> Records:
    """Per message its coordinates and the number of its records the model could read."""
    per_message = np.bincount(result.row_messages(), minlength=len(messages)) if messages else []
    return Records(topic, [(m.partition, m.offset, m.timestamp, int(n)) for m, n in zip(messages, per_message)])


__all__ = ["Message", "decode_for", "read_messages", "records_of", "topic_ranges"]
