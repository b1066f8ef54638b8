"""The local stack (real Kafka 4.x KRaft + real redis-server) and connection settings."""
from __future__ import annotations

import os
import time

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamlearn.devstack import kafka, procs, redis_server
from streamlearn.devstack import stack as st
from streamlearn.config import ConfigError, Settings, kafka_env_conf, local_stack_settings, mask_url

pytestmark = pytest.mark.integration


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _create_topic(settings: Settings, topic: str, partitions: int = 1) -> None:
    admin = AdminClient(settings.kafka_client_conf())
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result(30)


def _produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = Producer(settings.kafka_client_conf(**{"message.max.bytes": kafka.MAX_MESSAGE_BYTES}))
    for i, v in enumerate(values):
        producer.produce(topic, key=str(i).encode(), value=v)
    assert producer.flush(30) == 0


def _consume(settings: Settings, topic: str, n: int, timeout: float = 60.0) -> list[bytes]:
    consumer = Consumer(settings.kafka_client_conf(**{
        "group.id": f"{topic}-reader", "auto.offset.reset": "earliest",
        "enable.auto.commit": False}))
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg.value())
    finally:
        consumer.close()
    return got


# --------------------------------------------------------------------------------------------
# the session stack


def test_session_stack_is_running_and_env_points_at_it(stack, stack_home):
    info = st.status(stack_home)
    assert info["running"] is True
    assert info["kafka"]["running"] and info["kafka"]["listening"]
    assert info["redis"]["running"] and info["redis"]["listening"]
    assert info["kafka"]["bootstrap"] == stack.kafka
    assert info["kafka"]["port"] not in (9092, 9093)
    assert info["redis"]["port"] != 6379
    assert os.environ["STREAMLEARN_KAFKA"] == stack.kafka
    assert os.environ["STREAMLEARN_REDIS"] == stack.redis
    assert Settings.resolve() == stack


def test_kafka_produce_consume_roundtrip_including_a_large_message(stack, unique_name):
    _create_topic(stack, unique_name)
    big = os.urandom(8 * 1024 * 1024)  # bigger than Kafka's 1 MiB default: snapshot-sized
    _produce(stack, unique_name, [b"hello streamlearn", big])
    got = _consume(stack, unique_name, 2)
    assert got == [b"hello streamlearn", big]


def test_redis_set_get(redis_client, unique_name):
    key = f"test:{unique_name}"
    assert redis_client.set(key, b"\x00\x01value", ex=60)
    assert redis_client.get(key) == b"\x00\x01value"  # bytes: decode_responses=False
    redis_client.delete(key)


def test_up_is_idempotent(stack, stack_home):
    t0 = time.monotonic()
    again = st.up(stack_home)
    assert again == stack
    assert time.monotonic() - t0 < 5
    with pytest.raises(st.StackError, match="already running with different"):
        st.up(stack_home, redis_aof=True)


