"""The Python API's handles: :func:`connect` -> :class:`Connection` -> :class:`Job`.

A :class:`Connection` holds the resolved settings (Kafka bootstrap and client properties,
the Redis URL) and one Redis client, so every call takes the connection in the same
shape; the modules underneath (jobs, topics, producer, subscriber, model store) keep their
explicit arguments. A :class:`Job` is a name on a connection: it holds no state of its own
(everything lives in the job's Redis record), so two handles on one job always agree.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis as redis_py

from streamlearn.runtime import jobs
from streamlearn.algorithms.base import Algorithm
from streamlearn.batch import as_features, split_label
from streamlearn.config import Settings, _client_key, mask_url
from streamlearn.devstack.procs import terminate
from streamlearn.errors import ServiceUnavailable, StreamlearnError, UserError
from streamlearn.registry import backtest, evaluation, queries
from streamlearn.registry.records import Registry
from streamlearn.runtime.finalize import promote, publish
from streamlearn.serving.process import ServerProcess
from streamlearn.snapshots.store import ModelStore
from streamlearn.snapshots.subscriber import ModelSubscriber
from streamlearn.streams.producer import Producer
from streamlearn.streams import topics

__all__ = ["connect", "Connection", "Job", "WorkerProcess"]

#: the directory holding this streamlearn package: worker processes import the same code
_CODE_ROOT = str(Path(__file__).resolve().parents[1])


def connect(kafka: str | None = None, redis: str | None = None, **kafka_conf: Any) -> "Connection":
    """Connect to Kafka (bootstrap servers) and Redis (URL).

    What is not given comes from ``STREAMLEARN_KAFKA`` / ``STREAMLEARN_REDIS``, else from the
    running local stack (``streamlearn stack up``), as for the command line. ``kafka_conf``
    are librdkafka properties for every Kafka client, dotted or with underscores
    (``security_protocol="SASL_SSL"``); ``STREAMLEARN_KAFKA_<PROPERTY>`` variables apply
    underneath them. Raises :class:`~streamlearn.ServiceUnavailable` when Redis cannot be
    reached, :class:`~streamlearn.UserError` when nothing is configured."""
    env = dict(os.environ)
    if kafka:
        env["STREAMLEARN_KAFKA"] = kafka
    if redis:
        env["STREAMLEARN_REDIS"] = redis
    settings = Settings.resolve(env)
    if kafka_conf:
        merged = {**settings.kafka_conf, **{_client_key(k): v for k, v in kafka_conf.items()}}
        settings = dataclasses.replace(settings, kafka_conf=merged)
    return Connection(settings)


class Connection:
    """Topics, data, jobs and models on one Kafka + Redis. Close it (or use ``with``) to
    stop the snapshot subscribers it started and release the Redis connections."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis = settings.redis_client()
        try:
            self.redis.ping()
        except (redis_py.ConnectionError, redis_py.TimeoutError) as exc:
            self.redis.close()
            raise ServiceUnavailable(f"cannot reach Redis at {mask_url(settings.redis)}: {exc}") from None
        self.kafka_conf: dict[str, Any] = settings.kafka_client_conf()
        self._subscribers: list[ModelSubscriber] = []

    # -- topics and data --------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int = 1, config: dict[str, Any] | None = None) -> int:
        """Create topic ``name`` unless it exists; returns its partition count. A topic that
        exists with fewer partitions than asked for is a :class:`~streamlearn.UserError`."""
        return topics.ensure_topic(self.kafka_conf, name, partitions, config)

    def produce(self, topic: str, X, y=None, *, weights=None, keys=None, partitions: int | None = None,
                batch_size: int | None = None, retention: str | int | None = topics.DEFAULT_RETENTION) -> int:
        """Send the rows of ``X`` as training records; returns how many.

        ``X``: a numpy array, a pandas DataFrame or a scipy sparse matrix; ``y``: labels (an
        array or Series) or the name of ``X``'s label column. Rows go out as batch messages
        of ``batch_size`` rows (the fast path; None: 1,000, fewer for a small data set so that
        every partition gets several messages), round-robin over the partitions, or by a
        stable hash of ``keys`` (one per row). With ``partitions`` a missing topic is created
        with that many, keeping records for ``retention`` (``"7d"``, ``"12h"``, ``"never"``;
        None: the broker's default; an existing topic keeps its own); without, a missing
        topic is a :class:`~streamlearn.UserError`."""
        X, labels = split_label(X, y)
        features = as_features(X)
        if partitions is not None:
            topics.ensure_topic(self.kafka_conf, topic, partitions, topics.training_topic_config(retention))
        else:
            topics.partitions(self.kafka_conf, topic)  # a TopicError (UserError) for a missing topic
        with Producer(self.kafka_conf) as producer:
            return producer.send_batch(topic, features, labels, w=weights, keys=keys, batch_size=batch_size)

    # -- jobs -------------------------------------------------------------------------------
    def create_job(self, name: str, algorithm: Algorithm | str, topic: str, params: dict[str, Any] | None = None,
                   *, until: str = "end", snapshot_every: float | None = None,
                   from_snapshot: str | None = None, gate: list[str] | None = None, gate_min_records: int = 1,
                   gate_topic: str | None = None, gate_offsets: str | None = None) -> "Job":
        """Create job ``name`` training ``algorithm`` on ``topic`` and run its ``initialize``.

        ``algorithm`` is an instance (``sl.KMeans(n_features=5, k=8)``: its parameters are
        the job's) or a registered name with ``params`` (``"kmeans", {"n_features": 5}``).
        ``until="end"`` finishes at the topic's end offsets as of now; ``"never"`` runs on,
        snapshotting every ``snapshot_every`` seconds. ``from_snapshot="JOB[@VERSION]"``
        starts from that model instead of ``initialize``. ``gate``, ``gate_min_records``,
        ``gate_topic``, ``gate_offsets``: the validation gate (``job create --gate …``)."""
        if isinstance(algorithm, Algorithm):
            if params:
                raise UserError("pass parameters either in the algorithm instance or in params, not both")
            algorithm, params = algorithm.name, algorithm.get_params()
        jobs.create_job(self.redis, self.kafka_conf, name, algorithm, topic, params or {}, until=until,
                        snapshot_every=snapshot_every, from_snapshot=from_snapshot, gate=gate,
                        gate_min_records=gate_min_records, gate_topic=gate_topic, gate_offsets=gate_offsets)
        return Job(self, name)

    def job(self, name: str) -> "Job":
        """The handle of an existing job (:class:`~streamlearn.UserError` if there is none)."""
        jobs.load_spec(self.redis, name)
        return Job(self, name)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job: ``{"job", "algorithm", "topic", "state"}`` (as ``streamlearn job list``)."""
        return jobs.list_jobs(self.redis)

    # -- models -----------------------------------------------------------------------------
    def models(self, job: str | None = None, algorithm: str | None = None, *, where: str | None = None,
               since: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """The model registry (``streamlearn models``): one row per stored snapshot (``model``
        ``JOB@VERSION``, status, holdout and evaluation scores…), filtered by job, algorithm,
        ``where`` (``"auc>0.8 and records_applied>=1000"``), creation time ``since`` (ISO, or
        ``"2h"`` ago) and the gate's ``status`` (blessed / rejected / forced)."""
        return queries.list_models(Registry(self.redis), job=job, algorithm=algorithm, where=where, since=since,
                                   status=status)

    def lineage(self, model: str) -> dict[str, Any]:
        """Parents, training data, evaluations and children of ``model`` (``JOB`` or ``JOB@VERSION``)."""
        return queries.lineage(Registry(self.redis), model)

    def promote(self, source: str, to: str) -> dict[str, Any]:
        """``streamlearn promote SOURCE --to JOB``: model ``source`` (``JOB`` or ``JOB@VERSION``)
        stored as job ``to``'s next version and published if ``to``'s gate passes it; returns
        that version's registry entry (``gate["status"]``: blessed, or rejected: not published)."""
        return Registry(self.redis).store.metadata(to, promote(self.settings, self.redis, source, to))

    def compare(self, model_a: str, model_b: str) -> dict[str, Any]:
        """Parameter differences and score differences on the same evaluation data."""
        return queries.compare(Registry(self.redis), model_a, model_b)

    def evaluate(self, model: str, topic: str, *, offsets: str | None = None, since: str | None = None,
                 until: str | None = None, metrics: list[str] | None = None) -> dict[str, Any]:
        """Score ``model`` on ``topic``'s records (``offsets`` ``"P:A-B,…"``; event time in
        [``since``, ``until``)), check them against its training data and its ancestors'
        (``leakage``: None or ``{"records", "of", "models"}``) and record the evaluation."""
        return evaluation.evaluate_on_topic(self.redis, self.kafka_conf, model, topic, offsets=offsets, since=since,
                                            until=until, metrics=metrics)

    def backtest(self, name: str, algorithm: str, topic: str, windows: int, horizon: str | int,
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rolling-origin backtest (``streamlearn backtest``); returns and records its windows."""
        return backtest.run_backtest(self.redis, self.kafka_conf, name, algorithm, topic, windows, horizon, params)

    def subscribe(self, job: "str | Job", *, from_beginning: bool = True) -> ModelSubscriber:
        """Follow ``job``'s snapshots: the subscriber's ``wait_for(timeout=…)`` returns the
        newest verified model, and its ``model`` is swapped as new snapshots arrive."""
        name = job.name if isinstance(job, Job) else job
        subscriber = ModelSubscriber(name, self.settings.kafka, self.settings.kafka_conf, from_beginning=from_beginning,
                                     topic=jobs.load_spec(self.redis, name).snapshot_topic, store=ModelStore(self.redis))
        self._subscribers.append(subscriber)
        return subscriber

    def serve(self, job: "str | Job", port: int = 0, *, host: str = "127.0.0.1", version: int | None = None,
              max_batch: int = 64, max_wait_ms: float = 2.0, log_dir: str | Path | None = None) -> ServerProcess:
        """Start ``streamlearn serve JOB`` (a child process, on this connection's settings);
        returns its handle (``url``, ``client()``, ``wait_ready()``, ``stop()``). ``port=0``:
        any free port. Without ``version`` it follows the job's snapshots."""
        name = job.name if isinstance(job, Job) else job
        jobs.load_spec(self.redis, name)
        args = ["--host", host, "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
        if version is not None:
            args += ["--version", str(version)]
        logs = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix=f"streamlearn-serve-{name}-"))
        logs.mkdir(parents=True, exist_ok=True)
        return ServerProcess(name, args, self._child_env(), logs / "server.log")

    def _child_env(self) -> dict[str, str]:
        """The environment of a child process on this connection (workers, servers)."""
        env = {**os.environ, **self.settings.env()}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_CODE_ROOT, env.get("PYTHONPATH")]))
        return env

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers.clear()
        self.redis.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connection(kafka={self.settings.kafka!r}, redis={self.settings.masked()['redis']!r})"


