"""The registry's pure parts: --where parsing (no eval), offset ranges, the leakage rule, times."""
from __future__ import annotations

import pytest

from streamlearn.registry.data import Records, TrainingData, leakage, merge, parse_offsets
from streamlearn.registry.times import duration_ms, instant_ms
from streamlearn.registry.where import WhereError, parse_where


def test_where_conditions_and_rejections():
    [a, b] = parse_where("auc >= 0.8 AND records_applied>1e3")
    assert (a.metric, a.op, a.value, b.value) == ("auc", ">=", 0.8, 1000.0)
    assert a.holds({"auc": 0.8}) and not a.holds({"auc": 0.7}) and not a.holds({}) and not a.holds({"auc": None})
    for bad in ("", "auc>", "auc 0.8", "__import__('os').system('x')", "auc>0.8 or b<1", "auc>0.8 and", "0.8<auc"):
        with pytest.raises(WhereError):
            parse_where(bad)


def test_offsets_and_ranges():
    assert parse_offsets("0:10-20, 0:15-30,1:0-5") == {0: [(10, 30)], 1: [(0, 5)]}
    assert merge([(5, 6), (0, 5), (9, 9)]) == [(0, 6)]
    for bad in ("0:20-10", "x:1-2", "0:1", "-1:0-2"):
        with pytest.raises(ValueError):
            parse_offsets(bad)


def test_leakage_by_offsets_and_by_event_time():
    records = Records("t", [(0, 4, 100, 10), (0, 5, 200, 10), (1, 0, 300, 5), (1, 1, None, 0)])
    model = TrainingData("j@2", "t", {0: [(0, 5)]}, (50, 150))
    parent = TrainingData("p@1", "other", {1: [(0, 10)]}, (250, 350))
    assert leakage(records, [model, parent], by_event_time=False) == {
        "records": 10, "of": 25, "models": [{"model": "j@2", "records": 10, "by": ["offsets"]}]}
    got = leakage(records, [model, parent], by_event_time=True)
    assert got["records"] == 15 and [m["model"] for m in got["models"]] == ["j@2", "p@1"]
    assert got["models"][1]["by"] == ["event_time"]
    assert leakage(records, [TrainingData("x@1", "t", {0: [(6, 9)]}, None)], by_event_time=True) is None


def test_times():
    assert duration_ms("1d") == 86_400_000 and duration_ms("15min") == 900_000 and duration_ms("soon") is None
    assert instant_ms("1970-01-01T00:00:01Z", "--since") == 1000 and instant_ms("2h", "x", now_ms=10_000_000) == 2_800_000
    with pytest.raises(ValueError):
        instant_ms("yesterday", "--since")
