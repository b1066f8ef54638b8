"""A job's training profile: what the data it trained on looked like.

Dense features, per feature: count, NaN count, min, max, sum and sum of squares (exact, over
every applied row) and an Apache DataSketches KLL quantile sketch (of a uniform sample of
the rows, see :func:`sample_fraction`); at most :data:`MAX_SKETCHED` features get a sketch.
Sparse features (hashed or bag-of-words rows, up to 2**20 columns) have no per-feature
profile worth keeping: the profile holds the number of stored values per row (a sketch),
the distribution of the stored values (a sketch), their count, NaN count, min and max.
Labels: count, missing (NaN) count, min, max, a sketch and, while there are at most
:data:`MAX_CLASSES` distinct values, their exact histogram.

Written with the offsets, at most every few seconds: each worker keeps the profile of the
rows it has committed and writes it whole, as one field of the job's profile hash
(``sl:{job}:profile``, field = member). Serializing and writing that blob (~14 kB at d = 5,
~230 kB at d = 100) with every commit doubled the cost of a small commit, so a worker writes
it only when it holds committed rows the field lacks and ``flush_s`` seconds (5 by default,
``STREAMLEARN_PROFILE_FLUSH_S``) have passed since its last write, plus always: with a
commit that brings a partition to its end offset (a bounded job's last batches), when it
loses partitions (a rebalance), and when it stops. A field is written either in the same
transaction as a commit (``CommitInfo.profile``: then it includes that commit's batch) or
on its own (``write_profile``: the rows of commits that already went through). Either way it
holds exactly a prefix of the member's committed batches: a fenced, refused or lost commit
adds nothing to it, and no row is ever counted twice. Finalize reads the hash in the same
consistent cut as the counters and merges the fields (sketches merge, counts add).

What the merged profile can miss: a worker that is SIGKILLed (or loses its machine) leaves
its field as of its last write, missing the rows it committed in at most the last
``flush_s`` seconds before the kill; a worker frozen past its session timeout while the job
finishes, likewise. A snapshot taken while workers run (periodic, ``streamlearn
snapshot``) may lag each live worker's rows by up to ``flush_s``. A bounded job whose
workers were not killed has every applied row in its final profile. The profile is a
sample of the data for monitoring, not a counter: records and offsets stay exactly once
whatever happens to it.

Serialized without pickle: a JSON header (counts, the arrays as lists, the sketches'
byte lengths) followed by the sketches' own serialization.
"""
from __future__ import annotations

import base64
import json
import math
import struct
import time
from typing import Any, Callable, Iterable

import numpy as np
from datasketches import kll_floats_sketch

from streamlearn.batch import Batch, SparseRows

#: KLL accuracy parameter: ~1.65 % normalized rank error, a few kB per sketch
SKETCH_K = 200
#: dense features beyond this many are counted but not sketched (a sketch per feature is
#: rewritten with every profile write and carried in the snapshot's metadata)
MAX_SKETCHED = 256
#: distinct label values kept as an exact histogram (classes); more: the sketch only
MAX_CLASSES = 64
#: rows a bounded job's sketches should see: sampling error 1/sqrt(20k) = 0.7 %, below
#: the sketch's own rank error (1.65 %), at a fraction of the cost of sketching every row
TARGET_SKETCH_ROWS = 20_000
#: the sampling fraction of an unbounded job (whose size is not known)
UNBOUNDED_FRACTION = 1 / 64
_MAGIC = b"SLPROF1\0"
#: committed rows a worker collects before observing them together: profiling a 5-row commit
#: on its own cost more than the commit (per-call overheads of ~d sketch updates, the
#: moments, the label classes)
OBSERVE_ROWS = 1024


