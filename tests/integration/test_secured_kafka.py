"""On a secured broker (SASL_SSL, SCRAM-SHA-512, StandardAuthorizer, no ACL = no access): a
least-privileged tenant runs its whole job with the Kafka ACLs ``streamlearn acl`` prints and
reaches no other topic; rejected credentials, a missing CA file and missing ACLs end each
command — the worker included — with one line, exit 2; ``ingest`` works end to end on
SASL_SSL and, refused, creates nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from confluent_kafka.admin import NewTopic

from streamlearn.config import Settings
from streamlearn.devstack.procs import terminate
from tests.integration.procs import cli, start_worker, stop_all, wait_for, wait_status
from tests.integration.secure_kafka import ADMIN, start_secure_kafka, stop_secure_kafka

pytestmark = pytest.mark.integration

#: measured seconds per refused command (printed at the end of the module, for the report)
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def secure(tmp_path_factory, stack):
    passwords = {ADMIN: uuid.uuid4().hex, "alice": uuid.uuid4().hex, "bob": uuid.uuid4().hex}
    kafka = start_secure_kafka(tmp_path_factory.mktemp("secure-kafka"), passwords)
    try:
        yield kafka
    finally:
        stop_secure_kafka(kafka)
        if TIMES:
            print("\nrefused commands (s):", json.dumps({k: round(v, 1) for k, v in TIMES.items()}))


def _env(secure, stack, user: str, **override) -> dict[str, str]:
    return {**secure.env(user, **override), "STREAMLEARN_REDIS": stack.redis}


def _as(secure, stack, user: str) -> Settings:
    return Settings(kafka=secure.bootstrap, redis=stack.redis, kafka_conf=secure.conf(user))


def _topic_with_data(secure, stack, n: int = 300, partitions: int = 2) -> str:
    from streamlearn.streams.producer import Producer

    topic = f"sec-{uuid.uuid4().hex[:8]}"
    for future in secure.admin().create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)
    admin = _as(secure, stack, ADMIN)
    with Producer(admin.kafka, admin.kafka_conf) as p:
        p.send_batch(topic, np.full((n, 1), 7.0, dtype=np.float32), batch_size=50)
    return topic


def test_a_tenant_runs_its_whole_job_with_the_printed_kafka_acls(secure, stack, tmp_path):
    from streamlearn.snapshots.subscriber import ModelSubscriber

    job = topic = _topic_with_data(secure, stack)
    snapshots = f"tenant-alice.snapshots.{uuid.uuid4().hex[:6]}"
    admin_env = _env(secure, stack, ADMIN)
    assert "cleanup.policy=compact" in cli("snapshot-topic", "setup", "--topic", snapshots, env=admin_env).stdout
    printed = cli("acl", job, "--topic", topic, "--snapshot-topic", snapshots, "--user", "alice",
                  "--reader", "User:alice", env=admin_env).stdout
    secure.grant([line for line in printed.splitlines() if line.startswith("kafka-acls.sh")])
    env = _env(secure, stack, "alice")
    cli("job", "create", job, "--algorithm", "median", "--topic", topic, "--snapshot-topic", snapshots, env=env)
    procs = [start_worker(job, tmp_path, env)]
    status = wait_status(stack.redis_client(), job, lambda s: s["state"] in ("finished", "failed"), 180, "the job")
    assert stop_all(procs) == [0], "".join(f.read_text() for f in tmp_path.glob("worker-*.log"))
    assert status["state"] == "finished" and status["records_applied"] == 300
    logs = "".join(f.read_text() for f in tmp_path.glob("worker-*.log"))
    assert "AUTHORIZATION_FAILED" not in logs and secure.passwords["alice"] not in logs
    with ModelSubscriber(job, secure.bootstrap, secure.conf("alice"), topic=snapshots) as sub:
        assert sub.wait_for(timeout=60) is not None and sub.metadata["job"] == job
    # the same tenant reaches no other job's topic
    other = _topic_with_data(secure, stack, n=50)
    res = cli("job", "create", f"{other}-by-alice", "--algorithm", "median", "--topic", other, env=env, check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert "ACL" in res.stderr, res.stderr


@pytest.fixture(scope="module")
def refused_jobs(secure, stack, tmp_path_factory):
    """Two jobs created by the super user, on topics alice may read and whose dead letters she may
    write (her group she may not): one still to train (for workers, produce, job create), one
    finished (for snapshot)."""
    jobs = {}
    for kind in ("open", "finished"):
        job = topic = _topic_with_data(secure, stack, n=100)
        cli("job", "create", job, "--algorithm", "median", "--topic", topic, env=_env(secure, stack, ADMIN))
        secure.grant([f"kafka-acls.sh --add --allow-principal User:alice --operation Read --operation Describe "
                      f"--topic {topic}",
                      f"kafka-acls.sh --add --allow-principal User:alice --operation Write --operation Describe "
                      f"--topic {topic}.dlq"])
        jobs[kind] = job
    logs = tmp_path_factory.mktemp("admin-worker")
    assert stop_all([start_worker(jobs["finished"], logs, _env(secure, stack, ADMIN))], timeout=120) == [0]
    assert wait_status(stack.redis_client(), jobs["finished"], lambda s: s["state"] == "finished", 60, "finished")
    return jobs


CASES = {
    "wrong-password": (dict(user="alice", password="not-the-password"), "credentials"),
    "missing-ca": (dict(user="alice", ca="/nonexistent/ca.pem"), "ssl.ca.location"),
    "no-acl": (dict(user="bob"), "ACL"),
    "no-group-acl": (dict(user="alice"), "group"),
}


#: (case, command) pairs; only a worker joins the job's consumer group
REFUSED = [(case, command) for case in CASES for command in ("produce", "job-create", "snapshot", "worker")
           if case != "no-group-acl" or command == "worker"]


@pytest.mark.parametrize("case,command", REFUSED)
def test_refused_commands_end_with_one_line(secure, stack, refused_jobs, tmp_path, case, command):
    who, expected = CASES[case]
    who = dict(who)
    env = _env(secure, stack, who.pop("user"), **who)
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1.0\n")
    refused_job = refused_jobs["open"]
    args = {"produce": ("produce", refused_job, "--from", str(rows)),
            "job-create": ("job", "create", f"{refused_job}-{uuid.uuid4().hex[:4]}", "--algorithm", "median",
                           "--topic", refused_job),
            "snapshot": ("snapshot", refused_jobs["finished"]),
            "worker": ("worker", refused_job)}[command]
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "streamlearn", *args], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=60)
    TIMES[f"{command}/{case}"] = time.monotonic() - started
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr and len(err.splitlines()) == 1, res.stderr[-3000:]
    assert expected.lower() in err.lower(), err
    assert secure.passwords["alice"] not in err


def test_ingest_on_sasl_ssl_end_to_end_and_refused_creates_nothing(secure, stack, tmp_path):
    from confluent_kafka import Producer

    from streamlearn.streams.topics import end_offsets

    raw = f"sec-raw-{uuid.uuid4().hex[:6]}"
    out = f"{raw}-train"
    for future in secure.admin().create_topics([NewTopic(raw, 1, 1)]).values():
        future.result(30)
    admin = _as(secure, stack, ADMIN)
    producer = Producer(admin.kafka_client_conf())
    for i in range(20):
        producer.produce(raw, key=f"k{i}".encode(), value=json.dumps({"features": [i, 1.0], "label": i % 2}).encode())
    producer.produce(raw, key=b"bad", value=b"not json")
    assert producer.flush(30) == 0

    refused = cli("ingest", raw, "--to", out, "--n-features", "2", env=_env(secure, stack, ADMIN, password="wrong"),
                  check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-2000:]
    assert out not in secure.admin().list_topics(timeout=10).topics

    log_path = tmp_path / "ingest.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlearn", "ingest", raw, "--to", out, "--n-features", "2"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **_env(secure, stack, ADMIN)})
    try:
        def forwarded():
            if proc.poll() is not None:
                raise AssertionError(f"ingest exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            topics = secure.admin().list_topics(timeout=10).topics
            return out in topics and f"{raw}.dlq" in topics and (
                sum(end_offsets(admin.kafka_client_conf(), out).values()) == 20
                and sum(end_offsets(admin.kafka_client_conf(), f"{raw}.dlq").values()) == 1)
        wait_for(forwarded, 120, "ingest to forward 20 events and dead-letter 1 over SASL_SSL", interval=0.5)
    finally:
        code = terminate(proc, 60)  # SIGTERM: the ingest app leaves cleanly
    assert code == 0, log_path.read_text()[-3000:]
    assert secure.passwords[ADMIN] not in log_path.read_text()
