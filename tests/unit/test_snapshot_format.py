"""The snapshot format: exact round trips, integrity, authenticity, and refusing anything
that could run code or allocate from a lie."""
from __future__ import annotations

import hashlib
import io
import json
import tracemalloc

import fastavro
import numpy as np
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamlearn.algorithms import register
from streamlearn.algorithms.base import Algorithm, Model
from streamlearn.algorithms.median import MedianModel
from streamlearn.snapshots import format as fmt
from streamlearn.snapshots.format import (
    KEY_ENV,
    Snapshot,
    STATE_OF,
    SnapshotError,
    attach_state,
    decode_snapshot,
    encode_detached,
    encode_snapshot,
    load_model,
    snapshot_of,
)
from streamlearn.wire.serde import SCHEMA_DIR


class _MatrixAlgorithm(Algorithm):
    name = "_test_matrix"


class MatrixModel(Model):
    """A model with several 2-D and odd arrays (every whitelisted dtype)."""

    algorithm = "_test_matrix"

    def __init__(self, arrays: dict[str, np.ndarray], attrs: dict):
        self.arrays, self.attrs = arrays, attrs

    def evaluate(self, batch):
        return np.asarray(batch.X) @ self.arrays["W"]

    def to_arrays(self):
        return dict(self.arrays), dict(self.attrs)

    @classmethod
    def from_arrays(cls, arrays, attrs):
        return cls(dict(arrays), dict(attrs))


register(_MatrixAlgorithm, MatrixModel)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def matrix_model(seed: int = 0) -> MatrixModel:
    rng = np.random.default_rng(seed)
    return MatrixModel(
        {
            "W": rng.standard_normal((7, 3)).astype(np.float32),
            "b": rng.standard_normal(3),
            "counts": rng.integers(-(2**40), 2**40, size=(2, 5), dtype=np.int64),
            "ids": np.arange(12, dtype=np.int32).reshape(3, 4),
            "mask": rng.random((4, 2)) > 0.5,
            "bytes": rng.integers(0, 256, size=9, dtype=np.uint8),
            "scalar": np.array(3.25),
            "empty": np.zeros((0, 5), dtype=np.float64),
            "big_endian": np.arange(4, dtype=">f8"),
            "fortran": np.asfortranarray(rng.standard_normal((3, 2))),
        },
        {"k": 3, "labels": ["a", "b"], "nested": {"x": 1.5}},
    )


def meta(**extra):
    return {"job": "j1", "version": 2, "params": {"lr": 0.1}, "offsets": {"0": 5, "1": 9}, "records_applied": 14, **extra}


# -- round trips ---------------------------------------------------------------------------


def test_median_round_trip_exact():
    model = MedianModel(1.2345678901234567, 42)
    snap = decode_snapshot(encode_snapshot(model, meta(parent={"job": "j1", "version": 1}, metrics={"mae": 0.5})))
    assert snap.arrays["median"].tobytes() == np.array([model.median]).tobytes()
    md = snap.metadata
    assert md["algorithm"] == "median" and md["model_attrs"] == {"n": 42}
    assert md["job"] == "j1" and md["version"] == 2 and md["offsets"] == {"0": 5, "1": 9}
    assert md["records_applied"] == 14 and md["params"] == {"lr": 0.1}
    assert md["parent"] == {"job": "j1", "version": 1} and md["metrics"] == {"mae": 0.5}
    assert md["format_version"] == fmt.FORMAT_VERSION
    assert set(md["library_versions"]) == {"streamlearn", "numpy", "python"}
    assert md["created_at"].endswith("Z")
    loaded = load_model(snap)
    assert isinstance(loaded, MedianModel) and loaded.median == model.median and loaded.n == 42


