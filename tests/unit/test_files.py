"""read_examples over .csv, .jsonl and .parquet."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamlearn.batch import SparseRows
from streamlearn.streams import files
from streamlearn.streams.files import BadRow, FileFormatError, read_examples


def collect(chunks):
    chunks = list(chunks)
    X = np.vstack([c[0] for c in chunks])
    y = None if chunks[0][1] is None else np.concatenate([c[1] for c in chunks])
    return X, y, len(chunks)


def test_csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,target\n1,2,0\n3.5,4,1\n5,6,\n")
    X, y, _ = collect(read_examples(p, label_column="target"))
    assert X.dtype == np.float32 and X.tolist() == [[1, 2], [3.5, 4], [5, 6]]
    assert y.dtype == np.float64 and y[:2].tolist() == [0, 1] and np.isnan(y[2])
    X, y, _ = collect(read_examples(p, feature_columns=["b"]))
    assert X.tolist() == [[2], [4], [6]] and y is None


def test_chunks(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(10)))
    X, y, n = collect(read_examples(p, label_column="y", chunk_rows=3))
    assert n == 4 and X[:, 0].tolist() == list(range(10)) and y.tolist() == [i % 2 for i in range(10)]


def test_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x1": [1.0, 2.0], "x2": pa.array([3, 4], pa.int32()), "flag": [True, False],
                             "label": [0.5, 1.5]}), p)
    X, y, _ = collect(read_examples(p, label_column="label"))
    assert X.tolist() == [[1, 3, 1], [2, 4, 0]] and y.tolist() == [0.5, 1.5]


def test_jsonl_forms(tmp_path):
    p = tmp_path / "flat.jsonl"
    p.write_text('{"a": 1, "b": 2, "y": 1}\n\n{"a": 3, "b": 4, "y": null}\n')
    X, y, _ = collect(read_examples(p, label_column="y"))
    assert X.tolist() == [[1, 2], [3, 4]] and y[0] == 1 and np.isnan(y[1])
    p = tmp_path / "arr.jsonl"
    p.write_text('{"features": [1, 2, 3], "label": 0}\n{"features": [4, 5, 6], "label": 1}\n')
    X, y, _ = collect(read_examples(p))
    assert X.tolist() == [[1, 2, 3], [4, 5, 6]] and y.tolist() == [0, 1]
    p = tmp_path / "sparse.jsonl"
    p.write_text('{"indices": [0, 5], "values": [1.5, 2], "label": 1}\n{"indices": [], "values": [], "label": 0}\n')
    (X, y), = list(read_examples(p, n_features=8))
    assert isinstance(X, SparseRows) and X.shape == (2, 8)
    assert X.to_dense()[0].tolist() == [1.5, 0, 0, 0, 0, 2, 0, 0] and y.tolist() == [1, 0]


def test_errors(tmp_path):
    with pytest.raises(FileFormatError, match="unknown file type '.txt'"):
        read_examples(tmp_path / "d.txt")
    p = tmp_path / "d.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(FileFormatError, match="label column 'target' not found"):
        list(read_examples(p, label_column="target"))
    with pytest.raises(FileFormatError, match=r"feature column\(s\) \['zz'\] not found"):
        list(read_examples(p, feature_columns=["zz"]))
    with pytest.raises(FileNotFoundError):
        read_examples(tmp_path / "missing.csv")
    p.write_text("a,name\n1,x\n")
    with pytest.raises(FileFormatError, match="column 'name' is not numeric"):
        list(read_examples(p))
    p.write_text("a,b\n1,\n")
    with pytest.raises(FileFormatError, match="row 2: missing, NaN or inf value in column 'b'"):
        list(read_examples(p))
    j = tmp_path / "d.jsonl"
    j.write_text('{"a": 1}\n')
    with pytest.raises(FileFormatError, match="label column 'y' not found"):
        list(read_examples(j, label_column="y"))
    j.write_text('{"indices": [1], "values": [1]}\n')
    with pytest.raises(FileFormatError, match="need n_features"):
        list(read_examples(j))
    j.write_text('{"indices": [9], "values": [1]}\n')
    with pytest.raises(FileFormatError, match="out of range"):
        list(read_examples(j, n_features=4))
    j.write_text('not json\n')
    with pytest.raises(FileFormatError, match="not JSON"):
        list(read_examples(j))
    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": [1.0]}), pq_path)
    with pytest.raises(FileFormatError, match="label column 'y' not found"):
        list(read_examples(pq_path, label_column="y"))


def test_round_trip_through_decode(tmp_path):
    """A file's rows, encoded as training_batch messages, decode back to the same arrays."""
    from streamlearn.wire.decode import decode_messages
    from streamlearn.wire.serde import encode_training_batch

    p = tmp_path / "d.jsonl"
    rows = np.random.default_rng(1).normal(size=(7, 3))
    p.write_text("".join(json.dumps({"features": r.tolist(), "label": i}) + "\n" for i, r in enumerate(rows)))
    (X, y), = list(read_examples(p))
    res = decode_messages([encode_training_batch(X[:4], y[:4]), encode_training_batch(X[4:], y[4:])], 3, False, True)
    assert not res.rejected and np.array_equal(res.batch.X, X) and np.array_equal(res.batch.y, y)


