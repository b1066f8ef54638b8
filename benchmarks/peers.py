"""Peers on the same data, in the same run.

Ratios are "peer time / our time" (or "our rows/s / peer rows/s"), so higher is better
for us everywhere. What each side includes is stated in the row note:

- **ours, e2e**: producer -> Kafka -> one worker process -> Redis -> final snapshot
  (the :mod:`benchmarks.e2e` run, reused: the same job, not a second one).
- **ours, in-process**: ``fit_local`` on in-memory batches (no Kafka, no Redis).
- **Spark** (pyspark, ``local[*]``, one session per run, JVM start-up not charged):
  LogisticRegression reads a local parquet file of the same training rows (timed: read +
  vectorize + cache + fit) and, separately, fits a cached in-memory DataFrame (fit only).
  StreamingKMeans (``StreamingKMeansModel.update`` per micro-batch, the step
  ``trainOn`` runs for each DStream batch) over cached in-memory RDDs.
- **scikit-learn** ``partial_fit`` and **River** ``learn_one`` on in-memory arrays/dicts
  (building River's dicts is not timed).

Peers that are not installed give a ``skip`` row that says so; no figure is made up.
"""
from __future__ import annotations

import importlib.util
import time
import traceback

import numpy as np

from benchmarks import _streams as st
from benchmarks._core import Context, Row, check, fit_ours, fmt_rate, fmt_s
from benchmarks.e2e import accuracy, ll_live, ll_local

KMEANS_BATCH = 10_000  # rows per micro-batch for every k-means (ours in-process, Spark, sklearn)


def _missing(case: str, module: str, pip: str) -> list[Row] | None:
    if importlib.util.find_spec(module) is None:
        return [Row(case, status="skip", note=f"{pip} not installed (pip install {pip})")]
    return None


def _error(case: str, exc: BaseException) -> list[Row]:
    msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return [Row(case, status="error", note=f"{type(exc).__name__}: {msg}")]


def _guard(case: str, fn, *, module: str | None = None, pip: str | None = None) -> list[Row]:
    if module and (skip := _missing(case, module, pip or module)):
        return skip
    try:
        return fn()
    except Exception as exc:  # a broken peer must not hide the other rows
        traceback.print_exc()
        return _error(case, exc)


# -- linear: Spark LogisticRegression -----------------------------------------------------------
def spark_lr(ctx: Context) -> dict:
    def make():
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark.ml.classification import LogisticRegression
        from pyspark.ml.functions import array_to_vector

        Xtr, ytr, Xte, yte = st.dense(ctx)
        path = str(ctx.tmp / "dense_train.parquet")
        feats = pa.FixedSizeListArray.from_arrays(pa.array(Xtr.ravel()), Xtr.shape[1])
        pq.write_table(pa.table({"features": feats, "label": ytr}), path)
        spark = ctx.spark()
        lr = LogisticRegression(maxIter=100, regParam=0.0)  # Spark's defaults, spelled out
        # warm-up (not timed): first-query class loading and JIT would otherwise be charged to Spark
        warm = spark.read.parquet(path).limit(2000).select(array_to_vector("features").alias("features"), "label")
        LogisticRegression(maxIter=5).fit(warm)
        t0 = time.perf_counter()
        df = spark.read.parquet(path).select(array_to_vector("features").alias("features"), "label").cache()
        df.count()
        t1 = time.perf_counter()
        model = lr.fit(df)
        t2 = time.perf_counter()
        df2 = spark.read.parquet(path).select(array_to_vector("features").alias("features"), "label").cache()
        df2.count()  # a second, already-in-memory DataFrame for the fit-only figure
        t3 = time.perf_counter()
        lr.fit(df2)
        t4 = time.perf_counter()
        df.unpersist()
        df2.unpersist()
        coef, b = model.coefficients.toArray(), float(model.intercept)
        acc = float(np.mean(((Xte.astype(np.float64) @ coef + b) > 0) == (yte > 0.5)))
        return {"load_fit_s": t2 - t0, "load_s": t1 - t0, "fit_s": t4 - t3, "acc": acc,
                "iters": model.summary.totalIterations}
    return ctx.memo("spark_lr", make)


