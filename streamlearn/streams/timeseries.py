"""Time-series points: files -> ``timeseries_point`` messages (keyed by series id) -> numpy.

Two input layouts:

- *long format* (.csv / .parquet): one row per observation with a series column, a time
  column, a target column and optional dynamic-feature and static-category columns;
- *GluonTS JSON lines* (``--format gluonts``; SageMaker DeepAR's input): one series per line,
  ``{"start": ..., "target": [...], "cat": [...], "dynamic_feat": [[...], ...]}``, with
  ``item_id`` as the series id when present (else the line number), expanded with ``freq``.

A series' points are produced in file order and never reordered (a file whose time goes
backwards within a series has those points dead-lettered by the worker, with the reason);
series are interleaved point by point (the k-th point of every series before any series'
(k+1)-th), which for aligned series is time order, as a live stream would deliver them.

:func:`decode_points` is the worker's reader for this schema (separate from the training
schemas' zero-copy path): one fastavro call per point, algorithm-independent checks here
(series id, parsable time, no inf), the rest (time order, feature counts) by the algorithm.
"""
from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from fastavro import schemaless_reader

from streamlearn.series_batch import SeriesBatch
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import DEFAULT_RETENTION, ensure_topic, training_topic_config
from streamlearn.timefreq import Freq
from streamlearn.wire.confluent import ConfluentSchemas, is_confluent_framed
from streamlearn.wire.decode import R_MALFORMED, R_NOT_AVRO, R_TRAILING, R_TRUNCATED, R_UNKNOWN_FP, Rejection
from streamlearn.streams.files import FileFormatError
from streamlearn.wire.schema_store import SharedSchemas
from streamlearn.wire.serde import HEADER_LEN, MAGIC, REGISTRY, SchemaRegistry, encode, fingerprint_hex

TIMESERIES_POINT = "timeseries_point"
#: longest series id (UTF-8 bytes): the id is kept in the state row of its series
MAX_SERIES_ID_BYTES = 60

R_NOT_POINT = "not a time-series point schema"
R_SERIES_ID = "bad series id"
R_TIME = "unparsable time"
R_INF_TARGET = "inf in target"
R_NONFINITE_FEAT = "NaN or inf in dynamic_feat"