def test_matrix_round_trip_exact_arrays_and_metadata():
    model = matrix_model()
    expected = snapshot_of(model, meta())
    snap = decode_snapshot(encode_snapshot(model, dict(meta(), created_at=expected.metadata["created_at"])))
    assert snap.metadata == expected.metadata
    assert snap.metadata["model_attrs"] == {"k": 3, "labels": ["a", "b"], "nested": {"x": 1.5}}
    assert set(snap.arrays) == set(model.arrays)
    for name, original in model.arrays.items():
        got = snap.arrays[name]
        assert got.shape == original.shape, name
        assert got.dtype == original.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(got, original, err_msg=name)
        assert not got.flags.writeable, name
    with pytest.raises(ValueError):
        snap.arrays["W"][0, 0] = 1.0
    loaded = load_model(snap)
    X = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(loaded.evaluate(type("B", (), {"X": X})()), model.evaluate(type("B", (), {"X": X})()))


def test_encoding_is_deterministic_and_framed():
    model = matrix_model()
    md = meta(created_at="2024-01-01T00:00:00Z")
    a, b = encode_snapshot(model, md), encode_snapshot(model, md)
    assert a == b
    assert a[:2] == b"\xc3\x01"
    schema = fastavro.parse_schema(json.load(open(SCHEMA_DIR / "snapshot.avsc")))
    assert a[2:10] == bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@pytest.mark.parametrize("signed", [False, True])
def test_the_written_body_is_fastavros_encoding_of_the_same_record(monkeypatch, signed):
    """The writer joins the arrays' own buffers instead of calling fastavro (copies): its
    bytes must be exactly what fastavro writes for the record (every dtype, 0-d, empty,
    non-native and Fortran-order arrays, a training state, a signature or none)."""
    if signed:
        monkeypatch.setenv(KEY_ENV, "k" * 32)
    model = matrix_model()
    state = {"acc": np.arange(6.0).reshape(3, 2), "n": np.array(7.0)}
    data = encode_snapshot(model, meta(created_at="2024-01-01T00:00:00Z"), state=state)
    record = fastavro.schemaless_reader(io.BytesIO(data[10:]), fmt._WRITER.schema)
    assert (record["signature"] is not None) == signed and record["state"]
    out = io.BytesIO()
    out.write(data[:10])
    fastavro.schemaless_writer(out, fmt._WRITER.schema, record)
    assert out.getvalue() == data


# Written by format version 1 (MedianModel(2.5, 7), unsigned). Every future version of this
# code must still load it: old snapshots stay loadable (GluonTS-style version stamp).
GOLDEN_V1 = bytes.fromhex(
    "c301e77d728d37f4194402d8047b22616c676f726974686d223a226d656469616e222c22637265617465645f6174223a22"
    "323032342d30312d30315430303a30303a30302e3030305a222c22666f726d61745f76657273696f6e223a312c226a6f62"
    "223a22676f6c64656e222c226c6962726172795f76657273696f6e73223a7b226e756d7079223a22312e32362e34222c22"
    "707974686f6e223a22332e31312e37222c2273747265616d6c6561726e223a22302e312e30227d2c226d6f64656c5f6174"
    "747273223a7b226e223a377d2c226f666673657473223a7b2230223a31302c2231223a31327d2c22706172616d73223a7b"
    "226c6561726e696e675f72617465223a312e307d2c22706172656e74223a6e756c6c2c227265636f7264735f6170706c69"
    "6564223a32322c2276657273696f6e223a337d020c6d656469616e020202001000000000000004400080013662323363363"
    "630336461636135323131383938616262356438333536313762303631386134313635633031633966396663376463333562"
    "343337326532326500"
)


def test_training_state_round_trips_and_is_covered_by_the_checksum():
    state = {"w": np.arange(6.0).reshape(2, 3), "n": np.array(5.0)}
    data = encode_snapshot(MedianModel(1.0, 1), meta(), state=state)
    snap = decode_snapshot(data)
    assert snap.metadata["format_version"] == fmt.FORMAT_VERSION == 2
    assert sorted(snap.state) == ["n", "w"]
    np.testing.assert_array_equal(snap.state["w"], state["w"])
    assert snap.state["n"].shape == () and float(snap.state["n"]) == 5.0
    assert not snap.state["w"].flags.writeable
    at = data.find(state["w"].tobytes())
    forged = bytearray(data)
    forged[at + 3] ^= 0x01
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        decode_snapshot(bytes(forged))


