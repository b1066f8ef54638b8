"""Process supervision for the local stack: start in a session of its own, check, stop, read logs.

Standard library only (see :mod:`streamlearn.devstack.state`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

STOP_TIMEOUT_S = 30.0


_CHILDREN: dict[int, subprocess.Popen] = {}


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def alive(pid: int | None, marker: str | None = None) -> bool:
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


def stop_pid(pid: int | None, marker: str, *, timeout: float = STOP_TIMEOUT_S,
              kill: bool = False) -> None:
    if not pid or not alive(pid, marker):
        return
    _signal(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid, marker):
            return
        time.sleep(0.05)
    _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(pid, marker):
        time.sleep(0.05)


def spawn(cmd: list[str], *, log: Path, cwd: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== streamlearn: starting at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def tail_text(text: str, lines: int = 40) -> str:
    return "\n".join("    " + ln for ln in text.rstrip().splitlines()[-lines:])


def log_tail(path: Path, lines: int = 40) -> str:
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
    return tail_text(text, lines)


def free_ports(n: int) -> list[int]:
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


def port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def listening(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def terminate(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM a child that is still running (it finishes what it has in hand and leaves);
    SIGKILL it if it has not left after ``timeout`` seconds. Returns its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
