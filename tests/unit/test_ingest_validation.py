"""Validation of raw JSON events by the ingest app (no broker)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamlearn.batch import SparseRows
from streamlearn.wire.decode import decode_messages
from streamlearn.ingest.app import faust_broker
from streamlearn.ingest.events import IngestConfig, InvalidEvent, TrainingEvent, check_event, encode_batch, validate_event

CFG = IngestConfig(n_features=3)
LABELLED = IngestConfig(n_features=3, label_required=True)


def ok(event, cfg=CFG) -> TrainingEvent:
    raw = event if isinstance(event, (bytes, str)) else json.dumps(event).encode()
    return validate_event(raw, cfg)


def reason(event, cfg=CFG) -> str:
    raw = event if isinstance(event, (bytes, str)) else json.dumps(event, allow_nan=True).encode()
    ev, why = check_event(raw, cfg)
    assert ev is None, f"accepted {event!r}"
    return why


def test_dense_event_with_all_fields():
    ev = ok({"features": [0.5, 1, -2], "label": 1, "weight": 2, "key": "u7", "event_time": 1718000000000})
    assert ev == TrainingEvent(features=[0.5, 1.0, -2.0], label=1.0, weight=2.0, key="u7", event_time=1718000000000)
    assert not ev.sparse


def test_defaults_and_nulls():
    ev = ok({"features": [0, 0, 0], "label": None, "weight": None, "key": None, "event_time": None})
    assert (ev.label, ev.weight, ev.key, ev.event_time) == (None, 1.0, None, None)


def test_sparse_event_with_and_without_width():
    a = ok({"indices": [0, 2], "values": [1.5, -1], "n_features": 3, "label": 0})
    b = ok({"indices": [2], "values": [4]})
    assert a.sparse and a.indices == [0, 2] and a.values == [1.5, -1.0] and a.n_features == 3
    assert b.n_features == 3
    assert ok({"indices": [], "values": []}).indices == []  # an all-zero row


@pytest.mark.parametrize("event, expected", [
    (b"not json", "not JSON (Expecting value at char 0)"),
    (b'{"features": [1, 2, 3]', "not JSON (Expecting ',' delimiter at char 22)"),
    (b"\xff\xfe", "not JSON (not UTF-8)"),
    (b"", "not JSON (Expecting value at char 0)"),
    (b"[1, 2, 3]", "event is not a JSON object"),
    (b'"features"', "event is not a JSON object"),
    ({"feature": [1, 2, 3]}, "unknown field(s): 'feature'"),
    ({"features": [1, 2, 3], "lable": 1}, "unknown field(s): 'lable'"),
    ({}, "event has no features"),
    ({"label": 1}, "event has no features"),
    ({"features": [1, 2]}, "dimension 2 != 3"),
    ({"features": [1, 2, 3, 4]}, "dimension 4 != 3"),
    ({"features": "1,2,3"}, "features is not a list"),
    ({"features": [1, "2", 3]}, "features holds a non-number (str)"),
    ({"features": [1, True, 3]}, "features holds a non-number (bool)"),
    ({"features": [1, None, 3]}, "features holds a non-number (NoneType)"),
    ({"features": [1, float("nan"), 3]}, "NaN or inf in features"),
    ({"features": [1, float("inf"), 3]}, "NaN or inf in features"),
    ({"features": [1, 1e39, 3]}, "feature out of float32 range"),
    ({"features": [1, 2, 3], "indices": [0], "values": [1]}, "event has both dense and sparse features"),
    ({"indices": [0, 1]}, "sparse event needs both indices and values"),
    ({"values": [1.0]}, "sparse event needs both indices and values"),
    ({"indices": [0, 1.5], "values": [1, 2]}, "indices is not a list of integers"),
    ({"indices": [0, 1], "values": [1]}, "sparse indices/values lengths differ (2 != 1)"),
    ({"indices": [0], "values": [1], "n_features": 4}, "sparse n_features 4 != 3"),
    ({"indices": [0], "values": [1], "n_features": "3"}, "n_features is not an integer"),
    ({"indices": [3], "values": [1]}, "sparse index out of range [0, 3)"),
    ({"indices": [-1], "values": [1]}, "sparse index out of range [0, 3)"),
    ({"indices": [1, 1], "values": [1, 2]}, "duplicate sparse index"),
    ({"indices": [1], "values": [float("nan")]}, "NaN or inf in features"),
    ({"features": [1, 2, 3], "label": "yes"}, "label is not a number (str)"),
    ({"features": [1, 2, 3], "label": float("nan")}, "NaN or inf in label"),
    ({"features": [1, 2, 3], "weight": -1}, "negative weight"),
    ({"features": [1, 2, 3], "weight": float("inf")}, "NaN or inf in weight"),
    ({"features": [1, 2, 3], "weight": "2"}, "weight is not a number (str)"),
    ({"features": [1, 2, 3], "key": 7}, "key is not a string (int)"),
    ({"features": [1, 2, 3], "event_time": 1.5}, "event_time is not integer milliseconds"),
    ({"features": [1, 2, 3], "event_time": "2024-01-01"}, "event_time is not integer milliseconds"),
    ({"features": [1, 2, 3], "event_time": 2 ** 63}, "event_time out of range"),
])
def test_rejections_name_the_reason(event, expected):
    assert reason(event) == expected


def test_label_required():
    assert reason({"features": [1, 2, 3]}, LABELLED) == "missing label"
    assert reason({"features": [1, 2, 3], "label": None}, LABELLED) == "missing label"
    assert ok({"features": [1, 2, 3], "label": 0}, LABELLED).label == 0.0


def test_extra_fields_allowed_when_configured():
    cfg = IngestConfig(n_features=3, allow_extra_fields=True)
    assert ok({"features": [1, 2, 3], "request_id": "abc"}, cfg).features == [1.0, 2.0, 3.0]


def test_validate_raises_and_check_never_raises():
    with pytest.raises(InvalidEvent, match="dimension"):
        validate_event(b'{"features": [1]}', CFG)
    deep = b"[" * 100000 + b"]" * 100000
    ev, why = check_event(deep, CFG)
    assert ev is None and why.startswith("not JSON")
    assert check_event(None, CFG)[0] is None  # not bytes at all
    assert check_event({"features": [1, 2, 3]}, CFG)[1] is None  # already-parsed dicts are accepted


def test_records_round_trip_through_the_worker_decoder():
    events = [ok({"features": [0.5, 1, -2], "label": 1, "weight": 2, "key": "a", "event_time": 5}),
              ok({"features": [0, 0, 3]}),
              ok({"indices": [1], "values": [7.5], "label": 0, "key": "c"})]
    res = decode_messages([e.encode_record() for e in events], 3, accepts_sparse=True, needs_label=False)
    assert res.rejected == []
    X = res.batch.X
    assert isinstance(X, SparseRows)  # a sparse record makes the batch CSR
    dense = np.zeros((3, 3), dtype=np.float32)
    for i in range(3):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        dense[i, X.indices[lo:hi]] = X.values[lo:hi]
    np.testing.assert_array_equal(dense, [[0.5, 1, -2], [0, 0, 3], [0, 7.5, 0]])
    np.testing.assert_array_equal(res.batch.y, [1.0, np.nan, 0.0])
    np.testing.assert_array_equal(res.batch.w, [2.0, 1.0, 1.0])
    assert res.batch.keys == ["a", None, "c"]


def test_unlabelled_record_is_rejected_by_a_label_needing_worker():
    res = decode_messages([ok({"features": [1, 2, 3]}).encode_record()], 3, accepts_sparse=False, needs_label=True)
    assert [r.reason for r in res.rejected] == ["missing label"]


@pytest.mark.parametrize("sparse", [False, True])
def test_batches_round_trip(sparse):
    events = [ok({"features": [1, 2, 3], "label": 1, "key": "a", "event_time": 10}),
              ok({"features": [0, 0, 4], "weight": 0.5, "event_time": 30})]
    if sparse:
        events.append(ok({"indices": [0], "values": [9], "label": 0}))
    res = decode_messages([encode_batch(events, 3)], 3, accepts_sparse=True, needs_label=False)
    assert res.rejected == [] and len(res.batch) == len(events)
    X = res.batch.X
    if sparse:
        assert isinstance(X, SparseRows)
        dense = np.zeros((len(events), 3), dtype=np.float32)
        for i in range(len(events)):
            dense[i, X.indices[X.indptr[i]:X.indptr[i + 1]]] = X.values[X.indptr[i]:X.indptr[i + 1]]
        X = dense
    expected = [[1, 2, 3], [0, 0, 4]] + ([[9, 0, 0]] if sparse else [])
    np.testing.assert_array_equal(X, expected)
    y = res.batch.y
    assert y[0] == 1 and math.isnan(y[1])
    np.testing.assert_array_equal(res.batch.w[:2], [1.0, 0.5])
    assert res.batch.keys[:2] == ["a", None]


def test_faust_broker_url():
    assert faust_broker("127.0.0.1:9092") == "kafka://127.0.0.1:9092"
    assert faust_broker("a:1, b:2") == "kafka://a:1;kafka://b:2"
    assert faust_broker("kafka://a:1") == "kafka://a:1"


def test_bad_batch_size_is_refused():
    from streamlearn.ingest.app import create_app

    with pytest.raises(ValueError, match="batch_size"):
        create_app("raw", "train", IngestConfig(3, batch_size=0), broker="127.0.0.1:1")