def test_the_model_and_its_training_state_encode_apart_and_join_only_as_they_were_encoded(monkeypatch):
    """The topic's snapshot is the model alone; the training state is a snapshot of its own,
    signed the same way and bound to the model's bytes: attached to them it gives back the
    state, attached to another version's model it is refused, and it never loads as a model."""
    monkeypatch.setenv(KEY_ENV, "s3cret")
    state = {"w": np.arange(6.0).reshape(2, 3), "n": np.array(5.0)}
    snapshots = {v: snapshot_of(MedianModel(float(v), v), meta(job="job-a", version=v), state) for v in (3, 4)}
    encoded = {v: encode_detached(s) for v, s in snapshots.items()}
    model = decode_snapshot(encoded[3].model, job="job-a")
    assert model.state == {} and model.metadata == snapshots[3].metadata and load_model(model).median == 3.0
    assert encoded[3].state is not None and state["w"].tobytes() not in encoded[3].model
    for enc in encoded.values():  # taken beside the checksums, in a thread
        assert enc.sha256 == hashlib.sha256(enc.model).hexdigest()
    kept = decode_snapshot(encoded[3].state, job="job-a")
    assert kept.arrays == {} and kept.metadata[STATE_OF] == encoded[3].sha256
    joined = attach_state(model, encoded[3].sha256, kept)
    assert joined.metadata == model.metadata and sorted(joined.state) == ["n", "w"]
    np.testing.assert_array_equal(joined.state["w"], state["w"])
    with pytest.raises(SnapshotError, match="belongs to another snapshot"):
        attach_state(model, encoded[3].sha256, decode_snapshot(encoded[4].state))
    with pytest.raises(SnapshotError, match="belongs to another snapshot"):
        attach_state(decode_snapshot(encoded[4].model), encoded[4].sha256, kept)
    with pytest.raises(SnapshotError, match="is a training state, not a model"):
        load_model(kept)
    with pytest.raises(SnapshotError, match="unsigned"):  # signed like the model: an unsigned one is refused
        decode_snapshot(encode_detached(snapshots[3], key=None).state)
    assert encode_detached(snapshot_of(MedianModel(1.0, 1), meta())).state is None  # no state, nothing apart


def test_golden_v1_snapshot_still_loads():
    snap = decode_snapshot(GOLDEN_V1)
    assert snap.metadata["format_version"] == 1 and snap.metadata["version"] == 3
    assert snap.metadata["offsets"] == {"0": 10, "1": 12}
    model = load_model(snap)
    assert (model.median, model.n) == (2.5, 7)
    assert 1 in fmt.SUPPORTED_FORMAT_VERSIONS and snap.state == {}


def test_unknown_fingerprint_is_rejected_with_versions_named():
    data = bytearray(encode_snapshot(MedianModel(1.0, 1), meta()))
    data[2:10] = b"\x00" * 8
    with pytest.raises(SnapshotError, match="unknown snapshot schema fingerprint"):
        decode_snapshot(bytes(data))


# -- integrity ---------------------------------------------------------------------------


def test_tampered_data_byte_is_a_checksum_error():
    model = matrix_model()
    data = bytearray(encode_snapshot(model, meta()))
    at = bytes(data).find(model.arrays["W"].tobytes())
    assert at > 0
    data[at + 5] ^= 0x01
    with pytest.raises(SnapshotError, match="checksum mismatch: snapshot is corrupted or tampered"):
        decode_snapshot(bytes(data))


def test_tampered_metadata_is_rejected():
    data = encode_snapshot(MedianModel(1.0, 1), meta(job="aaa"))
    forged = data.replace(b'"job":"aaa"', b'"job":"bbb"')
    assert forged != data and len(forged) == len(data)
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        decode_snapshot(forged)
    forged = data.replace(b'"n":1', b'"n":9')
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        decode_snapshot(forged)


