"""The gate's validation data: ``job create … --gate-topic T [--gate-offsets P:A-B,…]``.

The ranges are fixed when the job is created (what the topic holds then, or the offsets
given), so every snapshot of the job is judged on the same records. They are read and
decoded as an evaluation reads its data (:mod:`streamlearn.registry.reading`) and scored
with ``Model.score`` (the training code's metrics) for the candidate and for the model it
is compared with. They must not be training data of the job or of its ancestors (the
registry's leakage rule: the same topic and an offset inside a training range): refused at
job creation, and checked again at each decision against the candidate's own lineage,
which for a promoted model is another job's.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import redis

from streamlearn.algorithms.base import Algorithm, Model
from streamlearn.batch import Batch
from streamlearn.errors import UserError
from streamlearn.monitoring.gate import OnData
from streamlearn.monitoring.gate_expr import RECORDS, GateError, parse_gate
from streamlearn.registry.data import Ranges, Records, TrainingData, leakage, ranges_to_json
from streamlearn.registry.reading import decode_for, read_messages, records_of, topic_ranges

log = logging.getLogger("streamlearn.gate")

#: an offset beyond any partition's end: an unbounded job trains on everything from its start
UNBOUNDED = 2**63 - 1
#: gate data sets this process keeps decoded (a job's periodic snapshots are judged on the same records)
KEPT = 2
_kept: dict[tuple[str, ...], "GateData"] = {}


@dataclass(frozen=True)
class GateData:
    """The records of a gate topic's ranges, decoded for one algorithm."""

    topic: str
    ranges: Ranges
    records: Records
    batch: Batch
    rejected: int  # records the model could not read

    def describe(self) -> dict[str, Any]:
        return {"topic": self.topic, "partitions": ranges_to_json(self.ranges), "records": self.records.n_records,
                "rejected": self.rejected, "event_time": self.records.event_time()}


def gate_metrics(gates: list[str]) -> list[str]:
    """The metrics the ``--gate`` expressions score on data (all but ``records_applied``)."""
    return list(dict.fromkeys(m for m in (parse_gate(text).metric for text in gates) if m != RECORDS))


def read_gate_data(client: redis.Redis, kafka_conf: dict, algo: Algorithm, topic: str,
                   ranges: Ranges | None = None) -> GateData:
    """``ranges`` of ``topic`` (None: all it holds now) decoded for ``algo``: a one-line
    :class:`~streamlearn.UserError` for a missing topic, ranges outside it, or no record
    that fits the model."""
    ranges = topic_ranges(kafka_conf, topic, ranges)
    key = (topic, json.dumps(ranges_to_json(ranges)), algo.name, json.dumps(algo.get_params(), sort_keys=True,
                                                                          default=str))
    if key in _kept:
        return _kept[key]
    messages = read_messages(kafka_conf, topic, ranges)
    result = decode_for(algo, messages, client)
    if not result.n_records:
        why = result.rejected[0].reason if result.rejected else "no records in that range"
        raise GateError(f"--gate-topic {topic}: no record fits {algo.name} ({why})")
    data = GateData(topic, ranges, records_of(topic, messages, result), result.batch, result.n_rejected_records)
    while len(_kept) >= KEPT:
        del _kept[next(iter(_kept))]
    _kept[key] = data
    return data


def planned_training_data(name: str, topic: str, start_offsets: dict[int, int], end_offsets: dict[int, int],
                      bounded: bool) -> TrainingData:
    """What a job about to be created will train on: per partition ``[start, end)``, or
    from its start on when it is unbounded."""
    return TrainingData(name, topic, {p: [(lo, end_offsets[p] if bounded else UNBOUNDED)]
                                      for p, lo in start_offsets.items()}, None)


def offsets_text(partitions: dict[str, list[list[int]]]) -> str | None:
    """A job spec's gate ranges as ``--gate-offsets`` text (None: none)."""
    return ",".join(f"{p}:{a}-{b}" for p, rs in partitions.items() for a, b in rs) or None


def _leak_line(leak: dict[str, Any]) -> str:
    return (f"{leak['records']} of {leak['of']} gate records are training records of "
            + ", ".join(m["model"] for m in leak["models"]))


def check_held_out(data: GateData, lineage: list[TrainingData]) -> None:
    """:class:`GateError` when a record of ``data`` was (or will be) a training record of a
    model in ``lineage``."""
    leak = leakage(data.records, lineage, by_event_time=False)
    if leak is not None:
        raise GateError(f"--gate-topic {data.topic}: {_leak_line(leak)}; the gate must score on held-out data "
                        f"(another topic, or --gate-offsets outside the training ranges)")


def scores_on(model: Model, data: GateData, metrics: list[str]) -> dict[str, float]:
    """``{metric: Model.score}`` on the gate data; NaN where the model cannot score it."""
    out = {}
    for metric in metrics:
        try:
            out[metric] = float(model.score(data.batch, metric))
        except (ValueError, UserError) as exc:
            log.warning("gate: %s cannot score %s on %s: %s", model.algorithm, metric, data.topic, exc)
            out[metric] = math.nan
    return out


def judge_on_data(data: GateData, gates: list[str], candidate: Model, compared: Model | None,
                  compared_name: str, lineage: list[TrainingData]) -> OnData:
    """The gate's metrics on ``data`` for ``candidate`` and for ``compared`` (the published
    version, or the parent; None: none), and the held-out check against ``lineage`` (the
    candidate's training data and its ancestors')."""
    metrics = gate_metrics(gates)
    mine = scores_on(candidate, data, metrics)
    theirs = None if compared is None else scores_on(compared, data, metrics)
    leak = leakage(data.records, lineage, by_event_time=False)
    held_out = {"expr": "held_out", "passed": leak is None, "value": None,
                "detail": "no gate record is a training record of the model or its ancestors" if leak is None
                else _leak_line(leak)}
    finite = {k: (v if math.isfinite(v) else None) for k, v in mine.items()}
    record = {**data.describe(), "scores": finite, "compared_with": compared_name or None,
              "compared_scores": None if theirs is None else {k: (v if math.isfinite(v) else None)
                                                              for k, v in theirs.items()},
              "leakage": leak}
    return OnData(mine, theirs, record, [held_out])


def unreadable(topic: str, error: Exception) -> OnData:
    """The decision's input when the gate data cannot be read at finalize (deleted topic,
    expired retention): every data metric unmeasured and a failed ``gate_data`` check."""
    return OnData({}, None, {"topic": topic, "error": str(error)},
                  [{"expr": "gate_data", "passed": False, "value": None, "detail": f"unreadable: {error}"}])


__all__ = ["GateData", "check_held_out", "gate_metrics", "judge_on_data", "offsets_text", "planned_training_data", "read_gate_data",
           "scores_on", "unreadable"]
