"""The MXNet engine (``mxnet.numpy``), float64. Imported only when ``backend=mxnet`` is asked for.

MXNet 1.9 is the last release: it needs numpy < 1.24 (it uses ``np.bool``) and has wheels
that install on Python <= 3.11. Sparse products use MXNet's CSR ``dot``.
"""
from __future__ import annotations

from types import SimpleNamespace

import mxnet as mx
import numpy as np
from mxnet import np as mnp
from mxnet import npx

from streamlearn.backends import Backend, Csr

npx.set_np()


def _namespace() -> SimpleNamespace:
    return SimpleNamespace(
        exp=mnp.exp, log=mnp.log, sqrt=mnp.sqrt, abs=mnp.abs, sign=mnp.sign, clip=mnp.clip,
        maximum=mnp.maximum, minimum=mnp.minimum, where=mnp.where, ones_like=mnp.ones_like,
        zeros=lambda shape: mnp.zeros(shape, dtype="float64"),
        amax=lambda x, axis=None, keepdims=False: mnp.max(x, axis=axis, keepdims=keepdims),
        sum=lambda x, axis=None, keepdims=False: mnp.sum(x, axis=axis, keepdims=keepdims),
    )


class MXNetBackend(Backend):
    name = "mxnet"

    def __init__(self, device: str):
        self.device = device
        kind, _, index = device.partition(":")
        self.ctx = mx.gpu(int(index or 0)) if kind == "cuda" else mx.cpu()
        self.xp = _namespace()

    def asarray(self, a):
        if isinstance(a, mnp.ndarray):
            return a
        return mnp.array(np.asarray(a, dtype=np.float64), dtype="float64", ctx=self.ctx)

    def _index(self, a):
        return mnp.array(np.asarray(a, dtype=np.int64), dtype="int64", ctx=self.ctx)

    def to_numpy(self, a) -> np.ndarray:
        if isinstance(a, mnp.ndarray):
            return a.asnumpy()
        return np.asarray(a)

    def _sparse(self, data, indices, indptr, shape):
        return mx.nd.sparse.csr_matrix((data, indices, indptr), shape=shape, ctx=self.ctx, dtype="float64")

    def csr(self, indptr, cols, data, n_cols) -> Csr:
        n_rows, nnz = len(indptr) - 1, len(cols)
        cols = np.asarray(cols, dtype=np.int64)
        rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(indptr))
        data = np.asarray(data, dtype=np.float64)
        out = Csr(n_rows, int(n_cols), indptr, self._index(cols), self._index(rows), self.asarray(data))
        out.A = self._sparse(data, cols, indptr, (n_rows, int(n_cols)))
        # the "group by column" matrix (n_cols x nnz): row j sums the stored values of column j
        order = np.argsort(cols, kind="stable")
        gptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=int(n_cols)))]).astype(np.int64)
        out.G = self._sparse(np.ones(nnz), order.astype(np.int64), gptr, (int(n_cols), nnz))
        # the "group by row" matrix (n_rows x nnz): row r sums the stored values of row r
        out.R = self._sparse(np.ones(nnz), np.arange(nnz, dtype=np.int64), indptr, (n_rows, nnz))
        return out

    @staticmethod
    def _dot(S, B):
        vec = B.ndim == 1
        Bn = (B.reshape(-1, 1) if vec else B).as_nd_ndarray()
        out = mx.nd.sparse.dot(S, Bn).as_np_ndarray()
        return out.reshape(-1) if vec else out

    def spmm(self, A, B):
        return self._dot(A.A, B)

    def group_sum(self, A, values):
        return self._dot(A.G, values)

    def row_sum(self, A, values):
        return self._dot(A.R, values)

    def _argmin1(self, d2):
        return mnp.argmin(d2, axis=1)

    def _take_along1(self, d2, idx):
        return d2[mnp.arange(d2.shape[0], dtype="int64", ctx=self.ctx), idx.astype("int64")]

    def synchronize(self) -> None:
        mx.nd.waitall()


def make(device: str) -> MXNetBackend:
    return MXNetBackend(device)
