"""Seeded synthetic data sets for tests, benchmarks and examples.

Every generator is a pure function of its arguments (``seed`` included), returns numpy
arrays (or :class:`~streamlearn.batch.SparseRows`) and never touches the network. Use
:func:`batches` to cut any of them into a stream of :class:`~streamlearn.batch.Batch`.

- :func:`dense_classification` — n x 100 Gaussian clusters with logistic labels
  (the linear learner's reference data; the full size is 1M rows).
- :func:`sparse_classification` — hashed sparse rows (2**20 features, ~40 non-zeros a row,
  Zipf-distributed tokens) with logistic labels.
- :func:`interaction_classification` / ``regression`` — one-hot categorical fields whose
  label depends on pairwise field interactions only (factorization machines' data: a
  linear model cannot fit it).
- :func:`clustered` — Gaussian blobs for k-means.
- :func:`low_rank` — data with a clear spectral gap for PCA.
- :func:`topic_documents` — bags of words drawn from an LDA model (the topic model's data).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from streamlearn.batch import Batch, SparseRows
from streamlearn.series_batch import SeriesBatch

FULL_DENSE_ROWS = 1_000_000


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))


def dense_classification(n: int = FULL_DENSE_ROWS, d: int = 100, n_clusters: int = 10, seed: int = 0,
                         signal: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters in ``d`` dimensions; ``y ~ Bernoulli(sigmoid(x·beta + b))``.

    Features are "standardized-ish" (cluster centers N(0, 1), unit noise). Returns
    ``X`` float32 (n, d) and ``y`` float64 in {0, 1}.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (n_clusters, d))
    beta = rng.normal(0.0, signal / np.sqrt(2.0 * d), d)
    bias = 0.3
    X = np.empty((n, d), dtype=np.float32)
    y = np.empty(n, dtype=np.float64)
    step = 200_000  # generate in blocks to bound memory at the full size
    for s in range(0, n, step):
        m = min(step, n - s)
        c = rng.integers(0, n_clusters, m)
        Xb = centers[c] + rng.normal(0.0, 1.0, (m, d))
        X[s:s + m] = Xb
        y[s:s + m] = (rng.random(m) < _sigmoid(Xb @ beta + bias)).astype(np.float64)
    return X, y


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int, n_features: int) -> SparseRows:
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return SparseRows(indptr, cols.astype(np.int64), vals.astype(np.float32), n_features)


def _hash(tokens: np.ndarray, n_features: int, salt: int = 0x9E3779B97F4A7C15) -> np.ndarray:
    h = tokens.astype(np.uint64) * np.uint64(salt)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    return (h % np.uint64(n_features)).astype(np.int64)


def sparse_classification(n: int = 100_000, n_features: int = 2 ** 20, nnz: int = 40, vocabulary: int = 200_000,
                          seed: int = 0, signal: float = 1.0) -> tuple[SparseRows, np.ndarray]:
    """Hashed sparse rows: each row has ``nnz`` tokens drawn from a Zipf-like vocabulary,
    hashed into ``n_features`` columns with value 1/sqrt(nnz); logistic labels from a
    random weight per token."""
    with np.errstate(over="ignore"):
        rng = np.random.default_rng(seed)
        ranks = np.arange(1, vocabulary + 1, dtype=np.float64)
        p = ranks ** -1.05
        p /= p.sum()
        token_w = rng.normal(0.0, signal * 3.0, vocabulary)
        tokens = rng.choice(vocabulary, size=(n, nnz), p=p)
        logit = token_w[tokens].sum(1) / np.sqrt(nnz)
        y = (rng.random(n) < _sigmoid(logit - np.median(logit))).astype(np.float64)
        rows = np.repeat(np.arange(n), nnz)
        cols = _hash(tokens.ravel(), n_features)
        X = _csr(rows, cols, np.full(n * nnz, 1.0 / np.sqrt(nnz)), n, n_features)
    # duplicate (row, col) pairs stay as separate entries: SparseRows.dot sums them
    return X, y


def interaction_data(n: int = 50_000, n_fields: int = 6, cardinality: int = 8, rank: int = 3, seed: int = 0,
                     task: str = "classification", noise: float = 0.1) -> tuple[SparseRows, np.ndarray]:
    """One-hot categorical fields; the target is a sum of pairwise interactions
    ``<u[f, a_f], u[g, a_g]>`` (rank ``rank``) with zero main effects, so a linear
    model on the one-hot features cannot fit it but a factorization machine can.
    Columns: field f, value a -> f * cardinality + a."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 1.0, (n_fields, cardinality, rank))
    u -= u.mean(axis=1, keepdims=True)  # no main effects
    a = rng.integers(0, cardinality, (n, n_fields))
    emb = u[np.arange(n_fields)[None, :], a]  # (n, F, r)
    s = emb.sum(1)
    z = 0.5 * ((s * s).sum(1) - (emb * emb).sum((1, 2)))
    z = z / z.std()
    cols = (a + np.arange(n_fields)[None, :] * cardinality).ravel()
    X = _csr(np.repeat(np.arange(n), n_fields), cols, np.ones(n * n_fields), n, n_fields * cardinality)
    if task == "regression":
        return X, z + rng.normal(0.0, noise, n)
    return X, (rng.random(n) < _sigmoid(3.0 * z)).astype(np.float64)