def sample_fraction(expected_rows: int | None) -> float:
    """Share of the applied rows that feed the quantile sketches: every row of a small job,
    about :data:`TARGET_SKETCH_ROWS` of a large bounded one; the same for every worker of
    a job (sketches of samples at different rates would not merge into one distribution).
    A KLL update costs 30-50 ns a value: 100 features at 200k rows/s would spend 0.6-1 s
    of every second on sketching."""
    if expected_rows is None:
        return UNBOUNDED_FRACTION
    return float(min(1.0, max(UNBOUNDED_FRACTION, TARGET_SKETCH_ROWS / max(expected_rows, 1))))


def _sketch(data: bytes | None = None) -> kll_floats_sketch:
    return kll_floats_sketch.deserialize(data) if data is not None else kll_floats_sketch(SKETCH_K)


def _update(sketch: kll_floats_sketch, values: np.ndarray) -> None:
    values = np.ascontiguousarray(values, dtype=np.float32)
    values = values[np.isfinite(values)]
    if len(values):
        sketch.update(values)


class _Moments:
    """count, NaN count, min, max, sum, sum of squares of one or more columns (exact)."""

    FIELDS = ("count", "nan", "min", "max", "sum", "sumsq")

    def __init__(self, width: int):
        self.count = np.zeros(width, np.int64)
        self.nan = np.zeros(width, np.int64)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)
        self.sum = np.zeros(width)
        self.sumsq = np.zeros(width)

    def add(self, values: np.ndarray) -> None:
        """``values``: (rows, width) (or (n,) for width 1)."""
        v = values.reshape(len(values), -1)
        if not len(v):
            return
        if np.isfinite(v).all():  # what the door lets through: a few BLAS/reduction passes, no copies
            ones = np.ones(len(v), dtype=v.dtype)
            self.count += len(v)
            self.sum += ones @ v  # float32 within a batch (a worker step: <= ~1,000 rows), float64 across
            self.sumsq += np.einsum("ij,ij->j", v, v)
            self.min = np.minimum(self.min, v.min(axis=0))
            self.max = np.maximum(self.max, v.max(axis=0))
            return
        v = v.astype(np.float64)
        finite = np.isfinite(v)
        self.count += finite.sum(axis=0)
        self.nan += np.isnan(v).sum(axis=0)
        clean = np.where(finite, v, 0.0)
        self.sum += clean.sum(axis=0)
        self.sumsq += np.einsum("ij,ij->j", clean, clean)
        self.min = np.fmin(self.min, np.where(finite, v, np.inf).min(axis=0))
        self.max = np.fmax(self.max, np.where(finite, v, -np.inf).max(axis=0))

    def merge(self, other: "_Moments") -> None:
        self.count += other.count
        self.nan += other.nan
        self.sum += other.sum
        self.sumsq += other.sumsq
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    def to_json(self) -> dict[str, list]:
        return {f: [_num(x) for x in getattr(self, f).tolist()] for f in self.FIELDS}

    @classmethod
    def from_json(cls, d: dict[str, list]) -> "_Moments":
        m = cls(len(d["count"]))
        for f in cls.FIELDS:
            dtype = np.int64 if f in ("count", "nan") else np.float64
            setattr(m, f, np.array([_from_num(x) for x in d[f]], dtype=dtype))
        return m

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        n = np.maximum(self.count, 1)
        mean = self.sum / n
        return mean, np.sqrt(np.maximum(self.sumsq / n - mean * mean, 0.0))


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


def _from_num(x: float | str) -> float:
    return float(x)


