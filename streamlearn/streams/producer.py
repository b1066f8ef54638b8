"""Producing training data: a small Python API around ``confluent_kafka.Producer``.

Messages are Avro single-object encoded ``training_batch`` (many rows, the fast path) or
``training_record`` (one example) values. Idempotence is on, messages linger briefly for
throughput, and compression is off: feature values are float32 bit patterns, of which lz4
kept 96 % (308 of 320 MB of the dense benchmark set) while costing CPU in the producer and
in every worker; pass ``{"compression.type": "lz4"}`` for a slow link. Delivery errors are
raised (at the next send or at :meth:`Producer.flush`), never swallowed.
"""
from __future__ import annotations

import itertools
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as _KafkaProducer

from streamlearn.batch import SparseRows
from streamlearn.config import KafkaUnreachable, kafka_logging
from streamlearn.streams.files import BadRow, read_examples
from streamlearn.streams.access import RefusalWatch
from streamlearn.streams.topics import DEFAULT_RETENTION, REACH_TIMEOUT_S, dlq_topic, ensure_topic, training_topic_config
from streamlearn.wire.decode import Rejection, rejection_headers
from streamlearn.wire.serde import encode_training_batch, encode_training_record

#: Upper bound for one message's uncompressed value (the broker default limit is ~1 MB).
MAX_MESSAGE_BYTES = 900_000
#: messages per partition the default batch size leaves a small data set (see send_batch)
MESSAGES_PER_PARTITION = 8

DEFAULTS = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "none",
    "linger.ms": 20,
    "batch.size": 1_000_000,
}


class ProduceError(RuntimeError):
    """Kafka did not take a message."""