# -- CSV layout: header detection, pandas index column --------------------------------------------
def test_csv_without_header_keeps_its_first_row_and_says_so(tmp_path, caplog):
    p = tmp_path / "d.csv"
    p.write_text("1,2,0\n3.5,4,1\n5,6,1\n")
    with caplog.at_level("WARNING", logger="streamlearn.streams.files"):
        X, y, _ = collect(read_examples(p, label_column="c2"))
    assert X.tolist() == [[1, 2], [3.5, 4], [5, 6]] and y.tolist() == [0, 1, 1]
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [f"{p}: no header found: treating the first row as data, columns named c0..c2"]


def test_csv_header_detection_can_be_overridden(tmp_path, caplog):
    p = tmp_path / "d.csv"
    p.write_text("1,2\n3,4\n")
    X, _, _ = collect(read_examples(p, header=True))  # forced: the first row names the columns
    assert X.tolist() == [[3, 4]]
    p.write_text("a,b\n3,4\n")
    with pytest.raises(FileFormatError, match="row 1: feature 'a' is not a number"):  # forced: "a,b" is data
        list(read_examples(p, header=False))
    with caplog.at_level("WARNING", logger="streamlearn.streams.files"):
        X, _, _ = collect(read_examples(p))
    assert X.tolist() == [[3, 4]] and not caplog.records  # a header: nothing assumed, nothing said


def test_csv_numeric_range_header_is_a_header(tmp_path):
    """pandas writes a DataFrame built from an array with the header 0,1,…,N-1."""
    p = tmp_path / "d.csv"
    p.write_text("0,1,2\n7,8,1\n9,10,0\n")
    X, y, _ = collect(read_examples(p, label_column="2"))
    assert X.tolist() == [[7, 8], [9, 10]] and y.tolist() == [1, 0]


@pytest.mark.parametrize("head", [",a,b,y", "Unnamed: 0,a,b,y"])
def test_csv_pandas_index_column_is_dropped(tmp_path, caplog, head):
    p = tmp_path / "d.csv"
    p.write_text(head + "\n0,1,2,0\n1,3,4,1\n")
    with caplog.at_level("WARNING", logger="streamlearn.streams.files"):
        X, y, _ = collect(read_examples(p, label_column="y"))
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]
    name = head.split(",")[0]
    assert [r.getMessage() for r in caplog.records] == [f"{p}: dropped column {name!r}: a pandas index, not a feature"]
    X, _, _ = collect(read_examples(p, feature_columns=["a"]))  # columns named explicitly: nothing dropped
    assert X.tolist() == [[1], [3]]


def test_headerless_csv_with_index_column(tmp_path, caplog):
    p = tmp_path / "d.csv"
    p.write_text("".join(f"{i},{i * 0.5},{10 - i},{i % 2}\n" for i in range(5)))
    with caplog.at_level("WARNING", logger="streamlearn.streams.files"):
        X, y, _ = collect(read_examples(p, label_column="c3"))
    assert X.tolist() == [[i * 0.5, 10 - i] for i in range(5)] and y.tolist() == [i % 2 for i in range(5)]
    (note,) = [r.getMessage() for r in caplog.records]  # one line says everything assumed
    assert "no header found" in note and "columns named c0..c3" in note and "dropped column c0 (0, 1, 2, …)" in note
    p.write_text("3,1,0\n4,2,1\n")  # a first column that does not count 0, 1, 2… is a feature
    X, _, _ = collect(read_examples(p, label_column="c2"))
    assert X.tolist() == [[3, 1], [4, 2]]


