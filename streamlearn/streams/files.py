"""Read example files (.csv, .jsonl, .parquet) as numpy chunks.

``read_examples(path, label_column=None, feature_columns=None)`` yields ``(X, y)`` chunks:
``X`` float32 (rows, features) — or :class:`~streamlearn.batch.SparseRows` for the sparse
JSONL form ``{"indices": [...], "values": [...], "label": 1}`` (``n_features`` required) —
and ``y`` float64 (NaN where a row has no label) or None without a label column.

Feature columns default to every column except the label, in file order; they must be
numeric. A row that cannot be an example goes to ``on_bad_row`` as a :class:`BadRow` (its
row number, the reason and its text) and is left out; without ``on_bad_row`` it is an
error (with the row number). Bad rows are: a CSV row with the wrong number of fields, a
value that is not a number in a numeric column (a word among a column's numbers), a JSON
line that is not an object or not of the first line's form; strict reading (no
``on_bad_row``) also refuses missing, NaN and infinite feature values, which lenient
reading passes on as numbers for the workers' rules to judge.

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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

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


@dataclass(frozen=True)
class BadRow:
    """A row of a file that cannot be an example."""

    row: int | None  # CSV: the file's row, 1-based, a header row counted; JSONL: the line; Parquet: the record
    reason: str
    text: str  # the row as written (CSV: its fields joined by commas; JSONL: the line)

    def where(self, path) -> str:
        return f"{path}: row {self.row}" if self.row is not None else str(path)


def read_examples(path, label_column: str | None = None, feature_columns: list[str] | None = None,
                  n_features: int | None = None, chunk_rows: int = 65536,
                  header: bool | None = None,
                  on_bad_row: Callable[[BadRow], None] | None = None) -> Iterator[Chunk]:
    """Iterate over ``(X, y)`` chunks of at most ``chunk_rows`` rows from ``path``.
    ``header`` (CSV only): whether the first row names the columns; None detects it.
    ``on_bad_row``: receives each row that cannot be an example, which is left out (see
    the module's doc); None: such a row raises :class:`FileFormatError`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FileFormatError(f"{path}: unknown file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if chunk_rows < 1:
        raise FileFormatError("chunk_rows must be >= 1")
    if suffix == ".jsonl":
        return _read_jsonl(path, label_column, feature_columns, n_features, chunk_rows, on_bad_row)
    return _read_arrow(path, suffix, label_column, feature_columns, chunk_rows, header, on_bad_row)


def _refuse(path) -> Callable[[BadRow], None]:
    def refuse(bad: BadRow) -> None:
        raise FileFormatError(f"{bad.where(path)}: {bad.reason}")
    return refuse


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
#: what pyarrow's cast from text to float64 accepts (surrounding blanks trimmed first)
_NUMBER = r"^[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)$"
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
#: bytes of a CSV file parsed at once; the first block's values set a column's type
_CSV_BLOCK_BYTES = 1 << 22


def _skip(_row) -> str:
    return "skip"


class _CsvFile:
    """A CSV file's record batches. Lenient (bad rows wanted rather than an error): a first
    pass lists the rows with the wrong number of fields and reads as text every column in
    which the type the first block suggested fails further down (a word among numbers, a
    fraction among integers), so that the second pass cannot stop halfway through a file
    whose first rows were already produced. Blank lines are kept as rows of nulls, so that
    row numbers are the file's; :func:`_blank_rows` drops them."""

    def __init__(self, path: Path, column_names: list[str] | None, lenient: bool):
        self.path, self.column_names, self.lenient = path, column_names, lenient
        self.text_columns: set[str] = set()
        self.invalid: list[BadRow] = []  # rows with the wrong number of fields, in file order
        self.skipped: list[int] = []  # file rows the parser leaves out (those)
        self.schema = self._open(_skip if lenient else None).schema
        if lenient:
            self._first_pass()
        self.first_row = 1 if column_names else 2

    def _open(self, on_invalid):
        import pyarrow as pa  # start-up cost: pyarrow loads only when a file is read
        from pyarrow import csv

        read = csv.ReadOptions(block_size=_CSV_BLOCK_BYTES, column_names=self.column_names, use_threads=not self.lenient)
        parse = (csv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False) if self.lenient
                 else csv.ParseOptions())
        convert = csv.ConvertOptions(column_types={c: pa.string() for c in self.text_columns})
        try:
            return csv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, OSError) as exc:
            raise FileFormatError(f"{self.path}: cannot read as CSV: {exc}") from None

    def _first_pass(self) -> None:
        import pyarrow as pa  # start-up cost: pyarrow loads only when a file is read

        names = self.schema.names
        while True:
            invalid: list[BadRow] = []

            def note(row) -> str:
                # single-threaded parsing (lenient) knows every row's number
                invalid.append(BadRow(row.number, f"{row.actual_columns} fields, expected {row.expected_columns}",
                                      row.text))
                return "skip"

            try:
                for _ in self._open(note):
                    pass
            except pa.ArrowInvalid as exc:
                m = _CSV_COLUMN.search(str(exc))
                column = names[int(m.group(1))] if m and int(m.group(1)) < len(names) else None
                if column is None or column in self.text_columns:
                    raise FileFormatError(f"{self.path}: bad CSV: {exc}") from None
                self.text_columns.add(column)
                continue
            self.invalid = invalid
            self.skipped = [bad.row for bad in invalid]
            return

    def batches(self):
        import pyarrow as pa  # start-up cost: pyarrow loads only when a file is read

        reader = self._open(_skip if self.lenient else None)
        try:
            yield from reader
        except pa.ArrowInvalid as exc:
            raise FileFormatError(f"{self.path}: bad CSV: {exc}") from None

    def file_row(self, record: int) -> int:
        """The file row of the ``record``-th record read (0-based)."""
        row = self.first_row + record
        for skipped in self.skipped:
            if skipped > row:
                break
            row += 1
        return row


