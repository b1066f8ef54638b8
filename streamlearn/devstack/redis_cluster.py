"""A local Redis Cluster: N masters (and R replicas each) of Debian's ``redis-server`` on free
loopback ports, joined by ``redis-cli --cluster create``.

Each node gets its own directory under ``<home>/redis/node-<i>/`` (config, log, data with its
``nodes.conf``), a port below the ephemeral range and an explicit ``cluster-port`` (the bus
port; the default, port + 10000, may be taken). The nodes' ``nodes.conf`` keeps the
cluster's membership, so a restarted node rejoins by itself. ``cluster-node-timeout`` is short
(2 s) so that a killed master's replica is promoted within seconds in local fault tests.

The stack's state records the nodes under ``redis.cluster.nodes`` and the URL
``redis+cluster://[user:pass@]127.0.0.1:p1,127.0.0.1:p2,…/`` naming them all as seeds
(:mod:`streamlearn.config` builds a redis-py ``RedisCluster`` from it).
"""
from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis

from streamlearn.devstack.jars import check_prerequisites
from streamlearn.devstack.procs import alive, log_tail, port_free, spawn, stop_pid
from streamlearn.devstack.redis_server import redis_conf
from streamlearn.devstack.state import REDIS_MARKER, StackError

#: how long a master may be unreachable before its replica takes over (ms)
NODE_TIMEOUT_MS = 2000


def _fixed_ports(n: int) -> list[int]:
    """``n`` free ports below the kernel's ephemeral range: a node restarted after a kill must get
    its port back, and an ephemeral port may meanwhile be some client connection's local port."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(max(1024, low - 12_000), low)
        if port not in ports and port_free(port):
            ports.append(port)
    return ports


def cluster_url(ports: list[int], password: str | None, user: str | None) -> str:
    auth = f"{quote(user or '', safe='')}:{quote(password, safe='')}@" if password is not None else ""
    return "redis+cluster://" + auth + ",".join(f"127.0.0.1:{p}" for p in ports) + "/"


def prepare_cluster(home: Path, masters: int, replicas: int, *, aof: bool, appendfsync: str,
                    password: str | None, user: str | None, maxmemory: str | None = None) -> dict:
    """Write every node's config (ports chosen now) and return the stack's ``redis`` state."""
    if masters < 1 or replicas < 0:
        raise StackError("a Redis Cluster needs at least 1 master and 0 or more replicas per master")
    n = masters * (1 + replicas)
    ports = _fixed_ports(2 * n)
    nodes = []
    for i in range(n):
        port, bus = ports[2 * i], ports[2 * i + 1]
        d = home / "redis" / f"node-{i}"
        (d / "data").mkdir(parents=True, exist_ok=True)
        extra = ["cluster-enabled yes", f"cluster-port {bus}", "cluster-config-file nodes.conf",
                 f"cluster-node-timeout {NODE_TIMEOUT_MS}", "cluster-require-full-coverage no",
                 # a master resharded down to no slots stays a master: failovers keep their majority
                 "cluster-allow-replica-migration no"]
        if maxmemory:
            extra += [f"maxmemory {maxmemory}", "maxmemory-policy noeviction"]
        if password is not None:
            # replicas authenticate to their master with the same credentials
            extra += [f"masterauth {password}"] + ([f"masteruser {user}"] if user else [])
        conf = redis_conf(port, d / "data", aof=aof, appendfsync=appendfsync, password=password, user=user)
        (d / "redis.conf").write_text(conf + "\n".join(extra) + "\n")
        (d / "redis.conf").chmod(0o600)
        nodes.append({"port": port, "bus_port": bus, "config": str(d / "redis.conf"), "log": str(d / "redis.log"),
                      "data": str(d / "data"), "dir": str(d), "pid": None})
    return {"port": nodes[0]["port"], "aof": aof, "appendfsync": appendfsync, "password": password, "user": user,
            "config": nodes[0]["config"], "log": nodes[0]["log"], "data": str(home / "redis"),
            "url": cluster_url([nd["port"] for nd in nodes], password, user),
            "cluster": {"masters": masters, "replicas": replicas, "maxmemory": maxmemory, "nodes": nodes}}


def launch_cluster(rstate: dict) -> int:
    """Start every node that is not running; returns the first node's pid."""
    server = shutil.which("redis-server")
    if server is None:
        raise StackError("; ".join(check_prerequisites()))
    for node in rstate["cluster"]["nodes"]:
        if not alive(node.get("pid"), REDIS_MARKER):
            node["pid"] = spawn([server, node["config"]], log=Path(node["log"]), cwd=Path(node["dir"]))
    return rstate["cluster"]["nodes"][0]["pid"]


def node_client(rstate: dict, port: int, **kwargs) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, username=rstate.get("user"), password=rstate.get("password"),
                       socket_connect_timeout=1, socket_timeout=5, **kwargs)


