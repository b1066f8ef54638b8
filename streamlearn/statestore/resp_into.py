"""Redis RESP straight between sockets and numpy arrays: state chunks are read into, and
written from, the arrays themselves.

Why: redis-py (with hiredis) makes every bulk reply a ``bytes`` object, and the state then
copies those bytes into its own arrays. For an 80 MB key that extra pass over memory cost
~35 ms of a ~160 ms commit (``benchmarks`` ``state.push``). Here the socket reads land in
the destination arrays themselves: the bytes are touched once, by the kernel's copy. Writes
the same way round: :func:`exec_multi` hands the chunks' own buffers to ``sendmsg``, up to
1,024 per call. (redis-py's pure-Python packer, which the settings' clients use, already
sends large values by reference, but with one ``sendall`` and several Python calls per
argument: a commit of FM's 4,096-chunk key took 162 ms that way and 135 ms this way; an
80 MB key of 77 chunks is the same either way.)

This talks to a connection redis-py has already opened and authenticated (``conn._sock``)
and speaks just enough RESP (2 and 3) for the replies it asks for. It is used only for
commands it sends itself on a connection with nothing else in flight; any error leaves
the connection disconnected (its stream position is unknown), as redis-py does.
"""
from __future__ import annotations

import socket
import ssl
import sys
from typing import Callable, TypeVar

import numpy as np
import redis

_CRLF = b"\r\n"
_HEADER_READ = 4096  # headers are a few bytes; a payload is read into its destination
_INLINE_MAX = 4096  # arguments up to this size are copied into the command's framing
_IOV_MAX = 1024  # buffers per sendmsg call (Linux' IOV_MAX)
T = TypeVar("T")


class _Reply:
    """RESP reader over one connection's socket."""

    def __init__(self, conn: redis.connection.AbstractConnection):
        reader = getattr(conn._parser, "_reader", None)
        if reader is not None and reader.has_data():  # pragma: no cover - redis-py never leaves replies unread here
            raise redis.ConnectionError("unread reply data on the connection")
        self.sock: socket.socket = conn._sock
        self.buf = bytearray()
        self.pos = 0

    def _recv(self) -> None:
        data = self.sock.recv(_HEADER_READ)
        if not data:
            raise ConnectionError("connection closed by the server")
        del self.buf[:self.pos]
        self.pos = 0
        self.buf += data

    def line(self) -> bytes:
        while True:
            end = self.buf.find(_CRLF, self.pos)
            if end >= 0:
                out = bytes(self.buf[self.pos:end])
                self.pos = end + 2
                return out
            self._recv()

    def into(self, dest: memoryview) -> None:
        """Fill ``dest`` with the next ``len(dest)`` bytes of the stream."""
        have = min(len(self.buf) - self.pos, len(dest))
        dest[:have] = self.buf[self.pos:self.pos + have]
        self.pos += have
        while have < len(dest):
            n = self.sock.recv_into(dest[have:])
            if not n:
                raise ConnectionError("connection closed by the server")
            have += n

    def skip(self, n: int) -> None:
        while len(self.buf) - self.pos < n:
            n -= len(self.buf) - self.pos
            self.buf.clear()
            self.pos = 0
            self._recv()
        self.pos += n

    def value(self):
        """One small reply as Python objects (bytes, int, list, None, ResponseError)."""
        head = self.line()
        kind, rest = head[:1], head[1:]
        if kind in (b"+", b":"):
            return int(rest) if kind == b":" else rest
        if kind == b"-":
            return redis.ResponseError(rest.decode("utf-8", "replace"))
        if kind == b"_":
            return None
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            out = bytearray(n)
            self.into(memoryview(out))
            self.skip(2)
            return bytes(out)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.value() for _ in range(n)]
        if kind == b"%":  # RESP3 map (HGETALL): as RESP2's flat [field, value, ...] list
            return [self.value() for _ in range(2 * int(rest))]
        raise redis.ConnectionError(f"unexpected reply type {kind!r}")

    def header(self) -> bytes:
        """The next reply's header line; an error reply raises :class:`redis.ResponseError`."""
        head = self.line()
        if head[:1] == b"-":
            raise redis.ResponseError(head[1:].decode("utf-8", "replace"))
        return head

    def array_into(self, dests: list[np.ndarray], filled: Callable[[int], object] | None = None) -> list[int]:
        """An array reply of bulk strings, element ``i`` into ``dests[i]`` (exact size), then
        ``filled(i)``. Returns the indices that were missing (nil) or had the wrong size
        (left unfilled, not passed to ``filled``)."""
        head = self.header()
        if head[:1] != b"*" or int(head[1:]) != len(dests):
            raise redis.ConnectionError(f"expected an array of {len(dests)}, got {head[:40]!r}")
        bad = []
        for i, dest in enumerate(dests):
            head = self.line()
            n = -1 if head[:1] == b"_" else int(head[1:])
            if n < 0:
                bad.append(i)
                continue
            if n != dest.nbytes:
                self.skip(n + 2)
                bad.append(i)
                continue
            self.into(memoryview(dest).cast("B"))
            self.skip(2)
            if sys.byteorder == "big":  # pragma: no cover - stored little-endian
                dest.byteswap(inplace=True)
            if filled is not None:
                filled(i)
        return bad


def _guarded(conn, read, send: Callable[[], object] | None = None):
    try:
        if send is not None:
            send()
        return read(_Reply(conn))
    except socket.timeout:
        conn.disconnect()
        raise redis.TimeoutError("timeout talking to Redis (state chunks)") from None
    except OSError as exc:
        conn.disconnect()
        raise redis.ConnectionError(f"error talking to Redis (state chunks): {exc}") from None
    except BaseException:
        conn.disconnect()
        raise