def _read_arrow(path: Path, suffix: str, label_column, feature_columns, chunk_rows, header,
                on_bad_row) -> Iterator[Chunk]:
    import pyarrow as pa  # start-up cost: pyarrow loads only when a file is read

    notes: list[str] = []
    index_first = False
    if suffix == ".csv":
        names, index_first, notes = _csv_layout(path, header)
        source = _CsvFile(path, names, lenient=on_bad_row is not None)
        schema, batches, file_row, invalid = source.schema, source.batches, source.file_row, source.invalid
    else:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise FileFormatError(f"{path}: cannot read as Parquet: {exc}") from None
        schema, invalid = pf.schema_arrow, []

        def batches():
            yield from pf.iter_batches(batch_size=chunk_rows, columns=columns)

        def file_row(record: int) -> int:
            return record + 1

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
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
                or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise FileFormatError(f"{path}: {_what(col, label_column)} column {col!r} is not numeric ({t})")
    report = on_bad_row or _refuse(path)
    for bad in invalid:
        report(bad)
    features = [c for c in columns if c != label_column]
    seen_numbers: set[str] = set()  # text columns known to hold numbers
    record = 0
    for batch in batches():
        for start in range(0, batch.num_rows, chunk_rows):
            part = batch.slice(start, chunk_rows)
            values, bad, reasons = {}, np.zeros(part.num_rows, dtype=bool), {}
            for c in columns:
                values[c], words = _numbers(part.column(c))
                if words is None:
                    continue
                if c not in seen_numbers:
                    _check_holds_numbers(path, c, label_column, part.column(c), values[c], words)
                    seen_numbers.add(c)
                for i in np.flatnonzero(words & ~bad):
                    reasons[int(i)] = f"{_what(c, label_column)} {part.column(c)[int(i)].as_py()!r} is not a number"
                bad |= words
            for i in sorted(reasons):
                fields = part.slice(i, 1).to_pylist()[0]
                report(BadRow(file_row(record + i), reasons[i],
                              ",".join("" if v is None else str(v) for v in fields.values())))
            keep = ~bad
            if on_bad_row is not None and suffix == ".csv":
                keep &= ~_blank_rows(part)
            X = np.empty((int(keep.sum()), len(features)), dtype=np.float32)
            for j, c in enumerate(features):
                X[:, j] = values[c][keep]
            if on_bad_row is None:
                _check_finite(path, X, lambda r: file_row(record + r), features)
            y = None if label_column is None else values[label_column][keep]
            record += part.num_rows
            yield X, y