def _cluster_ok(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER", "INFO").decode()
    return "cluster_state:ok" in info


def wait_cluster(rstate: dict, deadline: float) -> None:
    """Wait for every node to answer, create the cluster if its nodes are not joined yet, then
    wait until every node reports ``cluster_state:ok``."""
    nodes = rstate["cluster"]["nodes"]
    clients = [node_client(rstate, nd["port"]) for nd in nodes]
    try:
        for nd, c in zip(nodes, clients):
            _wait(lambda c=c: c.ping(), nd, deadline, "PING")
        info = clients[0].execute_command("CLUSTER", "INFO").decode()
        if int(info.split("cluster_slots_assigned:")[1].split()[0]) == 0:  # a new cluster (a restart has its nodes.conf)
            _create(rstate)
        for nd, c in zip(nodes, clients):
            _wait(lambda c=c: _cluster_ok(c), nd, deadline, "cluster_state:ok")
    finally:
        for c in clients:
            c.close()


def _create(rstate: dict) -> None:
    if rstate["cluster"]["masters"] < 3:  # redis-cli --cluster create wants 3 masters or more
        _create_small(rstate)
        return
    cmd = [shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
           *(f"127.0.0.1:{nd['port']}" for nd in rstate["cluster"]["nodes"]),
           "--cluster-replicas", str(rstate["cluster"]["replicas"]), "--cluster-yes"]
    cmd += auth_args(rstate)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise StackError(f"redis-cli --cluster create failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def _create_small(rstate: dict) -> None:
    """A cluster of 1 or 2 masters (and their replicas), joined by hand: slots split evenly."""
    nodes, m = rstate["cluster"]["nodes"], rstate["cluster"]["masters"]
    clients = [node_client(rstate, nd["port"]) for nd in nodes]
    try:
        for c in clients[1:]:
            c.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0]["port"], nodes[0]["bus_port"])
        for i, c in enumerate(clients[:m]):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * 16384 // m, (i + 1) * 16384 // m - 1)
        ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients[:m]]
        for j, c in enumerate(clients[m:]):
            deadline = time.monotonic() + 30
            while True:  # a replica can follow its master once it has heard of it
                try:
                    c.execute_command("CLUSTER", "REPLICATE", ids[j % m])
                    break
                except redis.ResponseError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
    finally:
        for c in clients:
            c.close()


def auth_args(rstate: dict) -> list[str]:
    """redis-cli's arguments for the cluster's credentials (``--no-auth-warning``: the
    password is on the command line of a local, short-lived process)."""
    if rstate.get("password") is None:
        return []
    return (["--user", rstate["user"]] if rstate.get("user") else []) + ["-a", rstate["password"], "--no-auth-warning"]


def _wait(check, node: dict, deadline: float, what: str) -> None:
    last = None
    while True:
        if not alive(node.get("pid"), REDIS_MARKER):
            raise StackError(f"redis-server (cluster node {node['port']}) exited during startup "
                             f"(log {node['log']}):\n{log_tail(Path(node['log']))}")
        try:
            if check():
                return
        except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError, redis.exceptions.ResponseError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise StackError(f"Redis cluster node {node['port']} did not reach {what} in time (last error: {last}; "
                             f"log {node['log']}):\n{log_tail(Path(node['log']))}")
        time.sleep(0.1)


# -- faults and operations on a running local cluster (chaos tests, benchmarks) ----------------
def masters(rstate: dict) -> dict[str, dict]:
    """node id -> {"port", "slots": [slot, …]} of the masters, asked of any live node."""
    for node in rstate["cluster"]["nodes"]:
        if not alive(node.get("pid"), REDIS_MARKER):
            continue
        client = node_client(rstate, node["port"])
        try:
            out = {}
            for line in client.execute_command("CLUSTER", "NODES").decode().splitlines():
                f = line.split()
                if "master" not in f[2] or "fail" in f[2]:
                    continue
                slots = []
                for r in f[8:]:
                    if r.startswith("["):
                        continue  # a slot being migrated
                    lo, _, hi = r.partition("-")
                    slots.extend(range(int(lo), int(hi or lo) + 1))
                out[f[0]] = {"port": int(f[1].split(":")[1].split("@")[0]), "slots": slots}
            return out
        except redis.RedisError:
            continue
        finally:
            client.close()
    raise StackError("no live Redis Cluster node answered")


def kill_master(rstate: dict, slot: int, timeout: float = 60.0) -> int:
    """SIGKILL the master serving ``slot``, wait until a replica took its slots over (cluster
    state ok again), then start the killed node again (it rejoins as a replica). Returns the
    killed node's port. ``rstate`` is updated with the new pid."""
    owner = next(m for m in masters(rstate).values() if slot in m["slots"])
    node = next(n for n in rstate["cluster"]["nodes"] if n["port"] == owner["port"])
    stop_pid(node["pid"], REDIS_MARKER, kill=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            now = masters(rstate)
            if any(slot in m["slots"] and m["port"] != owner["port"] for m in now.values()):
                break
        except StackError:
            pass
        if time.monotonic() > deadline:
            raise StackError(f"no replica took over slot {slot} within {timeout} s")
        time.sleep(0.2)
    launch_cluster(rstate)
    deadline = time.monotonic() + timeout
    wait_cluster(rstate, deadline)
    # back as a replica: wait until it holds its master's data, or a second failure of that
    # master (before this one synced) would leave the slots with no replica able to take over
    client = node_client(rstate, node["port"])
    try:
        _wait(lambda: client.info("replication").get("master_link_status") == "up", node, deadline,
              "a synced replica")
    finally:
        client.close()
    return owner["port"]


def reshard(rstate: dict, slot: int, timeout: float = 300.0) -> tuple[int, int]:
    """Move ``slot`` (and the slots below it on the same master) to another master with
    ``redis-cli --cluster reshard``, while clients keep using the cluster. Returns (from
    port, to port)."""
    now = masters(rstate)
    src_id, src = next((i, m) for i, m in now.items() if slot in m["slots"])
    dst_id, dst = min(((i, m) for i, m in now.items() if i != src_id), key=lambda im: len(im[1]["slots"]))
    n = sum(1 for s in src["slots"] if s <= slot)  # redis-cli takes a source's slots from the lowest
    cmd = [shutil.which("redis-cli") or "redis-cli", "--cluster", "reshard", f"127.0.0.1:{src['port']}",
           "--cluster-from", src_id, "--cluster-to", dst_id, "--cluster-slots", str(n), "--cluster-yes",
           *auth_args(rstate)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise StackError(f"redis-cli --cluster reshard failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return src["port"], dst["port"]
