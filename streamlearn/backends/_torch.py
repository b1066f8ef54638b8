"""The torch engine (CPU or CUDA), float64. Imported only when ``backend=torch`` is asked for."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from streamlearn.backends import Backend, Csr


def _namespace(dev: torch.device) -> SimpleNamespace:
    f64 = torch.float64

    def _t(x, like=None):
        return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=f64, device=dev)

    return SimpleNamespace(
        exp=torch.exp, log=torch.log, sqrt=torch.sqrt, abs=torch.abs, sign=torch.sign,
        clip=lambda x, lo, hi: torch.clamp(x, lo, hi),
        maximum=lambda a, b: torch.maximum(_t(a), _t(b)),
        minimum=lambda a, b: torch.minimum(_t(a), _t(b)),
        where=lambda c, a, b: torch.where(c, _t(a), _t(b)),
        ones_like=torch.ones_like,
        zeros=lambda shape: torch.zeros(shape, dtype=f64, device=dev),
        amax=lambda x, axis=None, keepdims=False: torch.amax(x, dim=axis, keepdim=keepdims),
        sum=lambda x, axis=None, keepdims=False: x.sum() if axis is None else x.sum(axis, keepdim=keepdims),
    )


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str):
        self.device = device
        self.dev = torch.device(device)
        self.xp = _namespace(self.dev)
        self.cuda = self.dev.type == "cuda"

    def asarray(self, a):
        if isinstance(a, torch.Tensor):
            return a
        a = np.asarray(a, dtype=np.float64)
        if not a.flags.writeable:  # a pull's read-only view: torch would share (and could write) it
            a = a.copy()
        return torch.as_tensor(a, device=self.dev)

    def _index(self, a):
        return torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.dev)

    def to_numpy(self, a) -> np.ndarray:
        if isinstance(a, torch.Tensor):
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def csr(self, indptr, cols, data, n_cols) -> Csr:
        rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
        return Csr(len(indptr) - 1, int(n_cols), indptr, self._index(cols), self._index(rows), self.asarray(data))

    def row_sum(self, A, values):
        out = torch.zeros((A.n_rows,) + tuple(values.shape[1:]), dtype=torch.float64, device=self.dev)
        return out.index_add_(0, A.rows, values) if A.cols.numel() else out

    def group_sum(self, A, values):
        out = torch.zeros((A.n_cols,) + tuple(values.shape[1:]), dtype=torch.float64, device=self.dev)
        return out.index_add_(0, A.cols, values)

    def _argmin1(self, d2):
        return torch.argmin(d2, dim=1)

    def _take_along1(self, d2, idx):
        return d2.gather(1, idx[:, None])[:, 0]

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)


def make(device: str) -> TorchBackend:
    return TorchBackend(device)
