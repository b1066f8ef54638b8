"""Shared harness: rows, profiles, the run context (private local stack, data, memo), table.

A case is a function ``case(ctx) -> list[Row]``. Rows carry our figure, the reference
figure measured in the same run (a limit or a peer), their ratio and the target; a row
without a target is informational. Nothing here invents a figure: a peer that is not
installed or fails gives a ``skip``/``error`` row saying why.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# -- rows and the table ----------------------------------------------------------------------
@dataclass
class Row:
    case: str
    ours: str = ""  # our figure, with unit
    ref: str = ""  # the limit or peer figure from the same run, with unit
    ratio: float | None = None  # ours / ref as defined by the case ("higher is better" always)
    target: str = ""  # e.g. ">= 0.50"; empty = informational
    status: str = "info"  # pass | FAIL | info | skip | error
    note: str = ""


def check(ratio: float | None, minimum: float, extra_ok: bool = True) -> str:
    if ratio is None or not np.isfinite(ratio):
        return "FAIL"
    return "pass" if (ratio >= minimum and extra_ok) else "FAIL"


def fmt_rate(rows_per_s: float) -> str:
    if rows_per_s >= 1e6:
        return f"{rows_per_s / 1e6:.2f} M rows/s"
    if rows_per_s >= 1e3:
        return f"{rows_per_s / 1e3:.1f} k rows/s"
    return f"{rows_per_s:.0f} rows/s"


def fmt_bw(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e6:.0f} MB/s"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def format_table(rows: list[Row]) -> str:
    head = ["case", "ours", "limit / peer", "ratio", "target", "result", "note"]
    body = [[r.case, r.ours, r.ref, "" if r.ratio is None else f"{r.ratio:.3g}", r.target, r.status, r.note]
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    widths[-1] = len(head[-1])  # the note is left free-running
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


# -- machine and versions ---------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": str(cores), "ram": ram, "os": platform.platform(),
            "python": platform.python_version()}


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("streamlearn", "numpy", "confluent-kafka", "redis", "fastavro", "scikit-learn", "river", "pyspark",
                 "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    with contextlib.suppress(Exception):
        import confluent_kafka
        out["librdkafka"] = confluent_kafka.libversion()[0]
    with contextlib.suppress(Exception):
        from streamlearn.devstack import stack
        out["kafka (broker)"] = stack.KAFKA_VERSION
    with contextlib.suppress(Exception):
        v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5).stdout
        out["redis-server"] = v.split("v=")[1].split()[0]
    with contextlib.suppress(Exception):
        v = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=10).stderr
        out["java"] = v.splitlines()[0]
    return out


# -- profiles ---------------------------------------------------------------------------------
PROFILES: dict[str, dict[str, Any]] = {
    # tiny: runs in seconds per case, for the smoke test and for trying the harness
    "smoke": dict(dense_rows=4_000, dense_d=20, median_rows=20_000, sparse_rows=2_000, sparse_features=2 ** 12,
                  river_rows=1_000, kmeans_rows=5_000, kmeans_d=10, kmeans_k=5, pca_rows=5_000, pca_d=20,
                  redis_value_mb=1, redis_total_mb=8, state_floats=100_000, push_sizes=[1_000, 10_000],
                  scaling_workers=[1, 2], partitions=4, message_rows=500, group_settle_s=3.0, case_timeout_s=120,
                  quality_sparse_rows=5_000, broker_warmup_rows=0, tune_trials=16, tune_first_rung_divisor=27,
                  live_runs=1),
    # the sizes where feasible on this machine (see benchmarks/README.md)
    "full": dict(dense_rows=1_000_000, dense_d=100, median_rows=10_000_000, sparse_rows=200_000,
                 sparse_features=2 ** 20, river_rows=50_000, kmeans_rows=500_000, kmeans_d=10, kmeans_k=20,
                 pca_rows=200_000, pca_d=50, redis_value_mb=4, redis_total_mb=256, state_floats=10_000_000,
                 push_sizes=[1_000, 10_000, 100_000, 1_000_000, 10_000_000], scaling_workers=[1, 2, 4],
                 partitions=4, message_rows=1_000, group_settle_s=3.0, case_timeout_s=900,
                 quality_sparse_rows=1_000_000, broker_warmup_rows=800_000, tune_trials=16, tune_first_rung_divisor=27,
                 live_runs=3),
}


# -- the run context ----------------------------------------------------------------------------
class Context:
    """What cases share in one run: the profile, a private local stack (started on first
    use, stopped at the end), memoized data sets / topics / measurements, a log."""

    def __init__(self, profile: str, verbose: bool = True):
        self.profile_name = profile
        self.p = dict(PROFILES[profile])
        self.verbose = verbose
        self._memo: dict[Any, Any] = {}
        self._home: str | None = None
        self._settings = None
        self._spark = None
        self.tmp = Path(tempfile.mkdtemp(prefix="streamlearn-bench-"))
        self.run_id = uuid.uuid4().hex[:6]
        # in-process cases load the compiled kernels once, as a worker does at start-up (numba's
        # first call in a process costs ~0.4 s even from its cache; compiling them ~15 s once)
        from streamlearn.backends import kernels

        kernels.warm_up()

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def memo(self, key, fn: Callable[[], Any]):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def name(self, base: str) -> str:
        return f"bench-{base}-{self.run_id}"

    # -- the private stack
    @property
    def settings(self):
        if self._settings is None:
            from streamlearn.devstack import stack

            self._home = str(self.tmp / "stack")
            self.log(f"starting a private local stack in {self._home}")
            t0 = time.monotonic()
            self._settings = stack.up(home=self._home, timeout=180)
            self.log(f"stack up in {time.monotonic() - t0:.1f} s: kafka {self._settings.kafka}")
            from benchmarks._streams import warm_broker

            warm_broker(self)
        return self._settings

    @contextlib.contextmanager
    def redis_of(self, settings) -> Iterator[None]:
        """Cases (and the workers they start) use ``settings`` (the stack's Kafka, another
        Redis: a Redis Cluster started for the case) until the block ends."""
        saved = self.settings
        self._settings = settings
        try:
            yield
        finally:
            self._settings = saved

    def worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_KAFKA_")}
        env["STREAMLEARN_KAFKA"] = self.settings.kafka
        env["STREAMLEARN_REDIS"] = self.settings.redis
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    # -- Spark (one session per run; JVM start-up is not charged to any case)
    def spark(self):
        if self._spark is None:
            from pyspark.sql import SparkSession

            self.log("starting a local Spark session (local[*])")
            self._spark = (SparkSession.builder.master("local[*]").appName("streamlearn-bench")
                           .config("spark.ui.enabled", "false").config("spark.driver.memory", "8g")
                           .config("spark.sql.shuffle.partitions", "4")
                           .config("spark.local.dir", str(self.tmp / "spark"))
                           .getOrCreate())
            self._spark.sparkContext.setLogLevel("ERROR")
        return self._spark

    def close(self) -> None:
        if self._spark is not None:
            with contextlib.suppress(Exception):
                self._spark.stop()
            self._spark = None
        if self._home is not None:
            from streamlearn.devstack import stack

            self.log("stopping the private local stack")
            stack.down(self._home, purge=True)
            self._home = None
            self._settings = None
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def fit_ours(algorithm, batches):
    """``fit_local`` with the BLAS thread count a worker runs with (``WorkerConfig.blas_threads``,
    1): OpenBLAS' default (one thread per core) collapsed the dense linear learner's 1,000-row
    steps from ~660k to ~230k rows/s whenever another process (the broker, Spark's JVM) was
    busy on the other core. Peers keep their libraries' defaults."""
    from threadpoolctl import threadpool_limits

    from streamlearn.runtime.worker import WorkerConfig
    from streamlearn.runtime.local import fit_local

    with threadpool_limits(WorkerConfig.blas_threads, user_api="blas"):
        return fit_local(algorithm, batches)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)