def _blank_rows(part) -> np.ndarray:
    """Rows with no value in any column: a blank line (or only separators)."""
    import pyarrow as pa  # start-up cost: pyarrow loads only when a file is read
    import pyarrow.compute as pc

    blank = np.ones(part.num_rows, dtype=bool)
    for arr in part.columns:
        empty = pc.equal(pc.utf8_trim_whitespace(arr), "") if pa.types.is_string(arr.type) else arr.is_null()
        blank &= np.asarray(pc.fill_null(empty, True))
    return blank


def _what(column: str, label_column: str | None) -> str:
    return "label" if column == label_column else "feature"


def _numbers(arr) -> tuple[np.ndarray, np.ndarray | None]:
    """``(float64 values, which values are words)`` of a column; the mask is None for a
    numeric column. Nulls and empty text are NaN (missing), not words."""
    import pyarrow as pa  # start-up cost: pyarrow loads only when a file is read
    import pyarrow.compute as pc

    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        if pa.types.is_boolean(arr.type) or pa.types.is_null(arr.type):
            arr = arr.cast(pa.float64())
        return arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False), None  # nulls -> NaN
    text = pc.utf8_trim_whitespace(arr)
    blank = pc.fill_null(pc.equal(text, ""), True)
    number = pc.fill_null(pc.match_substring_regex(text, _NUMBER, ignore_case=True), False)
    parsed = pc.cast(pc.if_else(number, text, pa.scalar(None, text.type)), pa.float64())
    words = ~(np.asarray(number) | np.asarray(blank))
    return parsed.to_numpy(zero_copy_only=False).astype(np.float64, copy=False), words


def _check_holds_numbers(path, column: str, label_column: str | None, arr, values: np.ndarray,
                         words: np.ndarray) -> None:
    """A text column none of whose first values is a number holds words (string labels,
    names), not numbers with a few typos: refused as a whole rather than row by row."""
    if words.any() and not np.isfinite(values).any():
        hint = ": code string labels as numbers" if column == label_column else ""
        raise FileFormatError(f"{path}: {_what(column, label_column)} column {column!r} is not numeric "
                              f"(e.g. {arr.filter(words)[0].as_py()!r}){hint}")


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


def _check_finite(path: Path, X: np.ndarray, file_row: Callable[[int], int], names: list[str] | None) -> None:
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        where = f"column {names[c]!r}" if names else f"feature {c}"
        raise FileFormatError(f"{path}: row {file_row(int(r))}: missing, NaN or inf value in {where}")


# -- jsonl ----------------------------------------------------------------------------------
def json_lines(path: Path, on_bad_line: Callable[[BadRow], None]) -> Iterator[tuple[int, str, dict]]:
    """``(line number, line, object)`` of every non-blank line of a JSON-lines file that is a
    JSON object; any other line goes to ``on_bad_line``."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                on_bad_line(BadRow(lineno, f"not JSON: {exc.msg}", line.rstrip("\n")))
                continue
            if not isinstance(obj, dict):
                on_bad_line(BadRow(lineno, "expected a JSON object per line", line.rstrip("\n")))
                continue
            yield lineno, line, obj


def json_objects(path: Path, error: type[Exception] = FileFormatError) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line of a JSON-lines file; ``error`` (one
    line naming the file and line) for a line that is not a JSON object."""
    def refuse(bad: BadRow) -> None:
        raise error(f"{path}:{bad.row}: {bad.reason}")

    for lineno, _, obj in json_lines(path, refuse):
        yield lineno, obj


class _BadLine(ValueError):
    """A JSON line that cannot be an example (the message is the reason)."""


