"""The zero-copy RESP reader (statestore/resp_into.py) over a socket pair: replies arrive in
random small pieces, so every header / payload / CRLF boundary falls inside a read."""
from __future__ import annotations

import random
import socket
import threading

import numpy as np
import pytest
import redis

from streamlearn.statestore.resp_into import hmget_into


class _Conn:
    """What hmget_into uses of a redis-py connection: a socket, a parser, send, disconnect."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._parser = object()
        self.sent: list[tuple] = []
        self.disconnected = False

    def send_command(self, *args) -> None:
        self.sent.append(args)

    def disconnect(self) -> None:
        self.disconnected = True


def _bulk(payload: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(payload), payload)


def _serve(reply: bytes, close: bool = False, seed: int = 0):
    """A connection whose server end sends ``reply`` in random 1..9000-byte pieces."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)

    def send() -> None:
        rng = random.Random(seed)
        pos = 0
        while pos < len(reply):
            n = rng.choice([1, 2, 3, 7, 100, 9000])
            theirs.sendall(reply[pos:pos + n])
            pos += n
        if close:
            theirs.close()

    threading.Thread(target=send, daemon=True).start()
    return _Conn(ours), theirs


@pytest.mark.parametrize("seed", range(3))
def test_an_array_reply_lands_in_the_destinations_in_order(seed):
    rng = np.random.default_rng(seed)
    values = [rng.normal(size=(300, 3)), rng.normal(size=(300, 3)).astype(np.float32), rng.normal(size=(1,))]
    reply = b"*3\r\n" + b"".join(_bulk(v.astype(v.dtype.newbyteorder("<")).tobytes()) for v in values)
    conn, _ = _serve(reply, seed=seed)
    dests = [np.empty_like(v) for v in values]
    seen: list[int] = []
    assert hmget_into(conn, "k", [0, 1, 2], dests, seen.append) == []
    assert conn.sent == [("HMGET", "k", 0, 1, 2)]
    for v, d in zip(values, dests):
        np.testing.assert_array_equal(v, d)
    assert seen == [0, 1, 2] and not conn.disconnected


@pytest.mark.parametrize("nil", [b"$-1\r\n", b"_\r\n"])  # RESP2 and RESP3 nulls
def test_missing_and_wrong_size_values_are_reported_and_the_stream_stays_aligned(nil):
    good = np.arange(4, dtype=np.float64)
    reply = b"*4\r\n" + nil + _bulk(b"short") + _bulk(good.tobytes()) + _bulk(good[::-1].copy().tobytes())
    conn, _ = _serve(reply)
    dests = [np.zeros(4) for _ in range(4)]
    seen: list[int] = []
    assert hmget_into(conn, "k", [0, 1, 2, 3], dests, seen.append) == [0, 1]
    assert seen == [2, 3]
    np.testing.assert_array_equal(dests[2], good)
    np.testing.assert_array_equal(dests[3], good[::-1])
    assert not dests[0].any() and not dests[1].any()


def test_an_error_reply_is_a_response_error():
    conn, _ = _serve(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        hmget_into(conn, "k", [0], [np.zeros(2)])


def test_a_connection_closed_mid_payload_is_a_connection_error_and_disconnects():
    payload = np.arange(1000, dtype=np.float64).tobytes()
    conn, _ = _serve(b"*1\r\n$%d\r\n" % len(payload) + payload[:5000], close=True)
    with pytest.raises(redis.ConnectionError, match="closed"):
        hmget_into(conn, "k", [0], [np.zeros(1000)])
    assert conn.disconnected


def test_a_silent_server_times_out_and_disconnects():
    conn, theirs = _serve(b"*1\r\n")
    conn._sock.settimeout(0.2)
    with pytest.raises(redis.TimeoutError):
        hmget_into(conn, "k", [0], [np.zeros(2)])
    assert conn.disconnected
    theirs.close()
