"""Issue 3's quality targets at full size, in-process (no services): the linear learner after
one pass over the sparse hashed set (2^20 features, ~40 non-zeros a row) against full-batch
scikit-learn ``LogisticRegression`` (lbfgs, C=1) on the same 80/20 split.

The dense counterpart is measured by ``e2e.linear_learner`` / ``peers.spark_lr`` (test
accuracy of every model there); the small-size versions of both are unit tests
(tests/unit/test_algorithm_quality.py)."""
from __future__ import annotations

import time

from benchmarks._core import Context, Row, check, fit_ours, fmt_rate, fmt_s


def case_linear_learner_sparse(ctx: Context) -> list[Row]:
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from streamlearn import datasets
    from streamlearn.algorithms import _metrics
    from streamlearn.algorithms.linear_learner import LinearLearner

    n, d = ctx.p["quality_sparse_rows"], ctx.p["sparse_features"]
    ctx.log(f"generating sparse_classification({n}, {d})")
    X, y = datasets.sparse_classification(n, d, seed=0)
    Xtr, ytr, Xte, yte = datasets.split(X, y)

    def csr(S):
        return sp.csr_matrix((S.values, S.indices, S.indptr), shape=(len(S.indptr) - 1, S.n_features))

    t0 = time.perf_counter()
    p = LogisticRegression(max_iter=1000).fit(csr(Xtr), ytr).predict_proba(csr(Xte))[:, 1]
    sk_s = time.perf_counter() - t0
    acc_sk, ll_sk = _metrics.accuracy(yte, p > 0.5), _metrics.log_loss(yte, p)
    t0 = time.perf_counter()
    model = fit_ours(LinearLearner(n_features=d), datasets.batches(Xtr, ytr, 1000))
    ours_s = time.perf_counter() - t0
    test = datasets.to_batch(Xte, yte)
    acc, ll = model.score(test, "accuracy"), model.score(test, "log_loss")
    r = ll_sk / ll  # >= 1/1.05 means log-loss no worse than 1.05x the peer's
    return [Row("quality.linear_learner_sparse", f"acc {acc:.4f}, log-loss {ll:.4f}",
                f"sklearn acc {acc_sk:.4f}, log-loss {ll_sk:.4f}", r, "log-loss <= 1.05x, acc >= sk-0.003",
                check(r, 1 / 1.05, acc >= acc_sk - 0.003),
                f"one pass, 32 packed models, {len(ytr):,} x 2^{d.bit_length() - 1} rows in {fmt_s(ours_s)} "
                f"({fmt_rate(len(ytr) / ours_s)}); LogisticRegression(lbfgs) {fmt_s(sk_s)}; ratio = peer/ours log-loss")]


CASES = {"quality.linear_learner_sparse": case_linear_learner_sparse}