def clustered(n: int = 100_000, d: int = 10, n_clusters: int = 20, seed: int = 0, spread: float = 6.0,
              ) -> np.ndarray:
    """Gaussian blobs with unequal sizes and radii (float32 (n, d))."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-spread, spread, (n_clusters, d))
    sizes = rng.dirichlet(np.full(n_clusters, 3.0))
    radii = rng.uniform(0.5, 1.5, n_clusters)
    c = rng.choice(n_clusters, size=n, p=sizes)
    return (centers[c] + rng.normal(0.0, 1.0, (n, d)) * radii[c, None]).astype(np.float32)


def low_rank(n: int = 20_000, d: int = 50, rank: int = 5, seed: int = 0, gap: float = 10.0,
             noise: float = 1.0) -> np.ndarray:
    """A ``rank``-dimensional signal with a clear spectral gap above isotropic noise,
    plus a non-zero mean (float32 (n, d))."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, rank)))[0]
    scales = gap * np.linspace(2.0, 1.0, rank)
    Z = rng.normal(size=(n, rank)) * scales
    return (Z @ basis.T + rng.normal(0.0, noise, (n, d)) + rng.normal(0.0, 3.0, d)).astype(np.float32)


def topic_documents(n: int = 5_000, vocab_size: int = 200, num_topics: int = 5, length: int = 60, seed: int = 0,
                    alpha: float = 0.2) -> SparseRows:
    """Word counts of ``n`` documents of ``length`` words drawn from LDA: topics are disjoint
    blocks of the vocabulary mixed with a Zipf background word distribution, mixtures
    Dirichlet(``alpha``)."""
    rng = np.random.default_rng(seed)
    background = 1.0 / np.arange(1, vocab_size + 1)
    topics = np.tile(background / background.sum() * 0.3, (num_topics, 1))
    for k, block in enumerate(np.array_split(rng.permutation(vocab_size), num_topics)):
        topics[k, block] += 0.7 / len(block)
    mix = rng.dirichlet(np.full(num_topics, alpha), n)
    counts = np.stack([rng.multinomial(length, p) for p in mix @ topics])
    rows, cols = np.nonzero(counts)
    return _csr(rows, cols, counts[rows, cols].astype(np.float32), n, vocab_size)


def to_batch(X, y=None, w=None) -> Batch:
    return Batch(X, None if y is None else np.asarray(y, dtype=np.float64), w)


def batches(X, y=None, batch_size: int = 1000, w=None, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
    """Consecutive mini-batches of rows ``start:stop`` as :class:`Batch` objects."""
    n = len(X) if isinstance(X, SparseRows) else X.shape[0]
    stop = n if stop is None else min(stop, n)
    for s in range(start, stop, batch_size):
        idx = np.arange(s, min(s + batch_size, stop))
        Xb = _rows(X, s, s + len(idx)) if isinstance(X, SparseRows) else X[s:s + len(idx)]
        yield Batch(Xb, None if y is None else np.asarray(y[s:s + len(idx)], dtype=np.float64),
                    None if w is None else w[s:s + len(idx)])


def _rows(X: SparseRows, a: int, b: int) -> SparseRows:
    lo, hi = X.indptr[a], X.indptr[b]
    return SparseRows(X.indptr[a:b + 1] - lo, X.indices[lo:hi], X.values[lo:hi], X.n_features)


def split(X, y, test_fraction: float = 0.2):
    """Deterministic train/test split by position (data are already shuffled)."""
    n = len(X) if isinstance(X, SparseRows) else X.shape[0]
    cut = int(round(n * (1 - test_fraction)))
    if isinstance(X, SparseRows):
        return _rows(X, 0, cut), y[:cut], _rows(X, cut, n), y[cut:]
    return X[:cut], y[:cut], X[cut:], y[cut:]


def seasonal_series(n_series: int = 20, length: int = 100, period: int = 7, seed: int = 0, counts: bool = False,
                    start: str = "2021-01-01", step_ms: int = 86_400_000):
    """Points of ``n_series`` daily series (level + seasonal sine of ``period`` + noise; Poisson
    counts with ``counts``), interleaved in time order, as a
    :class:`~streamlearn.series_batch.SeriesBatch` (DeepAR's data)."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(5, 50, n_series)
    amp = rng.uniform(0.2, 0.5, n_series) * level
    phase = rng.uniform(0, 2 * np.pi, n_series)
    k = np.arange(length)[:, None]
    mean = level + amp * np.sin(2 * np.pi * k / period + phase)  # (length, n_series)
    y = rng.poisson(mean).astype(np.float64) if counts else mean + rng.normal(0, 0.1, mean.shape) * level
    t0 = int(np.datetime64(start, "ms").astype(np.int64))
    series = np.array([f"s{i}" for i in range(n_series)] * length, dtype=object)
    time = np.repeat(t0 + np.arange(length) * step_ms, n_series)
    return SeriesBatch.of(series, time, y.ravel())
