"""The redis-py internals streamlearn relies on, checked against the installed redis-py and a
real redis-server, so that an upgrade which changes them fails here instead of in a worker.

statestore/resp_into.py reads replies straight from ``conn._sock`` (after checking
``conn._parser._reader.has_data()``), sends on a pipeline's ``connection`` under WATCH and
gets connections with ``pool.get_connection()``; config.py builds the pure-Python
``redis.connection.PythonRespSerializer`` with ``redis._parsers.encoders.Encoder`` and swaps
``pipe.__class__`` to a ``redis.client.Pipeline`` subclass. pyproject.toml pins redis-py to
the range these were tested with.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from packaging.specifiers import SpecifierSet

from streamlearn.config import Settings
from streamlearn.statestore.resp_into import exec_multi, hmget_into

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server not found on PATH (apt-get install -y redis-server)", pytrace=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_installed_redis_py_is_in_the_pinned_range():
    pin = re.search(r'"redis([<>=!~][^"]*)"', PYPROJECT.read_text())
    assert pin, "pyproject.toml pins redis-py"
    assert redis.__version__ in SpecifierSet(pin.group(1)), (redis.__version__, pin.group(1))


def test_the_settings_client_uses_the_python_packer_and_a_pipeline_subclass(redis_url):
    from redis._parsers.encoders import Encoder
    from redis.connection import PythonRespSerializer

    client = Settings(kafka="unused:9092", redis=redis_url).redis_client()
    try:
        packer = client.connection_pool.connection_kwargs["command_packer"]
        assert isinstance(packer, PythonRespSerializer)
        big = b"x" * 10_000
        packed = packer.pack("SET", "k", big)
        assert any(part is big for part in packed), "values over the cutoff are sent by reference"
        assert Encoder("utf-8", "strict", False).encode("é") == "é".encode()
        pipe = client.pipeline()
        assert isinstance(pipe, redis.client.Pipeline) and type(pipe) is not redis.client.Pipeline
        assert type(pipe).__mro__[1] is redis.client.Pipeline, "__class__ swapped to a direct subclass"
        pipe.set("sl-private-api", b"1")
        pipe.get("sl-private-api")
        assert pipe.execute() == [True, b"1"]
        assert client.execute_command("GET", "sl-private-api") == b"1"
    finally:
        client.close()


def test_a_pool_connection_exposes_its_socket_and_reader(redis_url):
    client = redis.Redis.from_url(redis_url)
    pool = client.connection_pool
    conn = pool.get_connection()  # no command name: redis-py >= 5.3's signature
    try:
        assert isinstance(conn._sock, socket.socket), "get_connection() returns a connected connection"
        reader = getattr(conn._parser, "_reader", None)
        if reader is not None:  # hiredis
            assert reader.has_data() is False
        conn.send_command("PING")
        assert conn.read_response() in (b"PONG", "PONG", True)
    finally:
        pool.release(conn)
        client.close()


def test_resp_into_reads_and_writes_on_real_connections(redis_url):
    """hmget_into on a pool connection and exec_multi on a pipeline's connection under WATCH."""
    client = Settings(kafka="unused:9092", redis=redis_url).redis_client()
    try:
        a, b = np.arange(6, dtype=np.float64), np.full(4, 7.0)
        with client.pipeline(transaction=True) as pipe:
            pipe.watch("sl-api-h")
            assert pipe.connection is not None, "WATCH binds the pipeline to one connection"
            assert exec_multi(pipe.connection, [("HSET", "sl-api-h", "a", memoryview(a).cast("B")),
                                                ("HSET", "sl-api-h", "b", memoryview(b).cast("B"))]) == [1, 1]
            pipe.reset()
        dests = [np.zeros(6), np.zeros(4), np.zeros(2)]
        filled: list[int] = []
        conn = client.connection_pool.get_connection()
        try:
            missing = hmget_into(conn, "sl-api-h", ["a", "b", "nope"], dests, filled.append)
        finally:
            client.connection_pool.release(conn)
        assert missing == [2] and filled == [0, 1]
        np.testing.assert_array_equal(dests[0], a)
        np.testing.assert_array_equal(dests[1], b)
    finally:
        client.close()
