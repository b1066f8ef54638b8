"""Schema evolution: the resolution-rule compatibility check, and evolved writers decoded by
the worker's decoder (messages written by fastavro and by Apache's ``avro`` package)."""
from __future__ import annotations

import copy
import io
import json
from datetime import datetime, timezone

import fastavro
import numpy as np
import pytest

from streamlearn.wire import serde
from streamlearn.wire.decode import decode_messages
from streamlearn.wire.schema_compat import incompatibilities
from streamlearn.wire.schema_store import SchemaRegistrationError, check_compatible
from streamlearn.wire.serde import SCHEMA_DIR, SchemaRegistry, load_project_schemas

D = 3


def project(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())


def evolved(name: str, drop=(), add=(), retype=None) -> dict:
    s = copy.deepcopy(project(name))
    s["fields"] = [f for f in s["fields"] if f["name"] not in drop]
    for f in s["fields"]:
        if retype and f["name"] in retype:
            f["type"] = retype[f["name"]]
            f.pop("default", None) if not isinstance(f["type"], list) else f.update(default=None)
    s["fields"] += list(add)
    return s


SOURCE = {"name": "source", "type": "string", "default": "unknown"}

# -- the compatibility check -----------------------------------------------------------------
COMPATIBLE = {
    "added field with default": evolved("training_record", add=[SOURCE]),
    "added field without default (the reader skips it)": evolved(
        "training_record", add=[{"name": "region", "type": "int"}]),
    "older writer without key and event_time": evolved("training_record", drop=("key", "event_time")),
    "weight written as int": evolved("training_record", retype={"weight": "int"}),
    "weight written as float": evolved("training_record", retype={"weight": "float"}),
    "label written as float": evolved("training_record", retype={"label": ["null", "float"]}),
    "n_features written as int": evolved("training_record", retype={"n_features": ["null", "int"]}),
    "features written as int": evolved("training_record",
                                       retype={"features": ["null", {"type": "array", "items": "int"}]}),
    "label never null": evolved("training_record", retype={"label": "double"}),
    "batch: n_rows written as int": evolved("training_batch", retype={"n_rows": "int"}),
    "batch: dense written as string": evolved("training_batch", retype={"dense": ["null", "string"]}),
}

INCOMPATIBLE = {
    "label became a string": (evolved("training_record", retype={"label": ["null", "string"]}), "field 'label'"),
    "weight became a boolean": (evolved("training_record", retype={"weight": "boolean"}), "field 'weight'"),
    "batch: n_rows as double (not a promotion to long)": (evolved("training_batch", retype={"n_rows": "double"}),
                                                          "field 'n_rows'"),
    "batch: n_rows removed (the reader has no default)": (evolved("training_batch", drop=("n_rows",)),
                                                          "field 'n_rows'"),
    "features array of strings": (evolved("training_record",
                                          retype={"features": ["null", {"type": "array", "items": "string"}]}),
                                  "field 'features'"),
}


@pytest.mark.parametrize("case", sorted(COMPATIBLE))
def test_compatible_schemas_are_accepted(case):
    assert check_compatible(COMPATIBLE[case]) in ("training_record", "training_batch")


@pytest.mark.parametrize("case", sorted(INCOMPATIBLE))
def test_incompatible_schemas_are_refused_with_the_field(case):
    schema, where = INCOMPATIBLE[case]
    with pytest.raises(SchemaRegistrationError) as info:
        check_compatible(schema)
    message = str(info.value)
    assert "\n" not in message and "incompatible with the reader schema streamlearn." in message
    assert where in message


def test_unknown_record_type_and_bad_json_are_refused():
    with pytest.raises(SchemaRegistrationError, match="not one of the project's record types"):
        check_compatible({"type": "record", "name": "Click", "namespace": "acme", "fields": []})
    with pytest.raises(SchemaRegistrationError, match="not a JSON schema"):
        check_compatible("{nope")
    with pytest.raises(SchemaRegistrationError, match="not a valid Avro schema"):
        check_compatible({"type": "record", "name": "streamlearn.TrainingRecord", "fields": [{"name": "a"}]})


def test_resolution_rules_for_named_types():
    color = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
    more = dict(color, symbols=["RED", "GREEN", "BLUE"])
    assert incompatibilities(color, more) == []
    assert "BLUE" in incompatibilities(more, color)[0]
    assert incompatibilities(more, dict(color, default="RED")) == []
    fixed = {"type": "fixed", "name": "Id", "size": 16}
    assert incompatibilities(fixed, fixed) == []
    assert incompatibilities(fixed, dict(fixed, size=8))
    assert incompatibilities(fixed, dict(fixed, name="Other"))
    rec = {"type": "record", "name": "A", "fields": [{"name": "x", "type": "int"}]}
    assert incompatibilities(rec, dict(rec, name="B"))
    assert incompatibilities(rec, dict(rec, name="B", aliases=["A"])) == []
    renamed = {"type": "record", "name": "A", "fields": [{"name": "y", "type": "long", "aliases": ["x"]}]}
    assert incompatibilities(rec, renamed) == []
    assert incompatibilities({"type": "map", "values": "int"}, {"type": "map", "values": "double"}) == []
    assert incompatibilities({"type": "map", "values": "double"}, {"type": "map", "values": "int"})
    # a recursive type terminates
    node = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}
    assert incompatibilities(fastavro.parse_schema(node), fastavro.parse_schema(copy.deepcopy(node))) == []