def test_truncated_and_trailing_bytes_are_rejected():
    data = encode_snapshot(matrix_model(), meta())
    for cut in (0, 1, 9, 10, 11, len(data) // 2, len(data) - 1):
        with pytest.raises(SnapshotError):
            decode_snapshot(data[:cut])
    with pytest.raises(SnapshotError, match="trailing"):
        decode_snapshot(data + b"\x00")


# -- authenticity ------------------------------------------------------------------------


def _body(data: bytes) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(data[10:]), fmt._WRITER.schema)


def _frame(record: dict, schema=None, fp: bytes | None = None) -> bytes:
    out = io.BytesIO()
    out.write(b"\xc3\x01" + (fp if fp is not None else fmt._WRITER.fingerprint))
    fastavro.schemaless_writer(out, schema or fmt._WRITER.schema, record)
    return out.getvalue()


def _rechecksum(record: dict) -> dict:
    record["checksum"], _ = fmt._digests(record["metadata_json"], record["arrays"], record.get("state"), None)
    return record


def test_signed_snapshot_loads_with_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret")
    data = encode_snapshot(matrix_model(), meta())
    assert _body(data)["signature"] is not None
    snap = decode_snapshot(data)  # key from the environment
    assert snap.metadata["job"] == "j1"
    assert decode_snapshot(data, key=b"s3cret").metadata == snap.metadata
    with pytest.raises(SnapshotError, match="bad signature"):
        decode_snapshot(data, key=b"other key")
    decode_snapshot(data, key=None)  # authentication explicitly off: checksum still verified


