"""The data contract of a job: inspect a topic's records at ``job create`` (their width, labels
and number) and infer the job parameters those settle (the contract's "auto" values).

- ``n_features="auto"``: the width the records carry (a dense record's length; a sparse
  record or batch carries its logical width in its ``n_features`` field, which the schemas
  require, so it is never guessed). An explicit value the records contradict is refused.
- ``classes="auto"`` (classifiers): binary 0/1 labels stay as they are, any other two
  values become the mapping (sorted); multiclass labels that are integers in
  [0, num_classes) stay as they are, else the distinct labels (sorted) are the classes,
  and ``num_classes="auto"`` is their number.
- ``mini_batch_size="auto"`` of a bounded job: :func:`default_step_rows` of its records.

Only a bounded sample is read (:data:`SAMPLE_RECORDS` records, :data:`SAMPLE_BYTES` bytes
from the start of each partition); a label the sample did not show is dead-lettered later
with the reason, so declare ``classes`` when the sample may miss a class.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from streamlearn.algorithms.base import AUTO, Algorithm, ParamError
from streamlearn.batch import Batch
from streamlearn.labels import LabelCoding
from streamlearn.wire.decode import decode_messages, schema_ids
from streamlearn.streams.topics import consumer_conf

#: enough to see the width and the labels of a data set; job create reads it before the job
#: starts, so a larger sample delays every bounded job (200,000 records cost the benchmark's
#: train leg ~1 s of 4)
SAMPLE_RECORDS = 20_000
SAMPLE_BYTES = 16 << 20
#: more distinct labels than this are not classes (a regressor's target, most likely)
MAX_CLASSES = 1_000


def default_step_rows(n_records: int) -> int:
    """Examples per update step of a bounded job of ``n_records``: about 16 steps per pass
    over a small data set (at least 64 rows: smaller steps were noisier on every data set
    measured), the default 1,000 from 16,000 records up, so large data is unchanged."""
    return int(min(1_000, max(64, n_records // 16)))


def default_epochs(n_records: int) -> int:
    """Passes over a bounded job's data: enough that a small data set sees ~20,000 examples
    (at most 50 passes), one pass from 20,000 records up."""
    if n_records <= 0:
        return 1
    return int(min(50, max(1, math.ceil(20_000 / n_records))))


@dataclass
class TopicSample:
    """What a sample of a topic's records says about the data contract."""

    topic: str
    n_records: int = 0  # records in the sampled range: exact when ``complete``, else extrapolated
    complete: bool = True
    sampled: int = 0  # records decoded (accepted ones; undecodable messages are not data)
    widths: dict[int, int] = field(default_factory=dict)  # width -> records of that width
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))  # distinct finite labels, sorted
    many_labels: bool = False  # more than MAX_CLASSES distinct labels
    schemas: set[str] = field(default_factory=set)  # writer schemas of the sampled messages (data lineage)

    def add(self, batch_labels: np.ndarray | None, width: int, n: int) -> None:
        """Count ``n`` accepted records of ``width`` with labels ``batch_labels``."""
        if n == 0:
            return
        self.sampled += n
        self.widths[width] = self.widths.get(width, 0) + n
        if batch_labels is not None and not self.many_labels:
            y = np.asarray(batch_labels, dtype=np.float64)
            self.labels = np.unique(np.concatenate([self.labels, y[np.isfinite(y)]]))
            if len(self.labels) > MAX_CLASSES:
                self.many_labels, self.labels = True, self.labels[:MAX_CLASSES]

    @classmethod
    def of_batches(cls, topic: str, batches: Iterable[Batch]) -> "TopicSample":
        """The sample of in-memory batches (every record seen: complete)."""
        sample = cls(topic)
        for b in batches:
            sample.add(b.y, int(b.X.shape[1]), len(b))
        sample.n_records = sample.sampled
        return sample


def sample_topic(kafka_conf: dict, topic: str, marks: dict[int, tuple[int, int]], timeout: float = 30.0) -> TopicSample:
    """Read each partition of ``topic`` from its low watermark (``marks``: partition ->
    (low, high)) until its high one or the sample bounds, and count what they hold."""
    sample = TopicSample(topic)
    todo = {p: hi for p, (lo, hi) in marks.items() if hi > lo}
    total_messages = sum(hi - lo for lo, hi in marks.values())
    if not todo:
        return sample
    consumer = Consumer({**consumer_conf(kafka_conf), "group.id": f"streamlearn-inspect-{uuid.uuid4().hex}", "enable.auto.commit": False,
                         "enable.partition.eof": False})
    consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in todo])
    messages = nbytes = 0
    deadline = time.monotonic() + timeout
    try:
        while todo and sample.sampled < SAMPLE_RECORDS and nbytes < SAMPLE_BYTES and time.monotonic() < deadline:
            values = []
            for m in consumer.consume(num_messages=500, timeout=0.5):
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        sample.complete = False
                    continue
                if m.partition() in todo and m.offset() < todo[m.partition()]:
                    values.append(m.value() or b"")
                    if m.offset() >= todo[m.partition()] - 1:
                        del todo[m.partition()]
            messages += len(values)
            nbytes += sum(len(v) for v in values)
            sample.schemas |= schema_ids(values)
            _sample_messages(sample, values)
    finally:
        consumer.close()
    sample.complete = sample.complete and not todo
    sample.n_records = (sample.sampled if sample.complete or not messages
                        else round(sample.sampled * total_messages / messages))
    return sample


