"""The local stack: one Apache Kafka 4.x broker (KRaft, single node) and one Redis.

Used by ``streamlearn stack up|down|status`` and by the integration-test fixture.

* Kafka runs from Apache Kafka's own jars on Maven Central, fetched once with Maven
  (``mvn dependency:copy-dependencies`` on a tiny pom, see :data:`KAFKA_POM`) into
  ``$STREAMLEARN_CACHE/kafka-<version>/libs`` (default ``~/.cache/streamlearn``), then run as
  ``java -cp 'libs/*' kafka.Kafka server.properties`` after ``kafka.tools.StorageTool format``.
  Needs Java 17+ and Maven on PATH (``$JAVA_HOME/bin/java`` is preferred when set).
* Redis is Debian's ``redis-server`` from PATH, with a generated config (no RDB snapshots,
  AOF only when asked for, data in the stack home).

Both listen on free ports on 127.0.0.1 (never 9092/6379 by assumption), run in their own
session (they outlive the command that started them) and log to files in the stack home
(``$STREAMLEARN_HOME``, default ``~/.local/state/streamlearn/stack``)::

    <home>/state.json            pids, ports, settings (mode 0600: may hold the Redis password)
    <home>/kafka/{server.properties,log4j2.properties,kafka.log,data/}
    <home>/redis/{redis.conf,redis.log,data/}

Broker choices (fast startup, test friendly): single node (broker+controller), all internal
topics replication factor 1, few internal partitions, ``group.initial.rebalance.delay.ms=0``,
``message.max.bytes``/``replica.fetch.max.bytes`` = 64 MiB (model snapshots), short group
session timeouts (classic protocol: clients may ask for down to 1 s; KIP-848 ``consumer``
protocol: broker-side session 10 s, heartbeat 1 s) so a killed worker's partitions move fast,
``num.partitions=1`` and ``auto.create.topics.enable=true`` (convenient for ad-hoc use; the
runtime creates its topics explicitly with the partition count it wants, so nothing relies on
auto-creation), heap ``-Xms256m -Xmx768m`` in G1 regions of 4 MiB (with the 1 MiB default
every produce request over 512 kB, i.e. each batch of two 400 kB training messages, is a
"humongous" allocation: the broker spent 5x the GC time on the same produced data).
Logging goes through log4j2 (the pom adds the slf4j-1.7 binding ``log4j-slf4j-impl``) to
``kafka/kafka.log``.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Mapping
from urllib.parse import quote

from streamlearn.config import ConfigError, Settings, kafka_logging, mask_url
from streamlearn.errors import UserError

__all__ = [
    "KAFKA_VERSION",
    "StackError",
    "default_home",
    "cache_dir",
    "ensure_kafka",
    "up",
    "down",
    "status",
    "running_settings",
    "restart_kafka",
    "restart_redis",
    "stop_kafka",
    "start_kafka",
    "stop_redis",
    "start_redis",
    "check_prerequisites",
]

KAFKA_VERSION = "4.3.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"
STATE_FILE = "state.json"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
KAFKA_HEAP = ("-Xms256m", "-Xmx768m", "-XX:G1HeapRegionSize=4m")
STOP_TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0

KAFKA_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- streamlearn: the Kafka broker runtime, fetched with
       mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamlearn</groupId><artifactId>kafka-runtime</artifactId><version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{SCALA_VERSION}</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <!-- kafka_2.13 brings slf4j-api 1.7: bind it to log4j2 (log4j-slf4j-impl, not -slf4j2-) -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


class StackError(UserError, RuntimeError):
    """The local stack could not be started/stopped (message includes the relevant log tail)."""


# --------------------------------------------------------------------------------------------
# paths


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """``$STREAMLEARN_HOME``, else ``$XDG_STATE_HOME/streamlearn/stack`` (``~/.local/state/…``)."""
    env = os.environ if env is None else env
    if env.get("STREAMLEARN_HOME"):
        return Path(env["STREAMLEARN_HOME"]).expanduser()
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "streamlearn" / "stack"


def _home(home: Path | str | None, env: Mapping[str, str] | None = None) -> Path:
    return (Path(home).expanduser() if home is not None else default_home(env)).absolute()


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$STREAMLEARN_CACHE`` (default ``~/.cache/streamlearn``); Kafka lives in ``kafka-<ver>/``."""
    env = os.environ if env is None else env
    root = env.get("STREAMLEARN_CACHE") or str(Path.home() / ".cache" / "streamlearn")
    return Path(root).expanduser().absolute()


