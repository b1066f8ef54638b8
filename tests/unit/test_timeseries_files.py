"""Time-series files -> points: long-format csv/parquet and GluonTS JSON lines."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamlearn.streams.files import FileFormatError
from streamlearn.streams.timeseries import interleave, parse_time_ms, read_gluonts, read_long

DAY = 86_400_000


def test_gluonts_lines_expand_start_by_freq_with_missing_values_and_features(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"start": "2021-01-30", "target": [1, "NaN", 3], "cat": [2, 0],
                                "dynamic_feat": [[0.5, 0.6, 0.7]], "item_id": "x"}) + "\n"
                    + json.dumps({"start": "2021-01-31 00:00:00", "target": [4, 5]}) + "\n")
    a, b = read_gluonts(path, "M")
    assert [p.series for p in a] == ["x"] * 3 and b[0].series == "2"
    assert [p.time for p in a] == [parse_time_ms(d) for d in ("2021-01-30", "2021-02-27", "2021-03-30")]
    assert [p.time for p in b] == [parse_time_ms("2021-01-31"), parse_time_ms("2021-02-28")]  # month ends stay so
    assert a[1].target is None and a[2].feat == [0.7] and a[0].cat == [2, 0]
    assert [p.series for p in interleave([a, b])] == ["x", "2", "x", "2", "x"]
    with pytest.raises(FileFormatError, match="dynamic_feat"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"start": "2021-01-01", "target": [1, 2],
                                                         "dynamic_feat": [[1.0]]}) + "\n")
        read_gluonts(tmp_path / "bad.jsonl", "D")


def test_long_format_keeps_file_order_within_a_series_and_passes_bad_times_on(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b", "a", "a"], "t": ["2021-01-01", "2021-01-01", "2021-01-03", "junk"],
                      "y": [1.0, None, 2.0, 3.0], "f": [0.1, 0.2, 0.3, 0.4], "c": [1, 2, 1, 1]})
    pq.write_table(table, tmp_path / "p.parquet")
    a, b = read_long(tmp_path / "p.parquet", "id", "t", "y", ["f"], ["c"])
    assert [p.time for p in a] == [parse_time_ms("2021-01-01"), parse_time_ms("2021-01-03"), "junk"]
    assert b[0].target is None and a[1].feat == [0.3] and b[0].cat == [2]
    (tmp_path / "x.csv").write_text("id,t,y\na,2021-01-01,oops\n")
    with pytest.raises(FileFormatError, match="not numeric"):
        read_long(tmp_path / "x.csv", "id", "t", "y")
    with pytest.raises(FileFormatError, match="no column"):
        read_long(tmp_path / "p.parquet", "id", "when", "y")
    assert math.isnan(float("nan")) and parse_time_ms("2021-01-02T00:00:00Z") == parse_time_ms("2021-01-01") + DAY
    assert parse_time_ms("2021-02-30") is None and np.int64(parse_time_ms(5)) == 5
