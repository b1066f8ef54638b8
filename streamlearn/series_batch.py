"""The unit a time-series update step works on: points of many series as numpy arrays.

A point is one observation of one series (``schemas/timeseries_point.avsc``). Points of one
series appear in arrival order, which is time order: the worker dead-letters points whose
time does not move forward (:mod:`streamlearn.algorithms.deepar`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SeriesBatch:
    """``series`` (n,) object array of str ids, ``time`` (n,) int64 UTC milliseconds,
    ``target`` (n,) float64 (NaN = missing), ``feat`` (n, F) float64 dynamic features,
    ``cat`` (n, C) int64 static categories, ``partition`` (n,) int64 the Kafka partition each
    point was read from (0 in-process)."""

    series: np.ndarray
    time: np.ndarray
    target: np.ndarray
    feat: np.ndarray
    cat: np.ndarray
    partition: np.ndarray

    @classmethod
    def of(cls, series, time, target, feat=None, cat=None, partition=None) -> "SeriesBatch":
        series = np.asarray(series, dtype=object)
        n = len(series)
        feat = np.zeros((n, 0)) if feat is None else np.asarray(feat, dtype=np.float64).reshape(n, -1)
        cat = np.zeros((n, 0), np.int64) if cat is None else np.asarray(cat, dtype=np.int64).reshape(n, -1)
        partition = np.zeros(n, np.int64) if partition is None else np.asarray(partition, dtype=np.int64).reshape(n)
        return cls(series, np.asarray(time, dtype=np.int64), np.asarray(target, dtype=np.float64), feat, cat, partition)

    def __len__(self) -> int:
        return len(self.series)

    def take(self, rows) -> "SeriesBatch":
        rows = np.asarray(rows, dtype=np.int64)
        return SeriesBatch(self.series[rows], self.time[rows], self.target[rows], self.feat[rows], self.cat[rows],
                           self.partition[rows])

    @classmethod
    def concat(cls, parts: "list[SeriesBatch]") -> "SeriesBatch":
        parts = [p for p in parts if len(p)] or parts[:1]
        return SeriesBatch(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                             ("series", "time", "target", "feat", "cat", "partition")))

    def by_series(self) -> "dict[str, np.ndarray]":
        """Row positions of each series, in order of first appearance (rows keep batch order)."""
        out: dict[str, list[int]] = {}
        for i, s in enumerate(self.series.tolist()):
            out.setdefault(s, []).append(i)
        return {s: np.asarray(r, dtype=np.int64) for s, r in out.items()}
