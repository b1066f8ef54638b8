"""``streamlearn backtest NAME``: rolling-origin evaluation of an algorithm on a topic.

The topic's messages are ordered by event time (Kafka timestamp, then partition and offset);
the last ``windows`` horizons (records, or a duration of event time) are the test windows.
Window k trains on everything before its origin and is scored on the horizon after it. Each
window continues incrementally from the previous window's state (what its snapshot carries),
so K windows cost one pass over the data. Windows are cut at message boundaries: a message's
records share one offset, which the leakage check compares.

Training runs in this process (the initialize / update / commit / finalize sequence of
:func:`~streamlearn.runtime.local.fit_local`, which equals a one-worker job): a backtest is a
sequence of dependent, ordered steps over a bounded range, where jobs would add workers to
start and a group's partition assignment that is free to mix the order. Each window's model is
stored as snapshot ``NAME@k`` (continuable with ``job create --from-snapshot NAME@k``) with
its lineage, and each window's scores as an evaluation of it, leakage-checked; everything is
written in one transaction at the end, so a backtest that fails records nothing.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from streamlearn.algorithms import make_algorithm
from streamlearn.errors import UserError
from streamlearn.registry.data import Records, TrainingData, leakage, ranges_to_json
from streamlearn.registry.evaluation import decode_for, evaluation_entry
from streamlearn.registry.provenance import provenance
from streamlearn.registry.reading import Message, read_messages, topic_ranges
from streamlearn.registry.records import Registry, model_name
from streamlearn.registry.times import duration_ms
from streamlearn.runtime.jobs import check_name, with_data_contract
from streamlearn.runtime.local import fit_local
from streamlearn.runtime.predict import score_batch
from streamlearn.snapshots.format import encode, snapshot_of
from streamlearn.statestore.local import LocalState
from streamlearn.streams.topics import watermarks
from streamlearn.wire.decode import schema_ids


class BacktestError(UserError, ValueError):
    """A backtest that cannot be run as asked (name taken, too little data, bad horizon)."""


@dataclass(frozen=True)
class Horizon:
    """A test window's length: ``records`` or ``ms`` of event time."""

    records: int | None = None
    ms: int | None = None

    @classmethod
    def parse(cls, text: str | int) -> "Horizon":
        ms = duration_ms(str(text))
        if ms is not None and ms > 0:
            return cls(ms=ms)
        try:
            n = int(str(text))
        except ValueError:
            n = 0
        if n < 1:
            raise BacktestError(f"--horizon takes a number of records (500) or a duration of event time (1d, 6h), "
                                f"got {text!r}")
        return cls(records=n)


def origins(messages: list[Message], counts: np.ndarray, windows: int, horizon: Horizon) -> list[int]:
    """Message indices b_1 < … < b_K < b_{K+1} = len(messages): window k tests on messages
    [b_k, b_k+1) after training on [0, b_k)."""
    n = len(messages)
    if horizon.records is not None:
        cum = np.concatenate([[0], np.cumsum(counts)])
        total = int(cum[-1])
        bounds = [int(np.searchsorted(cum, total - (windows - k) * horizon.records, side="left"))
                  for k in range(windows)]
    else:
        if any(m.timestamp is None for m in messages):
            raise BacktestError("a duration --horizon needs every message to carry a timestamp; give records instead")
        times = np.array([m.timestamp for m in messages], dtype=np.int64)
        end = int(times.max()) + 1
        bounds = [int(np.searchsorted(times, end - (windows - k) * horizon.ms, side="left")) for k in range(windows)]
    bounds.append(n)
    if bounds[0] == 0 or not counts[:bounds[0]].sum():
        raise BacktestError(f"no data before the first origin: {windows} windows of {_text(horizon)} cover the "
                            f"whole topic")
    for k in range(windows):
        if not counts[bounds[k]:bounds[k + 1]].sum():
            raise BacktestError(f"window {k + 1} has no records to test on (horizon {_text(horizon)} at message "
                                f"boundaries); use fewer windows or a longer horizon")
    return bounds


def _text(h: Horizon) -> str:
    return f"{h.records} records" if h.records is not None else f"{h.ms} ms"


def _span(messages: list[Message], counts: np.ndarray, topic: str, lo: int, hi: int) -> Records:
    return Records(topic, [(m.partition, m.offset, m.timestamp, int(c))
                           for m, c in zip(messages[lo:hi], counts[lo:hi])])


def _steps(batch_rows: np.ndarray, full, step: int) -> list:
    return [full.take(batch_rows[i:i + step]) for i in range(0, len(batch_rows), step)]