def parse_time_ms(value) -> int | None:
    """UTC milliseconds of an ISO-8601 text (or a number of milliseconds); None if unparsable."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    try:
        with warnings.catch_warnings():  # an explicit UTC offset is applied, which numpy warns about
            warnings.simplefilter("ignore", UserWarning)
            t = np.datetime64(str(value).strip().rstrip("Z"), "ms")
    except (ValueError, TypeError, OverflowError):
        return None
    return None if np.isnat(t) else int(t.astype(np.int64))


def ms_to_iso(ms: int) -> str:
    return str(np.datetime64(int(ms), "ms").astype("datetime64[s]" if ms % 1000 == 0 else "datetime64[ms]"))


def encode_point(series: str, time, target: float | None, dynamic_feat=(), static_cat=()) -> bytes:
    """One ``timeseries_point`` message (``time``: ms, or a text the worker parses)."""
    t = None if target is None or (isinstance(target, float) and math.isnan(target)) else float(target)
    return encode({"series": str(series), "time": time if isinstance(time, str) else int(time), "target": t,
                   "dynamic_feat": [float(v) for v in dynamic_feat], "static_cat": [int(v) for v in static_cat]},
                  TIMESERIES_POINT)


# -- files -> points ---------------------------------------------------------------------------
@dataclass
class Point:
    series: str
    time: "int | str"  # ms, or the unparsable text as written (dead-lettered by the worker)
    target: float | None
    feat: list = field(default_factory=list)
    cat: list = field(default_factory=list)


def read_long(path, series_column: str, time_column: str, target_column: str,
              feature_columns: list[str] | None = None, static_columns: list[str] | None = None) -> list[list[Point]]:
    """The series of a long-format .csv/.parquet file, each a list of points in file order."""
    import pyarrow as pa

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".csv":
            from pyarrow import csv

            table = csv.read_csv(path, convert_options=csv.ConvertOptions(
                column_types={series_column: pa.string(), time_column: pa.string()}))
        elif path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            raise FileFormatError(f"{path}: long-format series need a .csv or .parquet file")
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileFormatError(f"{path}: cannot read: {exc}") from None
    feature_columns, static_columns = list(feature_columns or []), list(static_columns or [])
    missing = [c for c in [series_column, time_column, target_column, *feature_columns, *static_columns]
               if c not in table.column_names]
    if missing:
        raise FileFormatError(f"{path}: no column(s) {missing}; columns: {table.column_names}")

    def floats(c):
        try:
            return np.asarray(table[c].cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise FileFormatError(f"{path}: column {c!r} is not numeric") from None

    sid = [str(s) for s in table[series_column].to_pylist()]
    times = table[time_column].to_pylist()
    y = floats(target_column)
    F = np.stack([floats(c) for c in feature_columns], 1) if feature_columns else np.zeros((len(sid), 0))
    C = np.stack([floats(c) for c in static_columns], 1) if static_columns else np.zeros((len(sid), 0))
    if C.size and not np.all(np.isfinite(C) & (C == np.round(C))):
        raise FileFormatError(f"{path}: static columns {static_columns} must hold integers")
    out: dict[str, list[Point]] = {}
    for i, s in enumerate(sid):
        t = times[i]
        ms = parse_time_ms(t) if not hasattr(t, "timestamp") else int(round(t.timestamp() * 1000))
        out.setdefault(s, []).append(Point(s, str(t) if ms is None else ms, None if math.isnan(y[i]) else float(y[i]),
                                           F[i].tolist(), C[i].astype(np.int64).tolist()))
    return list(out.values())


def read_gluonts(path, freq: str) -> list[list[Point]]:
    """The series of a GluonTS / SageMaker DeepAR JSON-lines file."""
    f = Freq.parse(freq)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    out = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                start, target = d["start"], d["target"]
            except (ValueError, KeyError, TypeError):
                raise FileFormatError(f"{path}:{lineno}: not a JSON object with start and target") from None
            sid = str(d.get("item_id", lineno))
            ms = parse_time_ms(start)
            if ms is None:
                raise FileFormatError(f"{path}:{lineno}: unparsable start {start!r}")
            times = np.concatenate([[ms], f.times_after(int(f.ordinal(np.array([ms]))[0]), len(target) - 1, ms)])
            feat = np.asarray(d.get("dynamic_feat") or np.zeros((0, len(target))), dtype=np.float64)
            if feat.shape[-1] != len(target):
                raise FileFormatError(f"{path}:{lineno}: dynamic_feat rows must have the target's length")
            cat = [int(c) for c in d.get("cat") or []]
            values = [math.nan if v is None else float(v) for v in target]  # "NaN" or null = missing
            out.append([Point(sid, int(times[k]), None if math.isnan(values[k]) else values[k], feat[:, k].tolist(), cat)
                        for k in range(len(target))])
    return out


def interleave(series: list[list[Point]]) -> Iterator[Point]:
    """Point k of every series before point k + 1 of any (file order within a series)."""
    longest = max((len(s) for s in series), default=0)
    for k in range(longest):
        for s in series:
            if k < len(s):
                yield s[k]


def produce_series(conf: dict, topic: str, series: list[list[Point]], partitions: int | None = None,
                   extra_conf: dict | None = None, retention: str | int | None = DEFAULT_RETENTION) -> int:
    """Send every point as a ``timeseries_point`` message keyed by its series id (a missing
    topic is created keeping records for ``retention``)."""
    ensure_topic(conf, topic, partitions or 1, training_topic_config(retention))
    n = 0
    with Producer(conf, extra_conf) as producer:
        for p in interleave(series):
            producer.send_raw(topic, encode_point(p.series, p.time, p.target, p.feat, p.cat), key=p.series)
            n += 1
    return n


# -- messages -> points --------------------------------------------------------------------------
@dataclass
class SeriesDecodeResult:
    """Accepted points (``index``: their message positions) and rejections, as a worker uses them."""

    points: SeriesBatch
    index: np.ndarray
    rejected: list[Rejection]

    @property
    def n_records(self) -> int:
        return len(self.points)

    def reject(self, rows: np.ndarray, reasons: list[str]) -> "SeriesDecodeResult":
        """This result with the points at ``rows`` moved to the rejections."""
        if not len(rows):
            return self
        keep = np.ones(len(self.points), bool)
        keep[rows] = False
        more = [Rejection(int(self.index[r]), why) for r, why in zip(rows.tolist(), reasons)]
        return SeriesDecodeResult(self.points.take(np.flatnonzero(keep)), self.index[keep],
                                  sorted(self.rejected + more, key=lambda r: r.index))

    def row_messages(self) -> np.ndarray:
        """The message index of every accepted point, in ``steps`` order (a point is a message)."""
        return self.index

    def messages(self, a: int, b: int) -> "SeriesDecodeResult":
        """What decoding messages ``a:b`` of the list alone gives (indices counted from ``a``):
        a window decoded once, cut into shares."""
        mine = np.flatnonzero((self.index >= a) & (self.index < b))
        return SeriesDecodeResult(self.points.take(mine), self.index[mine] - a,
                                  [Rejection(r.index - a, r.reason, r.n_records) for r in self.rejected
                                   if a <= r.index < b])

    def steps(self, rows: int) -> list[SeriesBatch]:
        n = len(self.points)
        return [self.points.take(np.arange(a, min(a + rows, n))) for a in range(0, n, rows)]


def decode_points(values: list[bytes], registry: SchemaRegistry = REGISTRY, shared: SharedSchemas | None = None,
                  confluent: ConfluentSchemas | None = None, n_feat: int | None = None,
                  n_cat: int | None = None, partitions: list[int] | None = None) -> SeriesDecodeResult:
    """Read ``timeseries_point`` messages; never raises for bad bytes (each is a rejection).
    ``n_feat`` / ``n_cat``: the dynamic-feature and static-category counts every point must have;
    ``partitions``: each message's Kafka partition (None: 0)."""
    rejected: list[Rejection] = []
    series, times, targets, feats, cats, index = [], [], [], [], [], []
    for i, v in enumerate(values):
        v = bytes(v)
        if confluent is not None and is_confluent_framed(v):
            v = confluent.reframe(v, registry)
            if type(v) is str:
                rejected.append(Rejection(i, v))
                continue
        if len(v) < HEADER_LEN or v[:2] != MAGIC:
            short = 0 < len(v) < HEADER_LEN and MAGIC.startswith(v[:2])
            rejected.append(Rejection(i, f"{R_TRUNCATED} ({len(v)} bytes)" if short else R_NOT_AVRO))
            continue
        writer = registry.by_fingerprint.get(v[2:HEADER_LEN])
        if writer is None and shared is not None:
            shared.learn(registry, [bytes(x[2:HEADER_LEN]) for x in values[i:] if len(x) >= HEADER_LEN])
            shared = None
            writer = registry.by_fingerprint.get(v[2:HEADER_LEN])
        if writer is None:
            rejected.append(Rejection(i, f"{R_UNKNOWN_FP} {fingerprint_hex(v[2:HEADER_LEN])}"))
            continue
        if writer.name != TIMESERIES_POINT:
            rejected.append(Rejection(i, f"schema {writer.name} is {R_NOT_POINT}"))
            continue
        reader = registry.current.get(writer.name, writer)
        fo = io.BytesIO(v)
        fo.seek(HEADER_LEN)
        try:
            rec = schemaless_reader(fo, writer.parsed, None if reader is writer else reader.parsed)
        except Exception as exc:  # noqa: BLE001 - bad bytes raise many types
            rejected.append(Rejection(i, f"{R_MALFORMED} ({type(exc).__name__})"))
            continue
        if fo.tell() != len(v):
            rejected.append(Rejection(i, f"{len(v) - fo.tell()} {R_TRAILING}"))
            continue
        reason, ms = _check_point(rec, n_feat, n_cat)
        if reason is not None:
            rejected.append(Rejection(i, reason))
            continue
        series.append(rec["series"])
        times.append(ms)
        targets.append(math.nan if rec["target"] is None else rec["target"])
        feats.append(rec["dynamic_feat"])
        cats.append(rec["static_cat"])
        index.append(i)
    n = len(series)
    F = np.asarray(feats, dtype=np.float64).reshape(n, -1) if n and feats[0] else np.zeros((n, n_feat or 0))
    C = np.asarray(cats, dtype=np.int64).reshape(n, -1) if n and cats[0] else np.zeros((n, n_cat or 0), np.int64)
    index = np.asarray(index, dtype=np.int64)
    part = np.zeros(n, np.int64) if partitions is None else np.asarray(partitions, dtype=np.int64)[index]
    return SeriesDecodeResult(SeriesBatch(np.asarray(series, dtype=object), np.asarray(times, dtype=np.int64),
                                          np.asarray(targets, dtype=np.float64), F, C, part),
                              index, rejected)


