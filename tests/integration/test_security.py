"""Security end to end: Redis ACL user + password, Redis over TLS (``rediss://``), Kafka
security settings passed through, signed snapshots rejected when tampered or unsigned,
and no secret in logs or ``job status`` output."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
import uuid

import numpy as np
import pytest

from streamlearn.config import Settings
from tests.integration.procs import cli, start_worker, stop_all, wait_for, wait_status

pytestmark = pytest.mark.integration

PASSWORD = "s3cr3t-" + uuid.uuid4().hex[:12]
USER = "trainer"


def _produce(settings, topic: str, n: int = 600, value: float = 7.0, partitions: int = 2) -> None:
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    ensure_topic(settings.kafka_client_conf(), topic, partitions=partitions)
    with Producer(settings.kafka, settings.kafka_conf) as p:
        p.send_batch(topic, np.full((n, 1), value, dtype=np.float32), batch_size=50)


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {"STREAMLEARN_KAFKA": settings.kafka, "STREAMLEARN_REDIS": settings.redis, **extra}


# -- Redis ACL user and password ----------------------------------------------------------------
@pytest.fixture(scope="module")
def acl_stack(tmp_path_factory):
    from tests.conftest import _start, _stop

    home = tmp_path_factory.mktemp("acl-stack")
    settings, dog = _start(home, timeout=180, redis_password=PASSWORD, redis_user=USER)
    try:
        yield settings
    finally:
        _stop(home, dog, purge=True)


def test_acl_user_with_the_right_password_runs_a_whole_job(acl_stack, tmp_path):
    assert PASSWORD in acl_stack.redis and f"{USER}:" in acl_stack.redis
    topic = job = f"acl-{uuid.uuid4().hex[:8]}"
    _produce(acl_stack, topic)
    env = _env(acl_stack)
    created = cli("job", "create", job, "--algorithm", "median", "--topic", topic, env=env)
    procs = [start_worker(job, tmp_path, env), start_worker(job, tmp_path, env)]
    client = acl_stack.redis_client()
    wait_status(client, job, lambda s: s["state"] == "finished", 120, "job to finish")
    assert stop_all(procs) == [0, 0]
    status_out = cli("job", "status", job, "--json", env=env)
    status = json.loads(status_out.stdout)
    assert status["records_applied"] == 600 and status["finalize_calls"] == 1
    # nothing secret in what the CLI printed, the status JSON or the worker logs
    printed = created.stdout + created.stderr + status_out.stdout + status_out.stderr
    printed += cli("job", "list", "--json", env=env).stdout + cli("models", "--job", job, env=env).stdout
    logs = "".join(f.read_text() for f in tmp_path.glob("worker-*.log"))
    assert "assigned" in logs  # the logs are real
    for text in (printed, logs, json.dumps(status)):
        assert PASSWORD not in text


def test_the_default_user_is_off_when_an_acl_user_is_set(acl_stack):
    import redis

    from streamlearn.config import ConfigError

    host_port = acl_stack.redis.rsplit("@", 1)[1]
    no_auth = Settings(kafka=acl_stack.kafka, redis=f"redis://{host_port}")
    with pytest.raises(ConfigError) as exc:  # NOAUTH: a clear error, not a redis traceback
        no_auth.redis_client()
    assert "redis://" in str(exc.value)
    default_user = Settings(kafka=acl_stack.kafka, redis=f"redis://default:{PASSWORD}@{host_port}")
    with pytest.raises((ConfigError, redis.AuthenticationError)):
        default_user.redis_client()


@pytest.mark.parametrize("make_url", [
    lambda url: url.replace(PASSWORD, "wrong-password"),
    lambda url: url.replace(f"{USER}:", "nobody:"),
    lambda url: url.replace(f"{USER}:{PASSWORD}@", ""),
], ids=["wrong-password", "wrong-user", "no-credentials"])
@pytest.mark.parametrize("command", [("job", "status", "anything"), ("job", "list"), ("worker", "anything"),
                                     ("models",)], ids=lambda c: "-".join(c))
def test_wrong_credentials_are_one_clear_line_exit_2(acl_stack, make_url, command):
    url = make_url(acl_stack.redis)
    res = cli(*command, env={"STREAMLEARN_KAFKA": acl_stack.kafka, "STREAMLEARN_REDIS": url}, check=False)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and len(err.splitlines()) == 1, res.stderr
    assert "Redis" in err and ("credentials" in err or "auth" in err.lower())
    assert PASSWORD not in res.stderr + res.stdout and "wrong-password" not in res.stderr + res.stdout


# -- Redis over TLS ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """A redis-server with only a TLS port, its certificate signed by a fresh test CA."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI")
    d = tmp_path_factory.mktemp("tls")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=streamlearn test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.pem", "-days", "1", "-extfile", "ext.cnf")
    port = _free_port()
    log = open(d / "redis.log", "w")
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file", "server.pem",
                             "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no",
                             "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(d)],
                            cwd=d, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "Ready to accept connections" not in (d / "redis.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (d / "redis.log").read_text()
                if "tls" in text.lower() and ("not" in text.lower() or "unknown" in text.lower()):
                    pytest.skip(f"this redis-server has no TLS support: {text[-300:]}")
                raise AssertionError(f"TLS redis-server did not start: {text[-2000:]}")
            time.sleep(0.1)
        yield port, d / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(10)


def test_rediss_with_the_ca_works_for_a_whole_job(stack, tls_redis, tmp_path):
    port, ca = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    settings = Settings(kafka=stack.kafka, redis=url, kafka_conf=stack.kafka_conf)
    client = settings.redis_client()
    assert client.ping()
    topic = job = f"tls-{uuid.uuid4().hex[:8]}"
    _produce(stack, topic, n=300)
    env = _env(settings)
    cli("job", "create", job, "--algorithm", "median", "--topic", topic, env=env)
    procs = [start_worker(job, tmp_path, env)]
    status = wait_status(client, job, lambda s: s["state"] == "finished", 120, "job over TLS to finish")
    assert stop_all(procs) == [0]
    assert status["records_applied"] == 300
    out = cli("job", "status", job, "--json", env=env)
    assert PASSWORD not in out.stdout + out.stderr
    assert PASSWORD not in "".join(f.read_text() for f in tmp_path.glob("worker-*.log"))


def test_rediss_without_the_ca_does_not_connect(tls_redis):
    import redis

    port, _ca = tls_redis
    settings = Settings(kafka="127.0.0.1:1", redis=f"rediss://:{PASSWORD}@127.0.0.1:{port}/0")
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        settings.redis_client().ping()
    plain = Settings(kafka="127.0.0.1:1", redis=f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
                     redis_conf={"socket_timeout": 2, "socket_connect_timeout": 2})
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):  # plain text to a TLS port
        plain.redis_client().ping()