def test_tampered_and_rechecksummed_is_rejected_by_signature(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret")
    data = encode_snapshot(matrix_model(), meta())
    record = _body(data)
    w = record["arrays"][[a["name"] for a in record["arrays"]].index("W")]
    w["data"] = np.zeros(21, np.float32).tobytes()
    record["metadata_json"] = record["metadata_json"].replace('"job":"j1"', '"job":"evil"')
    forged = _frame(_rechecksum(record))
    decode_snapshot(forged, key=None)  # the checksum alone is satisfied ...
    with pytest.raises(SnapshotError, match="bad signature"):
        decode_snapshot(forged)  # ... the signature is not


def test_unsigned_is_rejected_when_key_is_set(monkeypatch):
    data = encode_snapshot(MedianModel(1.0, 1), meta())
    assert _body(data)["signature"] is None
    monkeypatch.setenv(KEY_ENV, "s3cret")
    with pytest.raises(SnapshotError, match=f"snapshot is unsigned but {KEY_ENV} is set"):
        decode_snapshot(data)


# -- no code, no allocation from a lie ---------------------------------------------------


def test_absurd_shape_claim_is_rejected_without_allocation():
    record = _body(encode_snapshot(MedianModel(1.0, 1), meta()))
    record["arrays"][0]["shape"] = [2**40, 2**40, 2**40]
    forged = _frame(_rechecksum(record))
    tracemalloc.start()
    try:
        with pytest.raises(SnapshotError, match="needs .* bytes but the snapshot holds 8"):
            decode_snapshot(forged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    record["arrays"][0]["shape"] = [-1]
    with pytest.raises(SnapshotError, match="bad dimension"):
        decode_snapshot(_frame(_rechecksum(record)))
    record["arrays"][0]["shape"] = [1] * 33
    with pytest.raises(SnapshotError, match="32 dims"):
        decode_snapshot(_frame(_rechecksum(record)))


def test_huge_counts_are_rejected_before_the_parser_builds_lists():
    """A 20 MB message claiming 20M dims (or arrays) must not become a 20M-element list."""
    n = 20_000_000
    zigzag_n = bytes([0x80 | ((2 * n) >> 7 * i) & 0x7F for i in range(3)] + [(2 * n) >> 21])
    header = b"\xc3\x01" + fmt._WRITER.fingerprint
    dims = header + b"\x02\x00" + b"\x02" + b"\x02a\x00" + zigzag_n + b"\x00" * n + b"\x00\x00\x00\x00\x00"
    arrays = header + b"\x02\x00" + zigzag_n + b"\x02a\x00\x00\x00" * (n // 4)
    for data in (dims, arrays):
        tracemalloc.start()
        try:
            with pytest.raises(SnapshotError, match="more than"):
                decode_snapshot(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 << 20


def _loose_schema(dtype_type):
    raw = json.load(open(SCHEMA_DIR / "snapshot.avsc"))
    raw["fields"][2]["type"]["items"]["fields"][1]["type"] = dtype_type
    return fastavro.parse_schema(raw)


def test_object_dtype_is_rejected():
    with pytest.raises(SnapshotError, match="dtype object"):
        encode_snapshot(MatrixModel({"o": np.array([{"x": 1}], dtype=object)}, {}), meta())
    record = _body(encode_snapshot(MedianModel(1.0, 1), meta()))
    record["arrays"][0]["dtype"] = "object"
    # An enum widened with 'object' but framed as the real schema: index out of range.
    widened = _loose_schema({"type": "enum", "name": "DType", "symbols": list(fmt.DTYPES) + ["object"]})
    with pytest.raises(SnapshotError):
        decode_snapshot(_frame(_rechecksum(record), widened))
    # A schema with dtype as a free string: its own fingerprint is unknown ...
    stringly = _loose_schema("string")
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(stringly), "CRC-64-AVRO"))
    with pytest.raises(SnapshotError, match="unknown snapshot schema fingerprint"):
        decode_snapshot(_frame(_rechecksum(record), stringly, fp))
    # ... and framed with the real fingerprint it does not parse as a snapshot.
    with pytest.raises(SnapshotError):
        decode_snapshot(_frame(_rechecksum(record), stringly))


def test_whitelist_is_checked_after_parsing_too(monkeypatch):
    """Defence in depth: even if a reader yielded a foreign dtype, it is refused."""
    data = encode_snapshot(MedianModel(1.0, 1), meta())
    real = fmt._READERS[fmt._WRITER.fingerprint]

    def upgrade(record):
        record["arrays"][0]["dtype"] = "object"
        return record

    monkeypatch.setitem(fmt._READERS, real.fingerprint, fmt._Reader(real.format_version, real.schema, real.fingerprint, upgrade))
    with pytest.raises(SnapshotError, match="'object' is not allowed"):
        decode_snapshot(data)


def test_bool_arrays_hold_only_zero_and_one():
    record = _body(encode_snapshot(MatrixModel({"m": np.array([True, False])}, {}), meta()))
    record["arrays"][0]["data"] = b"\x01\x07"
    with pytest.raises(SnapshotError, match="bool"):
        decode_snapshot(_frame(_rechecksum(record)))


def test_no_pickle_anywhere_in_the_module():
    src = open(fmt.__file__).read()
    assert "pickle" not in src.replace("no pickle", "").replace("never uses pickle", "")
    assert "allow_pickle" not in src and "np.load(" not in src and "eval(" not in src


# -- fuzz ----------------------------------------------------------------------------------

_VALID = encode_snapshot(matrix_model(), meta())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_only_raise_snapshot_error(data):
    for candidate in (data, b"\xc3\x01" + data, _VALID[:10] + data):
        try:
            decode_snapshot(candidate)
        except SnapshotError:
            pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(1, 255)), min_size=1, max_size=4),
       st.integers(0, len(_VALID)))
def test_fuzz_mutated_snapshots_only_raise_snapshot_error(flips, cut):
    data = bytearray(_VALID)
    for at, xor in flips:
        data[at] ^= xor
    for candidate in (bytes(data), bytes(data[:cut])):
        try:
            snap = decode_snapshot(candidate)
        except SnapshotError:
            continue
        assert isinstance(snap, Snapshot)  # a flip may land in an unchecked spot only if harmless
