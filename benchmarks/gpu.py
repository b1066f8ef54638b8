"""Update steps on numpy vs torch CPU vs torch CUDA (float64 everywhere), in-process.

    python -m benchmarks.gpu [--quick] [--engines numpy,torch-cpu,torch-cuda] [--json FILE]

Needs numpy (and torch for the torch engines); no Kafka, no Redis (LocalState). Cases:
linear learner with model packing (64 models; dense d=1000, sparse d=2**20), k-means
(k=1000, so 10,000 summary slots, d=100), factorization machines (sparse d=2**20, 8 factors).

For each case and engine:
- ``step``: median time of one ``update`` + commit at several batch sizes, split into
  host->device copies (``asarray``/``csr``: what the step sends), device->host copies
  (``to_numpy``: the deltas and anything the host decides on), state pull/push/commit (the
  numpy state itself), and the rest (compute and host-side work); copies are timed with a
  device synchronize around them, so the split is exact, not overlapped;
- ``fit_local``: end-to-end records/s of ``fit_local`` over the whole data set (state
  initialization included).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

from streamlearn import backends
from streamlearn import datasets as D
from streamlearn.algorithms import make_algorithm
from streamlearn.batch import Batch
from streamlearn.runtime.local import fit_local
from streamlearn.statestore.local import LocalState

ENGINES = {"numpy": ("numpy", "cpu"), "torch-cpu": ("torch", "cpu"), "torch-cuda": ("torch", "cuda")}


class _Timed:
    """Wraps a Backend: times (synchronized) host<->device copies."""

    def __init__(self, bk):
        self._bk, self.h2d, self.d2h = bk, 0.0, 0.0

    def __getattr__(self, name):
        return getattr(self._bk, name)

    def _timed(self, field, fn, *a):
        self._bk.synchronize()
        t = time.perf_counter()
        out = fn(*a)
        self._bk.synchronize()
        setattr(self, field, getattr(self, field) + time.perf_counter() - t)
        return out

    def asarray(self, a):
        return self._timed("h2d", self._bk.asarray, a)

    def csr(self, *a):
        return self._timed("h2d", self._bk.csr, *a)

    def to_numpy(self, a):
        return self._timed("d2h", self._bk.to_numpy, a)

    def nearest(self, X, C):  # the generic formula, so its idx/d2 copies back count as d2h
        return self._bk.__class__.nearest(self, X, C)


class _StateTimer:
    def __init__(self, state):
        self.state, self.t = state, 0.0
        for name in ("pull", "push"):
            setattr(self, name, self._wrap(getattr(state, name)))

    def _wrap(self, fn):
        def inner(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            self.t += time.perf_counter() - t
            return out
        return inner

    def __getattr__(self, name):
        return getattr(self.state, name)


def _cases(quick: bool):
    s = 10 if quick else 1
    Xd, yd = D.dense_classification(48_000 // s, d=1000, seed=1)
    Xs, ys = D.sparse_classification(64_000 // s, n_features=2 ** 20, nnz=40, seed=2)
    Xk = D.clustered(48_000 // s, d=100, n_clusters=200, seed=3)
    sizes = [1000, 4000, 16000] if not quick else [500, 2000]
    return [
        ("ll_dense_d1000_M64", "linear_learner", {"n_features": 1000, "num_models": 64}, Xd, yd, sizes, 5000),
        ("ll_sparse_d2^20_M64", "linear_learner", {"n_features": 2 ** 20, "num_models": 64}, Xs, ys, sizes, 8000),
        ("kmeans_k1000_d100", "kmeans", {"n_features": 100, "k": 1000, "n_init": 1, "max_iter": 10}, Xk, None,
         sizes, 5000),
        ("fm_sparse_d2^20_f8", "factorization_machines", {"n_features": 2 ** 20, "num_factors": 8}, Xs, ys, sizes,
         8000),
    ]


def _slice(X, y, a, b) -> Batch:
    return next(D.batches(X, y, b - a, start=a, stop=b))


def step_times(algo_name, params, X, y, engine, size, reps):
    name, device = ENGINES[engine]
    algo = make_algorithm(algo_name, {**params, "backend": name, "device": device})
    state = LocalState()
    algo.initialize(state)
    state.commit()
    n = len(X) if not hasattr(X, "n_features") else X.shape[0]
    warm = 3 if algo_name != "kmeans" else 6  # k-means: fill the summary first
    for i in range(warm):
        a = (i * size) % max(n - size, 1)
        algo.update(state, _slice(X, y, a, a + size))
        state.commit()
    key = (name, device)
    base = backends.get_backend(name, device)
    timed = _Timed(base)
    backends._CACHE[key] = timed
    rows = []
    try:
        for r in range(reps):
            a = ((warm + r) * size) % max(n - size, 1)
            batch = _slice(X, y, a, a + size)
            timed.h2d = timed.d2h = 0.0
            st = _StateTimer(state)
            base.synchronize()
            t0 = time.perf_counter()
            algo.update(st, batch)
            t1 = time.perf_counter()
            state.commit()
            t2 = time.perf_counter()
            total = t2 - t0
            rows.append((total, timed.h2d, timed.d2h, st.t + (t2 - t1)))
    finally:
        backends._CACHE[key] = base
    med = {k: statistics.median(r[i] for r in rows) for i, k in enumerate(("total", "h2d", "d2h", "state"))}
    med["compute_other"] = max(med["total"] - med["h2d"] - med["d2h"] - med["state"], 0.0)
    return med


def fit_throughput(algo_name, params, X, y, engine, batch):
    name, device = ENGINES[engine]
    algo = make_algorithm(algo_name, {**params, "backend": name, "device": device})
    batches = list(D.batches(X, y, batch))
    backends.get_backend(name, device).synchronize()
    t = time.perf_counter()
    fit_local(algo, batches)
    dt = time.perf_counter() - t
    n = sum(len(b) for b in batches)
    return n / dt, dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engines", default=None, help="comma list of " + ",".join(ENGINES))
    ap.add_argument("--cases", default=None, help="comma list of case-name prefixes")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-fit", action="store_true")
    args = ap.parse_args(argv)
    engines = args.engines.split(",") if args.engines else [
        e for e in ENGINES if _usable(*ENGINES[e])]
    info = {"python": sys.version.split()[0], "numpy": np.__version__, "machine": platform.processor() or
            platform.machine(), "engines": engines}
    try:
        import torch
        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    print(json.dumps(info), flush=True)
    out = {"info": info, "step": [], "fit": []}
    t_data = time.perf_counter()
    cases = _cases(args.quick)
    print(f"data generated in {time.perf_counter() - t_data:.1f}s", flush=True)
    for cname, algo_name, params, X, y, sizes, fit_batch in cases:
        if args.cases and not any(cname.startswith(p) for p in args.cases.split(",")):
            continue
        for size in sizes:
            for e in engines:
                try:
                    m = step_times(algo_name, params, X, y, e, size, args.reps)
                except Exception as exc:  # report and go on with the other engines
                    print("error", cname, e, size, f"{type(exc).__name__}: {exc}", flush=True)
                    continue
                row = {"case": cname, "engine": e, "batch": size, **{k: round(v * 1e3, 3) for k, v in m.items()}}
                out["step"].append(row)
                print("step", json.dumps(row), flush=True)
        if not args.no_fit:
            for e in engines:
                try:
                    rps, dt = fit_throughput(algo_name, params, X, y, e, fit_batch)
                except Exception as exc:
                    print("error fit", cname, e, f"{type(exc).__name__}: {exc}", flush=True)
                    continue
                row = {"case": cname, "engine": e, "batch": fit_batch, "records_per_s": round(rps), "seconds": round(dt, 2)}
                out["fit"].append(row)
                print("fit", json.dumps(row), flush=True)
    _table(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def _usable(name, device) -> bool:
    try:
        backends.validate(name, device)
        return True
    except backends.BackendError:
        return False


def _table(out) -> None:
    print("\nupdate step, median ms (h2d / d2h = host<->device copies; state = pull/push/commit on the numpy state)")
    print(f"{'case':22} {'engine':10} {'batch':>6} {'total':>9} {'h2d':>8} {'d2h':>8} {'state':>8} {'compute+':>9}")
    for r in out["step"]:
        print(f"{r['case']:22} {r['engine']:10} {r['batch']:>6} {r['total']:>9.2f} {r['h2d']:>8.2f} {r['d2h']:>8.2f} "
              f"{r['state']:>8.2f} {r['compute_other']:>9.2f}")
    if out["fit"]:
        print("\nfit_local end to end")
        print(f"{'case':22} {'engine':10} {'batch':>6} {'records/s':>11} {'seconds':>8}")
        for r in out["fit"]:
            print(f"{r['case']:22} {r['engine']:10} {r['batch']:>6} {r['records_per_s']:>11} {r['seconds']:>8}")


if __name__ == "__main__":
    raise SystemExit(main())
