"""Quality targets of the built-in algorithms at small size, against scikit-learn (a test-only peer)."""
from __future__ import annotations

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.cluster import KMeans as SKKMeans  # noqa: E402
from sklearn.decomposition import PCA as SKPCA  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.metrics import log_loss as sk_log_loss, roc_auc_score  # noqa: E402

from streamlearn import datasets as D  # noqa: E402
from streamlearn.algorithms import _metrics  # noqa: E402
from streamlearn.algorithms._common import holdout_mask  # noqa: E402
from streamlearn.algorithms.factorization_machines import SPARSE_CHUNK_ROWS, FactorizationMachines  # noqa: E402
from streamlearn.algorithms.kmeans import KMeans  # noqa: E402
from streamlearn.algorithms.linear_learner import LinearLearner  # noqa: E402
from streamlearn.algorithms.pca import PCA  # noqa: E402
from streamlearn.batch import SparseRows  # noqa: E402
from streamlearn.runtime.local import fit_local  # noqa: E402
from streamlearn.statestore.local import LocalState, MemoryBackend  # noqa: E402


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.4).astype(float)
    s = np.round(rng.normal(size=500) + y, 1)  # ties included
    w = rng.uniform(0.5, 2.0, 500)
    assert _metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert _metrics.auc(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    p = 1 / (1 + np.exp(-s))
    assert _metrics.log_loss(y, p, w) == pytest.approx(sk_log_loss(y, p, sample_weight=w), rel=1e-9)


def test_linear_learner_matches_full_batch_logistic_regression():
    X, y = D.dense_classification(50_000, seed=1)
    Xtr, ytr, Xte, yte = D.split(X, y)
    sk = LogisticRegression(C=1e4, max_iter=2000).fit(Xtr, ytr)
    p = sk.predict_proba(Xte)[:, 1]
    acc_sk, ll_sk = _metrics.accuracy(yte, p > 0.5), _metrics.log_loss(yte, p)
    model = fit_local(LinearLearner(n_features=100), D.batches(Xtr, ytr, 1000))
    test = D.to_batch(Xte, yte)
    acc, ll = model.score(test, "accuracy"), model.score(test, "log_loss")
    print(f"linear_learner acc {acc:.4f} vs sklearn {acc_sk:.4f}; log_loss {ll:.4f} vs {ll_sk:.4f} ({ll / ll_sk:.4f}x)")
    assert acc >= acc_sk - 0.003
    assert ll <= 1.05 * ll_sk
    attrs = model.attrs
    assert len(attrs["models"]) == 32 and all(m["log_loss"] is not None for m in attrs["models"])
    best = attrs["selected_model"]
    assert attrs["models"][best]["log_loss"] == min(m["log_loss"] for m in attrs["models"])


def test_linear_learner_multiclass_and_regressor():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20_000, 10)).astype(np.float32)
    W = rng.normal(size=(10, 3))
    logits = X @ W
    yc = np.array([rng.choice(3, p=np.exp(l) / np.exp(l).sum()) for l in logits[:200]] +
                  list(np.argmax(logits[200:] + rng.gumbel(size=(19_800, 3)), axis=1)), dtype=float)
    Xtr, ytr, Xte, yte = D.split(X, yc)
    m = fit_local(LinearLearner(n_features=10, predictor_type="multiclass_classifier", num_classes=3, num_models=8),
                  D.batches(Xtr, ytr, 500))
    sk = LogisticRegression(max_iter=1000).fit(Xtr, ytr)
    assert m.score(D.to_batch(Xte, yte), "accuracy") >= sk.score(Xte, yte) - 0.01
    yr = X @ W[:, 0] * 3 + 5 + rng.normal(0, 1, len(X))
    Xtr, ytr, Xte, yte = D.split(X, yr)
    m = fit_local(LinearLearner(n_features=10, predictor_type="regressor", num_models=8), D.batches(Xtr, ytr, 500))
    r2_sk = LinearRegression().fit(Xtr, ytr).score(Xte, yte)
    assert m.score(D.to_batch(Xte, yte), "r2") >= r2_sk - 0.01
    assert m.predict_records(D.to_batch(Xte[:2], yte[:2]))[0]["prediction"] == pytest.approx(
        float(m.evaluate(D.to_batch(Xte[:1]))[0]))