def _kafka_dir(env: Mapping[str, str] | None = None) -> Path:
    return cache_dir(env) / f"kafka-{KAFKA_VERSION}"


# --------------------------------------------------------------------------------------------
# prerequisites and the Kafka jars


def _java() -> str | None:
    jh = os.environ.get("JAVA_HOME")
    if jh and os.access(Path(jh) / "bin" / "java", os.X_OK):
        return str(Path(jh) / "bin" / "java")
    return shutil.which("java")


def check_prerequisites(*, need_maven: bool | None = None) -> list[str]:
    """Problems that prevent the local stack from starting (empty list: all good)."""
    problems = []
    if _java() is None:
        problems.append("Java 17+ not found (install openjdk-17-jre-headless or set JAVA_HOME)")
    if shutil.which("redis-server") is None:
        problems.append("redis-server not found on PATH (apt-get install -y redis-server)")
    if need_maven is None:
        need_maven = not _kafka_ready(_kafka_dir())
    if need_maven and shutil.which("mvn") is None:
        problems.append(
            f"Maven (mvn) not found: it is needed once to fetch Kafka {KAFKA_VERSION} into "
            f"{_kafka_dir()} (apt-get install -y maven)"
        )
    return problems


def _kafka_ready(kdir: Path) -> bool:
    return (kdir / ".complete").exists() and (
        kdir / "libs" / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar"
    ).exists()


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_kafka(progress: Callable[[str], None] | None = None) -> Path:
    """The directory of Kafka's jars, fetching them with Maven the first time (cached, locked)."""
    kdir = _kafka_dir()
    if _kafka_ready(kdir):
        return kdir / "libs"
    with _flock(kdir.parent / f".kafka-{KAFKA_VERSION}.lock"):
        if _kafka_ready(kdir):
            return kdir / "libs"
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("; ".join(check_prerequisites(need_maven=True)))
        if progress:
            progress(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven into {kdir} (once)…")
        kdir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".kafka-{KAFKA_VERSION}-", dir=kdir.parent))
        try:
            (tmp / "pom.xml").write_text(KAFKA_POM)
            cmd = [mvn, "-q", "-B", "dependency:copy-dependencies",
                   f"-DoutputDirectory={tmp / 'libs'}", "-DincludeScope=runtime"]
            t0 = time.monotonic()
            proc = subprocess.run(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, text=True, timeout=900)
            if proc.returncode != 0 or not _kafka_ready_libs(tmp / "libs"):
                raise StackError(
                    f"fetching Kafka {KAFKA_VERSION} with Maven failed (exit {proc.returncode}): "
                    f"{' '.join(cmd)}\n{_tail_text(proc.stdout)}"
                )
            if kdir.exists():
                shutil.rmtree(kdir)
            kdir.mkdir(parents=True)
            (tmp / "libs").rename(kdir / "libs")
            (kdir / "pom.xml").write_text(KAFKA_POM)
            (kdir / ".complete").write_text(json.dumps(
                {"version": KAFKA_VERSION, "fetched_at": time.time(),
                 "seconds": round(time.monotonic() - t0, 1)}))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return kdir / "libs"


def _kafka_ready_libs(libs: Path) -> bool:
    return (libs / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").exists()


# --------------------------------------------------------------------------------------------
# processes


_CHILDREN: dict[int, subprocess.Popen] = {}


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def _alive(pid: int | None, marker: str | None = None) -> bool:
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:  # our own child: waitpid is authoritative (and reaps it)
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    else:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap if it happens to be our (unregistered) child
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        if state is None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return not Path("/proc").is_dir()  # no procfs: trust kill(0)
        return False
    if marker:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                "utf-8", "replace")
        except OSError:
            return True
        # redis-server rewrites its title (setproctitle): cmdline can be briefly empty then
        return not cmdline.strip() or marker in cmdline
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
                return
        except ProcessLookupError:
            return
        os.kill(pid, sig)


def _stop_pid(pid: int | None, marker: str, *, timeout: float = STOP_TIMEOUT_S,
              kill: bool = False) -> None:
    if not pid or not _alive(pid, marker):
        return
    _signal(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, marker):
            return
        time.sleep(0.05)
    _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid, marker):
        time.sleep(0.05)


