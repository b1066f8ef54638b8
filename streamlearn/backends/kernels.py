"""Compiled (numba) kernels for the sparse update steps and the state's row gather/scatter.

A sparse step is a few dozen numpy calls on arrays of a few thousand rows, so numpy's
per-call overhead (allocation, dispatch, temporaries of nnz x width) bounds it, not the
arithmetic: one loop over the stored values does the same work in one pass. The kernels
compute in float64 with the numpy path's formulas, so both give the same model (the
conformance tests hold them to 1e-10); only the order of some sums differs.

The numpy path stays the fallback: when numba does not import, or with
``STREAMLEARN_KERNELS=numpy`` (read on every call, so a test can switch it),
:func:`compiled` is False and callers take their numpy code.

Compilation: every kernel is ``cache=True``, so a process loads the machine code compiled
by an earlier one (``__pycache__`` beside this file, or ``NUMBA_CACHE_DIR``) in milliseconds;
the first process on a machine compiles each kernel once (about a second each) on its first
call, never per batch. Where no cache directory is writable (a read-only install and no
writable home or ``NUMBA_CACHE_DIR``), numba refuses ``cache=True`` when the kernel is
defined: the kernels are then compiled in every process instead. Either way a process pays
numba's own start (~0.4-0.6 s, most of it on the first kernel called) once:
:func:`warm_up` takes it before any update step.
"""
from __future__ import annotations

import os

import numpy as np

try:
    import numba
except Exception:  # not installed, or a numba that does not fit this numpy: the numpy path
    numba = None

ENV_KERNELS = "STREAMLEARN_KERNELS"
KERNEL_CHOICES = ("numba", "numpy")


def compiled() -> bool:
    """True when the compiled kernels run (numba imported, ``STREAMLEARN_KERNELS`` not ``numpy``)."""
    return numba is not None and os.environ.get(ENV_KERNELS, "numba") != "numpy"


def _jit(fn):
    if numba is None:
        return fn
    try:
        return numba.njit(cache=True, nogil=True, fastmath=False)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available": nowhere to write
        return numba.njit(cache=False, nogil=True, fastmath=False)(fn)


# -- the buffered state's rows ------------------------------------------------------------------
@_jit
def gather_sum(values, delta, rows):
    """``values[rows] + delta[rows]`` (a row pull of a sum key with pending pushes), one pass,
    in the key's dtype."""
    n, m = len(rows), values.shape[1]
    out = np.empty((n, m), dtype=values.dtype)
    for i in range(n):
        r = rows[i]
        for j in range(m):
            out[i, j] = values[r, j] + delta[r, j]
    return out


@_jit
def gather(values, rows):
    """``values[rows]`` for a 2-D ``values``."""
    n, m = len(rows), values.shape[1]
    out = np.empty((n, m), dtype=values.dtype)
    for i in range(n):
        r = rows[i]
        for j in range(m):
            out[i, j] = values[r, j]
    return out


@_jit
def scatter_add(delta, rows, d):
    """``delta[rows] += d`` row by row (duplicate rows add up, as ``np.add.at`` does); each sum
    is formed in float64 and stored in ``delta``'s dtype, as numpy's in-place add does."""
    m = delta.shape[1]
    for i in range(len(rows)):
        r = rows[i]
        for j in range(m):
            delta[r, j] = delta[r, j] + d[i, j]


@_jit
def add_into(values, delta):
    """``values += delta`` for two C-ordered 2-D arrays of one shape, each sum formed in float64
    and stored in ``values``' dtype, as ``np.add(values, delta, out=values, dtype=np.float64)``
    does (a commit's combine of a whole 2^20-row float32 key: 3x faster than numpy's cast loop)."""
    v, d = values.reshape(-1), delta.reshape(-1)
    for i in range(v.size):
        v[i] = np.float64(v[i]) + np.float64(d[i])