def _read_jsonl(path: Path, label_column, feature_columns, n_features, chunk_rows, on_bad_row) -> Iterator[Chunk]:
    """Three line forms, set by the first line: ``{"features": [...], "label": y}``, sparse
    ``{"indices": [...], "values": [...], "label": y}`` and flat ``{"col": v, ..., "label": y}``."""
    report = on_bad_row or _refuse(path)
    label_key = label_column
    form = None
    width = None  # the array form's row width, from the first line
    rows: list = []
    labels: list[float] = []
    cols = feature_columns
    for lineno, line, obj in json_lines(path, report):
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
            if form == "array" and isinstance(obj["features"], list):
                width = len(obj["features"])
        try:
            label = np.nan if label_key is None else _json_number(obj.get(label_key), "label")
            row = _json_row(obj, form, cols, n_features, width)
            if on_bad_row is None:
                _json_finite(row, form, cols)
        except _BadLine as exc:
            report(BadRow(lineno, str(exc), line.rstrip("\n")))
            continue
        rows.append(row)
        labels.append(label)
        if len(rows) >= chunk_rows:
            yield _jsonl_chunk(form, rows, labels, label_key, n_features)
            rows, labels = [], []
    if rows:
        yield _jsonl_chunk(form, rows, labels, label_key, n_features)


def _json_number(v, what: str) -> float:
    """A JSON value as a number (null: NaN, missing); :class:`_BadLine` for anything else."""
    if v is None:
        return np.nan
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _BadLine(f"{what} {v!r} is not a number")
    try:
        return float(v)
    except ValueError:
        raise _BadLine(f"{what} {v!r} is not a number") from None


def _json_row(obj: dict, form: str, cols, n_features, width):
    """One line's features: a float32 vector, or (indices, values) for the sparse form."""
    try:
        if form == "sparse":
            idx, vals = obj["indices"], obj["values"]
            if not isinstance(idx, list) or not isinstance(vals, list):
                raise _BadLine("indices and values must be lists")
            if len(idx) != len(vals):
                raise _BadLine(f"{len(idx)} indices but {len(vals)} values")
            indices = np.array([_json_index(i) for i in idx], dtype=np.int64)
            if len(indices) and (indices.min() < 0 or indices.max() >= n_features):
                raise _BadLine(f"sparse index out of range [0, {n_features})")
            return indices, np.array([_json_number(v, "value") for v in vals], dtype=np.float32)
        values = obj["features"] if form == "array" else [obj.get(c) for c in cols]
    except KeyError as exc:
        raise _BadLine(f"line does not match the first line's form (no {exc})") from None
    if not isinstance(values, list):
        raise _BadLine("features must be a list")
    if form == "array" and len(values) != width:
        raise _BadLine(f"{len(values)} features, the first line has {width}")
    return np.array([_json_number(v, "feature") for v in values], dtype=np.float32)


def _json_index(i) -> int:
    if isinstance(i, bool) or not isinstance(i, int):
        raise _BadLine(f"sparse index {i!r} is not an integer")
    return i


def _json_finite(row, form: str, cols) -> None:
    values = row[1] if form == "sparse" else row
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        where = f"column {cols[bad[0]]!r}" if form == "flat" else f"feature {bad[0]}" if form == "array" else "a value"
        raise _BadLine(f"missing, NaN or inf value in {where}")


def _jsonl_chunk(form, rows, labels, label_key, n_features) -> Chunk:
    y = None if label_key is None else np.asarray(labels, dtype=np.float64)
    if form == "sparse":
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(i) for i, _ in rows], out=indptr[1:])
        indices = np.concatenate([i for i, _ in rows]) if rows else np.zeros(0, np.int64)
        values = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, np.float32)
        return SparseRows(indptr, indices.astype(np.int64), values.astype(np.float32), int(n_features)), y
    return np.vstack(rows).astype(np.float32, copy=False), y


__all__ = ["read_examples", "BadRow", "FileFormatError", "SUFFIXES"]