def _sample_messages(sample: TopicSample, values: list[bytes]) -> None:
    """Decode ``values`` (any width: the first message's, then each message of another width
    on its own) into ``sample``."""
    if not values:
        return
    result = decode_messages(values, None, True, False)
    for piece in result.pieces:
        sample.add(piece.y, result.n_features, piece.n)
    other_width = [r.index for r in result.rejected if r.reason.startswith(("dimension ", "sparse n_features "))]
    for i in other_width:
        _sample_messages(sample, [values[i]])


def infer_params(algorithm: Algorithm, sample: TopicSample, bounded: bool) -> dict[str, Any]:
    """The parameter values the topic's records settle for ``algorithm`` (its "auto" ones),
    or :class:`ParamError` (one line) when the records contradict an explicit value or
    cannot settle an "auto" one."""
    out: dict[str, Any] = {}
    params = algorithm.get_params()
    if "n_features" in params:
        out.update(_n_features(algorithm, params["n_features"], sample))
    if "classes" in params and params.get("predictor_type") != "regressor":
        out.update(_classes(algorithm, params, sample))
    if params.get("mini_batch_size") == AUTO and bounded and sample.n_records:
        out["mini_batch_size"] = default_step_rows(sample.n_records)
    return out


def _n_features(algorithm: Algorithm, value, sample: TopicSample) -> dict[str, Any]:
    t, name = sample.topic, algorithm.name
    widths = sorted(sample.widths, key=lambda w: -sample.widths[w])
    if value == AUTO:
        if not widths:
            raise ParamError(f"{name}: n_features=auto but topic {t!r} has no records to infer it from; "
                             f"produce the data first or pass --param n_features=D")
        if len(widths) > 1:
            raise ParamError(f"{name}: n_features=auto but topic {t!r}'s records have differing widths "
                             f"{_counts(sample.widths)}; pass --param n_features=D (other widths are dead-lettered)")
        return {"n_features": widths[0]}
    if widths and int(value) not in sample.widths:
        have = f"{widths[0]} features" if len(widths) == 1 else f"widths {_counts(sample.widths)}"
        raise ParamError(f"{name}: n_features={value} but topic {t!r}'s records have {have}")
    return {}


def _counts(widths: dict[int, int]) -> str:
    return ", ".join(f"{w} ({n} records)" for w, n in sorted(widths.items()))


def _classes(algorithm: Algorithm, params: dict, sample: TopicSample) -> dict[str, Any]:
    name, t, pt = algorithm.name, sample.topic, params["predictor_type"]
    num_classes = params.get("num_classes", 2)
    if params["classes"] != AUTO:
        k = len(algorithm.label_coding().classes)
        return {"num_classes": k} if pt == "multiclass_classifier" and num_classes == AUTO else {}
    labels = sample.labels
    shown = "[" + ", ".join(f"{v:g}" for v in labels[:10]) + (", ..." if len(labels) > 10 else "") + "]"
    if sample.many_labels:
        raise ParamError(f"{name}: topic {t!r}'s labels take more than {MAX_CLASSES} values: not classes "
                         f"(predictor_type=regressor?)")
    if pt == "binary_classifier":
        if set(labels.tolist()) <= {0.0, 1.0}:
            return {"classes": [0, 1]}
        if len(labels) == 2:
            return {"classes": LabelCoding.of(labels).to_json()}
        raise ParamError(f"{name}: binary_classifier, but topic {t!r}'s labels take {len(labels)} value(s) {shown}; "
                         f"declare --param classes=NEGATIVE,POSITIVE"
                         + (" or use predictor_type=multiclass_classifier" if len(labels) > 2 else ""))
    integral = bool(np.all(labels == np.floor(labels)))
    if num_classes != AUTO and integral and (not len(labels) or (labels[0] >= 0 and labels[-1] < num_classes)):
        return {"classes": list(range(int(num_classes)))}
    if len(labels) < 2:
        raise ParamError(f"{name}: cannot infer the classes from topic {t!r}: its labels take {len(labels)} "
                         f"value(s) {shown}; declare --param classes=... (or num_classes)")
    if num_classes != AUTO and len(labels) != num_classes:
        raise ParamError(f"{name}: num_classes={num_classes} but topic {t!r}'s labels take {len(labels)} values "
                         f"{shown}; declare --param classes=... to map them")
    return {"classes": LabelCoding.of(labels).to_json(), "num_classes": len(labels)}


__all__ = ["TopicSample", "default_epochs", "default_step_rows", "infer_params", "sample_topic"]