class Profile:
    """The profile of some rows (see the module doc); ``kind`` is ``dense`` or ``sparse``."""

    def __init__(self, kind: str, n_features: int, sample: float = 1.0):
        self.kind = kind
        self.n_features = int(n_features)
        self.sample = float(sample)
        self.rows = 0
        self.sketched_rows = 0
        width = self.n_features if kind == "dense" else 1
        self.features = _Moments(width)  # sparse: one column, the stored values
        n_sketches = min(self.n_features, MAX_SKETCHED) if kind == "dense" else 2  # sparse: values, nnz per row
        self.sketches = [_sketch() for _ in range(n_sketches)]
        self.labels = _Moments(1)
        self.label_sketch = _sketch()
        self.classes: dict[str, int] | None = {}

    @classmethod
    def for_batch(cls, batch: Batch, sample: float = 1.0) -> "Profile":
        return cls("sparse" if batch.is_sparse else "dense", batch.X.shape[1], sample)

    # -- observing -------------------------------------------------------------------------
    def observe(self, batches: Iterable[Batch], rng: np.random.Generator | None = None) -> None:
        """Count every row of ``batches``; sketch a ``sample`` share of them (drawn with ``rng``)."""
        rng = rng or np.random.default_rng()
        picked, picked_y = [], []
        for b in batches:
            n = len(b)
            if not n:
                continue
            self.rows += n
            if self.kind == "dense":
                self.features.add(np.asarray(b.X))
            else:
                self.features.add(b.X.values)
            if b.y is not None:
                self.labels.add(b.y)
                self._count_classes(b.y)
            else:
                self.labels.nan += n
            rows = np.arange(n) if self.sample >= 1.0 else np.flatnonzero(rng.random(n) < self.sample)
            if len(rows):
                picked.append(b.X.take(rows) if isinstance(b.X, SparseRows) else np.asarray(b.X)[rows])
                if b.y is not None:
                    picked_y.append(b.y[rows])
        self._sketch_rows(picked)
        if picked_y:
            _update(self.label_sketch, np.concatenate(picked_y))

    def _sketch_rows(self, picked: list) -> None:
        if not picked:
            return
        if self.kind == "dense":
            X = np.concatenate(picked) if len(picked) > 1 else picked[0]
            self.sketched_rows += len(X)
            columns = np.ascontiguousarray(X[:, :len(self.sketches)].T, dtype=np.float32)
            for sketch, column in zip(self.sketches, columns):
                _update(sketch, column)
            return
        for rows in picked:
            self.sketched_rows += len(rows)
            _update(self.sketches[0], rows.values)
            _update(self.sketches[1], np.diff(rows.indptr).astype(np.float32))

    def _count_classes(self, y: np.ndarray) -> None:
        if self.classes is None:
            return
        values, counts = np.unique(y[np.isfinite(y)], return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            key = format(v, "g")
            self.classes[key] = self.classes.get(key, 0) + int(c)
        if len(self.classes) > MAX_CLASSES:
            self.classes = None

    # -- merging -----------------------------------------------------------------------------
    def merge(self, other: "Profile") -> None:
        if (other.kind, other.n_features, len(other.sketches)) != (self.kind, self.n_features, len(self.sketches)):
            raise ValueError(f"cannot merge a {other.kind} profile of {other.n_features} features into a "
                             f"{self.kind} profile of {self.n_features}")
        self.rows += other.rows
        self.sketched_rows += other.sketched_rows
        self.features.merge(other.features)
        for mine, theirs in zip(self.sketches, other.sketches):
            mine.merge(theirs)
        self.labels.merge(other.labels)
        self.label_sketch.merge(other.label_sketch)
        if self.classes is None or other.classes is None:
            self.classes = None
        else:
            for k, c in other.classes.items():
                self.classes[k] = self.classes.get(k, 0) + c
            if len(self.classes) > MAX_CLASSES:
                self.classes = None

    def copy(self) -> "Profile":
        return Profile.from_bytes(self.to_bytes())

    @classmethod
    def merged(cls, blobs: Iterable[bytes]) -> "Profile | None":
        """The merge of serialized profiles (None when there are none)."""
        out = None
        for blob in blobs:
            p = cls.from_bytes(blob)
            if out is None:
                out = p
            else:
                out.merge(p)
        return out

    # -- reading -----------------------------------------------------------------------------
    def feature_sketch(self, j: int) -> kll_floats_sketch | None:
        """The quantile sketch of dense feature ``j`` (None: not sketched)."""
        return self.sketches[j] if self.kind == "dense" and j < len(self.sketches) else None

    def summary(self) -> dict[str, Any]:
        """Counts and a few quantiles, as JSON (what the registry entry and reports show)."""
        mean, std = self.features.mean_std()
        out: dict[str, Any] = {"kind": self.kind, "n_features": self.n_features, "rows": self.rows,
                               "sketched_rows": self.sketched_rows, "sample": self.sample}
        if self.kind == "dense":
            out["features"] = [
                {"count": int(self.features.count[j]), "nan": int(self.features.nan[j]),
                 "min": _num(float(self.features.min[j])), "max": _num(float(self.features.max[j])),
                 "mean": float(mean[j]), "std": float(std[j]), **_quantiles(self.feature_sketch(j))}
                for j in range(self.n_features)]
        else:
            out["values"] = {"count": int(self.features.count[0]), "nan": int(self.features.nan[0]),
                             "min": _num(float(self.features.min[0])), "max": _num(float(self.features.max[0])),
                             "mean": float(mean[0]), "std": float(std[0]), **_quantiles(self.sketches[0])}
            out["nnz_per_row"] = _quantiles(self.sketches[1])
        lmean, lstd = self.labels.mean_std()
        out["labels"] = {"count": int(self.labels.count[0]), "missing": int(self.labels.nan[0]),
                         "min": _num(float(self.labels.min[0])), "max": _num(float(self.labels.max[0])),
                         "mean": float(lmean[0]), "std": float(lstd[0]), "classes": self.classes,
                         **_quantiles(self.label_sketch)}
        return out

    # -- bytes -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        sketches = [s.serialize() for s in [*self.sketches, self.label_sketch]]
        header = json.dumps({"kind": self.kind, "n_features": self.n_features, "sample": self.sample,
                             "rows": self.rows, "sketched_rows": self.sketched_rows,
                             "features": self.features.to_json(), "labels": self.labels.to_json(),
                             "classes": self.classes, "sketch_bytes": [len(s) for s in sketches]}).encode()
        return b"".join([_MAGIC, struct.pack("<I", len(header)), header, *sketches])

    @classmethod
    def from_bytes(cls, data: bytes) -> "Profile":
        if data[:len(_MAGIC)] != _MAGIC:
            raise ValueError("not a streamlearn profile")
        pos = len(_MAGIC) + 4
        (size,) = struct.unpack("<I", data[len(_MAGIC):pos])
        h = json.loads(data[pos:pos + size])
        pos += size
        p = cls(h["kind"], h["n_features"], h["sample"])
        p.rows, p.sketched_rows, p.classes = int(h["rows"]), int(h["sketched_rows"]), h["classes"]
        p.features, p.labels = _Moments.from_json(h["features"]), _Moments.from_json(h["labels"])
        sketches = []
        for n in h["sketch_bytes"]:
            sketches.append(_sketch(bytes(data[pos:pos + n])))
            pos += n
        p.sketches, p.label_sketch = sketches[:-1], sketches[-1]
        return p

    def to_metadata(self) -> dict[str, Any]:
        """The snapshot metadata's ``profile`` entry: the summary and the serialized profile."""
        return {"summary": self.summary(), "data": base64.b64encode(self.to_bytes()).decode("ascii")}

    @classmethod
    def from_metadata(cls, entry: dict[str, Any]) -> "Profile":
        return cls.from_bytes(base64.b64decode(entry["data"]))


def _quantiles(sketch: kll_floats_sketch | None) -> dict[str, Any]:
    if sketch is None or sketch.is_empty():
        return {}
    qs = sketch.get_quantiles([0.01, 0.25, 0.5, 0.75, 0.99])
    return {"p01": float(qs[0]), "p25": float(qs[1]), "p50": float(qs[2]), "p75": float(qs[3]), "p99": float(qs[4])}


class MemberProfile:
    """One worker's profile across its commits, and when to write it (see the module doc).

    Before each commit, ``stage`` is handed the commit's batches; it returns the blob the
    commit should write (everything committed so far plus this batch) only when a write is
    due or ``force``d, else None (no copy, no serialization). ``accept`` after the commit went
    through adds the batch to the committed profile. A commit that fails leaves the committed
    profile as it was; the next ``stage`` replaces what was staged. ``write`` stores the
    committed profile outside a commit (idle, rebalance, shutdown)."""

    def __init__(self, member: str, sample: float, flush_s: float = 5.0, seed: int | None = None):
        self.member = member
        self.sample = sample
        self.flush_s = flush_s
        self._committed: Profile | None = None
        self._unobserved: list[Batch] = []  # committed batches not in ``_committed`` yet
        self._unobserved_rows = 0
        self.unwritten = False  # committed rows the stored field lacks
        self._written_at = -math.inf
        self._pending: list[Batch] = []
        self._staged: Profile | None = None
        self._rng = np.random.default_rng(seed)

    @property
    def committed(self) -> Profile | None:
        """The profile of every row this member committed."""
        self._observe_collected()
        return self._committed

    def _observe_collected(self) -> None:
        if self._unobserved:
            if self._committed is None:
                self._committed = Profile.for_batch(self._unobserved[0], self.sample)
            self._committed.observe(_joined(self._unobserved), self._rng)
            self._unobserved, self._unobserved_rows = [], 0

    def due(self) -> bool:
        return time.monotonic() - self._written_at >= self.flush_s

    def stage(self, steps: list[Batch], failed_rows: Iterable[int] = (), force: bool = False) -> tuple[str, bytes] | None:
        """(field, blob) for the commit of ``steps`` whose rows ``failed_rows`` (positions
        across the steps) were dead-lettered instead of applied, when a write is due or
        ``force``d and there is something to write; else None."""
        failed = np.fromiter(failed_rows, dtype=np.int64)
        applied, start = [], 0
        for b in steps:
            n = len(b)
            mine = failed[(failed >= start) & (failed < start + n)] - start
            if len(mine):
                keep = np.setdiff1d(np.arange(n), mine)
                b = b.take(keep)
            if len(b):
                applied.append(b)
            start += n
        self._pending, self._staged = applied, None
        if not (applied or self.unwritten) or not (force or self.due()):
            return None
        committed = self.committed
        staged = committed.copy() if committed is not None else Profile.for_batch(applied[0], self.sample)
        staged.observe(applied, self._rng)
        self._staged = staged
        return self.member, staged.to_bytes()

    def accept(self) -> None:
        """The staged commit went through."""
        if self._staged is not None:
            self._committed, self.unwritten = self._staged, False
            self._written_at = time.monotonic()
        elif self._pending:
            self._unobserved += self._pending
            self._unobserved_rows += sum(len(b) for b in self._pending)
            self.unwritten = True
            if self._unobserved_rows >= OBSERVE_ROWS:
                self._observe_collected()
        self._pending, self._staged = [], None

    def write(self, store: Callable[[str, bytes], None], force: bool = False) -> bool:
        """Store the committed profile with ``store(field, blob)`` if it has rows the stored
        field lacks and a write is due (or ``force``); returns whether it did. A failing
        ``store`` leaves the rows unwritten (written by a later write)."""
        if not self.unwritten or not (force or self.due()):
            return False
        store(self.member, self.committed.to_bytes())
        self.unwritten, self._written_at = False, time.monotonic()
        return True


def _joined(batches: list[Batch]) -> list[Batch]:
    """Dense batches as one (one pass of each profile update instead of one per batch);
    sparse ones, or a mix of labelled and unlabelled, as they are."""
    if len(batches) < 2 or any(b.is_sparse for b in batches) or len({b.y is None for b in batches}) > 1:
        return batches
    y = None if batches[0].y is None else np.concatenate([b.y for b in batches])
    return [Batch(np.concatenate([np.asarray(b.X) for b in batches]), y)]
