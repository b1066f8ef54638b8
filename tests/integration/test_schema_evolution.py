"""Schema evolution across processes: a writer process registers evolved schemas and produces
with them (plain fastavro + confluent-kafka, none of our encoders); workers started
separately, without those schemas, learn them from the shared registry and apply every
record. Also: an incompatible schema is refused at registration; an unregistered
fingerprint is still dead-lettered; the Confluent wire format against a real
Confluent-compatible registry (Apicurio Registry)."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from streamlearn.runtime.jobs import create_job
from streamlearn.statestore.redis_state import RedisState
from streamlearn.wire.schema_store import SCHEMAS_KEY
from streamlearn.wire.serde import SCHEMA_DIR
from streamlearn.streams.topics import ensure_topic
from tests.integration.procs import cli, start_worker, stop_all, wait_status
from tests.integration.test_dead_letters import read_dlq

pytestmark = pytest.mark.integration

# The writer: its own framing and fingerprints (fastavro), its own producer (confluent-kafka).
# argv: topic, then "single:<schema.avsc>:<first id>:<count>" or "confluent:<schema id>:<schema.avsc>:<id>:<n>".
WRITER = r"""
import io, json, os, sys
import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from confluent_kafka import Producer

topic, *parts = sys.argv[1:]
producer = Producer({"bootstrap.servers": os.environ["STREAMLEARN_KAFKA"], "enable.idempotence": True})
for part in parts:
    kind, *rest = part.split(":")
    if kind == "single":
        path, first, count = rest
        schema = fastavro.parse_schema(json.load(open(path)))
        header = b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    else:
        schema_id, path, first, count = rest
        schema = fastavro.parse_schema(json.load(open(path)))
        header = b"\x00" + int(schema_id).to_bytes(4, "big")
    names = {f["name"] for f in schema["fields"]}
    for i in range(int(first), int(first) + int(count)):
        record = {"features": [float(i), float(i % 7)], "label": 1.0, "weight": 1}
        if "string" in next(f["type"] for f in schema["fields"] if f["name"] == "label"):
            record["label"] = "1.0"  # the incompatible writer
        if "source" in names:
            record["source"] = "sensor-%d" % (i % 3)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        producer.produce(topic, header + buf.getvalue())
if producer.flush(30):
    sys.exit("not all records were delivered")
