"""Read example files (.csv, .jsonl, .parquet) as numpy chunks.

``read_examples(path, label_column=None, feature_columns=None)`` yields ``(X, y)`` chunks:
``X`` float32 (rows, features) — or :class:`~streamlearn.batch.SparseRows` for the sparse
JSONL form ``{"indices": [...], "values": [...], "label": 1}`` (``n_features`` required) —
and ``y`` float64 (NaN where a row has no label) or None without a label column.

Feature columns default to every column except the label, in file order; they must be
numeric. Non-finite feature values are an error here (with the row number) rather than a
dead-lettered message later.

What a file's layout is taken to be is said in one warning on the ``streamlearn.streams.files``
logger (the CLI prints it on stderr):

- a CSV file whose first row is all numbers has no header (``header=None``, the default,
  detects it; ``header=False`` / ``True`` says so): its columns are named ``c0..cN`` by
  position — except a first row ``0,1,…,N``, which is pandas' header of unnamed columns;
- an index column written by pandas is dropped (not refused: it is never a feature): a
  first column named ``""`` / ``Unnamed: 0`` / ``__index_level_0__``, or in a header-less
  CSV a first column whose leading values are ``0, 1, 2, …`` — unless ``feature_columns``
  names the columns to use.
"""
from __future__ import annotations

import csv as _csv
import itertools
import json
import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from streamlearn.batch import SparseRows
from streamlearn.errors import UserError

SUFFIXES = (".csv", ".jsonl", ".parquet")

log = logging.getLogger(__name__)

#: names pandas gives its index column (to_csv with index=True; to_parquet of a non-range index)
INDEX_NAMES = ("", "Unnamed: 0", "__index_level_0__")
#: leading rows of a header-less CSV read to recognise an index column (0, 1, 2, …)
_SNIFF_ROWS = 1000


class FileFormatError(UserError, ValueError):
    """A file that cannot be read as examples (unknown extension, missing/non-numeric column...)."""


Chunk = "tuple[np.ndarray | SparseRows, np.ndarray | None]"