def case_spark_lr(ctx: Context) -> list[Row]:
    def run():
        sp = spark_lr(ctx)
        Xtr, ytr, _, _ = st.dense(ctx)
        live = ll_live(ctx)
        local = ll_local(ctx)
        ours_e2e = live.seconds
        acc_e2e, acc_local = accuracy(ctx, live.model), accuracy(ctx, local["model"])
        spark_note = f"Spark acc {sp['acc']:.4f} ({sp['iters']} L-BFGS iterations)"
        r1, r2 = sp["load_fit_s"] / ours_e2e, sp["fit_s"] / local["seconds"]
        ok1, ok2 = acc_e2e >= sp["acc"] - 0.003, acc_local >= sp["acc"] - 0.003
        return [
            Row("peers.spark_lr[e2e vs parquet]", fmt_s(ours_e2e), f"Spark {fmt_s(sp['load_fit_s'])}", r1,
                ">= 8x, acc >= Spark-0.003", check(r1, 8.0, ok1),
                f"ours: live pipeline (first send -> snapshot stored, worker running), acc {acc_e2e:.4f}; "
                f"Spark: read parquet+vectorize+cache+fit "
                f"(load {fmt_s(sp['load_s'])}); {spark_note}; {len(Xtr):,}x{Xtr.shape[1]}"),
            Row("peers.spark_lr[in-process vs in-memory]", fmt_s(local["seconds"]), f"Spark {fmt_s(sp['fit_s'])}", r2,
                ">= 8x, acc >= Spark-0.003", check(r2, 8.0, ok2),
                f"ours: fit_local, acc {acc_local:.4f}; Spark: fit on a cached DataFrame; {spark_note}"),
        ]
    return _guard("peers.spark_lr", run, module="pyspark")


# -- linear: scikit-learn SGDClassifier, River LogisticRegression ---------------------------------
def case_sklearn_sgd(ctx: Context) -> list[Row]:
    def run():
        from sklearn.linear_model import SGDClassifier

        Xtr, ytr, Xte, yte = st.dense(ctx)
        clf = SGDClassifier(loss="log_loss", random_state=0)
        t0 = time.perf_counter()
        for s in range(0, len(Xtr), 500):
            clf.partial_fit(Xtr[s:s + 500], ytr[s:s + 500], classes=np.array([0.0, 1.0]))
        dt = time.perf_counter() - t0
        acc = float(clf.score(Xte, yte))
        local = ll_local(ctx)
        return [Row("peers.sklearn_sgd", fmt_rate(local["rate"]), fmt_rate(len(Xtr) / dt), dt / local["seconds"], "",
                    "info", f"SGDClassifier(log_loss).partial_fit, 500-row batches, one pass: acc {acc:.4f} vs ours "
                    f"(fit_local, 32 packed models) {accuracy(ctx, local['model']):.4f}")]
    return _guard("peers.sklearn_sgd", run, module="sklearn", pip="scikit-learn")


def case_river_lr(ctx: Context) -> list[Row]:
    def run():
        from river import linear_model, preprocessing

        Xtr, ytr, Xte, yte = st.dense(ctx)
        n = min(ctx.p["river_rows"], len(Xtr))
        rows = [dict(enumerate(r)) for r in Xtr[:n].tolist()]
        labels = (ytr[:n] > 0.5).tolist()
        model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
        t0 = time.perf_counter()
        for x, y in zip(rows, labels):
            model.learn_one(x, y)
        dt = time.perf_counter() - t0
        m = min(len(Xte), 20_000)
        pred = [model.predict_one(x) for x in (dict(enumerate(r)) for r in Xte[:m].tolist())]
        acc = float(np.mean(np.array(pred) == (yte[:m] > 0.5)))
        local = ll_local(ctx)
        live = ll_live(ctx)
        Xtr_n = len(Xtr)
        e2e_rate = live.records / live.seconds
        river_rate = n / dt
        return [
            Row("peers.river_lr[in-process]", fmt_rate(local["rate"]), fmt_rate(river_rate), local["rate"] / river_rate,
                "", "info", f"River StandardScaler|LogisticRegression learn_one on {n:,} rows: acc {acc:.4f} "
                f"(first {m:,} test rows) vs ours {accuracy(ctx, local['model']):.4f} (all {Xtr_n:,} rows)"),
            Row("peers.river_lr[e2e]", fmt_rate(e2e_rate), fmt_rate(river_rate), e2e_rate / river_rate, "", "info",
                "ours through Kafka+Redis (live e2e run) vs River in-process"),
        ]
    return _guard("peers.river_lr", run, module="river")