def hmget_into(conn, key: str, fields: list, dests: list[np.ndarray],
               filled: Callable[[int], object] | None = None) -> list[int]:
    """``HMGET key fields…`` on ``conn`` (e.g. a pipeline's connection under WATCH), each
    value read into the matching C-contiguous array, then ``filled(index)``. Returns the
    indices not filled."""
    conn.send_command("HMGET", key, *fields)
    return _guarded(conn, lambda r: r.array_into(dests, filled))


def multi_into(client: redis.Redis, small: list[tuple], reads: list[tuple[str, list, list[np.ndarray]]]
               ) -> tuple[list, list[list[int]]]:
    """One MULTI / EXEC of the ``small`` commands (replies as Python values; a hash map as
    a flat [field, value, ...] list) followed by ``HMGET key fields…`` for each ``(key,
    fields, dests)`` of ``reads`` (each value read into the matching array): everything as of
    one instant. Returns the small replies and, per read, the indices not filled."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        commands = [*small, *(("HMGET", key, *fields) for key, fields, _ in reads)]
        return _transaction(conn, commands, lambda r: (_values(r, len(small)),
                                                       [r.array_into(dests) for _, _, dests in reads]))
    finally:
        pool.release(conn)


def versioned_hmget_into(client: redis.Redis, versions_key: str, name: str, key: str, fields: list,
                         dests: list[np.ndarray]) -> tuple[bytes | None, list[int]]:
    """``HGET versions_key name`` and ``HMGET key fields…`` of one instant (MULTI / EXEC):
    the version value and the indices not filled."""
    (version,), (bad,) = multi_into(client, [("HGET", versions_key, name)], [(key, fields, dests)])
    return version, bad


def _buffers(commands: list[tuple]) -> list:
    """RESP framing of ``commands`` as a list of buffers: small arguments copied into the
    framing, large ones (chunk memoryviews) referenced as they are."""
    out: list = []
    small = bytearray()
    for args in commands:
        small += b"*%d\r\n" % len(args)
        for a in args:
            if isinstance(a, str):
                a = a.encode("utf-8")
            elif isinstance(a, (int, np.integer)):
                a = b"%d" % int(a)
            elif isinstance(a, (float, np.floating)):
                a = repr(float(a)).encode()
            elif not isinstance(a, (bytes, bytearray, memoryview)):
                raise TypeError(f"cannot send a {type(a).__name__} argument")
            n = a.nbytes if isinstance(a, memoryview) else len(a)
            small += b"$%d\r\n" % n
            if n <= _INLINE_MAX:
                small += a
            else:
                out.append(bytes(small))
                out.append(a)
                small = bytearray()
            small += _CRLF
    out.append(bytes(small))
    return out


def _sendmsg_all(sock: socket.socket, buffers: list) -> None:
    views = [memoryview(b).cast("B") for b in buffers]
    if isinstance(sock, ssl.SSLSocket):  # TLS (rediss://) has no sendmsg
        for v in views:
            sock.sendall(v)
        return
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i:i + _IOV_MAX])
        while sent:
            n = len(views[i])
            if sent < n:
                views[i] = views[i][sent:]
                break
            sent -= n
            i += 1


def _values(r: _Reply, n: int) -> list:
    """The next ``n`` replies as Python values; the first error among them is raised."""
    values = [r.value() for _ in range(n)]
    for v in values:
        if isinstance(v, redis.ResponseError):
            raise v
    return values


def _transaction(conn, commands: list[tuple], results: Callable[[_Reply], T]) -> T:
    """Send ``MULTI``, ``commands``, ``EXEC`` on ``conn`` (the arguments' buffers as they
    are), read the queueing replies and EXEC's header, then let ``results`` read EXEC's
    ``len(commands)`` elements. A watched key that changed (EXEC answered nil) raises
    :class:`redis.WatchError`; a command refused when queued raises its error."""
    def read(r: _Reply) -> T:
        queued = [r.value() for _ in range(len(commands) + 1)]  # +OK, then +QUEUED each (or errors)
        try:
            head = r.header()
        except redis.ResponseError:  # EXECABORT: a command was refused when queued
            raise next(q for q in queued if isinstance(q, redis.ResponseError)) from None
        if head in (b"*-1", b"_"):
            raise redis.WatchError("a watched key changed before EXEC")
        if head != b"*%d" % len(commands):
            raise redis.ConnectionError(f"unexpected EXEC reply {head[:40]!r}")
        return results(r)

    buffers = _buffers([("MULTI",), *commands, ("EXEC",)])
    if conn._sock is None:
        conn.connect()
    return _guarded(conn, read, lambda: _sendmsg_all(conn._sock, buffers))


def exec_multi(conn, commands: list[tuple]) -> list:
    """``MULTI``, ``commands``, ``EXEC`` on ``conn`` (e.g. a pipeline's connection holding a
    ``WATCH``), the arguments' buffers sent as they are. Returns EXEC's replies; raises
    :class:`redis.WatchError` when a watched key changed (EXEC answered nil) and the first
    error a command was queued or run with."""
    return _transaction(conn, commands, lambda r: _values(r, len(commands)))


def exec_watched(pipe, commands: list[tuple], what: str) -> list:
    """:func:`exec_multi` on a pipeline holding a ``WATCH``, then reset it. A connection lost
    during EXEC becomes :class:`redis.WatchError` (as redis-py does for a watching pipeline):
    the EXEC may or may not have been applied, and the caller's retry finds out from what the
    transaction records (``what`` names it in the message)."""
    try:
        return exec_multi(pipe.connection, commands)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise redis.WatchError(f"connection lost during {what}'s EXEC: {exc}") from exc
    finally:
        pipe.reset()
