"""read_examples over .csv, .jsonl and .parquet."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamlearn.batch import SparseRows
from streamlearn.streams.files import FileFormatError, read_examples


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
    with pytest.raises(FileFormatError, match="row 1: missing, NaN or inf value in column 'b'"):
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
    from streamlearn.streams.decode import decode_messages
    from streamlearn.streams.serde import encode_training_batch

    p = tmp_path / "d.jsonl"
    rows = np.random.default_rng(1).normal(size=(7, 3))
    p.write_text("".join(json.dumps({"features": r.tolist(), "label": i}) + "\n" for i, r in enumerate(rows)))
    (X, y), = list(read_examples(p))
    res = decode_messages([encode_training_batch(X[:4], y[:4]), encode_training_batch(X[4:], y[4:])], 3, False, True)
    assert not res.rejected and np.array_equal(res.batch.X, X) and np.array_equal(res.batch.y, y)