def test_resolve_from_state_file_and_clear_error_when_nothing(stack, stack_home, tmp_path):
    env = {"STREAMLEARN_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    s = Settings.resolve(env=env, home=stack_home)
    assert (s.kafka, s.redis) == (stack.kafka, stack.redis)
    assert s.kafka_client_conf()["security.protocol"] == "PLAINTEXT"
    with pytest.raises(ConfigError, match=r"no Kafka configured: set STREAMLEARN_KAFKA or run "
                                          r"`streamlearn stack up`"):
        Settings.resolve(env={}, home=tmp_path / "nothing-here")
    with pytest.raises(ConfigError, match="no Redis configured"):
        Settings.resolve(env={"STREAMLEARN_KAFKA": "h:1"}, home=tmp_path / "nothing-here")


# --------------------------------------------------------------------------------------------
# private stacks (restarts, passwords, down): never touch the session stack


def test_restart_redis_keeps_port_and_data_with_aof(make_stack):
    ls = make_stack(redis_aof=True)
    client = ls.settings.redis_client()
    port = ls.status()["redis"]["port"]
    client.set(b"survives", b"graceful")
    pid0 = ls.status()["redis"]["pid"]
    ls.restart_redis()
    assert ls.settings.redis_client().get(b"survives") == b"graceful"
    client.set(b"crash", b"acknowledged")  # the old client reconnects by itself
    st.stop_redis(ls.home, kill=True)  # SIGKILL: appendfsync always keeps acknowledged writes
    assert not ls.status()["redis"]["running"]
    during = ls.settings.redis_client()  # an outage is not a config error: no raise here
    with pytest.raises(redis.exceptions.ConnectionError):
        during.get(b"crash")
    st.start_redis(ls.home)
    assert during.get(b"crash") == b"acknowledged"  # same client, reconnected
    info = ls.status()
    assert info["redis"]["port"] == port and info["redis"]["pid"] != pid0
    assert info["redis"]["aof"] is True and info["running"]
    fresh = ls.settings.redis_client()
    assert fresh.get(b"survives") == b"graceful"
    assert fresh.get(b"crash") == b"acknowledged"


def test_restart_kafka_keeps_port_and_data(make_stack):
    ls = make_stack()
    s = ls.settings
    _create_topic(s, "kept")
    _produce(s, "kept", [b"before-restart"])
    port = ls.status()["kafka"]["port"]
    ls.restart_kafka(kill=True)
    assert ls.status()["kafka"]["port"] == port
    _produce(s, "kept", [b"after-restart"])
    assert _consume(s, "kept", 2) == [b"before-restart", b"after-restart"]


@pytest.mark.parametrize("user", [None, "trainer"], ids=["requirepass", "acl-user"])
def test_password_protected_redis(make_stack, user):
    secret = "s3cret-Pa55"
    ls = make_stack(redis_password=secret, redis_user=user)
    s = ls.settings
    assert secret in s.redis  # the URL carries it…
    assert secret not in repr(s) and secret not in str(s)  # …printing never does
    assert all(secret not in line for line in s.shell_lines())
    assert any(secret in line for line in s.shell_lines(reveal=True))
    assert secret not in str(ls.status())
    assert s.redis_client().ping() is True

    wrong = Settings(kafka=s.kafka, redis=s.redis.replace(secret, "wrong-password"))
    with pytest.raises(ConfigError, match="Redis rejected the credentials in STREAMLEARN_REDIS") as ei:
        wrong.redis_client()
    assert secret not in str(ei.value) and "wrong-password" not in str(ei.value)
    with pytest.raises(ConfigError, match="Redis rejected the credentials"):  # lazily, too
        wrong.redis_client(check=False).pipeline().set(b"k", b"v").execute()

    port = ls.status()["redis"]["port"]
    none = Settings(kafka=s.kafka, redis=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(ConfigError, match="Redis rejected the credentials"):
        none.redis_client()

    # the password survives a restart (it lives in the generated config)
    ls.restart_redis()
    assert s.redis_client().ping() is True


def test_down_stops_processes_and_frees_ports(make_stack):
    ls = make_stack()
    info = ls.status()
    pids = [info["kafka"]["pid"], info["redis"]["pid"]]
    ports = [info["kafka"]["port"], info["kafka"]["controller_port"], info["redis"]["port"]]
    assert all(_pid_alive(p) for p in pids)
    assert ls.down() is True
    assert not any(_pid_alive(p) for p in pids)
    assert all(procs.port_free(p) for p in ports)
    assert not (ls.home / "state.json").exists()
    assert ls.status()["running"] is False
    assert local_stack_settings(ls.home) is None
    assert ls.down() is False  # idempotent
    # data is kept without purge; purge removes it
    assert (ls.home / "kafka" / "data" / "meta.properties").exists()
    ls.down(purge=True)
    assert not (ls.home / "kafka").exists()


def test_a_failing_component_reports_its_log_tail(tmp_path, monkeypatch):
    real = redis_server.redis_conf
    monkeypatch.setattr(redis_server, "redis_conf",
                        lambda *a, **k: real(*a, **k) + "this-is-not-a-directive yes\n")
    with pytest.raises(st.StackError) as ei:
        st.up(tmp_path / "broken", timeout=60)
    msg = str(ei.value)
    assert "redis-server exited during startup" in msg
    assert "this-is-not-a-directive" in msg  # from redis' own log
    assert not (tmp_path / "broken" / "state.json").exists()
    st.down(tmp_path / "broken")


# --------------------------------------------------------------------------------------------
# configuration (no stack needed)


def test_kafka_env_passthrough_and_client_conf():
    env = {
        "STREAMLEARN_KAFKA": "b1:9092,b2:9092",
        "STREAMLEARN_REDIS": "rediss://alice:pw%40x@redis.example:6380/2",
        "STREAMLEARN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMLEARN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "STREAMLEARN_KAFKA_SASL_USERNAME": "alice",
        "STREAMLEARN_KAFKA_SASL_PASSWORD": "kafka-secret",
        "STREAMLEARN_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
        "STREAMLEARN_KAFKA_X__Y": "escaped",
    }
    s = Settings.resolve(env=env, home="/nonexistent-streamlearn-home")
    assert s.kafka == "b1:9092,b2:9092"
    assert s.kafka_conf == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice", "sasl.password": "kafka-secret",
        "ssl.ca.location": "/etc/ca.pem", "x_y": "escaped"}
    conf = s.kafka_client_conf(group_id="g", **{"enable.auto.commit": False},
                               error_cb=print)
    assert conf["bootstrap.servers"] == "b1:9092,b2:9092"
    assert conf["group.id"] == "g" and conf["enable.auto.commit"] is False
    assert conf["error_cb"] is print and conf["sasl.password"] == "kafka-secret"
    text = repr(s) + "\n".join(s.shell_lines())
    assert "kafka-secret" not in text and "pw%40x" not in text and "pw@x" not in text
    assert "STREAMLEARN_KAFKA_SASL_USERNAME=alice" in s.shell_lines()
    # shell lines round-trip through the environment
    back = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in s.shell_lines(reveal=True)}
    assert kafka_env_conf(back) == s.kafka_conf
    # settings.env() is what a child process needs (real values, not shell-quoted)
    assert Settings.resolve(env=s.env(), home="/nonexistent-streamlearn-home") == s
    assert mask_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"