class Producer:
    """``Producer(bootstrap, extra_conf)`` — use as a context manager (flushes on exit)."""

    def __init__(self, bootstrap, extra_conf: dict | None = None, batch_size: int = 1000):
        conf = dict(DEFAULTS)
        if isinstance(bootstrap, dict):
            conf.update(bootstrap)
        else:
            conf["bootstrap.servers"] = bootstrap
        conf.update(extra_conf or {})
        self.conf = conf = kafka_logging(conf)
        self.batch_size = int(batch_size)
        self._down_since: float | None = None  # librdkafka said every broker is down, and no delivery since
        self._refused = RefusalWatch(str(conf.get("bootstrap.servers")))
        self._producer = _KafkaProducer({**conf, "error_cb": self._on_error})
        self._errors: list[str] = []
        self._partitions: dict[str, int] = {}
        self._next: dict[str, int] = {}
        self.messages_sent = 0
        self.records_sent = 0

    # -- plumbing -------------------------------------------------------------------------
    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self._errors.append(str(err))
        else:
            self._down_since = None

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self._down_since is None:
            self._down_since = time.monotonic()
        self._refused(err)

    def _check_reachable(self) -> None:
        """Give up on a broker that stays down (messages would otherwise wait out
        ``message.timeout.ms``, 5 minutes by default), or that refused us."""
        self._refused.check()
        if self._down_since is not None and time.monotonic() - self._down_since > REACH_TIMEOUT_S:
            raise KafkaUnreachable(f"cannot reach Kafka at {self.conf.get('bootstrap.servers')}: every broker "
                                   f"has been down for {REACH_TIMEOUT_S:.0f} s with messages undelivered")

    def _raise_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            raise ProduceError(f"{len(errors)} message(s) not delivered: {errors[:3]}")

    def n_partitions(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            md = self._producer.list_topics(timeout=10)  # by name would auto-create it
            t = md.topics.get(topic)
            if t is None or not t.partitions:
                raise ProduceError(f"topic {topic!r} does not exist (create it with ensure_topic)")
            n = self._partitions[topic] = len(t.partitions)
        return n

    def _round_robin(self, topic: str) -> int:
        n = self.n_partitions(topic)
        p = self._next.get(topic, 0)
        self._next[topic] = (p + 1) % n
        return p

    def _produce(self, topic: str, value: bytes, key=None, partition: int | None = None, headers=None) -> None:
        self._raise_errors()
        kwargs = {"value": value, "on_delivery": self._on_delivery}
        if key is not None:
            kwargs["key"] = key.encode() if isinstance(key, str) else key
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.1)
                self._check_reachable()
            except KafkaException as exc:
                raise ProduceError(f"cannot produce to {topic!r}: {exc}") from None
        self._producer.poll(0)
        self.messages_sent += 1

    # -- public API -----------------------------------------------------------------------
    def send_batch(self, topic: str, X, y=None, w=None, keys=None, batch_size: int | None = None) -> int:
        """Send the rows of ``X`` (dense array or SparseRows) as ``training_batch`` messages of
        at most ``batch_size`` rows (fewer when a message would exceed ~900 kB). Without keys
        messages go round-robin over the partitions; with per-row ``keys`` rows are grouped by
        a stable hash of their key (the same key always lands in the same partition).
        ``batch_size=None``: the producer's own, but small enough that a small data set still
        makes :data:`MESSAGES_PER_PARTITION` messages a partition, so that every worker of an
        elastic group gets a share and commits often. A worker accepts or rejects a message
        as a whole, so rows it would reject (:func:`lone_rows`) go in messages of their own:
        only they are dead-lettered. Returns the number of records sent."""
        n = len(X) if isinstance(X, SparseRows) else len(np.asarray(X))
        if batch_size is None:
            batch_size = min(self.batch_size, max(1, -(-n // (MESSAGES_PER_PARTITION * self.n_partitions(topic)))))
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        sparse = isinstance(X, SparseRows)
        if not sparse:
            X = np.asarray(X, dtype=np.float32)
            if X.ndim == 1:
                X = X[:, None]
        y = None if y is None else np.asarray(y, dtype=np.float64).reshape(-1)
        w = None if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
        for name, a in (("y", y), ("w", w), ("keys", keys)):
            if a is not None and len(a) != n:
                raise ValueError(f"{name} has {len(a)} entries for {n} rows")
        lone = lone_rows(X, y, w)
        if keys is None:
            groups = [(None, np.arange(n))]
        else:
            keys = [None if k is None else str(k) for k in keys]
            nparts = self.n_partitions(topic)
            part = np.array([0 if k is None else zlib.crc32(k.encode()) % nparts for k in keys], dtype=np.int64)
            groups = [(int(p), np.flatnonzero(part == p)) for p in np.unique(part)]
        for partition, rows in groups:
            alone = lone[rows]
            if sparse:
                nnz_per_row = np.diff(X.indptr)
                step_bytes = None
            else:
                step_bytes = X.shape[1] * 4 + 16
            start = 0
            while start < len(rows):
                stop = min(start + batch_size, len(rows))
                first_lone = np.flatnonzero(alone[start:stop])
                if first_lone.size:  # rows keep their order: a lone row ends the message before it
                    stop = start + max(1, int(first_lone[0]))
                if sparse:
                    sub = rows[start:stop]
                    while stop - start > 1 and int(nnz_per_row[sub].sum()) * 12 + len(sub) * 24 > MAX_MESSAGE_BYTES:
                        stop = start + max(1, (stop - start) // 2)
                        sub = rows[start:stop]
                elif (stop - start) * step_bytes > MAX_MESSAGE_BYTES:
                    stop = start + max(1, MAX_MESSAGE_BYTES // step_bytes)
                self._send_rows(topic, X, y, w, keys, rows[start:stop], partition)
                start = stop
        return n

    def _send_rows(self, topic: str, X, y, w, keys, sel: np.ndarray, partition: int | None) -> None:
        contiguous = len(sel) == 0 or sel[-1] - sel[0] == len(sel) - 1
        Xs = X.take(sel) if isinstance(X, SparseRows) else (X[sel[0]:sel[-1] + 1] if contiguous else X[sel])
        value = encode_training_batch(
            Xs,
            None if y is None else y[sel],
            None if w is None else w[sel],
            None if keys is None else [keys[i] for i in sel])
        self._produce(topic, value, partition=self._round_robin(topic) if partition is None else partition)
        self.records_sent += len(sel)

    def send_record(self, topic: str, features, label=None, weight: float = 1.0, key: str | None = None,
                    event_time: int | None = None) -> None:
        """One ``training_record`` message. ``features`` is a dense vector or an
        ``(indices, values, n_features)`` tuple. With a ``key`` Kafka's key hashing picks the
        partition, else round-robin."""
        if isinstance(features, tuple) and len(features) == 3:
            indices, values, n_features = features
            value = encode_training_record(indices=indices, values=values, n_features=n_features, label=label,
                                           weight=weight, key=key, event_time=event_time)
        else:
            value = encode_training_record(features, label=label, weight=weight, key=key, event_time=event_time)
        self._produce(topic, value, key=key, partition=None if key is not None else self._round_robin(topic))
        self.records_sent += 1

    def send_raw(self, topic: str, value: bytes, headers=None, key=None, partition: int | None = None) -> None:
        """Send ``value`` as-is (for tests of bad input)."""
        self._produce(topic, value, key=key, partition=partition, headers=headers)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every message's delivery; raise :class:`ProduceError` on any failure, or
        :class:`KafkaUnreachable` when every broker stays down."""
        deadline = time.monotonic() + timeout
        left = len(self._producer)
        while left and time.monotonic() < deadline:
            left = self._producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
            self._raise_errors()
            self._check_reachable()
        self._raise_errors()
        if left:
            raise ProduceError(f"{left} message(s) still undelivered after {timeout}s")

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.flush()
        else:
            self._producer.flush(10)


def lone_rows(X, y=None, w=None) -> np.ndarray:
    """Rows a worker may reject on their own, whatever the job: a missing, NaN or infinite
    feature value, an infinite label, a non-finite or negative weight, or — among labelled
    rows — a missing label (a supervised job rejects it; an unlabelled data set, all labels
    missing, stays batched)."""
    if isinstance(X, SparseRows):
        bad = np.zeros(len(X), dtype=bool)
        bad[X.row_ids()[~np.isfinite(X.values)]] = True
    else:
        bad = ~np.isfinite(X).all(axis=1)
    if y is not None:
        missing = np.isnan(y)
        bad |= np.isinf(y) | (missing if not missing.all() else False)
    if w is not None:
        bad |= ~np.isfinite(w) | (w < 0)
    return bad


@dataclass
class FileProduced:
    """What :func:`produce_file` sent: the examples to the topic, the rows that could not be
    examples to its dead-letter topic (with the reason and the row as written)."""

    records: int = 0
    dead_lettered: int = 0
    first_bad: str | None = None  # "row N: reason" of the first dead-lettered row


def produce_file(bootstrap, topic: str, path, label_column: str | None = None, partitions: int | None = None,
                 batch_size: int | None = None, n_features: int | None = None, feature_columns: list[str] | None = None,
                 extra_conf: dict | None = None, header: bool | None = None,
                 progress: Callable[[int], None] | None = None,
                 retention: str | int | None = DEFAULT_RETENTION) -> FileProduced:
    """Produce the examples of a .csv/.jsonl/.parquet file to ``topic``. ``partitions``:
    create the topic with that many partitions if missing (otherwise a missing topic is
    created with one), keeping records for ``retention``
    (:func:`~streamlearn.streams.topics.retention_ms`; None: the broker's default). ``batch_size`` rows per message (None:
    :meth:`Producer.send_batch`'s default); 1 sends one ``training_record`` message per
    example. A row that cannot be an example (:class:`~streamlearn.streams.files.BadRow`)
    goes to the topic's dead-letter topic with the reason, as a worker's rejections do;
    rows with a value the workers judge (a missing feature, a label outside the classes)
    are sent in messages of their own (:func:`lone_rows`). ``bootstrap`` is a bootstrap
    string or a client configuration dict; ``progress`` is called with the records sent so
    far after each chunk of the file. A file-level problem (no such column, a column of
    words) is a :class:`~streamlearn.streams.files.FileFormatError` before anything is sent."""
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    conf = {"bootstrap.servers": bootstrap} if isinstance(bootstrap, str) else dict(bootstrap)
    done = FileProduced()
    bad_rows: list[BadRow] = []
    chunks = read_examples(Path(path), label_column=label_column, feature_columns=feature_columns,
                           n_features=n_features, header=header, on_bad_row=bad_rows.append)
    first = next(chunks, None)  # file-level errors (columns, types) before any topic is created
    ensure_topic(conf, topic, partitions or 1, training_topic_config(retention))
    with Producer(conf, extra_conf) as producer:
        for X, y in itertools.chain([first] if first is not None else [], chunks):
            if bad_rows:
                _dead_letter_rows(producer, conf, topic, path, bad_rows, done)
            if batch_size == 1:
                for i in range(len(X)):
                    label = None if y is None or np.isnan(y[i]) else float(y[i])
                    if isinstance(X, SparseRows):
                        s, e = X.indptr[i], X.indptr[i + 1]
                        producer.send_record(topic, (X.indices[s:e], X.values[s:e], X.n_features), label=label)
                    else:
                        producer.send_record(topic, X[i], label=label)
                done.records += len(X)
            else:
                done.records += producer.send_batch(topic, X, y, batch_size=batch_size)
            if progress is not None:
                progress(done.records)
        if bad_rows:
            _dead_letter_rows(producer, conf, topic, path, bad_rows, done)
    return done


def _dead_letter_rows(producer: Producer, conf: dict, topic: str, path, bad_rows: list[BadRow],
                      done: FileProduced) -> None:
    dlq = dlq_topic(topic)
    if not done.dead_lettered:
        ensure_topic(conf, dlq, 1)
        done.first_bad = f"row {bad_rows[0].row}: {bad_rows[0].reason}"
    for bad in bad_rows:
        headers = rejection_headers(Rejection(0, bad.reason, 1)) + [
            ("streamlearn.source", f"{path}:{bad.row}".encode())]
        producer.send_raw(dlq, bad.text.encode(), headers=headers)
    done.dead_lettered += len(bad_rows)
    bad_rows.clear()


__all__ = ["Producer", "ProduceError", "produce_file", "FileProduced", "lone_rows", "MAX_MESSAGE_BYTES"]
