"""decode_messages: round trips, every rejection reason, absurd sizes, random bytes."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamlearn.batch import SparseRows
from streamlearn.wire import serde
from streamlearn.wire.decode import decode_messages
from streamlearn.wire.serde import SCHEMA_DIR, SchemaRegistry, encode_training_batch, encode_training_record
from tests.avro_bytes import zigzag

D = 4


def rng_X(n, d=D, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def one(values, n_features=D, accepts_sparse=False, needs_label=False):
    return decode_messages(values, n_features, accepts_sparse, needs_label)


def reason_of(value, **kw):
    res = one([value], **kw)
    assert len(res.batch) == 0 and len(res.rejected) == 1, res
    return res.rejected[0]


# -- round trips --------------------------------------------------------------------------
def test_dense_batch_round_trip():
    X, y = rng_X(10), np.arange(10.0)
    w = np.linspace(0.5, 2, 10)
    res = one([encode_training_batch(X, y, w, keys=[f"k{i}" for i in range(10)])])
    assert not res.rejected and res.accepted == [0]
    b = res.batch
    assert b.X.dtype == np.float32 and np.array_equal(b.X, X)
    assert b.y.dtype == np.float64 and np.array_equal(b.y, y) and np.array_equal(b.w, w)
    assert b.keys == [f"k{i}" for i in range(10)]
    b.X[0, 0] = 1.0  # the result owns writable arrays


def test_sparse_batch_round_trip():
    X = SparseRows(np.array([0, 2, 2, 3]), np.array([1, 3, 0]), np.array([1.0, 2.0, 3.0], np.float32), D)
    res = one([encode_training_batch(X, [1.0, np.nan, 0.0])], accepts_sparse=True)
    assert not res.rejected
    b = res.batch
    assert b.is_sparse and b.X.n_features == D
    assert np.array_equal(b.dense(), X.to_dense())
    assert np.isnan(b.y[1]) and b.y[0] == 1.0 and b.w is None and b.keys is None


def test_single_records_dense_and_sparse_round_trip():
    X = rng_X(5)
    msgs = [encode_training_record(X[i], label=float(i), weight=1.0 + i, key=None if i % 2 else f"k{i}")
            for i in range(5)]
    res = one(msgs)
    assert not res.rejected
    assert np.array_equal(res.batch.X, X) and np.array_equal(res.batch.y, np.arange(5.0))
    assert np.array_equal(res.batch.w, 1.0 + np.arange(5.0))
    assert res.batch.keys == ["k0", None, "k2", None, "k4"]
    sp = encode_training_record(indices=[0, 3], values=[1.5, -2.0], n_features=D)
    res = one([sp], accepts_sparse=True)
    assert np.array_equal(res.batch.dense(), [[1.5, 0, 0, -2.0]]) and res.batch.y is None


def test_mixed_messages_keep_order_and_go_sparse_when_any_is_sparse():
    X = rng_X(6)
    sp = SparseRows(np.array([0, 1]), np.array([2]), np.array([9.0], np.float32), D)
    msgs = [encode_training_record(X[0], label=0.0), encode_training_batch(X[1:3], [1.0, 2.0]),
            encode_training_record(indices=[2], values=[9.0], n_features=D),
            encode_training_batch(sp), encode_training_record(X[5])]
    res = one(msgs, accepts_sparse=True)
    assert not res.rejected
    expected = np.vstack([X[0:3], [[0, 0, 9, 0]], [[0, 0, 9, 0]], X[5:6]]).astype(np.float32)
    assert res.batch.is_sparse and np.array_equal(res.batch.dense(), expected)
    assert np.array_equal(res.batch.y[:3], [0.0, 1.0, 2.0]) and np.isnan(res.batch.y[3:]).all()
    dense_only = one([m for m in msgs if m is not msgs[2] and m is not msgs[3]])
    assert not dense_only.batch.is_sparse and dense_only.batch.X.shape == (4, D)


def _same_batch(a, b) -> None:
    assert a.is_sparse == b.is_sparse and len(a) == len(b)
    assert np.array_equal(a.dense(), b.dense())
    assert (a.keys or [None] * len(a)) == (b.keys or [None] * len(b))  # no keys = every key None
    assert np.array_equal(a.weights, b.weights)  # no weights = weights of 1
    nan = np.full(len(a), np.nan)  # no labels = NaN labels
    assert np.array_equal(nan if a.y is None else a.y, nan if b.y is None else b.y, equal_nan=True)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 100])
def test_steps_are_the_window_cut_in_order_with_views_inside_a_message(rows):
    """A worker's update steps: the whole window's rows cut every ``rows`` rows (across
    message boundaries), each step sparse if any message was; a step inside one batch
    message is a view of it (no copy of the window)."""
    X = rng_X(12)
    sp = SparseRows(np.array([0, 1, 1, 3]), np.array([2, 0, 3]), np.array([9.0, 1.0, 2.0], np.float32), D)
    windows = {
        "dense": [encode_training_batch(X[0:5], np.arange(5.0), keys=[f"k{i}" for i in range(5)]),
                  encode_training_record(X[5], label=5.0), encode_training_record(X[6], label=6.0),
                  encode_training_batch(X[7:12], np.arange(7.0, 12.0), np.linspace(1, 2, 5))],
        "mixed": [encode_training_batch(X[0:4], np.arange(4.0)), encode_training_batch(sp),
                  encode_training_record(indices=[1], values=[3.0], n_features=D, label=1.0),
                  encode_training_batch(X[4:9])],
    }
    for msgs in windows.values():
        res = one(msgs, accepts_sparse=True)
        whole = res.batch
        steps = res.steps(rows)
        assert [len(s) for s in steps] == [min(rows, len(whole) - a) for a in range(0, len(whole), rows)]
        for k, step in enumerate(steps):
            _same_batch(step, whole.take(np.arange(k * rows, k * rows + len(step))))
    dense = one(windows["dense"]).steps(5)
    assert np.shares_memory(dense[0].X, np.frombuffer(windows["dense"][0], np.uint8))  # inside message 0
    assert one([]).steps(rows) == []


def test_all_rejected_gives_empty_dense_batch():
    res = one([b"nope"])
    assert res.batch.X.shape == (0, D) and res.batch.X.dtype == np.float32 and res.accepted == []


def test_good_messages_survive_bad_neighbours():
    X = rng_X(3)
    msgs = [encode_training_record(X[0]), b"junk", encode_training_record(np.array([np.nan] * D)),
            encode_training_record(X[1]), encode_training_batch(X[2:3])]
    res = one(msgs)
    assert [r.index for r in res.rejected] == [1, 2] and res.accepted == [0, 3, 4]
    assert np.array_equal(res.batch.X, X)


# -- every rejection reason -----------------------------------------------------------------
def test_not_single_object_encoded():
    assert "single-object" in reason_of(b"this is not avro at all").reason
    assert "single-object" in reason_of(b"").reason
    assert reason_of(b"\xc3\x01\x00").reason == "truncated message (3 bytes)"


def test_unknown_fingerprint():
    r = reason_of(b"\xc3\x01" + b"\x13\x37" * 4 + b"\x02\x00")
    assert r.reason == "unknown schema fingerprint 0x3713371337133713" and r.n_records == 1


def test_truncated_and_trailing_bodies():
    good = encode_training_batch(rng_X(3))
    assert reason_of(good[:-5]).reason.startswith("malformed Avro body")
    assert reason_of(good + b"\x00\x00").reason == "2 trailing bytes after the Avro body"
    rec = encode_training_record(rng_X(1)[0])
    assert reason_of(rec[:-2]).reason.startswith("malformed Avro body")


def test_non_training_schema():
    reg = SchemaRegistry()
    reg.register({"type": "record", "name": "Other", "namespace": "x", "fields": [{"name": "a", "type": "long"}]})
    res = decode_messages([reg.encode({"a": 1}, "x.Other")], D, False, False, registry=reg)
    assert res.rejected[0].reason == "schema x.Other is not a training schema"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_features(bad):
    X = rng_X(3)
    X[1, 2] = bad
    r = reason_of(encode_training_batch(X))
    assert r.reason == "NaN or inf in features" and r.n_records == 3
    assert reason_of(encode_training_record(X[1])).reason == "NaN or inf in features"
    sp = SparseRows(np.array([0, 1]), np.array([0]), np.array([bad], np.float32), D)
    assert reason_of(encode_training_batch(sp), accepts_sparse=True).reason == "NaN or inf in features"
    r = reason_of(encode_training_record(indices=[1], values=[bad], n_features=D), accepts_sparse=True)
    assert r.reason == "NaN or inf in features"


def test_nonfinite_label_and_weight():
    x = rng_X(1)[0]
    assert reason_of(encode_training_record(x, label=np.nan)).reason == "NaN or inf in label"
    assert reason_of(encode_training_record(x, label=np.inf)).reason == "NaN or inf in label"
    assert reason_of(encode_training_record(x, weight=np.nan)).reason == "NaN or inf in weight"
    assert reason_of(encode_training_record(x, weight=-1.0)).reason == "negative weight"
    X = rng_X(2)
    assert reason_of(encode_training_batch(X, [1.0, np.inf])).reason == "inf in labels"
    assert reason_of(encode_training_batch(X, w=[1.0, np.nan])).reason == "NaN or inf in weight"
    assert reason_of(encode_training_batch(X, w=[1.0, -2.0])).reason == "negative weight"


def test_wrong_dimension():
    assert reason_of(encode_training_batch(rng_X(3, 7)), n_features=10).reason == "dimension 7 != 10"
    assert reason_of(encode_training_batch(rng_X(3, 7)), n_features=10).n_records == 3
    assert reason_of(encode_training_record(rng_X(1, 7)[0]), n_features=10).reason == "dimension 7 != 10"
    r = reason_of(encode_training_record(indices=[1], values=[1.0], n_features=7), n_features=10, accepts_sparse=True)
    assert r.reason == "sparse n_features 7 != 10"
    sp = SparseRows(np.array([0, 1]), np.array([1]), np.array([1.0], np.float32), 7)
    assert reason_of(encode_training_batch(sp), n_features=10, accepts_sparse=True).reason == "sparse n_features 7 != 10"


def test_sparse_index_out_of_range():
    for idx in (-1, D):
        r = reason_of(encode_training_record(indices=[0, idx], values=[1.0, 1.0], n_features=D), accepts_sparse=True)
        assert r.reason == f"sparse index out of range [0, {D})"
        sp = SparseRows(np.array([0, 2]), np.array([0, idx]), np.array([1.0, 1.0], np.float32), D)
        assert reason_of(encode_training_batch(sp), accepts_sparse=True).reason == f"sparse index out of range [0, {D})"


def test_missing_label():
    x = rng_X(2)
    assert reason_of(encode_training_record(x[0]), needs_label=True).reason == "missing label"
    assert reason_of(encode_training_batch(x), needs_label=True).reason == "missing label"
    r = reason_of(encode_training_batch(x, [1.0, np.nan]), needs_label=True)
    assert r.reason == "missing label" and r.n_records == 2
    ok = one([encode_training_batch(x, [1.0, np.nan])])  # unlabelled rows fine when not needed
    assert not ok.rejected and np.isnan(ok.batch.y[1])


def test_sparse_input_to_dense_only_algorithm():
    sp = SparseRows(np.array([0, 1]), np.array([0]), np.array([1.0], np.float32), D)
    assert reason_of(encode_training_batch(sp)).reason == "sparse input to a dense-only algorithm"
    r = reason_of(encode_training_record(indices=[0], values=[1.0], n_features=D))
    assert r.reason == "sparse input to a dense-only algorithm"


def test_malformed_sparse_and_record_shapes():
    bad_indptr = {"n_rows": 2, "n_features": D, "indptr": np.array([0, 2, 1], "<i8").tobytes(),
                  "indices": np.array([0], "<i8").tobytes(), "values": np.array([1], "<f4").tobytes()}
    assert reason_of(serde.encode(bad_indptr, "training_batch"), accepts_sparse=True).reason == "malformed sparse indptr"
    r = reason_of(serde.encode({"indices": [1, 2], "values": [1.0], "n_features": D}, "training_record"),
                  accepts_sparse=True)
    assert r.reason == "sparse indices/values lengths differ (2 != 1)"
    r = reason_of(serde.encode({"indices": [1], "values": [1.0]}, "training_record"), accepts_sparse=True)
    assert r.reason == "sparse record without n_features"
    assert reason_of(serde.encode({}, "training_record")).reason == "record has no features"
    both = {"features": [1.0] * D, "indices": [1], "values": [1.0], "n_features": D}
    assert reason_of(serde.encode(both, "training_record")).reason == "record has both dense and sparse features"
    keys = {"n_rows": 1, "n_features": D, "dense": b"\x00" * 4 * D, "keys": ["a", "b"]}
    assert reason_of(serde.encode(keys, "training_batch")).reason == "keys count 2 != n_rows 1"


@pytest.mark.parametrize("claim", [
    {"n_rows": 10**9, "n_features": D, "dense": b"\x00" * 16},
    {"n_rows": 10, "n_features": 10**9, "dense": b"\x00" * 16},
    {"n_rows": 10**18, "n_features": 10**18, "dense": b"\x00" * 16},
    {"n_rows": 10**9, "n_features": 0, "dense": b""},
    {"n_rows": -5, "n_features": D, "dense": b""},
    {"n_rows": 10**9, "n_features": D, "indptr": b"\x00" * 16, "indices": b"", "values": b""},
    {"n_rows": 1, "n_features": D, "dense": b"\x00" * 4 * D, "labels": b"\x00" * 8 * 10},
    {"n_rows": 2, "n_features": D, "dense": b"\x00" * 8 * D, "weights": b"\x00" * 8},
])
def test_absurd_sizes_rejected_before_allocation(claim):
    value = serde.encode(claim, "training_batch")
    t = time.perf_counter()
    r = reason_of(value, accepts_sparse=True)
    assert time.perf_counter() - t < 0.05
    assert r.reason.startswith("size mismatch") and r.n_records == 1


def test_absurd_avro_lengths_in_raw_bytes():
    """Varints claiming 10**12-byte fields / 10**9-item arrays in a tiny message."""
    hdr_b = b"\xc3\x01" + serde.schema_fingerprint("training_batch")
    hdr_r = b"\xc3\x01" + serde.schema_fingerprint("training_record")
    values = [hdr_b + zigzag(10**9) + zigzag(D) + b"\x02" + zigzag(10**12) + b"abc",
              hdr_b + zigzag(1) + zigzag(1) + b"\x00" * 6 + b"\x02" + zigzag(10**9) + b"\x00",
              hdr_r + b"\x02" + zigzag(10**9) + b"\x00\x00\x00",
              hdr_r + b"\x00\x02" + zigzag(-(10**9)) + zigzag(5) + b"\x00"]
    t = time.perf_counter()
    res = one(values, accepts_sparse=True)
    assert time.perf_counter() - t < 0.1
    assert len(res.rejected) == 4 and all(r.reason.startswith("malformed") for r in res.rejected)


# -- the hand-written reader agrees with fastavro --------------------------------------------
def test_evolved_writer_takes_the_generic_path():
    reg = SchemaRegistry()
    for name in ("training_record", "training_batch"):
        reg.register(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()), name=name)
    old = json.loads((SCHEMA_DIR / "training_record.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] != "weight"]
    fp = reg.register(old)
    import io

    import fastavro
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), {"features": [1.0, 2.0, 3.0, 4.0], "label": 2.0})
    res = decode_messages([b"\xc3\x01" + fp + buf.getvalue()], D, False, True, registry=reg)
    assert not res.rejected and np.array_equal(res.batch.X, [[1, 2, 3, 4]]) and res.batch.y[0] == 2.0


record_strategy = st.fixed_dictionaries({
    "features": st.one_of(st.none(), st.lists(st.floats(width=32, allow_nan=False), max_size=6)),
    "indices": st.one_of(st.none(), st.lists(st.integers(-2**63, 2**63 - 1), max_size=6)),
    "values": st.one_of(st.none(), st.lists(st.floats(width=32), max_size=6)),
    "n_features": st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)),
    "label": st.one_of(st.none(), st.floats()),
    "weight": st.floats(),
    "key": st.one_of(st.none(), st.text(max_size=5)),
    "event_time": st.one_of(st.none(), st.integers(0, 2**40)),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_strategy)
def test_fast_record_reader_matches_fastavro(rec):
    from streamlearn.wire.decode import _from_fastavro_record, _read_record_fast
    value = serde.encode(rec, "training_record")
    fast = _read_record_fast(value)
    ref = _from_fastavro_record(serde.decode(value)[1])
    for k in ("features", "indices", "values", "n_features", "key", "n_values"):
        assert fast[k] == ref[k], k
    for k in ("label", "weight"):
        assert fast[k] == ref[k] or (fast[k] != fast[k] and ref[k] != ref[k])


# -- random bytes never raise -----------------------------------------------------------------
PREFIXES = [b"", b"\xc3\x01", b"\xc3\x01" + serde.schema_fingerprint("training_record"),
            b"\xc3\x01" + serde.schema_fingerprint("training_batch")]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=200)), max_size=8),
       st.booleans(), st.booleans(), st.integers(0, 8))
def test_random_bytes_only_reject(parts, accepts_sparse, needs_label, n_features):
    values = [p + b for p, b in parts]
    res = decode_messages(values, n_features, accepts_sparse, needs_label)
    assert len(res.accepted) + len(res.rejected) == len(values)
    assert sorted(res.accepted + [r.index for r in res.rejected]) == list(range(len(values)))
    assert all(isinstance(r.reason, str) and r.reason and r.n_records >= 0 for r in res.rejected)
    X = res.batch.dense()
    assert X.shape[1] == n_features and np.isfinite(X).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20), st.integers(0, 30), st.data())
def test_mutated_valid_messages_only_reject(n, pos_seed, data):
    X = rng_X(n)
    value = bytearray(encode_training_batch(X, np.arange(n, dtype=float), keys=[str(i) for i in range(n)])
                      if data.draw(st.booleans()) else encode_training_record(X[0], label=1.0, key="k"))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(value) - 1))
        value[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(value)))
    res = decode_messages([bytes(value[:cut]) if pos_seed % 3 == 0 else bytes(value)], D, True, False)
    assert len(res.accepted) + len(res.rejected) == 1


def test_messages_of_a_decoded_window_equal_decoding_them_alone():
    """A sync worker decodes its window once and cuts it into shares (``messages(a, b)``)."""
    X = rng_X(12, seed=4)
    msgs = [encode_training_batch(X[:3], np.arange(3.0)),
            *[encode_training_record(X[i], label=float(i)) for i in range(3, 7)],
            encode_training_record(np.full(D, np.nan, np.float32), label=1.0),  # rejected: not finite
            encode_training_record(X[7], label=7.0),
            encode_training_batch(X[8:12], np.arange(8.0, 12.0))]
    window = one(msgs, needs_label=True)
    for a, b in [(0, 1), (0, 3), (1, 5), (3, 7), (5, 8), (6, 8), (2, 8)]:
        part, alone = window.messages(a, b), one(msgs[a:b], needs_label=True)
        assert part.n_records == alone.n_records and part.accepted == alone.accepted
        assert [(r.index, r.reason) for r in part.rejected] == [(r.index, r.reason) for r in alone.rejected]
        assert np.array_equal(part.row_messages(), alone.row_messages())
        if alone.n_records:
            assert np.array_equal(part.batch.X, alone.batch.X) and np.array_equal(part.batch.y, alone.batch.y)