def run_backtest(client: redis.Redis, kafka_conf: dict, name: str, algorithm: str, topic: str, windows: int,
                 horizon: str | int, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the backtest and record it (models ``NAME@1..K``, their evaluations, the summary);
    returns the summary."""
    check_name(name)
    registry = Registry(client)
    if registry.name_taken(name):
        raise BacktestError(f"{name!r} already names a job, a backtest or models: choose another name")
    if not isinstance(windows, int) or windows < 1:
        raise BacktestError(f"--windows must be a positive integer, got {windows!r}")
    h = Horizon.parse(horizon)
    marks = watermarks(kafka_conf, topic)
    algo, _ = with_data_contract(kafka_conf, topic, marks, make_algorithm(algorithm, params or {}), bounded=True)
    messages = read_messages(kafka_conf, topic, topic_ranges(kafka_conf, topic))
    messages.sort(key=lambda m: (m.timestamp if m.timestamp is not None else -1, m.partition, m.offset))
    result = decode_for(algo, messages, client)
    if not result.n_records:
        why = result.rejected[0].reason if result.rejected else "the topic is empty"
        raise BacktestError(f"topic {topic}: no record fits {algorithm}: {why}")
    row_msg = result.row_messages()
    counts = np.bincount(row_msg, minlength=len(messages))
    dead = np.zeros(len(messages), dtype=np.int64)
    for r in result.rejected:
        dead[r.index] += r.n_records
    bounds = origins(messages, counts, windows, h)
    full = result.batch
    state = LocalState()
    algo.initialize(state)
    state.commit()
    stored, evaluations, rows, lineage = [], [], [], []
    schemas = sorted(schema_ids([m.value for m in messages]))
    trained_lo = 0
    for k in range(1, windows + 1):
        origin, end = bounds[k - 1], bounds[k]
        train_rows = np.flatnonzero((row_msg >= trained_lo) & (row_msg < origin))
        model = fit_local(algo, _steps(train_rows, full, algo.step_rows), state=state)
        trained = _span(messages, counts, topic, 0, origin)
        ref = model_name(name, k)
        data = {"topic": topic, "partitions": ranges_to_json(trained.ranges()), "records_applied": trained.n_records,
                "records_dead_lettered": int(dead[:origin].sum()),
                "event_time": trained.event_time(), "epochs": 1, "schemas": schemas}
        lineage.insert(0, TrainingData.of(ref, {"data": data}))
        metadata = {"job": name, "algorithm": algo.name, "params": algo.get_params(), "topic": topic, "version": k,
                    "final": True, "offsets": {p: rs[-1][1] for p, rs in data["partitions"].items()},
                    "records_applied": trained.n_records, "records_dead_lettered": data["records_dead_lettered"],
                    "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    "parent": {"job": name, "version": k - 1} if k > 1 else None, "trained_from": None,
                    "data": data, "provenance": provenance(), "training_state": True,
                    "backtest": {"name": name, "window": k, "windows": windows, "horizon": str(horizon)}}
        snapshot = snapshot_of(model, metadata, algo.kept_state(state, model))
        stored.append((encode(snapshot), snapshot.metadata))
        test = _span(messages, counts, topic, origin, end)
        test_rows = np.flatnonzero((row_msg >= origin) & (row_msg < end))
        scores = score_batch(model, full.take(test_rows))
        leak = leakage(test, lineage, by_event_time=h.ms is not None)
        evaluations.append(evaluation_entry(snapshot.metadata, topic, test, int(dead[origin:end].sum()),
                                            messages[origin:end], scores, leak))
        rows.append({"window": k, "model": ref, "train_records": trained.n_records,
                     "train_event_time": trained.event_time(), "train_partitions": data["partitions"],
                     "test_records": test.n_records, "test_event_time": test.event_time(),
                     "test_partitions": ranges_to_json(test.ranges()), "scores": scores, "leakage": leak})
        trained_lo = origin
    summary = {"name": name, "algorithm": algo.name, "params": algo.get_params(), "topic": topic,
               "windows": rows, "horizon": str(horizon), "mean": _means([r["scores"] for r in rows]),
               "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(), **provenance()}
    _record(registry, name, stored, evaluations, summary)
    return summary


def _means(scores: list[dict[str, float | None]]) -> dict[str, float | None]:
    out = {}
    for metric in scores[0]:
        values = [s[metric] for s in scores if s.get(metric) is not None]
        out[metric] = float(np.mean(values)) if values else None
    return out


def _record(registry: Registry, name: str, stored: list[tuple[bytes, dict]], evaluations: list[dict],
            summary: dict) -> None:
    """Models, evaluations and summary in one transaction (all keys carry the tag ``{name}``)."""
    registry.store.register_job(name)
    with registry.redis.pipeline(transaction=True) as pipe:
        for data, metadata in stored:
            registry.store.put(name, data, metadata, pipe=pipe)
        ids = registry.queue_evaluations(pipe, name, evaluations)
        for row, eid in zip(summary["windows"], ids):
            row["evaluation"] = eid
        registry.queue_backtest(pipe, name, summary)
        pipe.execute()


__all__ = ["BacktestError", "Horizon", "run_backtest"]