def test_every_project_schema_reads_itself():
    for path in SCHEMA_DIR.glob("*.avsc"):
        assert check_compatible(json.loads(path.read_text()))


# -- evolved writers decode, through the generic resolving path ---------------------------------
def fresh_registry() -> SchemaRegistry:
    reg = SchemaRegistry()
    load_project_schemas(reg)
    return reg


def fastavro_message(schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return serde.MAGIC + serde.fingerprint(schema) + buf.getvalue()


def avro_message(schema: dict, record: dict) -> bytes:
    """Written by Apache's own Python client (a different implementation than fastavro)."""
    import avro.io
    import avro.schema

    buf = io.BytesIO()
    avro.io.DatumWriter(avro.schema.parse(json.dumps(schema))).write(record, avro.io.BinaryEncoder(buf))
    return serde.MAGIC + serde.fingerprint(schema) + buf.getvalue()


RECORD_CASES = [
    ("added field with default", evolved("training_record", add=[SOURCE]),
     {"features": [1.0, 2.0, 3.0], "label": 1.0, "weight": 2.0, "key": "a",
      "event_time": datetime(2024, 1, 1, tzinfo=timezone.utc), "source": "s1"},
     ([1, 2, 3], 1.0, 2.0)),
    ("older writer without key and event_time", evolved("training_record", drop=("key", "event_time")),
     {"features": [4.0, 5.0, 6.0], "label": 0.0, "weight": 1.0}, ([4, 5, 6], 0.0, 1.0)),
    ("removed weight (the reader's default 1.0)", evolved("training_record", drop=("weight",)),
     {"features": [1.0, 1.0, 1.0], "label": 1.0}, ([1, 1, 1], 1.0, 1.0)),
    ("int -> double weight, float -> double label, int -> float features",
     evolved("training_record", retype={"weight": "int", "label": ["null", "float"],
                                        "features": ["null", {"type": "array", "items": "int"}]}),
     {"features": [7, 8, 9], "label": 0.5, "weight": 3}, ([7, 8, 9], 0.5, 3.0)),
]


@pytest.mark.parametrize("writer_client", [fastavro_message, avro_message], ids=["fastavro", "apache-avro"])
@pytest.mark.parametrize("case", RECORD_CASES, ids=[c[0] for c in RECORD_CASES])
def test_evolved_training_record_decodes(case, writer_client):
    _, schema, record, (x, y, w) = case
    reg = fresh_registry()
    value = writer_client(schema, record)
    res = decode_messages([value], D, False, True, registry=reg)
    assert res.rejected[0].reason.startswith("unknown schema fingerprint 0x")  # not registered yet
    reg.register(schema)
    res = decode_messages([value, value], D, False, True, registry=reg)
    assert not res.rejected and res.n_records == 2
    b = res.batch
    assert np.array_equal(b.X, [x, x]) and list(b.y) == [y, y] and (b.w is None and w == 1.0 or list(b.w) == [w, w])


@pytest.mark.parametrize("writer_client", [fastavro_message, avro_message], ids=["fastavro", "apache-avro"])
def test_evolved_training_batch_decodes(writer_client):
    schema = evolved("training_batch", drop=("keys", "event_time"), retype={"n_rows": "int", "n_features": "int"},
                     add=[{"name": "producer", "type": "string", "default": ""}])
    X = np.arange(6, dtype="<f4").reshape(2, D)
    rec = {"n_rows": 2, "n_features": D, "dense": X.tobytes(), "indptr": None, "indices": None, "values": None,
           "labels": np.array([0.0, 1.0], "<f8").tobytes(), "weights": None, "producer": "p"}
    reg = fresh_registry()
    reg.register(schema)
    res = decode_messages([writer_client(schema, rec)], D, False, True, registry=reg)
    assert not res.rejected and np.array_equal(res.batch.X, X) and list(res.batch.y) == [0.0, 1.0]


def test_project_schema_keeps_its_fast_reader():
    """Registering evolved writers leaves the project's own entries (the hand-written readers)."""
    reg = fresh_registry()
    before = reg.by_fingerprint[serde.schema_fingerprint("training_record")]
    reg.register(evolved("training_record", add=[SOURCE]))
    assert reg.current["training_record"] is before