def read_examples(path, label_column: str | None = None, feature_columns: list[str] | None = None,
                  n_features: int | None = None, chunk_rows: int = 65536,
                  header: bool | None = None) -> Iterator[Chunk]:
    """Iterate over ``(X, y)`` chunks of at most ``chunk_rows`` rows from ``path``.
    ``header`` (CSV only): whether the first row names the columns; None detects it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FileFormatError(f"{path}: unknown file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if chunk_rows < 1:
        raise FileFormatError("chunk_rows must be >= 1")
    if suffix == ".jsonl":
        return _read_jsonl(path, label_column, feature_columns, n_features, chunk_rows)
    return _read_arrow(path, suffix, label_column, feature_columns, chunk_rows, header)


# -- csv layout -------------------------------------------------------------------------------
def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _counts_up(fields: list[str]) -> bool:
    return len(fields) > 1 and fields == [str(i) for i in range(len(fields))]


def _csv_layout(path: Path, header: bool | None) -> tuple[list[str] | None, bool, list[str]]:
    """``(column names when the file has no header row, else None; whether a header-less
    file's first column is an index; what was assumed)``, from the file's leading rows."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(itertools.islice(_csv.reader(fh), _SNIFF_ROWS))
    except (OSError, UnicodeDecodeError, _csv.Error) as exc:
        raise FileFormatError(f"{path}: cannot read as CSV: {exc}") from None
    if not rows or header:
        return None, False, []
    first = rows[0]
    notes = []
    if header is None:
        if not all(_is_number(f) for f in first) or _counts_up(first):
            return None, False, []
        notes.append(f"no header found: treating the first row as data, columns named c0..c{len(first) - 1}")
    names = [f"c{i}" for i in range(len(first))]
    index = len(first) > 1 and _counts_up([r[0] if r else "" for r in rows])
    return names, index, notes


# -- csv / parquet (pyarrow) ------------------------------------------------------------------
def _read_arrow(path: Path, suffix: str, label_column, feature_columns, chunk_rows, header) -> Iterator[Chunk]:
    import pyarrow as pa  # start-up cost: pyarrow loads only when a file is read

    notes: list[str] = []
    index_first = False
    if suffix == ".csv":
        from pyarrow import csv

        names, index_first, notes = _csv_layout(path, header)
        try:
            reader = csv.open_csv(path, read_options=csv.ReadOptions(block_size=1 << 22, column_names=names))
        except (pa.ArrowInvalid, OSError) as exc:
            raise FileFormatError(f"{path}: cannot read as CSV: {exc}") from None
        schema = reader.schema

        def batches():
            try:
                yield from reader
            except pa.ArrowInvalid as exc:
                raise FileFormatError(f"{path}: bad CSV: {exc}") from None
    else:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise FileFormatError(f"{path}: cannot read as Parquet: {exc}") from None
        schema = pf.schema_arrow

        def batches():
            yield from pf.iter_batches(batch_size=chunk_rows, columns=columns)

    names = list(schema.names)
    if feature_columns is None and names and (names[0] in INDEX_NAMES or index_first):
        index = names.pop(0)
        what = f"{index!r}" if index in INDEX_NAMES else f"{index} (0, 1, 2, …)"
        notes.append(f"dropped column {what}: a pandas index, not a feature")
    if notes:
        log.warning("%s: %s", path, "; ".join(notes))
    columns = _columns(path, names, label_column, feature_columns)
    for col in columns:
        t = schema.field(col).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
            what = "label" if col == label_column else "feature"
            raise FileFormatError(f"{path}: {what} column {col!r} is not numeric ({t})")
    features = [c for c in columns if c != label_column]
    row = 0
    for batch in batches():
        for start in range(0, batch.num_rows, chunk_rows):
            part = batch.slice(start, chunk_rows)
            X = np.empty((part.num_rows, len(features)), dtype=np.float32)
            for j, c in enumerate(features):
                X[:, j] = _column(part.column(c))
            _check_finite(path, X, row, features)
            y = None if label_column is None else _column(part.column(label_column)).astype(np.float64)
            row += part.num_rows
            yield X, y


def _column(arr) -> np.ndarray:
    import pyarrow as pa  # start-up cost: pyarrow loads only when a file is read

    if pa.types.is_boolean(arr.type) or pa.types.is_null(arr.type):
        arr = arr.cast(pa.float64())
    return arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # nulls -> NaN


def _columns(path: Path, names: list[str], label_column, feature_columns) -> list[str]:
    if label_column is not None and label_column not in names:
        raise FileFormatError(f"{path}: label column {label_column!r} not found; columns: {names}")
    if feature_columns is None:
        feature_columns = [c for c in names if c != label_column]
    else:
        missing = [c for c in feature_columns if c not in names]
        if missing:
            raise FileFormatError(f"{path}: feature column(s) {missing} not found; columns: {names}")
        if label_column in feature_columns:
            raise FileFormatError(f"{path}: label column {label_column!r} is also a feature column")
    if not feature_columns:
        raise FileFormatError(f"{path}: no feature columns")
    return list(feature_columns) + ([label_column] if label_column is not None else [])


def _check_finite(path: Path, X: np.ndarray, first_row: int, names: list[str] | None) -> None:
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        where = f"column {names[c]!r}" if names else f"feature {c}"
        raise FileFormatError(f"{path}: row {first_row + int(r) + 1}: missing, NaN or inf value in {where}")


# -- jsonl ----------------------------------------------------------------------------------
def json_objects(path: Path, error: type[Exception] = FileFormatError) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line of a JSON-lines file; ``error`` (one
    line naming the file and line) for a line that is not a JSON object."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: not JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, obj


def _read_jsonl(path: Path, label_column, feature_columns, n_features, chunk_rows) -> Iterator[Chunk]:
    """Three line forms: ``{"features": [...], "label": y}``, sparse ``{"indices": [...],
    "values": [...], "label": y}`` and flat ``{"col": v, ..., "label": y}``."""
    label_key = label_column
    form = None
    rows: list = []
    labels: list[float] = []
    first_row = 0
    cols = feature_columns
    for lineno, obj in json_objects(path):
        if form is None:
            form = "sparse" if "indices" in obj else "array" if "features" in obj else "flat"
            if form == "sparse" and not n_features:
                raise FileFormatError(f"{path}: sparse lines (indices/values) need n_features")
            if label_column is not None and label_column not in obj:
                raise FileFormatError(f"{path}: label column {label_column!r} not found in the first line "
                                      f"(keys: {sorted(obj)})")
            if label_key is None and form != "flat" and "label" in obj:
                label_key = "label"
            if form == "flat" and cols is None:
                cols = [k for k in obj if k != label_key]
                if not cols:
                    raise FileFormatError(f"{path}: no feature columns")
        if label_key is not None:
            lab = obj.get(label_key)
            if lab is not None:
                if isinstance(lab, bool) or not isinstance(lab, (int, float)):
                    lab = _number(path, lineno, label_key, lab)
            labels.append(np.nan if lab is None else float(lab))
        try:
            if form == "sparse":
                idx, vals = obj["indices"], obj["values"]
                if len(idx) != len(vals):
                    raise FileFormatError(f"{path}:{lineno}: {len(idx)} indices but {len(vals)} values")
                rows.append((idx, vals))
            elif form == "array":
                rows.append(obj["features"])
            else:
                rows.append([obj.get(c) for c in cols])
        except (KeyError, TypeError) as exc:
            raise FileFormatError(f"{path}:{lineno}: line does not match the first line's form ({exc})") from None
        if len(rows) >= chunk_rows:
            yield _jsonl_chunk(path, form, rows, labels, label_key, n_features, first_row, cols)
            first_row += len(rows)
            rows, labels = [], []
    if rows:
        yield _jsonl_chunk(path, form, rows, labels, label_key, n_features, first_row, cols)


def _number(path, lineno, key, v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise FileFormatError(f"{path}:{lineno}: {key!r} is not a number: {v!r}") from None


def _jsonl_chunk(path, form, rows, labels, label_key, n_features, first_row, cols) -> Chunk:
    y = None if label_key is None else np.asarray(labels, dtype=np.float64)
    if form == "sparse":
        lengths = [len(i) for i, _ in rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        try:
            indices = np.array([k for i, _ in rows for k in i], dtype=np.int64)
            values = np.array([v for _, vs in rows for v in vs], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise FileFormatError(f"{path}: non-numeric sparse indices/values near row {first_row + 1}: {exc}") from None
        if len(indices) and (indices.min() < 0 or indices.max() >= n_features):
            r = int(np.searchsorted(indptr, int(np.flatnonzero((indices < 0) | (indices >= n_features))[0]), "right"))
            raise FileFormatError(f"{path}: row {first_row + r}: sparse index out of range [0, {n_features})")
        bad = ~np.isfinite(values)
        if bad.any():
            r = int(np.searchsorted(indptr, int(np.flatnonzero(bad)[0]), "right"))
            raise FileFormatError(f"{path}: row {first_row + r}: NaN or inf value")
        return SparseRows(indptr, indices, values, int(n_features)), y
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise FileFormatError(f"{path}: rows {first_row + 1}..{first_row + len(rows)} have differing widths {sorted(widths)}")
    try:
        X = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{path}: non-numeric feature near row {first_row + 1}: {exc}") from None
    _check_finite(path, X.reshape(len(rows), -1), first_row, cols if form == "flat" else None)
    return X.reshape(len(rows), -1), y


__all__ = ["read_examples", "FileFormatError", "SUFFIXES"]