# -- k-means: Spark StreamingKMeans, scikit-learn MiniBatchKMeans, ours --------------------------
def kmeans_data(ctx: Context) -> np.ndarray:
    from streamlearn import datasets

    return ctx.memo("data:kmeans", lambda: datasets.clustered(ctx.p["kmeans_rows"], ctx.p["kmeans_d"],
                                                               n_clusters=ctx.p["kmeans_k"]))


def _sse(X, centers) -> float:
    from streamlearn.algorithms import _metrics

    return _metrics.sse(X, np.asarray(centers, dtype=np.float64))


def case_kmeans(ctx: Context) -> list[Row]:
    X = kmeans_data(ctx)
    k, d = ctx.p["kmeans_k"], ctx.p["kmeans_d"]
    rows: list[Row] = []
    desc = f"clustered({len(X):,}, d={d}, {k} blobs), k={k}, SSE on all rows"

    def ours_local():
        from streamlearn import datasets
        from streamlearn.algorithms import make_algorithm

        algo = make_algorithm("kmeans", {"n_features": d, "k": k})
        t0 = time.perf_counter()
        model = fit_ours(algo, datasets.batches(X, None, KMEANS_BATCH))
        return {"seconds": time.perf_counter() - t0, "sse": _sse(X, model.centers)}

    def ours_e2e():
        live = st.run_live(ctx, "kmeans", X, None, "kmeans", {"n_features": d, "k": k})
        return {"seconds": live.seconds, "sse": _sse(X, live.model.centers)}

    def spark():
        from pyspark.mllib.clustering import StreamingKMeansModel
        from pyspark.mllib.linalg import DenseVector

        sc = ctx.spark().sparkContext
        rdds = [sc.parallelize([DenseVector(r) for r in X[s:s + KMEANS_BATCH].astype(np.float64)], 2).cache()
                for s in range(0, len(X), KMEANS_BATCH)]
        for r in rdds:
            r.count()
        model = StreamingKMeansModel([X[i].astype(np.float64) for i in range(k)], [1.0] * k)  # first k points
        t0 = time.perf_counter()
        for r in rdds:
            model = model.update(r, 1.0, "batches")
        dt = time.perf_counter() - t0
        for r in rdds:
            r.unpersist()
        return {"seconds": dt, "sse": _sse(X, np.array(model.centers))}

    def sklearn():
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=1)
        t0 = time.perf_counter()
        for s in range(0, len(X), KMEANS_BATCH):
            km.partial_fit(X[s:s + KMEANS_BATCH])
        return {"seconds": time.perf_counter() - t0, "sse": _sse(X, km.cluster_centers_)}

    results = {}
    for name, fn, module in (("ours_local", ours_local, None), ("ours_e2e", ours_e2e, None),
                             ("spark", spark, "pyspark"), ("sklearn", sklearn, "sklearn")):
        out = _guard(f"peers.kmeans[{name}]", lambda fn=fn: [fn()], module=module,
                     pip={"pyspark": "pyspark", "sklearn": "scikit-learn"}.get(module))
        if isinstance(out[0], Row):
            rows.extend(out)
        else:
            results[name] = out[0]
    sp, sk = results.get("spark"), results.get("sklearn")
    for name, label, what in (("ours_e2e", "e2e", "ours: live pipeline (first send -> snapshot stored)"),
                              ("ours_local", "in-process", f"ours: fit_local, {KMEANS_BATCH}-row batches")):
        o = results.get(name)
        if o is None:
            continue
        if sp is not None:
            r = sp["seconds"] / o["seconds"]
            lower = 1.0 - o["sse"] / sp["sse"]
            rows.append(Row(f"peers.spark_streaming_kmeans[{label}]", fmt_s(o["seconds"]), f"Spark {fmt_s(sp['seconds'])}",
                            r, ">= 10x, SSE >= 5% lower", check(r, 10.0, lower >= 0.05),
                            f"{what}; Spark: StreamingKMeansModel.update per {KMEANS_BATCH}-row cached RDD, init = "
                            f"first {k} points; SSE ours/Spark {o['sse']:.4g}/{sp['sse']:.4g} ({100 * lower:+.1f}% lower); "
                            f"{desc}"))
        if sk is not None:
            rows.append(Row(f"peers.sklearn_minibatch_kmeans[{label}]", fmt_s(o["seconds"]),
                            f"sklearn {fmt_s(sk['seconds'])}", sk["seconds"] / o["seconds"], "", "info",
                            f"{what}; MiniBatchKMeans.partial_fit per {KMEANS_BATCH} rows; SSE ours/sklearn "
                            f"{o['sse']:.4g}/{sk['sse']:.4g} ({100 * (1 - o['sse'] / sk['sse']):+.1f}% lower)"))
    return rows


