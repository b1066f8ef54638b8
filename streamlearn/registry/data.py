"""Data lineage: which records of which topic a model was trained on or evaluated on, and
the leakage check between the two.

Records are named by their Kafka coordinates: a topic, a partition and an offset range
``[start, end)`` (end = the next offset, as Kafka's high watermark), plus the event-time
range of the records (their Kafka timestamps, ms). A job's ranges come from its start
offsets and the offsets stored with its state; its event-time range from the commits'
counters (``event_time_min:<p>`` / ``event_time_max:<p>``, moved in the same transaction
as the offsets), so both say exactly what the state has applied.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterable

from streamlearn.errors import UserError

#: partition -> sorted, disjoint, half-open offset ranges
Ranges = dict[int, list[tuple[int, int]]]


class RangeError(UserError, ValueError):
    """A malformed ``--offsets`` list."""


def merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint ranges covering the same offsets (adjacent ones joined)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def ranges_to_json(ranges: Ranges) -> dict[str, list[list[int]]]:
    return {str(p): [[a, b] for a, b in merge(rs)] for p, rs in sorted(ranges.items()) if merge(rs)}


def ranges_from_json(obj: dict[str, Any] | None) -> Ranges:
    return {int(p): merge((int(a), int(b)) for a, b in rs) for p, rs in (obj or {}).items()}


def parse_offsets(text: str) -> Ranges:
    """``"P:A-B,P:A-B"`` (offsets A to B of partition P, B excluded) -> ranges."""
    out: Ranges = {}
    for part in text.split(","):
        p, sep, span = part.strip().partition(":")
        a, dash, b = span.partition("-")
        try:
            p_, a_, b_ = int(p), int(a), int(b)
        except ValueError:
            raise RangeError(f"--offsets takes P:A-B[,P:A-B...] (partition: first offset - end offset), "
                             f"got {part.strip()!r}") from None
        if not (sep and dash) or p_ < 0 or a_ < 0 or b_ <= a_:
            raise RangeError(f"--offsets {part.strip()!r}: need a partition >= 0 and offsets A < B")
        out.setdefault(p_, []).append((a_, b_))
    return {p: merge(rs) for p, rs in out.items()}


def covers(ranges: list[tuple[int, int]], offset: int) -> bool:
    """Whether ``offset`` lies in one of the sorted, disjoint ``ranges``."""
    i = bisect.bisect_right(ranges, (offset, float("inf"))) - 1
    return i >= 0 and ranges[i][0] <= offset < ranges[i][1]


def event_time_of(counters: dict[str, int]) -> dict[str, Any] | None:
    """The event-time range a job's counters hold: ``{"min", "max", "partitions": {p: [min, max]}}``."""
    parts = {}
    for name, lo in counters.items():
        if name.startswith("event_time_min:"):
            p = name.split(":", 1)[1]
            hi = counters.get(f"event_time_max:{p}")
            if hi is not None:
                parts[p] = [int(lo), int(hi)]
    if not parts:
        return None
    return {"min": min(v[0] for v in parts.values()), "max": max(v[1] for v in parts.values()),
            "partitions": dict(sorted(parts.items(), key=lambda kv: int(kv[0])))}


def job_training_data(topic: str, start_offsets: dict[int, int], end_offsets: dict[int, int],
                      offsets: dict[int, int], data_epochs: dict[int, int], counters: dict[str, int],
                      epochs: int = 1, schemas: list[str] | None = None) -> dict[str, Any]:
    """A job's training data as of a state cut (``offsets``, ``counters``): per partition
    ``[start, stored offset)``, or the whole bounded range once a later pass began (``--epochs``)."""
    ranges: Ranges = {}
    for p, start in start_offsets.items():
        end = end_offsets.get(p)
        hi = end if end is not None and data_epochs.get(p, 0) > 0 else offsets.get(p, start)
        if hi > start:
            ranges[p] = [(start, hi)]
    return {"topic": topic, "partitions": ranges_to_json(ranges),
            "records_applied": int(counters.get("records_applied", 0)),
            "records_dead_lettered": int(counters.get("records_dead_lettered", 0)),
            "event_time": event_time_of(counters), "epochs": epochs, "schemas": sorted(schemas or [])}


@dataclass
class TrainingData:
    """What one model in a lineage was trained on (its own increment)."""

    model: str  # "JOB@VERSION"
    topic: str | None
    ranges: Ranges
    event_time: tuple[int, int] | None

    @classmethod
    def of(cls, model: str, entry: dict[str, Any]) -> "TrainingData":
        """From a registry entry: its ``data`` lineage; a snapshot written before data lineage
        has only its stored offsets, taken as trained from offset 0 (the conservative reading
        for a leakage check)."""
        data = entry.get("data")
        if data is None:
            ranges = {int(p): [(0, int(o))] for p, o in (entry.get("offsets") or {}).items() if int(o) > 0}
            return cls(model, entry.get("topic"), ranges, None)
        et = data.get("event_time")
        return cls(model, data.get("topic"), ranges_from_json(data.get("partitions")),
                   None if not et else (int(et["min"]), int(et["max"])))


@dataclass
class Records:
    """The records an evaluation read: per message its partition, offset, timestamp (ms, or
    None) and how many records it held."""

    topic: str
    messages: list[tuple[int, int, int | None, int]] = field(default_factory=list)

    @property
    def n_records(self) -> int:
        return sum(m[3] for m in self.messages)

    def ranges(self) -> Ranges:
        out: Ranges = {}
        for p, off, _, n in self.messages:
            if n:
                out.setdefault(p, []).append((off, off + 1))
        return {p: merge(rs) for p, rs in out.items()}

    def event_time(self) -> dict[str, int] | None:
        times = [ts for _, _, ts, n in self.messages if ts is not None and n]
        return {"min": min(times), "max": max(times)} if times else None


def leakage(records: Records, lineage: list[TrainingData], by_event_time: bool) -> dict[str, Any] | None:
    """Which of ``records`` were training records of a model in ``lineage`` (the evaluated
    model first, then its ancestors): same topic and a training range holding the record's
    offset; with ``by_event_time`` (a time split) also a record whose timestamp lies in a
    model's training event-time range, whatever its topic. None when no record was."""
    leaked = [False] * len(records.messages)
    per_model = []
    for data in lineage:
        hits, how = 0, set()
        for i, (p, off, ts, n) in enumerate(records.messages):
            if not n:
                continue
            by_offset = data.topic == records.topic and covers(data.ranges.get(p, []), off)
            by_time = (by_event_time and data.event_time is not None and ts is not None
                       and data.event_time[0] <= ts <= data.event_time[1])
            if by_offset or by_time:
                hits += n
                leaked[i] = True
                how.add("offsets" if by_offset else "event_time")
        if hits:
            per_model.append({"model": data.model, "records": hits, "by": sorted(how)})
    if not per_model:
        return None
    n = sum(m[3] for m, hit in zip(records.messages, leaked) if hit)
    return {"records": n, "of": records.n_records, "models": per_model}


def leakage_line(result: dict[str, Any] | None) -> str:
    """``leakage: N of M evaluation records were training records of <model>`` (or ``none``)."""
    if result is None:
        return "leakage: none"
    models = ", ".join(m["model"] for m in result["models"])
    return f"leakage: {result['records']} of {result['of']} evaluation records were training records of {models}"


__all__ = ["RangeError", "Records", "TrainingData", "covers", "event_time_of", "job_training_data", "leakage",
           "leakage_line", "merge", "parse_offsets", "ranges_from_json", "ranges_to_json"]