def _spawn(cmd: list[str], *, log: Path, cwd: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== streamlearn: starting at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _tail_text(text: str, lines: int = 40) -> str:
    return "\n".join("    " + ln for ln in text.rstrip().splitlines()[-lines:])


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "    (no log)"
    # only the last start attempt
    marker = "==== streamlearn: starting at"
    if marker in text:
        text = text[text.rindex(marker):]
    return _tail_text(text, lines)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _listening(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# state file


def _state_path(home: Path) -> Path:
    return home / STATE_FILE


def _read_state(home: Path) -> dict | None:
    try:
        return json.loads(_state_path(home).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(f"unreadable stack state file {_state_path(home)}: {exc}") from None


def _write_state(home: Path, state: dict) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".{STATE_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh, indent=2, sort_keys=True)
    os.replace(tmp, _state_path(home))


def _settings_from_state(state: dict) -> Settings:
    return Settings(kafka=state["settings"]["kafka"], redis=state["settings"]["redis"])


KAFKA_MARKER = "kafka.Kafka"
REDIS_MARKER = "redis-server"


def _both_alive(state: dict) -> bool:
    return _alive(state["kafka"].get("pid"), KAFKA_MARKER) and _alive(
        state["redis"].get("pid"), REDIS_MARKER)


def running_settings(home: Path | str | None = None,
                     env: Mapping[str, str] | None = None) -> Settings | None:
    """Settings of the local stack in ``home`` when it is running, else ``None``."""
    h = _home(home, env)
    try:
        state = _read_state(h)
    except StackError:
        return None
    if state is None or not _both_alive(state):
        return None
    return _settings_from_state(state)


def stale_hint(home: Path | str | None = None, env: Mapping[str, str] | None = None) -> str:
    """A sentence for error messages when a state file exists but the stack is not running."""
    h = _home(home, env)
    if _state_path(h).exists():
        return f" (the local stack in {h} is not running; `streamlearn stack up` restarts it)"
    return ""


# --------------------------------------------------------------------------------------------
# Kafka


def _new_cluster_id() -> str:
    while True:  # Kafka's Uuid: url-safe base64, no padding, must not start with '-'
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _existing_cluster_id(data: Path) -> str | None:
    meta = data / "meta.properties"
    try:
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return None


def _kafka_properties(port: int, controller_port: int, data: Path) -> str:
    return f"""\
# generated by streamlearn (local stack): single-node KRaft broker+controller
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# a SIGKILLed broker can re-register only once its old registration expired (default 9 s)
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=3000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
message.max.bytes={MAX_MESSAGE_BYTES}
replica.fetch.max.bytes={MAX_MESSAGE_BYTES}
socket.request.max.bytes={2 * MAX_MESSAGE_BYTES}
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.check.interval.ms=60000
"""


def _kafka_files(home: Path) -> dict[str, Path]:
    k = home / "kafka"
    return {"dir": k, "config": k / "server.properties", "log4j": k / "log4j2.properties",
            "log": k / "kafka.log", "data": k / "data"}


def _java_cmd(libs: Path, log4j: Path, main: str, *args: str, heap=KAFKA_HEAP) -> list[str]:
    java = _java()
    if java is None:
        raise StackError("; ".join(check_prerequisites()))
    return [java, *heap, "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*", main, *args]


def _prepare_kafka(home: Path, port: int, controller_port: int, libs: Path) -> dict:
    f = _kafka_files(home)
    f["data"].mkdir(parents=True, exist_ok=True)
    f["config"].write_text(_kafka_properties(port, controller_port, f["data"]))
    f["log4j"].write_text(LOG4J2_PROPERTIES)
    cid = _existing_cluster_id(f["data"])
    if cid is None:
        cid = _new_cluster_id()
        cmd = _java_cmd(libs, f["log4j"], "kafka.tools.StorageTool", "format", "-t", cid,
                        "-c", str(f["config"]), "--ignore-formatted",
                        heap=("-Xmx256m", "-XX:TieredStopAtLevel=1"))
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, timeout=120)
        with open(f["log"], "a") as log:
            log.write(proc.stdout)
        if proc.returncode != 0:
            raise StackError(f"formatting the Kafka log dir failed (exit {proc.returncode}):\n"
                             f"{_tail_text(proc.stdout)}")
    return {"port": port, "controller_port": controller_port, "cluster_id": cid,
            "config": str(f["config"]), "log": str(f["log"]), "data": str(f["data"]),
            "libs": str(libs)}


def _launch_kafka(home: Path, kstate: dict) -> int:
    f = _kafka_files(home)
    cmd = _java_cmd(Path(kstate["libs"]), f["log4j"], "kafka.Kafka", str(f["config"]))
    return _spawn(cmd, log=f["log"], cwd=f["dir"])


def _wait_kafka(kstate: dict, pid: int, deadline: float) -> None:
    log = Path(kstate["log"])
    port = kstate["port"]
    while not _listening(port):
        if not _alive(pid, KAFKA_MARKER):
            raise StackError(f"Kafka exited during startup (log {log}):\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"Kafka did not open port {port} in time (log {log}):\n{_log_tail(log)}")
        time.sleep(0.1)
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_logging({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 2}))
    last = None
    while True:
        if not _alive(pid, KAFKA_MARKER):
            raise StackError(f"Kafka exited during startup (log {log}):\n{_log_tail(log)}")
        try:
            md = admin.list_topics(timeout=2)
            if md.brokers:
                return
        except KafkaException as exc:
            last = exc
        if time.monotonic() > deadline:
            raise StackError(f"Kafka on port {port} did not answer list_topics in time "
                             f"(last error: {last}; log {log}):\n{_log_tail(log)}")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# Redis


_BAD_PW_CHARS = set(" \t\r\n\"'\\#")


def _redis_files(home: Path) -> dict[str, Path]:
    r = home / "redis"
    return {"dir": r, "config": r / "redis.conf", "log": r / "redis.log", "data": r / "data"}


def _redis_conf(port: int, data: Path, *, aof: bool, appendfsync: str,
                password: str | None, user: str | None) -> str:
    lines = [
        "# generated by streamlearn (local stack)",
        "bind 127.0.0.1",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',
        "loglevel notice",
        f"dir {data}",
        "save \"\"",
        f"appendonly {'yes' if aof else 'no'}",
        f"appendfsync {appendfsync}",
        "tcp-keepalive 60",
        "maxclients 4064",
    ]
    if password is not None and user is not None:
        lines += ["user default off", f"user {user} on >{password} ~* &* +@all"]
    elif password is not None:
        lines.append(f"requirepass {password}")
    return "\n".join(lines) + "\n"


def _redis_url(port: int, password: str | None, user: str | None) -> str:
    auth = ""
    if password is not None:
        auth = f"{quote(user or '', safe='')}:{quote(password, safe='')}@"
    return f"redis://{auth}127.0.0.1:{port}/0"


def _prepare_redis(home: Path, port: int, *, aof: bool, appendfsync: str,
                   password: str | None, user: str | None) -> dict:
    f = _redis_files(home)
    f["data"].mkdir(parents=True, exist_ok=True)
    fd = os.open(f["config"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_redis_conf(port, f["data"], aof=aof, appendfsync=appendfsync,
                             password=password, user=user))
    return {"port": port, "aof": aof, "appendfsync": appendfsync, "password": password,
            "user": user, "config": str(f["config"]), "log": str(f["log"]),
            "data": str(f["data"]), "url": _redis_url(port, password, user)}


def _launch_redis(home: Path, rstate: dict) -> int:
    server = shutil.which("redis-server")
    if server is None:
        raise StackError("; ".join(check_prerequisites()))
    f = _redis_files(home)
    return _spawn([server, str(f["config"])], log=f["log"], cwd=f["dir"])


def _wait_redis(rstate: dict, pid: int, deadline: float) -> None:
    import redis

    log = Path(rstate["log"])
    client = redis.Redis.from_url(rstate["url"], socket_connect_timeout=1, socket_timeout=2)
    last = None
    try:
        while True:
            if not _alive(pid, REDIS_MARKER):
                raise StackError(f"redis-server exited during startup (log {log}):\n{_log_tail(log)}")
            try:
                if client.ping():
                    return
            except redis.exceptions.BusyLoadingError as exc:  # loading the AOF
                last = exc
            except redis.exceptions.ConnectionError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise StackError(f"Redis on port {rstate['port']} did not answer PING in time "
                                 f"(last error: {last}; log {log}):\n{_log_tail(log)}")
            time.sleep(0.05)
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# public API


def _bind_failed(log: Path) -> bool:
    tail = _log_tail(log, 200)
    return "Address already in use" in tail or "BindException" in tail


def up(
    home: Path | str | None = None,
    *,
    redis_password: str | None = None,
    redis_user: str | None = None,
    redis_aof: bool | None = None,
    redis_appendfsync: str | None = None,
    timeout: float = START_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
) -> Settings:
    """Start the local stack in ``home`` (idempotent) and return its :class:`Settings`.

    ``redis_password`` (with optional ``redis_user``: an ACL user, the default user is then
    disabled) protects Redis; ``redis_aof`` turns on the append-only file (``appendfsync``
    defaults to ``always`` with AOF, so a SIGKILLed Redis loses nothing acknowledged).
    Already running → its settings are returned; asking for different Redis options than
    the running stack has raises :class:`StackError`. Raises :class:`StackError` (with the
    log tail) if a component does not come up within ``timeout`` seconds.
    """
    h = _home(home)
    if redis_password is not None:
        if not redis_password or _BAD_PW_CHARS & set(redis_password):
            raise StackError("redis_password must be non-empty, without whitespace, quotes, "
                             "backslashes or '#'")
    if redis_user is not None and (not redis_user or _BAD_PW_CHARS & set(redis_user)):
        raise StackError("redis_user must be non-empty, without whitespace or quotes")
    if redis_user is not None and redis_password is None:
        raise StackError("redis_user needs a redis_password")
    if redis_appendfsync not in (None, "always", "everysec", "no"):
        raise StackError("redis_appendfsync must be one of always, everysec, no")

    problems = check_prerequisites()
    if problems:
        raise StackError("cannot start the local stack: " + "; ".join(problems))

    h.mkdir(parents=True, exist_ok=True)
    with _flock(h / ".lock"):
        state = _read_state(h)
        if state is not None:
            kalive = _alive(state["kafka"].get("pid"), KAFKA_MARKER)
            ralive = _alive(state["redis"].get("pid"), REDIS_MARKER)
            if kalive and ralive:
                _check_same_options(state, redis_password, redis_user, redis_aof)
                return _settings_from_state(state)
            # partially/fully dead stack: stop what is left, start again below (same data)
            _stop_pid(state["kafka"].get("pid"), KAFKA_MARKER)
            _stop_pid(state["redis"].get("pid"), REDIS_MARKER)
            prev = state
        else:
            prev = None

        libs = ensure_kafka(progress)
        aof = bool(redis_aof) if redis_aof is not None else bool(prev and prev["redis"]["aof"])
        fsync = redis_appendfsync or ("always" if aof else "everysec")
        password = redis_password if redis_password is not None else (
            prev["redis"].get("password") if prev else None)
        user = redis_user if redis_user is not None else (prev["redis"].get("user") if prev else None)

        t0 = time.monotonic()
        for attempt in range(3):
            if prev and attempt == 0 and all(_port_free(p) for p in (
                    prev["kafka"]["port"], prev["kafka"]["controller_port"], prev["redis"]["port"])):
                kport, cport, rport = (prev["kafka"]["port"], prev["kafka"]["controller_port"],
                                       prev["redis"]["port"])
            else:
                kport, cport, rport = _free_ports(3)
            if progress:
                progress(f"starting Kafka {KAFKA_VERSION} on 127.0.0.1:{kport} and Redis on "
                         f"127.0.0.1:{rport} (home {h})…")
            kstate = _prepare_kafka(h, kport, cport, libs)
            rstate = _prepare_redis(h, rport, aof=aof, appendfsync=fsync, password=password,
                                    user=user)
            state = {"version": 1, "home": str(h), "started_at": time.time(),
                     "kafka": kstate, "redis": rstate,
                     "settings": {"kafka": f"127.0.0.1:{kport}", "redis": rstate["url"]}}
            kstate["pid"] = _launch_kafka(h, kstate)
            rstate["pid"] = _launch_redis(h, rstate)
            _write_state(h, state)
            deadline = time.monotonic() + timeout
            try:
                _wait_redis(rstate, rstate["pid"], deadline)
                _wait_kafka(kstate, kstate["pid"], deadline)
            except StackError:
                retry = attempt < 2 and (_bind_failed(Path(kstate["log"]))
                                         or _bind_failed(Path(rstate["log"])))
                _stop_pid(kstate["pid"], KAFKA_MARKER, timeout=10)
                _stop_pid(rstate["pid"], REDIS_MARKER, timeout=10)
                if retry:
                    continue
                with contextlib.suppress(OSError):
                    _state_path(h).unlink()
                raise
            state["startup_seconds"] = round(time.monotonic() - t0, 2)
            _write_state(h, state)
            return _settings_from_state(state)
    raise StackError("unreachable")  # pragma: no cover


def _check_same_options(state: dict, password, user, aof) -> None:
    r = state["redis"]
    diffs = []
    if password is not None and password != r.get("password"):
        diffs.append("redis_password")
    if user is not None and user != r.get("user"):
        diffs.append("redis_user")
    if aof is not None and bool(aof) != bool(r.get("aof")):
        diffs.append(f"redis_aof (running: {bool(r.get('aof'))})")
    if diffs:
        raise StackError(f"the local stack in {state['home']} is already running with different "
                         f"{', '.join(diffs)}; run `streamlearn stack down` first")


def down(home: Path | str | None = None, *, purge: bool = False,
         timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local stack (SIGTERM, SIGKILL after ``timeout``) and remove its state file.

    ``purge`` also deletes the Kafka and Redis data (and logs). Returns whether anything was
    running.
    """
    h = _home(home)
    if not h.exists():
        return False
    with _flock(h / ".lock"):
        state = _read_state(h)
        was = False
        if state is not None:
            was = _alive(state["kafka"].get("pid"), KAFKA_MARKER) or _alive(
                state["redis"].get("pid"), REDIS_MARKER)
            _stop_pid(state["redis"].get("pid"), REDIS_MARKER, timeout=timeout)
            _stop_pid(state["kafka"].get("pid"), KAFKA_MARKER, timeout=timeout)
            # the opt-in schema registry (schema_registry_server), when `up --schema-registry` started one
            _stop_pid(state.get("schema_registry", {}).get("pid"), "quarkus-run.jar", timeout=timeout)
            with contextlib.suppress(FileNotFoundError):
                _state_path(h).unlink()
        if purge:
            for sub in ("kafka", "redis"):
                shutil.rmtree(h / sub, ignore_errors=True)
    if purge:
        with contextlib.suppress(OSError):
            (h / ".lock").unlink()
            h.rmdir()
    return was


def status(home: Path | str | None = None) -> dict:
    """What runs in ``home``: ``{"home", "running", "kafka": {...}, "redis": {...}, "settings"}``.

    ``settings`` is masked (no password); ``running`` is true when both processes are alive.
    """
    h = _home(home)
    state = _read_state(h)
    if state is None:
        return {"home": str(h), "running": False, "state_file": None,
                "kafka": {"running": False}, "redis": {"running": False}, "settings": None}
    k, r = state["kafka"], state["redis"]
    kalive = _alive(k.get("pid"), KAFKA_MARKER)
    ralive = _alive(r.get("pid"), REDIS_MARKER)
    return {
        "home": str(h),
        "state_file": str(_state_path(h)),
        "running": kalive and ralive,
        "started_at": state.get("started_at"),
        "startup_seconds": state.get("startup_seconds"),
        "kafka": {"running": kalive, "listening": kalive and _listening(k["port"]),
                  "pid": k.get("pid"), "port": k["port"], "controller_port": k["controller_port"],
                  "bootstrap": state["settings"]["kafka"], "version": KAFKA_VERSION,
                  "cluster_id": k.get("cluster_id"), "log": k["log"], "data": k["data"]},
        "redis": {"running": ralive, "listening": ralive and _listening(r["port"]),
                  "pid": r.get("pid"), "port": r["port"], "url": mask_url(r["url"]),
                  "aof": r["aof"], "appendfsync": r.get("appendfsync"),
                  "auth": r.get("password") is not None, "user": r.get("user"),
                  "log": r["log"], "data": r["data"]},
        "settings": _settings_from_state(state).masked(),
    }


def _require_state(h: Path) -> dict:
    state = _read_state(h)
    if state is None:
        raise StackError(f"no local stack in {h}: run `streamlearn stack up` first")
    return state


def stop_kafka(home: Path | str | None = None, *, kill: bool = False,
               timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop only the broker (SIGTERM, or SIGKILL with ``kill``: a crash); keeps port and data."""
    _stop_service(home, "kafka", KAFKA_MARKER, kill, timeout)


def start_kafka(home: Path | str | None = None, *, timeout: float = START_TIMEOUT_S) -> Settings:
    """(Re)start the broker of an existing stack on its old port with its old data."""
    return _start_service(home, "kafka", KAFKA_MARKER, _launch_kafka, _wait_kafka, timeout)


def stop_redis(home: Path | str | None = None, *, kill: bool = False,
               timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop only Redis (SIGTERM, or SIGKILL with ``kill``); keeps port, config and data."""
    _stop_service(home, "redis", REDIS_MARKER, kill, timeout)


def start_redis(home: Path | str | None = None, *, timeout: float = START_TIMEOUT_S) -> Settings:
    """(Re)start Redis of an existing stack on its old port with its old data (AOF if on)."""
    return _start_service(home, "redis", REDIS_MARKER, _launch_redis, _wait_redis, timeout)


def _stop_service(home: Path | str | None, name: str, marker: str, kill: bool, timeout: float) -> None:
    h = _home(home)
    with _flock(h / ".lock"):
        state = _require_state(h)
        _stop_pid(state[name].get("pid"), marker, kill=kill, timeout=timeout)


def _start_service(home: Path | str | None, name: str, marker: str, launch: Callable, wait: Callable,
                   timeout: float) -> Settings:
    """Launch service ``name`` of the stack in ``home`` on its recorded port unless it runs."""
    h = _home(home)
    with _flock(h / ".lock"):
        state = _require_state(h)
        svc = state[name]
        if not _alive(svc.get("pid"), marker):
            svc["pid"] = launch(h, svc)
            _write_state(h, state)
            _wait_port_and(lambda d: wait(svc, svc["pid"], d), timeout)
        return _settings_from_state(state)


def _wait_port_and(wait: Callable[[float], None], timeout: float) -> None:
    wait(time.monotonic() + timeout)


def restart_kafka(home: Path | str | None = None, *, kill: bool = False,
                  timeout: float = START_TIMEOUT_S) -> Settings:
    """Stop (gracefully, or SIGKILL with ``kill``) and start the broker: same port, same data."""
    stop_kafka(home, kill=kill)
    return start_kafka(home, timeout=timeout)


def restart_redis(home: Path | str | None = None, *, kill: bool = False,
                  timeout: float = START_TIMEOUT_S) -> Settings:
    """Stop (gracefully, or SIGKILL with ``kill``) and start Redis: same port, same data.

    Data survives only what Redis persisted: with ``up(redis_aof=True)`` everything
    acknowledged; without AOF a restart starts empty (no RDB snapshots are configured).
    """
    stop_redis(home, kill=kill)
    return start_redis(home, timeout=timeout)


# --------------------------------------------------------------------------------------------
# python -m streamlearn.devstack.stack  (debugging and CI; the user CLI is streamlearn.cli)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m streamlearn.devstack.stack")
    p.add_argument("--home", type=Path, default=None)
    sub = p.add_subparsers(dest="cmd", required=True)
    pu = sub.add_parser("up")
    pu.add_argument("--aof", action="store_true", default=None)
    pu.add_argument("--redis-password-env", metavar="VAR",
                    help="read the Redis password from this environment variable")
    pd = sub.add_parser("down")
    pd.add_argument("--purge", action="store_true")
    sub.add_parser("status")
    sub.add_parser("fetch")
    for name in ("restart-kafka", "restart-redis"):
        sp = sub.add_parser(name)
        sp.add_argument("--kill", action="store_true")
    a = p.parse_args(argv)
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    try:
        if a.cmd == "fetch":
            print(ensure_kafka(say))
        elif a.cmd == "up":
            pw = os.environ.get(a.redis_password_env) if a.redis_password_env else None
            t0 = time.monotonic()
            s = up(a.home, redis_aof=a.aof, redis_password=pw, progress=say)
            say(f"local stack up ({time.monotonic() - t0:.1f}s)")
            print("\n".join(s.shell_lines()))
        elif a.cmd == "down":
            print("stopped" if down(a.home, purge=a.purge) else "not running")
        elif a.cmd == "status":
            print(json.dumps(status(a.home), indent=2))
        elif a.cmd == "restart-kafka":
            restart_kafka(a.home, kill=a.kill)
        elif a.cmd == "restart-redis":
            restart_redis(a.home, kill=a.kill)
    except (StackError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