# -- Kafka security settings pass through ---------------------------------------------------------
KAFKA_SECURITY_ENV = {
    "STREAMLEARN_KAFKA": "broker1:9093,broker2:9093",
    "STREAMLEARN_REDIS": "redis://localhost:6379/0",
    "STREAMLEARN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "STREAMLEARN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "STREAMLEARN_KAFKA_SASL_USERNAME": "trainer",
    "STREAMLEARN_KAFKA_SASL_PASSWORD": PASSWORD,
    "STREAMLEARN_KAFKA_SSL_CA_LOCATION": "/etc/ssl/certs/ca-certificates.crt",
    "STREAMLEARN_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https",
}
KAFKA_SECURITY_CONF = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                       "sasl.username": "trainer", "sasl.password": PASSWORD,
                       "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt",
                       "ssl.endpoint.identification.algorithm": "https"}


def test_kafka_security_settings_reach_every_client_config(monkeypatch):
    import confluent_kafka

    settings = Settings.resolve(env=KAFKA_SECURITY_ENV)
    for conf in (settings.kafka_client_conf(), settings.kafka_client_conf(**{"group.id": "g"}),
                 settings.kafka_client_conf(enable_idempotence=True)):
        assert KAFKA_SECURITY_CONF.items() <= conf.items()
        assert conf["bootstrap.servers"] == "broker1:9093,broker2:9093"
    # librdkafka accepts every passed property (an unknown or misspelt one raises here)
    confluent_kafka.Producer(settings.kafka_client_conf()).flush(0)
    # the worker's consumer and dead-letter producer are built from the same settings
    from streamlearn.runtime import worker as worker_mod
    from streamlearn.streams.access import RefusalWatch

    seen: list[dict] = []

    class Capture:
        def __init__(self, conf):
            seen.append(dict(conf))
            raise RuntimeError("captured")

    monkeypatch.setattr(worker_mod, "Consumer", Capture)
    w = worker_mod.Worker.__new__(worker_mod.Worker)
    w.settings, w.config = settings, worker_mod.WorkerConfig()
    w.spec = type("S", (), {"group_id": "streamlearn.j", "topic": "t"})()
    w.member = "m"
    w._refused = RefusalWatch(settings.kafka)
    with pytest.raises(RuntimeError, match="captured"):
        w.run()
    assert KAFKA_SECURITY_CONF.items() <= seen[0].items() and seen[0]["group.id"] == "streamlearn.j"
    assert seen[0]["error_cb"] is w._refused  # credentials / ACL refusals end the worker
    # secrets are masked when settings are printed
    for text in (repr(settings), str(settings), "\n".join(settings.shell_lines()), json.dumps(settings.masked())):
        assert PASSWORD not in text
    assert PASSWORD in "\n".join(settings.shell_lines(reveal=True))


