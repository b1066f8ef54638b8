"""Sustained load (not part of CI): a producer at full speed while N workers train.

    python -m benchmarks.load [--records 5000000] [--workers 4] [--algorithm counter]

Starts a private local stack (its own home; ``--use-env`` uses STREAMLEARN_KAFKA/REDIS
instead), creates an unbounded job and, while a producer thread writes ``--records`` rows
as fast as it can, samples every ``--every`` seconds: records produced, records applied,
consumer lag (end offsets minus the offsets stored with the state), every worker's RSS and
Redis ``used_memory``. After the producer is done it waits for the lag to return to zero,
then SIGTERMs one worker and reports how long it took to exit and to leave the consumer
group (the group's member count, from the broker).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def lag(client, job: str, conf: dict, topic: str) -> int:
    from streamlearn.statestore.keys import StoreKeys
    from streamlearn.streams.topics import watermarks

    marks = watermarks(conf, topic)
    stored = {int(p): int(o) for p, o in client.hgetall(StoreKeys(job).offsets).items()}
    return sum(hi - stored.get(p, lo) for p, (lo, hi) in marks.items())


def group_members(conf: dict, group: str) -> int | None:
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient(dict(conf))  # keep a reference until the future resolves
        fut = admin.describe_consumer_groups([group])[group]
        return len(fut.result(timeout=10).members)
    except Exception as exc:  # noqa: BLE001 - a benchmark probe
        print(f"# describe_consumer_groups({group}): {exc!r}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.load")
    ap.add_argument("--records", type=int, default=5_000_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--msg-rows", type=int, default=500, help="rows per Kafka message")
    ap.add_argument("--algorithm", default="counter", choices=["counter", "linear_learner", "median"])
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--use-env", action="store_true", help="use STREAMLEARN_KAFKA/REDIS, not a private stack")
    a = ap.parse_args(argv)

    from streamlearn.devstack import stack
    from streamlearn.config import Settings
    from streamlearn.runtime.jobs import create_job, job_status
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    home = None
    if a.use_env:
        settings = Settings.resolve()
    else:
        home = Path(tempfile.mkdtemp(prefix="streamlearn-load-")) / "stack"
        settings = stack.up(home, timeout=180)
    try:
        client = settings.redis_client()
        conf = settings.kafka_client_conf()
        tag = uuid.uuid4().hex[:8]
        topic = job = f"load-{tag}"
        dim = 1 if a.algorithm == "median" else a.dim
        ensure_topic(conf, topic, partitions=a.partitions)
        params = {"counter": {"dim": dim}, "median": {},
                  "linear_learner": {"n_features": dim, "predictor_type": "regressor"}}[a.algorithm]
        from streamlearn.streams.topics import TopicError

        for attempt in range(50):  # a just-created topic may not have its leaders yet
            try:
                create_job(client, conf, job, a.algorithm, topic, params, until="never")
                break
            except TopicError:
                if attempt == 49:
                    raise
                time.sleep(0.2)

        produced = [0]
        done = threading.Event()

        def produce() -> None:
            rng = np.random.default_rng(0)
            w = rng.normal(size=dim)
            chunk = 100_000
            with Producer(settings.kafka, settings.kafka_conf) as p:
                while produced[0] < a.records:
                    n = min(chunk, a.records - produced[0])
                    X = rng.normal(size=(n, dim)).astype(np.float32)
                    p.send_batch(topic, X, X @ w, batch_size=a.msg_rows)
                    produced[0] += n
            done.set()

        env = {**os.environ, "STREAMLEARN_KAFKA": settings.kafka, "STREAMLEARN_REDIS": settings.redis,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        log_dir = Path(tempfile.mkdtemp(prefix="streamlearn-load-logs-"))
        procs = []
        for i in range(a.workers):
            log = open(log_dir / f"worker-{i}.log", "w")
            procs.append(subprocess.Popen([sys.executable, "-m", "streamlearn", "worker", job], stdout=log,
                                          stderr=subprocess.STDOUT, env=env, cwd=str(REPO)))
        print(f"# {a.records} records x {dim} features, {a.partitions} partitions, {a.workers} workers, "
              f"{a.algorithm}, {a.msg_rows} rows/message; logs {log_dir}", flush=True)
        print(f"{'t_s':>6} {'produced':>10} {'applied':>10} {'lag_msgs':>9} {'rec/s':>9} {'redis_MB':>9}  worker_RSS_MB",
              flush=True)
        t0 = time.monotonic()
        threading.Thread(target=produce, daemon=True).start()
        peak_rss, peak_redis, last_applied, last_t = 0.0, 0.0, 0, t0
        produce_s = drain_s = None
        while True:
            time.sleep(a.every)
            now = time.monotonic()
            s = job_status(client, job)
            info = client.info("memory")
            rss = [rss_mb(p.pid) for p in procs]
            cur_lag = lag(client, job, conf, topic)
            rate = (s["records_applied"] - last_applied) / (now - last_t)
            last_applied, last_t = s["records_applied"], now
            redis_mb = info["used_memory"] / 2**20
            peak_redis = max(peak_redis, redis_mb)
            peak_rss = max([peak_rss] + [r for r in rss if r])
            print(f"{now - t0:6.0f} {produced[0]:10d} {s['records_applied']:10d} {cur_lag:9d} {rate:9.0f} "
                  f"{redis_mb:9.1f}  {' '.join(f'{r:.0f}' if r else '-' for r in rss)}", flush=True)
            if done.is_set() and produce_s is None:
                produce_s = now - t0
            if done.is_set() and cur_lag == 0 and s["records_applied"] >= a.records:
                drain_s = now - t0
                break
            if any(p.poll() is not None for p in procs):
                print("# a worker exited unexpectedly", flush=True)
                break
        # graceful leave: SIGTERM one worker, time its exit and the group shrinking
        group = f"streamlearn.{job}"
        before = group_members(conf, group)
        victim = procs[-1]
        t1 = time.monotonic()
        victim.send_signal(signal.SIGTERM)
        victim.wait(60)
        exit_s = time.monotonic() - t1
        left_s = None
        while time.monotonic() - t1 < 60:
            m = group_members(conf, group)
            if m is not None and before is not None and m < before:
                left_s = time.monotonic() - t1
                break
            time.sleep(0.1)
        final = job_status(client, job)
        print(f"# produced {a.records} in {produce_s:.0f}s ({a.records / produce_s:.0f} rec/s); all applied, lag 0 "
              f"at {drain_s:.0f}s ({final['records_applied'] / drain_s:.0f} rec/s end to end)" if drain_s and produce_s
              else f"# did not drain: {final['records_applied']} applied", flush=True)
        print(f"# peak worker RSS {peak_rss:.0f} MB, peak Redis used_memory {peak_redis:.1f} MB; "
              f"records_applied={final['records_applied']} commits={final['commits']}", flush=True)
        print(f"# SIGTERM -> worker exit {exit_s:.2f}s (code {victim.returncode}); group members {before} -> "
              f"{before - 1 if left_s is not None else '?'} after {left_s if left_s is None else round(left_s, 2)}s",
              flush=True)
        for p in procs[:-1]:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    finally:
        if home is not None:
            stack.down(home, purge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