"""


def project_record_schema() -> dict:
    return json.loads((SCHEMA_DIR / "training_record.avsc").read_text())


def with_added_field(name: str, default) -> dict:
    s = project_record_schema()
    s["fields"].append({"name": name, "type": "string", "default": default})
    return s


def older_writer() -> dict:
    """A writer from before ``key``/``event_time`` existed, whose weight was an int (promoted to double)."""
    s = project_record_schema()
    s["fields"] = [f for f in s["fields"] if f["name"] not in ("key", "event_time")]
    next(f for f in s["fields"] if f["name"] == "weight").update(type="int", default=1)
    return s


def incompatible_schema() -> dict:
    s = copy.deepcopy(project_record_schema())
    next(f for f in s["fields"] if f["name"] == "label")["type"] = ["null", "string"]
    return s


def write(tmp_path, name: str, schema: dict):
    path = tmp_path / f"{name}.avsc"
    path.write_text(json.dumps(schema))
    return path


def run_writer(topic: str, *parts: str) -> None:
    res = subprocess.run([sys.executable, "-c", WRITER, topic, *parts], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def run_counter_job(client, stack, topic: str, n_ids: int, tmp_path, env=None) -> tuple[str, dict]:
    job = f"{topic}-job"
    create_job(client, stack.kafka_client_conf(), job, "counter", topic,
               {"dim": 2, "n_ids": n_ids, "id_column": 0})
    procs = [start_worker(job, tmp_path, env) for _ in range(2)]
    try:
        status = wait_status(client, job, lambda s: s["state"] == "finished", 180, "job to finish")
    finally:
        stop_all(procs)
    return job, status


def assert_each_id_applied_once(client, job: str, n: int) -> None:
    state = RedisState(client, job)
    assert np.array_equal(state.pull("hits"), np.ones(n))
    assert float(state.pull("n")) == n
    assert state.pull("sum")[0] == sum(i % 7 for i in range(n))


def test_workers_learn_evolved_writer_schemas_from_the_shared_registry(stack, redis_client, unique_name, tmp_path):
    topic = unique_name
    ensure_topic(stack.kafka_client_conf(), topic, partitions=2)
    added, older = write(tmp_path, "added", with_added_field("source", "unknown")), write(tmp_path, "older", older_writer())
    unregistered = write(tmp_path, "unregistered", with_added_field("zone", "eu"))
    fingerprints = [cli("schema", "register", str(p)).stdout.strip() for p in (added, older)]
    assert all(fp.startswith("0x") and len(fp) == 18 for fp in fingerprints)
    assert cli("schema", "register", str(added)).stdout.strip() == fingerprints[0]  # idempotent
    listed = json.loads(cli("schema", "list", "--json").stdout)
    assert {r["fingerprint"] for r in listed} >= set(fingerprints)
    assert any(r["fingerprint"] == fingerprints[0] and "source" in r["fields"] for r in listed)

    n = 600
    run_writer(topic, f"single:{added}:0:400", f"single:{older}:400:{n - 400}",
               f"single:{unregistered}:0:1")  # id 0 again: applied, it would show as a second hit
    job, status = run_counter_job(redis_client, stack, topic, n, tmp_path)
    assert status["records_applied"] == n and status["records_dead_lettered"] == 1
    assert_each_id_applied_once(redis_client, job, n)

    [dead] = read_dlq(stack, f"{topic}.dlq", expected=1)
    assert dead["streamlearn.reason"].startswith("unknown schema fingerprint 0x")
    assert dead["streamlearn.job"] == job


def test_incompatible_schema_is_refused_at_registration(stack, redis_client, tmp_path):
    before = redis_client.hgetall(SCHEMAS_KEY)
    res = cli("schema", "register", str(write(tmp_path, "bad", incompatible_schema())), check=False)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("streamlearn: error: schema streamlearn.TrainingRecord is incompatible with the "
                               "reader schema streamlearn.TrainingRecord: field 'label'")
    assert redis_client.hgetall(SCHEMAS_KEY) == before


def test_produce_registers_the_project_schemas(stack, redis_client, unique_name, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    cli("produce", unique_name, "--from", str(data), "--partitions", "1")
    stored = {json.loads(v)["name"] for v in redis_client.hvals(SCHEMAS_KEY)}
    assert {"TrainingRecord", "TrainingBatch", "Snapshot"} <= stored


# -- the Confluent wire format against a real Confluent-compatible registry --------------------
@pytest.fixture(scope="module")
def confluent_registry(stack, stack_home):
    from streamlearn.devstack import schema_registry as schema_registry_server

    return schema_registry_server.up(stack_home)  # stopped with the session stack


def register_confluent(url: str, subject: str, schema: dict) -> int:
    req = urllib.request.Request(f"{url}/subjects/{subject}/versions", method="POST",
                                 data=json.dumps({"schema": json.dumps(schema)}).encode(),
                                 headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["id"]


def test_confluent_framed_records_are_read_through_the_schema_registry(confluent_registry, stack, redis_client,
                                                                       unique_name, tmp_path):
    topic = unique_name
    ensure_topic(stack.kafka_client_conf(), topic, partitions=2)
    added = with_added_field("source", "unknown")
    added_id = register_confluent(confluent_registry, f"{topic}-value", added)
    bad_id = register_confluent(confluent_registry, f"{topic}-other-value", incompatible_schema())
    project_id = register_confluent(confluent_registry, f"{topic}-project-value", project_record_schema())
    n = 300
    run_writer(topic, f"confluent:{added_id}:{write(tmp_path, 'added', added)}:0:200",
               f"confluent:{project_id}:{write(tmp_path, 'project', project_record_schema())}:200:{n - 200}",
               f"confluent:{bad_id}:{write(tmp_path, 'bad', incompatible_schema())}:0:1",
               f"confluent:999999:{write(tmp_path, 'unknown', added)}:1:1")
    job, status = run_counter_job(redis_client, stack, topic, n, tmp_path,
                                  env={"STREAMLEARN_SCHEMA_REGISTRY_URL": confluent_registry})
    assert status["records_applied"] == n and status["records_dead_lettered"] == 2
    assert_each_id_applied_once(redis_client, job, n)
    reasons = sorted(d["streamlearn.reason"] for d in read_dlq(stack, f"{topic}.dlq", expected=2))
    assert reasons[0].startswith(f"Confluent schema id {bad_id}: schema streamlearn.TrainingRecord is incompatible")
    assert reasons[1] == "unknown Confluent schema id 999999"
