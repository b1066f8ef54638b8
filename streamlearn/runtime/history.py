"""A job's history: a bounded time series of its progress, kept in its Redis record so that
``streamlearn report`` can draw it after the job (``job watch`` reads the newest samples).

One sample every ``every_s`` seconds (``STREAMLEARN_HISTORY_EVERY_S``, default 5) is written
by one member of the job: each worker checks a local clock at its control tick, and the one
that takes the period's turn (a key that expires with the period) reads the job's status and
the algorithm's holdout scores and appends the sample; the list keeps the newest
:data:`HISTORY_CAP`. A sample::

    {"t": unix seconds, "records_applied", "records_dead_lettered", "records_per_second",
     "members": count, "state", "epoch", "snapshot_version",
     "lag": {partition: messages not yet applied (bounded jobs: every pass left counted)},
     "holdout": {"metric", "values": [one per packed model], "selected"} or absent}

Every key is the job's (``sl:{job}:history``: one hash tag), so a worker writes no global key.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import redis

from streamlearn.algorithms.base import Algorithm
from streamlearn.runtime.jobs import JobSpec, job_status
from streamlearn.runtime.record import JobRecord

__all__ = ["HISTORY_CAP", "JobHistory", "read_history", "partition_lag", "progress"]

log = logging.getLogger("streamlearn.history")

#: samples kept per job (at 5 s, the last ~2.8 hours)
HISTORY_CAP = 2000

#: ``{partition: high watermark}``, or None when the broker did not say
Watermarks = Callable[[], "dict[int, int] | None"]


def partition_lag(spec: JobSpec, status: dict[str, Any], high: dict[int, int] | None = None) -> dict[int, int]:
    """Messages each partition has left: a bounded job's to its end offset (and every pass
    after the current one), an unbounded job's to ``high`` (partitions ``high`` lacks are
    left out)."""
    offsets = {int(p): o for p, o in status["partitions"].items()}
    passes = {int(p): e for p, e in status.get("partition_epochs", {}).items()}
    lag: dict[int, int] = {}
    if spec.until == "end":
        for p, end in spec.end_offsets.items():
            start = spec.start_offsets.get(p, 0)
            at = offsets.get(p, start)
            later = max(0, spec.epochs - 1 - passes.get(p, 0)) * (end - start)
            lag[p] = max(0, end - at) + later
    elif high:
        for p, h in high.items():
            lag[p] = max(0, h - offsets.get(p, spec.start_offsets.get(p, 0)))
    return lag


class JobHistory:
    """What one worker does for the job's history."""

    def __init__(self, client: redis.Redis, spec: JobSpec, algorithm: Algorithm, member: str,
                 every_s: float | None = None):
        self.client = client
        self.spec = spec
        self.algorithm = algorithm
        self.member = member
        self.every_s = float(os.environ.get("STREAMLEARN_HISTORY_EVERY_S", 5.0) if every_s is None else every_s)
        self.record = JobRecord(client, spec.name)
        self._next = 0.0

    def tick(self, watermarks: Watermarks) -> bool:
        """At a worker's control tick: append a sample if this period has none yet and this
        member takes the turn; returns whether it did."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every_s
        if not self.record.take_history_turn(self.member, self.every_s):
            return False
        self.append(watermarks)
        return True

    def append(self, watermarks: Watermarks) -> dict[str, Any]:
        """Append a sample now (also the last one, when the job ends)."""
        sample = self.sample(watermarks)
        self.record.append_history(json.dumps(sample, separators=(",", ":")), HISTORY_CAP)
        return sample

    def finish(self, watermarks: Watermarks) -> None:
        """The job ended: append its final sample unless another member already did (every
        worker sees the end; a race only repeats the same figures)."""
        last = self.record.history(1)
        if not last or json.loads(last[0]).get("state") == "running":
            self.append(watermarks)

    def sample(self, watermarks: Watermarks) -> dict[str, Any]:
        status = job_status(self.client, self.spec.name)
        high = watermarks() if self.spec.until != "end" else None
        sample: dict[str, Any] = {
            "t": round(time.time(), 3),
            "state": status["state"],
            "records_applied": status["records_applied"],
            "records_dead_lettered": status["records_dead_lettered"],
            "records_per_second": status["records_per_second"],
            "members": len(status["members"]),
            "epoch": status["epoch"],
            "snapshot_version": status["snapshot_version"],
            "lag": {str(p): n for p, n in sorted(partition_lag(self.spec, status, high).items())},
        }
        holdout = self.algorithm.holdout_scores(self.record.state())
        if holdout is not None:
            sample["holdout"] = holdout
        return sample


def read_history(client: redis.Redis, job: str, newest: int | None = None) -> list[dict[str, Any]]:
    """The job's samples, oldest first (only the ``newest`` n when given; empty for a job
    whose workers wrote none)."""
    return [json.loads(raw) for raw in JobRecord(client, job).history(newest)]


def progress(spec: JobSpec, status: dict[str, Any]) -> tuple[int, int] | None:
    """(messages consumed, messages in all) of a bounded job, every pass counted; None for
    an unbounded job (it has no end)."""
    if spec.until != "end":
        return None
    total = spec.epochs * sum(end - spec.start_offsets.get(p, 0) for p, end in spec.end_offsets.items())
    return total - sum(partition_lag(spec, status).values()), total