# -- factorization machines ---------------------------------------------------------------------
@_jit
def fm_step(indptr, cols, vals, held, m, w0, target, weight, classifier, l2, adagrad, lr, sgd_scale):
  
    """One FM mini-batch step over a CSR batch whose columns are local (0 .. len(held) - 1).

    ``held`` (r, m [+ m]): per touched column [w_j, v_j1..v_jk] and, with Adagrad, their
    accumulators. ``target``: 0/1 labels (classifier) or standardized values; ``weight``:
    each row's weight over the batch's weight sum. Returns (delta (r, 2m) with Adagrad:
    [step, g^2], else (r, m); d mean-loss / d w0). The formulas are
    ``FactorizationMachines.update``'s numpy path."""
    n = len(indptr) - 1
    r = held.shape[0]
    g = np.zeros((r, m))
    S = np.empty(m)
    gb = 0.0
    for i in range(n):
        a, b = indptr[i], indptr[i + 1]
        for f in range(m):
            S[f] = 0.0
        q = 0.0
        for p in range(a, b):
            j, x = cols[p], vals[p]
            S[0] += held[j, 0] * x
            vn = 0.0
            for f in range(1, m):
                v = held[j, f]
                S[f] += v * x
                vn += v * v
            q += vn * (x * x)
        s2 = 0.0
        for f in range(1, m):
            s2 += S[f] * S[f]
        z = w0 + S[0] + 0.5 * (s2 - q)
        if classifier:
            z = min(max(z, -35.0), 35.0)
            res = 1.0 / (1.0 + np.exp(-z)) - target[i]
        else:
            res = z - target[i]
        res *= weight[i]
        gb += res
        for p in range(a, b):
            j, x = cols[p], vals[p]
            rx = res * x
            rxx = rx * x
            g[j, 0] += rx
            for f in range(1, m):
                g[j, f] += rx * S[f] - held[j, f] * rxx
    out = np.empty((r, 2 * m if adagrad else m))
    for j in range(r):
        for f in range(m):
            gj = g[j, f] + l2[f] * held[j, f]
            if adagrad:
                g2 = gj * gj
                out[j, f] = -lr * gj / (np.sqrt(held[j, m + f] + g2) + 1e-8)
                out[j, m + f] = g2
            else:
                out[j, f] = -sgd_scale * gj
    return out, gb


# -- the sparse linear learner ------------------------------------------------------------------
@_jit
def csr_matmul(indptr, cols, vals, B, rows, n_out, transpose):
    """Products of a CSR ``A`` with a dense (., k) ``B`` (float64 result), over the rows
    ``rows`` of ``A``: ``(A @ B)[rows]`` (``n_out = len(rows)``; the holdout's 5 % of a batch
    needs no more), or with ``transpose`` ``A[rows].T @ B[rows]`` into ``n_out`` columns."""
    k = B.shape[1]
    out = np.zeros((n_out, k))
    for o in range(len(rows)):
        i = rows[o]
        for p in range(indptr[i], indptr[i + 1]):
            j, x = cols[p], vals[p]
            dst, src = (j, i) if transpose else (o, j)
            for c in range(k):
                out[dst, c] += x * B[src, c]
    return out


@_jit
def adagrad_step(P, g, G, lr, l1):
    """The linear learner's Adagrad step for a block of parameters ``P`` (rows x columns)
    with gradient ``g`` and accumulators as held ``G``: returns (delta, g^2). ``lr`` and
    ``l1`` per column; l1 soft-thresholds the new value by the step's scale (as
    ``LinearLearner._step``)."""
    r, k = P.shape
    delta = np.empty((r, k))
    g2 = np.empty((r, k))
    for i in range(r):
        for c in range(k):
            gc = g[i, c]
            q = gc * gc
            scale = lr[c] / (np.sqrt(G[i, c] + q) + 1e-8)
            p = P[i, c]
            new = p - scale * gc
            if l1[c] > 0.0:
                t = abs(new) - scale * l1[c]
                new = np.sign(new) * t if t > 0.0 else 0.0
            delta[i, c] = new - p
            g2[i, c] = q
    return delta, g2


def warm_up() -> None:
    """Load (or, the first time on a machine, compile) every kernel for the dtypes the
    algorithms and the state use, so that no update step pays for it: numba's first call in
    a process costs ~0.4 s even from its cache. A worker calls this at start-up."""
    if not compiled():
        return
    indptr, cols = np.array([0, 1], dtype=np.int64), np.zeros(1, dtype=np.int64)
    vals, one = np.ones(1), np.ones(1)
    for dt in (np.float32, np.float64):
        held = np.zeros((1, 2), dtype=dt)
        gather_sum(held, held, cols)
        gather(held, cols)
        scatter_add(held, cols, np.zeros((1, 2)))
        add_into(held, held)
        adagrad_step(np.zeros((1, 2)), np.zeros((1, 2)), held, np.ones(2), np.zeros(2))
    for adagrad in (True, False):
        fm_step(indptr, cols, vals, np.zeros((1, 4)), 2, 0.0, one, one, True, np.zeros(2), adagrad, 0.1, 0.1)
    for transpose in (False, True):
        csr_matmul(indptr, cols, vals, np.zeros((1, 2)), cols, 1, transpose)


__all__ = ["ENV_KERNELS", "KERNEL_CHOICES", "adagrad_step", "add_into", "compiled", "csr_matmul", "fm_step",
           "gather", "gather_sum", "scatter_add", "warm_up"]