def test_linear_learner_sparse_pushes_only_touched_rows():
    nf = 2 ** 16
    X, y = D.sparse_classification(12_000, n_features=nf, seed=2)
    Xtr, ytr, Xte, yte = D.split(X, y)
    algo = LinearLearner(n_features=nf, num_models=4)
    state = LocalState()
    algo.initialize(state)
    state.commit()
    spec = state.keys()["w"]
    assert spec.dtype == "float32" and spec.chunk_rows == 256
    first = next(D.batches(Xtr, ytr, 200))
    algo.update(state, first)
    touched = set((np.unique(first.X.indices) // 256).tolist())
    assert set(state.pending_chunks("w")) == touched  # only the chunks of the columns the batch used
    state.commit()
    model = fit_local(algo, D.batches(Xtr, ytr, 1000, start=200), state=state)
    auc = model.score(D.to_batch(Xte, yte), "auc")
    assert auc > 0.7, auc


def test_holdout_is_content_based_and_deterministic():
    X, y = D.dense_classification(5000, d=8, seed=0)
    whole = holdout_mask(D.to_batch(X, y), 0.1)
    parts = np.concatenate([holdout_mask(b, 0.1) for b in D.batches(X, y, 777)])
    np.testing.assert_array_equal(whole, parts)
    assert 0.08 < whole.mean() < 0.12
    perm = np.random.default_rng(0).permutation(5000)
    np.testing.assert_array_equal(holdout_mask(D.to_batch(X[perm], y[perm]), 0.1), whole[perm])


def test_factorization_machines_learn_interactions():
    X, y = D.interaction_data(30_000, seed=3)
    Xtr, ytr, Xte, yte = D.split(X, y)
    test = D.to_batch(Xte, yte)
    fm = fit_local(FactorizationMachines(n_features=X.n_features), D.batches(Xtr, ytr, 500))
    ll = fit_local(LinearLearner(n_features=X.n_features, num_models=8), D.batches(Xtr, ytr, 500))
    auc_fm, auc_ll = fm.score(test, "auc"), ll.score(test, "auc")
    print(f"interaction data AUC: factorization_machines {auc_fm:.4f}, linear_learner {auc_ll:.4f}")
    assert auc_fm > 0.85 and auc_fm > auc_ll + 0.2
    Xr, yr = D.interaction_data(30_000, seed=4, task="regression")
    Xtr, ytr, Xte, yte = D.split(Xr, yr)
    fm = fit_local(FactorizationMachines(n_features=Xr.n_features, predictor_type="regressor"),
                   D.batches(Xtr, ytr, 500))
    assert fm.score(D.to_batch(Xte, yte), "r2") > 0.9


def test_factorization_machines_sparse_push_is_row_sparse():
    """A step marks only the chunks of the rows its batch touched: here the first 3,000
    features of 2^17 (~1 MiB chunks of 26,214 rows: chunk 0 of 6)."""
    nf = 2 ** 17
    X, y = D.sparse_classification(400, n_features=3_000, seed=1)
    X = SparseRows(X.indptr, X.indices, X.values, nf)
    algo = FactorizationMachines(n_features=nf, num_factors=4)
    state = LocalState()
    algo.initialize(state)
    state.commit()
    algo.update(state, D.to_batch(X, y))
    assert state.spec("wv").n_chunks == 6
    assert state.pending_chunks("wv") == [0]


def test_factorization_machines_keys_over_what_a_worker_holds_keep_small_chunks():
    """``wv`` over PREFETCH_MAX_BYTES (read row by row, never whole) is stored in
    SPARSE_CHUNK_ROWS-row chunks, so that a commit rewrites the rows its window touched
    rather than ~1 MiB around each; one a worker holds whole is in ~1 MiB chunks."""
    big = FactorizationMachines(n_features=2 ** 22, num_factors=8)  # 2^22 x 18 x 4 B = 302 MB
    small = FactorizationMachines(n_features=2 ** 20, num_factors=8)  # 75 MB
    assert big._keyargs()["chunk_rows"] == SPARSE_CHUNK_ROWS
    assert small._keyargs()["chunk_rows"] == 0


@pytest.mark.parametrize("dense", [False, True])
def test_factorization_machines_step_is_the_log_loss_gradient(dense):
    """One SGD step from the initial state moves [w, v] by -learning_rate times the
    gradient of the weighted mean log-loss; compared with central differences of the
    model's own decision function (the prediction path), column by touched column."""
    nf, k, lr = 12, 3, 1e-3
    rng = np.random.default_rng(7)
    X = (rng.normal(size=(9, nf)) * (rng.random((9, nf)) < 0.4)).astype(np.float32)
    X[:, 2] = 0.0  # a column no row touches keeps a zero gradient
    y = (rng.random(9) < 0.5).astype(np.float64)
    w = rng.random(9) + 0.5
    rows, cols = np.nonzero(X)
    sparse = SparseRows(np.searchsorted(rows, np.arange(10)), cols, X[rows, cols], nf)
    batch = D.to_batch(X if dense else sparse, y, w)
    algo = FactorizationMachines(n_features=nf, num_factors=k, optimizer="sgd", learning_rate=lr,
                                 linear_l2=0.0, factors_l2=0.0, init_sigma=0.3)
    state = LocalState()
    algo.initialize(state)
    state.commit()
    before = algo.finalize(state)
    algo.update(state, batch)
    after = algo.finalize(state)

    def loss(wv: np.ndarray) -> float:
        model = before.__class__(before.w0, wv[:, 0], wv[:, 1:], before.attrs)
        return _metrics.log_loss(y, 1.0 / (1.0 + np.exp(-model.decision_function(batch))), w)

    wv0 = np.column_stack([before.w, before.v]).astype(np.float64)
    numeric = np.zeros_like(wv0)
    for idx in np.ndindex(*wv0.shape):
        e = np.zeros_like(wv0)
        e[idx] = 1e-6
        numeric[idx] = (loss(wv0 + e) - loss(wv0 - e)) / 2e-6
    step = (np.column_stack([after.w, after.v]) - wv0) / -lr
    np.testing.assert_allclose(step, numeric, atol=1e-6)
    assert np.abs(numeric).max() > 1e-2 and not numeric[2].any()


@pytest.fixture(scope="module")
def kmeans_data():
    return D.clustered(30_000, seed=5)


def test_kmeans_any_k_from_one_state(kmeans_data):
    X = kmeans_data
    model = fit_local(KMeans(n_features=10, k=20, k_max=20), D.batches(X, None, 500))
    assert len(model.summary_weights) <= 200
    assert model.summary_weights.sum() == pytest.approx(len(X))
    for k in (5, 10, 20):
        ours = _metrics.sse(X, model.with_k(k).centers)
        best = SKKMeans(k, n_init=3, random_state=0).fit(X).inertia_
        print(f"kmeans k={k}: SSE ratio to sklearn {ours / best:.4f}")
        assert ours <= 1.02 * best
    assert model.centers.shape == (20, 10)
    with pytest.raises(ValueError):
        model.with_k(21)


def test_kmeans_concurrent_slot_collisions_are_repaired(kmeans_data):
    """Two workers both open slots in the same commit window (empty summary); the loser of
    each collided slot moves its own opening mass out again."""
    X = kmeans_data[:12_000]
    batches = list(D.batches(X, None, 500))
    backend = MemoryBackend()
    init = LocalState(backend)
    KMeans(n_features=10, k=20, k_max=20).initialize(init)
    init.commit()
    workers = [(KMeans(n_features=10, k=20, k_max=20, seed=0), LocalState(backend)) for _ in range(2)]
    for i in range(0, len(batches), 2):
        pair = list(zip(workers, batches[i:i + 2]))
        for (a, st), b in pair:
            st.refresh()
            a.update(st, b)
        for (a, st), _ in pair:
            st.commit()
    final = LocalState(backend)
    weight = final.pull("weight")
    assert weight.min() > -1e-9 and weight.sum() == pytest.approx(len(X))
    # no slot holds mass from two different openings: every slot with mass has one claim
    # and the points it summarizes are close to its center
    model = KMeans(n_features=10, k=20, k_max=20).finalize(final)
    single = fit_local(KMeans(n_features=10, k=20, k_max=20), batches)
    assert _metrics.sse(X, model.centers) <= 1.05 * _metrics.sse(X, single.centers)


def test_pca_exact_matches_sklearn():
    X = D.low_rank(20_000, d=50, rank=5, seed=1)
    sk = SKPCA(5).fit(X.astype(np.float64))
    m = fit_local(PCA(n_features=50, n_components=5), D.batches(X, None, 1000))
    np.testing.assert_allclose(m.explained_variance, sk.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(m.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(np.abs((m.components * sk.components_).sum(1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(m.evaluate(D.to_batch(X[:100]))), np.abs(sk.transform(X[:100])), atol=1e-3)


def test_pca_randomized_recovers_subspace():
    X = D.low_rank(20_000, d=200, rank=5, seed=2)
    sk = SKPCA(5).fit(X.astype(np.float64))
    algo = PCA(n_features=200, n_components=5, mode="randomized")
    state = LocalState()
    algo.initialize(state)
    state.commit()
    assert state.keys()["y"].shape == (200, algo.sketch_size)  # O(k d), no d x d key
    m = fit_local(algo, D.batches(X, None, 1000), state=state)
    cos = np.abs((m.components * sk.components_).sum(1))
    print(f"randomized PCA cosines {np.round(cos, 5)}")
    assert cos.min() >= 0.99
    np.testing.assert_allclose(m.explained_variance, sk.explained_variance_, rtol=0.15)  # Nystrom underestimates