# -- PCA: scikit-learn IncrementalPCA, ours ------------------------------------------------------
def case_pca(ctx: Context) -> list[Row]:
    from streamlearn import datasets

    n, d, r = ctx.p["pca_rows"], ctx.p["pca_d"], 5
    X = ctx.memo("data:pca", lambda: datasets.low_rank(n, d, rank=r))
    Xc = X - X.mean(0)
    total = float((Xc.astype(np.float64) ** 2).sum())

    def captured(components) -> float:  # fraction of the variance the r components capture
        V = np.asarray(components, dtype=np.float64).reshape(-1, d)[:r]
        Q = np.linalg.qr(V.T)[0]
        return float(((Xc @ Q) ** 2).sum() / total)

    def sklearn():
        from sklearn.decomposition import IncrementalPCA

        ipca = IncrementalPCA(n_components=r)
        t0 = time.perf_counter()
        for s in range(0, n, 10_000):
            ipca.partial_fit(X[s:s + 10_000])
        return {"seconds": time.perf_counter() - t0, "captured": captured(ipca.components_)}

    def ours():
        from streamlearn.algorithms import make_algorithm

        algo = make_algorithm("pca", {"n_features": d, "n_components": r})
        t0 = time.perf_counter()
        model = fit_ours(algo, datasets.batches(X, None, 10_000))
        dt = time.perf_counter() - t0
        comps = getattr(model, "components", None)
        if comps is None:
            comps = getattr(model, "components_")
        comps = np.asarray(comps)
        if comps.shape[0] == d and comps.shape[1] != d:
            comps = comps.T
        return {"seconds": dt, "captured": captured(comps)}

    sk = _guard("peers.sklearn_ipca", lambda: [sklearn()], module="sklearn", pip="scikit-learn")
    if isinstance(sk[0], Row):
        return sk
    sk = sk[0]
    from streamlearn.algorithms import available

    if "pca" not in available():
        return [Row("peers.sklearn_ipca", "", f"sklearn {fmt_s(sk['seconds'])}", None, "", "skip",
                    f"ours: no 'pca' algorithm in this checkout yet (available: {', '.join(available())}); sklearn "
                    f"IncrementalPCA captured {sk['captured']:.4f} of the variance with {r} components")]
    try:
        o = ours()
    except Exception as exc:
        return [Row("peers.sklearn_ipca", "", f"sklearn {fmt_s(sk['seconds'])}", None, "", "error",
                    f"ours (pca) failed: {type(exc).__name__}: {str(exc)[:120]}; sklearn captured "
                    f"{sk['captured']:.4f} of the variance with {r} components")]
    return [Row("peers.sklearn_ipca", fmt_s(o["seconds"]), f"sklearn {fmt_s(sk['seconds'])}", sk["seconds"] / o["seconds"],
                "", "info", f"low_rank({n:,}, d={d}, rank {r}), 10k-row batches, in-process: variance captured "
                f"ours {o['captured']:.4f} vs IncrementalPCA {sk['captured']:.4f}")]


