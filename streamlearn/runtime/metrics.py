"""A worker's Prometheus metrics (``streamlearn worker NAME --metrics-port P``).

Like the server's (:mod:`streamlearn.serving.metrics`) they live in a registry of their own,
so that two workers in one process (tests) do not share counters. The worker counts what it
does itself (records applied and dead-lettered, commit and update-step times, commit
conflicts, dropped batches, the lag of the partitions it owns); what belongs to the whole job
(members, snapshot version and age, the job's own counters) is read from the job's record
when Prometheus scrapes, so it costs the worker's loop nothing. Every series carries the
``job`` label, so one dashboard serves many jobs.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Iterable

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streamlearn.runtime.record import JobRecord
from streamlearn.snapshots.store import ModelStore

__all__ = ["WorkerMetrics", "JobCollector", "JOB_GAUGES", "serve_metrics", "consumer_lag", "high_watermarks"]

log = logging.getLogger("streamlearn.metrics")

_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_UPDATE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """What one worker process counts for job ``job``."""

    def __init__(self, job: str, client: redis.Redis | None = None):
        self.job = job
        self.registry = r = CollectorRegistry()
        if client is not None:
            r.register(JobCollector(client, job))
        labels = ["job"]
        self._applied = Counter("streamlearn_worker_records_applied", "records this worker applied", labels,
                                registry=r).labels(job)
        self._dead = Counter("streamlearn_worker_records_dead_lettered", "records this worker dead-lettered", labels,
                             registry=r).labels(job)
        self._commits = Histogram("streamlearn_worker_commit_seconds",
                                  "atomic commit of a window's pushes with its offsets", labels,
                                  buckets=_COMMIT_BUCKETS, registry=r).labels(job)
        self._update = Histogram("streamlearn_worker_update_seconds", "a window's update steps (decoded to applied)",
                                 labels, buckets=_UPDATE_BUCKETS, registry=r).labels(job)
        self._conflicts = Counter("streamlearn_worker_commit_conflicts",
                                  "commits that found the state changed under them and were computed again "
                                  "(WATCH conflicts: concurrent workers)", labels, registry=r).labels(job)
        self._dropped = Counter("streamlearn_worker_batches_dropped",
                                "windows dropped and read again from the stored offsets", ["job", "reason"],
                                registry=r)
        self._lag = Gauge("streamlearn_worker_partition_lag",
                          "messages between a partition's stored offset and its high watermark (partitions this "
                          "worker owns)", ["job", "partition"], registry=r)
        self._lagged: set[int] = set()

    # -- what the worker reports --------------------------------------------------------------
    def committed(self, applied: int, dead_lettered: int, update_s: float, commit_s: float, conflicts: int) -> None:
        """One window committed."""
        self._applied.inc(applied)
        self._dead.inc(dead_lettered)
        self._update.observe(update_s)
        self._commits.observe(commit_s)
        if conflicts:
            self._conflicts.inc(conflicts)

    def dropped(self, reason: str) -> None:
        """A window not committed: ``outage``, ``fenced`` (its partitions moved), ``refused``
        (the job was paused, failed or deleted before the commit), ``stale`` (a synchronous
        round closed without it) or ``rebalanced`` (a group commit's windows, when a rebalance
        came before their commit)."""
        self._dropped.labels(self.job, reason).inc()

    def lag(self, lags: dict[int, int]) -> None:
        """The lag of the partitions this worker owns now (others' series are removed)."""
        for p in self._lagged - lags.keys():
            self._lag.remove(self.job, str(p))
        for p, n in lags.items():
            self._lag.labels(self.job, str(p)).set(n)
        self._lagged = set(lags)

    def render(self) -> bytes:
        return generate_latest(self.registry)


#: what :class:`JobCollector` reports: name and help of each gauge (all labelled ``job``)
JOB_GAUGES = {
    "members": ("streamlearn_job_members", "live members of the job"),
    "records_applied": ("streamlearn_job_records_applied", "records applied by every worker of the job"),
    "records_dead_lettered": ("streamlearn_job_records_dead_lettered",
                              "records dead-lettered by every worker of the job"),
    "running": ("streamlearn_job_running", "1 while the job is running"),
    "snapshot_version": ("streamlearn_job_snapshot_version", "newest stored snapshot version"),
    "snapshot_age_seconds": ("streamlearn_job_snapshot_age_seconds", "age of the newest stored snapshot"),
}


class JobCollector(Collector):
    """The job's own figures, read from its record at each scrape: members, records applied
    and dead-lettered by every worker, snapshot version and age. A scrape while Redis is
    unreachable reports none of them (the worker's own series still come)."""

    def __init__(self, client: redis.Redis, job: str):
        self.record = JobRecord(client, job)
        self.models = ModelStore(client)
        self.job = job

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            view = self.record.read_status()
            created = None
            if view.snapshot_version is not None:
                created = self.models.metadata(self.job, view.snapshot_version).get("created_at")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.debug("job metrics not collected: %s", exc)
            return
        values = {"members": len(view.members), "records_applied": view.counters.get("records_applied", 0),
                  "records_dead_lettered": view.counters.get("records_dead_lettered", 0),
                  "running": 1 if view.status == "running" else 0, "snapshot_version": view.snapshot_version,
                  "snapshot_age_seconds": None if not created else
                  time.time() - datetime.fromisoformat(created).timestamp()}
        for key, (name, doc) in JOB_GAUGES.items():
            if values[key] is not None:
                g = GaugeMetricFamily(name, doc, labels=["job"])
                g.add_metric([self.job], float(values[key]))
                yield g


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> int:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread; returns the
    port (``0``: any free one)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def consumer_lag(consumer: Consumer, topic: str, end_offsets: dict[int, int],
                 positions: dict[int, int]) -> dict[int, int]:
    """Messages between ``positions`` (partition -> the next offset this worker committed) and
    the end of each partition (a bounded job's end offset, else the high watermark of the
    consumer's last fetch: no broker call). The consumer's own position is no use here: each
    seek (a new pass, a recovery) leaves it unknown until the next message."""
    lags: dict[int, int] = {}
    for p, at in positions.items():
        end = end_offsets.get(p)
        if end is None:
            _low, end = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
        if end is not None and end >= 0:
            lags[p] = max(0, end - at)
    return lags


def high_watermarks(consumer: Consumer, topic: str, partitions: Iterable[int],
                    timeout_s: float = 1.0) -> dict[int, int] | None:
    """Each partition's high watermark, asked of the broker; None when it does not answer."""
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in partitions}
    except KafkaException as exc:
        log.debug("high watermarks of %s not read: %s", topic, exc)
        return None
