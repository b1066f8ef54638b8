"""Open a page in real headless Chromium (Debian's ``/usr/bin/chromium``) and ask it what it
rendered, over the Chrome DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes, commands on fd 3, replies and events on fd 4), so no
websocket client and no browser download are needed.

``render(path)`` returns the console errors and uncaught exceptions the page produced, the
state of every ``<img>`` (loaded = complete with a natural width), the page's text and a
PNG screenshot of the whole page.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Rendered:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    images: list[dict] = field(default_factory=list)  # {"alt", "complete", "width", "height"}
    text: str = ""
    screenshot: bytes = b""
    size: tuple[int, int] = (0, 0)  # the page's scroll width and height


class _Pipe:
    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int):
        self.proc, self.w, self.r = proc, write_fd, read_fd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev["method"] == method:
                return self.events.pop(i)
        while True:
            ev = self._next(deadline)
            if ev.get("method") == method:
                return ev
            if "method" in ev:
                self.events.append(ev)

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed its pipe (exit {self.proc.poll()})")
                self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\0")
        return json.loads(raw)


def render(path: Path, width: int = 1200, timeout: float = 120.0) -> Rendered:
    """Load ``path`` (a local HTML file) and report what the browser made of it."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="sl-chromium-")
    def _child_fds() -> None:  # the child finds the pipe ends on fds 3 and 4 (moved high first: no clobbering)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        os.dup2(high[0], 3)
        os.dup2(high[1], 4)

    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
         f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank"],
        preexec_fn=_child_fds, close_fds=False,  # os.dup2's copies are inheritable; the rest is close-on-exec
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = _Pipe(proc, to_browser_w, from_browser_r)
    out = Rendered()
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        probe = ("JSON.stringify({images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,"
                 " width: i.naturalWidth, height: i.naturalHeight})), text: document.body.innerText,"
                 " w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight})")
        page = json.loads(pipe.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                    session=session)["result"]["value"])
        out.images, out.text, out.size = page["images"], page["text"], (page["w"], page["h"])
        shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": page["w"], "height": page["h"],
                                                             "scale": 1}}, session=session, timeout=timeout)
        out.screenshot = base64.b64decode(shot["data"])
        for ev in pipe.events:
            p = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                out.errors.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif ev["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif ev["method"] == "Network.loadingFailed":
                out.errors.append(f"load failed: {p.get('errorText')}")
        pipe.send("Browser.close")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(to_browser_w)
        os.close(from_browser_r)
        shutil.rmtree(profile, ignore_errors=True)
    return out