# -- factorization machines: River FMClassifier, ours ------------------------------------------
def case_fm(ctx: Context) -> list[Row]:
    def run():
        from river import facto

        from streamlearn import datasets
        from streamlearn.algorithms import _metrics, make_algorithm
        from streamlearn.backends import kernels
        from streamlearn.batch import Batch

        Xtr, ytr, Xte, yte = st.sparse(ctx)
        n = min(ctx.p["river_rows"], len(Xtr))
        Xn, yn = datasets._rows(Xtr, 0, n), ytr[:n]
        params = {"n_features": Xtr.n_features, "num_factors": 8}
        test = Batch(Xte, yte)

        def dicts(X):
            for i in range(len(X)):
                a, b = X.indptr[i], X.indptr[i + 1]
                row: dict = {}
                for j, v in zip(X.indices[a:b].tolist(), X.values[a:b].tolist()):
                    row[j] = row.get(j, 0.0) + v
                yield row

        # ours first: River's 50,000 row dicts and model objects, alive while it trains, make
        # every later cyclic garbage collection walk millions of objects (in-process FM was
        # 40k rows/s measured after River, 60k before)
        # what a process pays once (imports, numba's start, the kernels' load; a worker pays it
        # before joining): a 500-row fit first, timed and printed apart
        t0 = time.perf_counter()
        fit_ours(make_algorithm("factorization_machines", params), datasets.batches(datasets._rows(Xn, 0, 500),
                                                                                   yn[:500], 500))
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        local_model = fit_ours(make_algorithm("factorization_machines", params), datasets.batches(Xn, yn, 500))
        local_s = time.perf_counter() - t0
        local_auc = local_model.score(test, "auc")
        # a one-second run's figure moves by a fifth from run to run (a 38 MB snapshot's allocations
        # and broker append): the median of ``live_runs`` runs, each one's time printed
        runs = [st.run_live(ctx, f"sparse-{i}", Xn, yn, "factorization_machines", params)
                for i in range(ctx.p["live_runs"])]
        live = sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]
        e2e_s = live.seconds
        e2e_auc = live.model.score(test, "auc")
        # every training row: how the live pipeline's rate grows once the one snapshot at the end
        # (a 2^20-feature model's, the same whatever the rows) is shared by more rows
        longer = st.run_live(ctx, "sparse-all", Xtr, ytr, "factorization_machines", params)
        rows, labels = list(dicts(Xn)), (yn > 0.5).tolist()
        fm = facto.FMClassifier(n_factors=8, seed=0)
        t0 = time.perf_counter()
        for x, y in zip(rows, labels):
            fm.learn_one(x, y)
        river_s = time.perf_counter() - t0
        river_auc = _metrics.auc(yte, np.array([fm.predict_proba_one(x).get(True, 0.0) for x in dicts(Xte)]))
        river_rate = n / river_s

        desc = (f"sparse_classification 2^{int(np.log2(Xtr.n_features))} features, {n:,} training rows, "
                f"k=8; AUC on {len(Xte):,} test rows: River {river_auc:.4f}")
        kernels_note = (f"{'numba' if kernels.compiled() else 'numpy'} kernels; the process' first-call costs "
                        f"(imports, numba's start: a 500-row fit) {fmt_s(load_s)} before, not in the figure (with "
                        f"them {fmt_rate(n / (load_s + local_s))}, {n / (load_s + local_s) / river_rate:.1f}x)")
        out = []
        for label, secs, auc, target, what in (
                ("e2e", e2e_s, e2e_auc, 50.0, f"ours: live pipeline, the median of {len(runs)} run(s) "
                                              f"({', '.join(fmt_s(run.seconds) for run in runs)}, in turn): "
                                              f"{live.timeline()}"),
                ("in-process", local_s, local_auc, 100.0, f"ours: fit_local, 500-row batches, {kernels_note}")):
            rate = n / secs
            r = rate / river_rate
            out.append(Row(f"peers.river_fm[{label}]", fmt_rate(rate), f"River {fmt_rate(river_rate)}", r,
                           f">= {target:.0f}x, AUC >= River", check(r, target, auc >= river_auc),
                           f"{what}, AUC {auc:.4f}; River FMClassifier learn_one; {desc}"))
        rate = longer.records / longer.seconds
        out.append(Row("peers.river_fm[e2e, every training row]", fmt_rate(rate), f"River {fmt_rate(river_rate)}",
                       rate / river_rate, "", "info",
                       f"ours: the same live pipeline on all {longer.records:,} training rows, {longer.timeline()}, "
                       f"AUC {longer.model.score(test, 'auc'):.4f}; River's rate from its {n:,} rows"))
        return out
    return _guard("peers.river_fm", run, module="river")


CASES = {"peers.spark_lr": case_spark_lr, "peers.sklearn_sgd": case_sklearn_sgd, "peers.river_lr": case_river_lr,
         "peers.kmeans": case_kmeans, "peers.pca": case_pca, "peers.fm": case_fm}
