"""Shared deployments: a least-privileged tenant (the Redis ACL rule ``streamlearn acl`` prints)
runs its whole job and reaches nothing else; ``job create`` is all or nothing; snapshots are
signed with Ed25519, bound to their job and to the model store's versions, and a forged,
replayed or other-job snapshot is refused by subscribers, ``serve`` and ``predict``; key
rotation; a job's own (compacted) snapshot topic; the production flag."""
from __future__ import annotations

import json
import shlex
import time
import uuid
from urllib.parse import quote

import numpy as np
import pytest
import redis

from streamlearn.config import Settings
from streamlearn.snapshots.signing import REQUIRE_ENV, SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, Signer, generate_keys
from tests.integration.procs import cli, start_worker, stop_all, wait_for, wait_status

pytestmark = pytest.mark.integration


def _produce(settings: Settings, topic: str, n: int = 400, value: float = 7.0) -> None:
    from streamlearn.streams.producer import Producer
    from streamlearn.streams.topics import ensure_topic

    ensure_topic(settings.kafka_client_conf(), topic, partitions=2)
    with Producer(settings.kafka, settings.kafka_conf) as p:
        p.send_batch(topic, np.full((n, 1), value, dtype=np.float32), batch_size=50)


def _base_env(stack) -> dict[str, str]:
    return {"STREAMLEARN_KAFKA": stack.kafka, "STREAMLEARN_REDIS": stack.redis}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs of tenant a (old and new, in a's directory) and of tenant b."""
    d = tmp_path_factory.mktemp("keys")
    return {name: generate_keys(d / name.split("-")[0], name) for name in ("a-old", "a-new", "b-1")}


def _tenant_user(stack, job: str, topic: str, user: str, drop: str | None = None) -> str:
    """Create the Redis user ``streamlearn acl`` prints for ``job`` (less the ``drop`` token);
    returns the user's Redis URL."""
    printed = cli("acl", job, "--topic", topic, "--user", user, env=_base_env(stack)).stdout
    [line] = [ln for ln in printed.splitlines() if ln.startswith("redis-cli ")]
    password = uuid.uuid4().hex
    tokens = [f">{password}" if t == ">PASSWORD" else t for t in shlex.split(line)[1:] if t != drop]
    stack.redis_client().execute_command(*tokens)
    host_port = stack.redis.split("//", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
    return f"redis://{quote(user)}:{password}@{host_port}/0"


def _one_line_error(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and len(err.splitlines()) == 1, res.stderr
    return err


# -- Redis: the least-privileged tenant ---------------------------------------------------------
def test_a_tenant_with_the_printed_acl_runs_its_whole_job_and_reaches_no_other(stack, tmp_path, keys):
    job = topic = f"ta-{uuid.uuid4().hex[:8]}"
    other = f"tb-{uuid.uuid4().hex[:8]}"
    _produce(stack, topic)
    _produce(stack, other, n=100)
    cli("job", "create", other, "--algorithm", "median", "--topic", other, env=_base_env(stack))
    url = _tenant_user(stack, job, topic, f"user-{job}")
    env = {"STREAMLEARN_KAFKA": stack.kafka, "STREAMLEARN_REDIS": url,
           SIGNING_KEY_ENV: str(keys["a-old"][0]), TRUSTED_KEYS_ENV: f"ta-*={keys['a-old'][1].parent}"}
    cli("job", "create", job, "--algorithm", "median", "--topic", topic, env=env)
    procs = [start_worker(job, tmp_path, env), start_worker(job, tmp_path, env)]
    admin = stack.redis_client()
    status = wait_status(admin, job, lambda s: s["state"] in ("finished", "failed"), 120, "the tenant's job to end")
    assert stop_all(procs) == [0, 0], "".join(f.read_text() for f in tmp_path.glob("worker-*.log"))
    assert status["state"] == "finished" and status["records_applied"] == 400 and status["finalize_calls"] == 1
    assert job in json.loads(cli("job", "status", job, "--json", env=env).stdout)["job"]
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1.0\n2.0\n")
    assert len(cli("predict", job, "--from", str(rows), env=env).stdout.splitlines()) == 2

    tenant = Settings(kafka=stack.kafka, redis=url).redis_client()
    for command in (lambda: tenant.get(f"sl:{{{other}}}:spec"), lambda: tenant.set(f"sl:{{{other}}}:status", "failed"),
                    lambda: tenant.scan(0), lambda: tenant.keys("*"), lambda: tenant.srem("sl:jobs", other),
                    lambda: tenant.delete("sl:models:jobs"), lambda: tenant.hset("sl:schemas", "x", "y"),
                    lambda: tenant.flushall()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            command()
    assert admin.get(f"sl:{{{other}}}:status") == b"running" and other.encode() in admin.smembers("sl:jobs")
    err = _one_line_error(cli("job", "status", other, env=env, check=False))
    assert "NOPERM" in err and "streamlearn acl" in err


def test_job_create_is_all_or_nothing(stack):
    """A user that may not list the job (no SADD on sl:jobs) gets one line, and nothing of the
    job stays behind: the name can be created again by a user that may."""
    job = topic = f"ta-{uuid.uuid4().hex[:8]}"
    _produce(stack, topic, n=100)
    url = _tenant_user(stack, job, topic, f"nolist-{job}", drop="(~sl:jobs +sadd)")
    env = {"STREAMLEARN_KAFKA": stack.kafka, "STREAMLEARN_REDIS": url}
    err = _one_line_error(cli("job", "create", job, "--algorithm", "median", "--topic", topic, env=env, check=False))
    assert "NOPERM" in err and "sadd" in err.lower()
    admin = stack.redis_client()
    assert admin.keys(f"sl:{{{job}}}:*") == [] and job.encode() not in admin.smembers("sl:jobs")
    cli("job", "create", job, "--algorithm", "median", "--topic", topic, env=_base_env(stack))


# -- signed snapshots, bound to their job and to the store's versions ------------------------------
def _finished_job(stack, tmp_path, prefix: str, signing_key, n: int = 300, value: float = 7.0) -> str:
    job = topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    _produce(stack, topic, n=n, value=value)
    cli("job", "create", job, "--algorithm", "median", "--topic", topic, env=_base_env(stack))
    assert stop_all([start_worker(job, tmp_path, {**_base_env(stack), SIGNING_KEY_ENV: str(signing_key)})]) == [0]
    assert wait_status(stack.redis_client(), job, lambda s: s["state"] == "finished", 60, "finished")
    return job


def _stored_median(store, job: str) -> float:
    from streamlearn.snapshots.format import decode_snapshot, load_model

    return load_model(decode_snapshot(store.get(job), key=None)).median


def _resigned(data: bytes, signing_key, **metadata) -> bytes:
    """``data`` with its metadata changed, signed again with ``signing_key``."""
    import dataclasses

    from streamlearn.snapshots.format import decode_snapshot, encode

    snap = decode_snapshot(data, key=None)
    snap = dataclasses.replace(snap, metadata={**snap.metadata, **metadata}, arrays={"median": np.array([1e6])})
    return encode(snap, signer=Signer.from_file(signing_key))


@pytest.fixture
def two_tenants(stack, tmp_path, keys, monkeypatch):
    """Job ta-* (signed by a's old key) and job tb-* (signed by b's key), each finished;
    verifiers trust a's keys for ta-* and b's for tb-*."""
    a = _finished_job(stack, tmp_path / "a", "ta", keys["a-old"][0])
    b = _finished_job(stack, tmp_path / "b", "tb", keys["b-1"][0], value=-3.0)
    trusted = f"ta-*={keys['a-old'][1].parent},tb-*={keys['b-1'][1]}"
    monkeypatch.setenv(TRUSTED_KEYS_ENV, trusted)
    return a, b, {**_base_env(stack), TRUSTED_KEYS_ENV: trusted}


def test_subscriber_refuses_forged_replayed_and_other_job_snapshots(stack, two_tenants, keys):
    from streamlearn.snapshots.publisher import produce_snapshot
    from streamlearn.snapshots.store import ModelStore
    from streamlearn.snapshots.subscriber import ModelSubscriber

    a, b, _env = two_tenants
    store = ModelStore(stack.redis_client())
    good = store.latest_version(a)
    conf = stack.kafka_client_conf()
    genuine = _stored_median(store, a)
    with ModelSubscriber(a, stack.kafka, stack.kafka_conf, store=store) as sub:
        assert sub.wait_for(good, timeout=60).median == genuine
        forged = {
            # tenant b's key signs a model for job a, with a version that would block a's real ones
            "other tenant's key": _resigned(store.get(a, good), keys["b-1"][0], version=10**12),
            # job b's genuine snapshot replayed under job a's key
            "other job": store.get(b, store.latest_version(b)),
            # a's own key (a publisher gone rogue) with a version the model store never handed out
            "not the store's": _resigned(store.get(a, good), keys["a-old"][0], version=good + 1),
        }
        for n, data in enumerate(forged.values(), 1):
            produce_snapshot(conf, a, data, {"version": 10**12})
            wait_for(lambda: sub.rejected >= n, 30, f"forgery {n} to be rejected")
        assert sub.version == good and sub.model.median == genuine
        # the job's genuine next version is still taken
        assert "published snapshot version" in cli("snapshot", a, env={**_base_env(stack),
                                                                         SIGNING_KEY_ENV: str(keys["a-old"][0])}).stdout
        assert sub.wait_for(good + 1, timeout=60) is not None and sub.version == good + 1


def test_predict_and_serve_refuse_snapshots_of_another_signer_or_job(stack, two_tenants, keys, tmp_path):
    from streamlearn.snapshots.store import ModelStore

    a, b, env = two_tenants
    store = ModelStore(stack.redis_client())
    good = store.latest_version(a)
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1.0\n")
    assert json.loads(cli("predict", a, "--from", str(rows), env=env).stdout)  # the genuine one loads
    # a compromised model store: another tenant's signature, another job's snapshot
    store.put(a, _resigned(store.get(a, good), keys["b-1"][0], version=good + 1), {"version": good + 1})
    b_bytes = store.get(b, store.latest_version(b))
    store.put(a, b_bytes, {"version": good + 2, "job": a})
    for version, message in ((good + 1, "not trusted for job"), (good + 2, "belongs to job")):
        for command in (("predict", a, "--from", str(rows), "--version", str(version)),
                        ("serve", a, "--port", "0", "--version", str(version))):
            err = _one_line_error(cli(*command, env=env, check=False))
            assert message in err, err


def test_rotation_old_and_new_keys_verify_during_the_overlap_then_only_the_new(stack, tmp_path, keys):
    from streamlearn.snapshots.store import ModelStore

    job = _finished_job(stack, tmp_path, "ta", keys["a-old"][0])
    cli("snapshot", job, env={**_base_env(stack), SIGNING_KEY_ENV: str(keys["a-new"][0])})
    old, new = ModelStore(stack.redis_client()).versions(job)[-2:]
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1.0\n")

    def predict(version: int, trusted: str):
        return cli("predict", job, "--from", str(rows), "--version", str(version),
                   env={**_base_env(stack), TRUSTED_KEYS_ENV: trusted}, check=False)

    overlap = f"ta-*={keys['a-old'][1]},ta-*={keys['a-new'][1]}"
    assert predict(old, overlap).returncode == 0 and predict(new, overlap).returncode == 0
    retired = f"ta-*={keys['a-new'][1]}"
    assert predict(new, retired).returncode == 0
    assert "not trusted" in _one_line_error(predict(old, retired))


def test_required_signatures_refuse_to_start_without_a_key(stack, tmp_path):
    job = topic = f"ta-{uuid.uuid4().hex[:8]}"
    _produce(stack, topic, n=50)
    cli("job", "create", job, "--algorithm", "median", "--topic", topic, env=_base_env(stack))
    env = {**_base_env(stack), REQUIRE_ENV: "1", SIGNING_KEY_ENV: "", TRUSTED_KEYS_ENV: ""}
    started = time.monotonic()
    err = _one_line_error(cli("worker", job, env=env, check=False))
    assert "no key to sign" in err and time.monotonic() - started < 15
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1.0\n")
    assert "no key verifies" in _one_line_error(cli("predict", job, "--from", str(rows), env=env, check=False))


# -- a job's own snapshot topic ---------------------------------------------------------------
def test_a_job_publishes_to_its_own_compacted_snapshot_topic(stack, tmp_path):
    from confluent_kafka.admin import AdminClient, ConfigResource

    from streamlearn.client import connect
    from streamlearn.snapshots.store import ModelStore
    from streamlearn.streams.topics import end_offsets

    job = topic = f"ta-{uuid.uuid4().hex[:8]}"
    snapshots = f"tenant-a.snapshots.{uuid.uuid4().hex[:6]}"
    _produce(stack, topic, n=100)
    cli("job", "create", job, "--algorithm", "median", "--topic", topic, "--snapshot-topic", snapshots,
        env=_base_env(stack))
    resource = ConfigResource(ConfigResource.Type.TOPIC, snapshots)  # made at job create, before any snapshot
    admin = AdminClient({"bootstrap.servers": stack.kafka})
    config = admin.describe_configs([resource])[resource].result(30)
    assert config["cleanup.policy"].value == "compact" and int(config["max.message.bytes"].value) == 64 << 20
    assert stop_all([start_worker(job, tmp_path, _base_env(stack))]) == [0]
    assert sum(end_offsets(stack.kafka_client_conf(), snapshots).values()) == 1
    with connect(stack.kafka, stack.redis) as conn:
        assert conn.subscribe(job).wait_for(timeout=60).median == _stored_median(ModelStore(conn.redis), job)
    out = cli("snapshot-topic", "setup", "--topic", snapshots, env=_base_env(stack)).stdout
    assert "cleanup.policy=compact" in out