# -- signed snapshots, end to end -------------------------------------------------------------------
KEY = "snapshot-signing-key-" + uuid.uuid4().hex


@pytest.fixture
def signed_job(stack, tmp_path, monkeypatch):
    """A finished median job whose worker signed its snapshot with KEY."""
    topic = job = f"signed-{uuid.uuid4().hex[:8]}"
    _produce(stack, topic, n=400, value=7.0)
    cli("job", "create", job, "--algorithm", "median", "--topic", topic)
    stop_all([start_worker(job, tmp_path, {"STREAMLEARN_SNAPSHOT_KEY": KEY})])
    client = stack.redis_client()
    assert json.loads(cli("job", "status", job, "--json").stdout)["state"] == "finished"
    monkeypatch.setenv("STREAMLEARN_SNAPSHOT_KEY", KEY)
    return job, client


def _forge(good: bytes, version: int, how: str) -> bytes:
    """A later version of ``good``: re-signed with another key, unsigned, or bytes flipped."""
    from streamlearn.snapshots.format import decode_snapshot, encode

    snap = decode_snapshot(good, key=KEY)
    snap = dataclasses.replace(snap, metadata={**snap.metadata, "version": version},
                               arrays={"median": np.array([1e6])})
    if how == "unsigned":
        return encode(snap, key=None)
    if how == "other-key":
        return encode(snap, key="not-the-key")
    data = bytearray(encode(snap, key=KEY))  # tampered after signing: the median's bytes
    at = bytes(data).index(np.array([1e6]).tobytes())
    data[at:at + 8] = np.array([-1e6]).tobytes()
    return bytes(data)


@pytest.mark.parametrize("how", ["tampered", "unsigned", "other-key"])
def test_subscriber_rejects_tampered_and_unsigned_snapshots(stack, signed_job, how):
    from streamlearn.snapshots.format import decode_snapshot, load_model
    from streamlearn.snapshots.publisher import produce_snapshot
    from streamlearn.snapshots.store import ModelStore
    from streamlearn.snapshots.subscriber import ModelSubscriber

    job, client = signed_job
    store = ModelStore(client)
    good_version = store.latest_version(job)
    good = store.get(job, good_version)
    with ModelSubscriber(job, stack.kafka, stack.kafka_conf, key=KEY) as sub:
        model = sub.wait_for(good_version, timeout=60)
        assert model.median == load_model(decode_snapshot(good, key=KEY)).median
        bad = _forge(good, good_version + 1, how)
        produce_snapshot(stack.kafka_client_conf(), job, bad, {"version": good_version + 1, "algorithm": "median"})
        wait_for(lambda: sub.rejected >= 1, 30, "the forged snapshot to be rejected")
        assert sub.version == good_version and sub.model.median == model.median


@pytest.mark.parametrize("how,message", [("tampered", "checksum mismatch"), ("unsigned", "unsigned"),
                                         ("other-key", "bad signature")])
def test_predict_rejects_tampered_and_unsigned_snapshots(stack, signed_job, tmp_path, how, message):
    from streamlearn.snapshots.store import ModelStore

    job, client = signed_job
    store = ModelStore(client)
    good_version = store.latest_version(job)
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1.0\n2.0\n")
    ok = cli("predict", job, "--from", str(rows), env={"STREAMLEARN_SNAPSHOT_KEY": KEY})
    assert len(ok.stdout.splitlines()) == 2
    bad = _forge(store.get(job, good_version), good_version + 1, how)
    store.put(job, bad, {"version": good_version + 1, "algorithm": "median"})  # e.g. a compromised store
    res = cli("predict", job, "--from", str(rows), env={"STREAMLEARN_SNAPSHOT_KEY": KEY}, check=False)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert KEY not in res.stderr + res.stdout
    # the good version still loads when asked for
    again = cli("predict", job, "--from", str(rows), "--version", str(good_version),
                env={"STREAMLEARN_SNAPSHOT_KEY": KEY})
    assert len(again.stdout.splitlines()) == 2


def test_signed_snapshot_without_the_key_configured_still_verifies_its_checksum(stack, signed_job, tmp_path):
    """No key set: a signature cannot be checked, but the checksum still is."""
    from streamlearn.snapshots.store import ModelStore

    job, client = signed_job
    store = ModelStore(client)
    v = store.latest_version(job)
    env = {k: v2 for k, v2 in os.environ.items() if k != "STREAMLEARN_SNAPSHOT_KEY"}
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1.0\n")
    store.put(job, _forge(store.get(job, v), v + 1, "tampered"), {"version": v + 1, "algorithm": "median"})
    res = subprocess.run([os.sys.executable, "-m", "streamlearn", "predict", job, "--from", str(rows)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "checksum mismatch" in res.stderr, res.stderr