def _check_point(rec: dict, n_feat: int | None, n_cat: int | None) -> tuple[str | None, int]:
    sid = rec["series"]
    if not sid or len(sid.encode()) > MAX_SERIES_ID_BYTES or "\x00" in sid:
        return f"{R_SERIES_ID} (empty, over {MAX_SERIES_ID_BYTES} UTF-8 bytes, or NUL)", 0
    t = rec["time"]
    ms = t if isinstance(t, int) else parse_time_ms(t)
    if ms is None:
        return f"{R_TIME} {str(t)[:40]!r}", 0
    y = rec["target"]
    if y is not None and math.isinf(y):
        return R_INF_TARGET, 0
    if not all(math.isfinite(x) for x in rec["dynamic_feat"]):
        return R_NONFINITE_FEAT, 0
    if n_feat is not None and len(rec["dynamic_feat"]) != n_feat:
        return f"dynamic_feat has {len(rec['dynamic_feat'])} values, the job expects {n_feat}", 0
    if n_cat is not None and len(rec["static_cat"]) != n_cat:
        return f"static_cat has {len(rec['static_cat'])} values, the job expects {n_cat}", 0
    if any(c < 0 for c in rec["static_cat"]):
        return "negative static category", 0
    return None, int(ms)


__all__ = ["TIMESERIES_POINT", "MAX_SERIES_ID_BYTES", "Point", "SeriesDecodeResult", "decode_points", "encode_point",
           "interleave", "parse_time_ms", "ms_to_iso", "produce_series", "read_gluonts", "read_long"]
