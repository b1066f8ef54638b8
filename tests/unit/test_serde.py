"""Avro single-object encoding, fingerprints, registry and schema evolution."""
from __future__ import annotations

import copy
import json

import pytest

from streamlearn.wire import serde
from streamlearn.wire.serde import SCHEMA_DIR, SchemaRegistry, SerdeError, UnknownSchemaError


def crc64_avro(data: bytes) -> int:
    """The Avro spec's reference CRC-64-AVRO, written out independently of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


def test_fingerprint_matches_avro_spec_test_vector():
    # From Avro's schema-tests.txt: "null" -> 7195948357588979594
    assert int.from_bytes(serde.fingerprint('"null"'), "little") == 7195948357588979594
    assert serde.fingerprint_hex(serde.fingerprint("null")) == "0x63dd24e7cc258f8a"


@pytest.mark.parametrize("name", ["training_record", "training_batch"])
def test_fingerprint_matches_reference_crc(name):
    entry = serde.REGISTRY.reader(name)
    assert int.from_bytes(entry.fingerprint, "little") == crc64_avro(entry.canonical.encode())


def test_single_object_header():
    b = serde.encode({"features": [1.0, 2.0]}, "training_record")
    assert b[:2] == b"\xc3\x01"
    assert b[2:10] == serde.schema_fingerprint("training_record")


def test_round_trip_dense_and_sparse_record():
    rec = {"features": [1.0, 2.5], "label": 1.0, "weight": 2.0, "key": "k", "event_time": None}
    name, out = serde.decode(serde.encode(rec, "training_record"))
    assert name == "training_record"
    assert out["features"] == [1.0, 2.5] and out["label"] == 1.0 and out["weight"] == 2.0 and out["key"] == "k"
    rec = {"indices": [3, 7], "values": [0.5, -1.0], "n_features": 10}
    _, out = serde.decode(serde.encode(rec, "streamlearn.TrainingRecord"))
    assert out["indices"] == [3, 7] and out["values"] == [0.5, -1.0] and out["n_features"] == 10
    assert out["features"] is None and out["label"] is None and out["weight"] == 1.0


def test_round_trip_batch():
    rec = {"n_rows": 1, "n_features": 2, "dense": b"\x00" * 8, "labels": b"\x00" * 8}
    name, out = serde.decode(serde.encode(rec, "training_batch"))
    assert name == "training_batch" and out["dense"] == b"\x00" * 8 and out["weights"] is None


def test_decode_errors():
    with pytest.raises(SerdeError, match="single-object"):
        serde.decode(b"garbage!!!!!")
    with pytest.raises(SerdeError, match="truncated"):
        serde.decode(b"\xc3\x01\x00")
    with pytest.raises(UnknownSchemaError, match="unknown schema fingerprint 0x"):
        serde.decode(b"\xc3\x01" + b"\x13\x37" * 4 + b"\x00")
    good = serde.encode({"features": [1.0]}, "training_record")
    with pytest.raises(SerdeError, match="malformed"):
        serde.decode(good[:-3])
    with pytest.raises(SerdeError, match="trailing"):
        serde.decode(good + b"\x00")
    with pytest.raises(SerdeError, match="does not match"):
        serde.encode({"features": "nope"}, "training_record")
    with pytest.raises(SerdeError, match="unknown schema name"):
        serde.encode({}, "no_such_schema")


def _record_schema():
    return json.loads((SCHEMA_DIR / "training_record.avsc").read_text())


def test_schema_evolution_old_writer_new_reader():
    """An old writer (no 'weight', no 'event_time') read by the current schema, and a message
    of the current schema read by a newer reader with an added defaulted field."""
    reg = SchemaRegistry()
    old = _record_schema()
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("weight", "event_time")]
    reg.register(old, name="training_record")  # first: current for now
    old_msg = reg.encode({"features": [1.0, 2.0], "label": 3.0}, "training_record")
    reg.register(_record_schema(), name="training_record", make_current=True)
    name, out = reg.decode(old_msg)
    assert name == "training_record"
    assert out["features"] == [1.0, 2.0] and out["label"] == 3.0
    assert out["weight"] == 1.0 and out["event_time"] is None  # defaults filled in

    current_msg = reg.encode({"features": [4.0]}, "training_record")
    newer = copy.deepcopy(_record_schema())
    newer["fields"].append({"name": "source", "type": "string", "default": "unknown"})
    fp = reg.register(newer, make_current=True)  # name found from the full Avro name
    assert fp != reg.by_fingerprint[current_msg[2:10]].fingerprint
    _, out = reg.decode(current_msg)
    assert out["source"] == "unknown" and out["features"] == [4.0]
    _, out = reg.decode(reg.encode({"features": [5.0], "source": "sensor"}, "streamlearn.TrainingRecord"))
    assert out["source"] == "sensor"


def test_process_registry_register():
    newer = _record_schema()
    newer["fields"].append({"name": "extra_field_for_test", "type": ["null", "long"], "default": None})
    fp = serde.register(newer)  # not made current: the project's schema stays the reader
    assert serde.REGISTRY.by_fingerprint[fp].name == "training_record"
    msg = b"\xc3\x01" + fp + _body_with_extra()
    name, out = serde.decode(msg)
    assert name == "training_record" and "extra_field_for_test" not in out and out["features"] == [1.0]


def _body_with_extra() -> bytes:
    import io

    import fastavro

    s = _record_schema()
    s["fields"].append({"name": "extra_field_for_test", "type": ["null", "long"], "default": None})
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(s), {"features": [1.0], "extra_field_for_test": 5})
    return buf.getvalue()


def test_schemas_have_defaults_on_optional_fields():
    for path in SCHEMA_DIR.glob("training_*.avsc"):
        schema = json.loads(path.read_text())
        for f in schema["fields"]:
            if isinstance(f["type"], list) and "null" in f["type"]:
                assert "default" in f and f["default"] is None, (path.name, f["name"])
