"""``streamlearn evaluate MODEL --topic T``: score a stored model on a topic's records with the
training code's metrics (``Model.score``), check them against the training data of the model
and its ancestors (leakage), and record the evaluation with its data lineage.

Every check that can fail on user input (the model, the metrics, the topic, the offsets, the
records fitting the model) runs before anything is written: a bad input records nothing.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any

import redis

from streamlearn.algorithms import make_algorithm
from streamlearn.errors import UserError
from streamlearn.registry.data import Records, leakage, parse_offsets, ranges_to_json
from streamlearn.registry.provenance import provenance
from streamlearn.registry.reading import Message, decode_for, read_messages, records_of, topic_ranges
from streamlearn.registry.records import Registry, lineage_data, model_name
from streamlearn.registry.times import instant_ms, iso
from streamlearn.runtime.predict import check_metrics, score_batch
from streamlearn.snapshots.format import decode_snapshot, load_model
from streamlearn.wire.decode import schema_ids


class RecordsDoNotFit(UserError, ValueError):
    """No record of the evaluation data can be read by the model's algorithm."""


def data_key(topic: str, ranges: dict, since: int | None, until: int | None) -> str:
    """Names an evaluation data set, so that two models' scores on the same data are compared."""
    text = json.dumps({"topic": topic, "partitions": ranges, "since": since, "until": until}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def evaluation_entry(entry: dict[str, Any], topic: str, records: Records, rejected: int,
                     messages: list[Message], scores: dict, leak: dict | None,
                     since: int | None = None, until: int | None = None) -> dict[str, Any]:
    """What the registry keeps of one evaluation: the model, the data (ranges, counts,
    event-time range, schemas), the scores and the leakage check."""
    ranges = ranges_to_json(records.ranges())
    return {"model": model_name(entry["job"], entry["version"]), "job": entry["job"], "version": entry["version"],
            "data": {"topic": topic, "partitions": ranges, "since": iso(since), "until": iso(until),
                     "records": records.n_records, "rejected": rejected,
                     "event_time": records.event_time(), "schemas": sorted(schema_ids([m.value for m in messages])),
                     "key": data_key(topic, ranges, since, until)},
            "scores": scores, "leakage": leak,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(), **provenance()}


def evaluate_on_topic(client: redis.Redis, kafka_conf: dict, ref: str, topic: str, offsets: str | None = None,
                      since: str | None = None, until: str | None = None,
                      metrics: list[str] | None = None) -> dict[str, Any]:
    """Score model ``ref`` (``JOB`` or ``JOB@VERSION``) on ``topic`` (``offsets`` ``P:A-B,…``;
    ``since``/``until``: only records whose event time is in [since, until)), check leakage,
    record the evaluation and return it (with its ``id``)."""
    registry = Registry(client)
    entry = registry.resolve(ref)
    model = load_model(decode_snapshot(registry.store.get(entry["job"], entry["version"])))
    check_metrics(model, metrics)
    algo = make_algorithm(entry["algorithm"], entry.get("params") or {})
    lo = instant_ms(since, "--since") if since is not None else None
    hi = instant_ms(until, "--until") if until is not None else None
    if lo is not None and hi is not None and hi <= lo:
        raise UserError("--until must be after --since")
    ranges = topic_ranges(kafka_conf, topic, parse_offsets(offsets) if offsets else None)
    messages = [m for m in read_messages(kafka_conf, topic, ranges)
                if (lo is None or (m.timestamp is not None and m.timestamp >= lo))
                and (hi is None or (m.timestamp is not None and m.timestamp < hi))]
    result = decode_for(algo, messages, client)
    if not result.n_records:
        why = result.rejected[0].reason if result.rejected else "no records in that range"
        raise RecordsDoNotFit(f"topic {topic}: no record fits model {model_name(entry['job'], entry['version'])} "
                              f"({entry['algorithm']}): {why}")
    records = records_of(topic, messages, result)
    scores = score_batch(model, result.batch, metrics)
    leak = leakage(records, lineage_data(registry, entry["job"], entry["version"]),
                   by_event_time=lo is not None or hi is not None)
    evaluation = evaluation_entry(entry, topic, records, result.n_rejected_records, messages, scores, leak, lo, hi)
    evaluation["id"] = registry.add_evaluation(entry["job"], evaluation)
    return evaluation


__all__ = ["RecordsDoNotFit", "decode_for", "evaluate_on_topic", "evaluation_entry", "lineage_data", "records_of"]