def test_parquet_pandas_index_column_is_dropped(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": [0, 1], "__index_level_0__": [10, 11]}).select(
        ["__index_level_0__", "a", "y"]), p)
    X, y, _ = collect(read_examples(p, label_column="y"))
    assert X.tolist() == [[1], [2]] and y.tolist() == [0, 1]


# -- rows that cannot be examples: left out and reported (lenient) or an error (strict) ---------
def read_lenient(path, **kw):
    bad: list[BadRow] = []
    X, y, _ = collect(read_examples(path, on_bad_row=bad.append, **kw))
    return X, y, bad


def test_csv_bad_rows_are_reported_with_their_file_row_and_text(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n1,2,0\n3,4,abc\n\n5,6\n7,8,1\n9,,1\n10,11, 2.5 \n")
    X, y, bad = read_lenient(p, label_column="label")
    assert X.tolist()[:2] == [[1, 2], [7, 8]] and np.isnan(X[2, 1]) and X[3].tolist() == [10, 11]
    assert y.tolist() == [0, 1, 1, 2.5]  # a missing feature is a number (NaN) for the workers' rules
    assert [(b.row, b.reason, b.text) for b in bad] == [
        (5, "2 fields, expected 3", "5,6"),
        (3, "label 'abc' is not a number", "3,4,abc")]
    with pytest.raises(FileFormatError, match="Expected 3 columns, got 2: 5,6"):
        list(read_examples(p, label_column="label"))
    p.write_text("a,b,label\n1,2,0\n3,4,abc\n")
    with pytest.raises(FileFormatError, match="row 3: label 'abc' is not a number"):
        list(read_examples(p, label_column="label"))


def test_csv_word_far_down_a_number_column_does_not_stop_the_file_halfway(tmp_path, monkeypatch):
    """The first block's rows make the label an integer column; a fraction and a word come
    blocks later: found by the first pass, so every good row is read."""
    monkeypatch.setattr(files, "_CSV_BLOCK_BYTES", 64)
    p = tmp_path / "d.csv"
    rows = [f"{i},{i % 2}" for i in range(40)]
    rows[30], rows[35] = "30,0.5", "35,yes"
    p.write_text("x,label\n" + "\n".join(rows) + "\n")
    X, y, bad = read_lenient(p, label_column="label")
    assert len(X) == 39 and 35 not in X[:, 0] and y[X[:, 0] == 30].tolist() == [0.5]
    assert [(b.row, b.reason) for b in bad] == [(37, "label 'yes' is not a number")]


def test_a_column_of_words_is_refused_as_a_whole(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,label\n1,cat\n2,dog\n")
    with pytest.raises(FileFormatError, match="label column 'label' is not numeric .*'cat'.*code string labels"):
        read_lenient(p, label_column="label")


def test_jsonl_bad_lines_are_reported_with_their_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"features": [1, 2], "label": 0}\nnot json\n[1]\n{"features": [1], "label": 1}\n'
                 '{"features": [1, "x"], "label": 1}\n{"features": [3, 4], "label": "two"}\n'
                 '{"features": [5, 6], "label": "1"}\n')
    X, y, bad = read_lenient(p)
    assert X.tolist() == [[1, 2], [5, 6]] and y.tolist() == [0, 1]
    assert [(b.row, b.reason) for b in bad] == [
        (2, "not JSON: Expecting value"), (3, "expected a JSON object per line"),
        (4, "1 features, the first line has 2"), (5, "feature 'x' is not a number"),
        (6, "label 'two' is not a number")]
    assert bad[0].text == "not json"
    s = tmp_path / "s.jsonl"
    s.write_text('{"indices": [1], "values": [2]}\n{"indices": [9], "values": [1]}\n'
                 '{"indices": [1, 2], "values": [1]}\n')
    bad = []
    (X, _), = list(read_examples(s, n_features=4, on_bad_row=bad.append))
    assert X.to_dense().tolist() == [[0, 2, 0, 0]] and [b.row for b in bad] == [2, 3]