class WorkerProcess:
    """A ``python -m streamlearn worker JOB`` process started by :meth:`Job.run_workers`.
    Its output goes to ``log_path``."""

    def __init__(self, process: subprocess.Popen, log_path: Path):
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """The exit status, once the worker has ended (it ends when its job finishes)."""
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """Ask the worker to leave (SIGTERM: what it had not committed is consumed again by
        the others); kill it if it has not left after ``timeout`` seconds. Returns its exit status."""
        return terminate(self.process, timeout)

    def __repr__(self) -> str:
        return f"WorkerProcess(pid={self.pid}, returncode={self.returncode}, log={str(self.log_path)!r})"


class Job:
    """A training job by name: control, status, workers, snapshots."""

    def __init__(self, connection: Connection, name: str):
        self.connection = connection
        self.name = name
        self.workers: list[WorkerProcess] = []  # the ones this handle started

    @property
    def spec(self) -> jobs.JobSpec:
        return jobs.load_spec(self.connection.redis, self.name)

    def status(self) -> dict[str, Any]:
        """What ``streamlearn job status --json`` prints: state, records applied, offsets…"""
        return jobs.job_status(self.connection.redis, self.name)

    def pause(self) -> str:
        """Workers stay in the group but stop consuming; returns the new state."""
        return jobs.set_paused(self.connection.redis, self.name, True)

    def resume(self) -> str:
        """Continue from the stored offsets (``initialize`` is not run again); returns the new state."""
        return jobs.set_paused(self.connection.redis, self.name, False)

    def snapshot(self) -> int | None:
        """Finalize the current state and publish it as a new snapshot now; returns its version."""
        conn = self.connection
        return publish(conn.settings, conn.redis, self.spec, final=False)

    def delete(self, force: bool = False) -> None:
        """Remove the job's record, state and consumer group (``force``: even while it runs)."""
        jobs.delete_job(self.connection.redis, self.connection.kafka_conf, self.name, force=force)

    def run_workers(self, n: int = 1, log_dir: str | Path | None = None) -> list[WorkerProcess]:
        """Start ``n`` worker processes (what ``streamlearn worker NAME`` runs) on this
        connection's settings; they leave by themselves when a bounded job finishes, or on
        :meth:`WorkerProcess.stop`. Logs go to ``log_dir`` (default: a new temp directory)."""
        if n < 1:
            raise UserError(f"run_workers needs n >= 1, got {n}")
        jobs.load_spec(self.connection.redis, self.name)  # an unknown job fails here, not in n children
        logs = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix=f"streamlearn-{self.name}-"))
        logs.mkdir(parents=True, exist_ok=True)
        env = self.connection._child_env()
        started = []
        for _ in range(n):
            log_path = logs / f"worker-{len(self.workers) + len(started)}.log"
            with open(log_path, "w") as log:
                process = subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", self.name],
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
            started.append(WorkerProcess(process, log_path))
        self.workers.extend(started)
        return started

    def stop_workers(self, timeout: float = 30.0) -> list[int]:
        """Stop the workers this handle started; returns their exit statuses."""
        codes = [w.stop(timeout) for w in self.workers]
        self.workers.clear()
        return codes

    def wait(self, timeout: float = 600.0, poll_interval: float = 0.5) -> dict[str, Any]:
        """Block until the job is finished; returns its final status. Raises
        :class:`TimeoutError` after ``timeout`` seconds, and :class:`~streamlearn.StreamlearnError`
        when every worker this handle started has exited before the job finished."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["state"] == "finished":
                return status
            if self.workers and not any(w.running for w in self.workers):
                status = self.status()  # they may have exited because it just finished
                if status["state"] == "finished":
                    return status
                codes = [w.returncode for w in self.workers]
                raise StreamlearnError(f"job {self.name!r}: its {len(codes)} worker(s) exited with {codes} before it "
                                       f"finished; see {self.workers[0].log_path.parent}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.name!r} did not finish within {timeout} s: {status['state']}, "
                                   f"{status['records_applied']} records applied")
            time.sleep(poll_interval)

    def __repr__(self) -> str:
        return f"Job({self.name!r})"
