"""An opt-in Confluent-compatible schema registry for the local stack: Apicurio Registry.

``streamlearn stack up --schema-registry`` starts Apicurio Registry (its Quarkus fast-jar,
``io.apicurio:apicurio-registry-app:<ver>:tar.gz:all`` from Maven Central, fetched once
into the cache, ~160 MB) on a free loopback port with its default in-memory H2 store, and
records it in the stack's state file; ``stack down`` stops it. Its Confluent API is at
``<url>`` = ``http://127.0.0.1:PORT/apis/ccompat/v7`` (``STREAMLEARN_SCHEMA_REGISTRY_URL``).

Apicurio 3.x is compiled for Java 21 (class file version 65): Java 17 fails with
``UnsupportedClassVersionError``. The default Java here is 17, so a Java >= 21 is looked
for in ``$STREAMLEARN_REGISTRY_JAVA_HOME``, ``$JAVA_HOME``, ``PATH`` and ``/usr/lib/jvm``.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

from streamlearn.devstack.procs import alive, free_ports, log_tail, spawn, stop_pid, tail_text
from streamlearn.devstack.state import StackError, cache_dir, flock, read_state, require_state, resolve_home, write_state

APICURIO_VERSION = "3.3.3"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
MARKER = "quarkus-run.jar"
JAVA_MIN = 21
CCOMPAT_PATH = "/apis/ccompat/v7"


def _java_major(java: str) -> int:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.search(r'version "(\d+)', out)
    return int(m.group(1)) if m else 0


def find_java() -> str | None:
    """A ``java`` of version >= 21, or None."""
    candidates = [os.path.join(h, "bin", "java") for h in (os.environ.get("STREAMLEARN_REGISTRY_JAVA_HOME"),
                                                            os.environ.get("JAVA_HOME")) if h]
    candidates += [shutil.which("java") or ""] + sorted(glob.glob("/usr/lib/jvm/*/bin/java"), reverse=True)
    for java in dict.fromkeys(c for c in candidates if c and os.access(c, os.X_OK)):
        if _java_major(java) >= JAVA_MIN:
            return java
    return None


def _app_dir() -> Path:
    return cache_dir() / f"apicurio-registry-{APICURIO_VERSION}"


def ensure_apicurio(progress=None) -> Path:
    """The unpacked fast-jar directory, fetched with Maven the first time (cached, locked)."""
    app = _app_dir()
    if (app / MARKER).exists():
        return app
    with flock(app.parent / f".apicurio-{APICURIO_VERSION}.lock"):
        if (app / MARKER).exists():
            return app
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("Maven (mvn) is needed once to fetch Apicurio Registry")
        if progress:
            progress(f"fetching Apicurio Registry {APICURIO_VERSION} with Maven into {app} (once, ~160 MB)…")
        tmp = app.parent / f".apicurio-{APICURIO_VERSION}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            cmd = [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={tmp}"]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  text=True, timeout=900, cwd=tmp)
            archives = list(tmp.glob("*.tar.gz"))
            if proc.returncode != 0 or not archives:
                raise StackError(f"fetching {ARTIFACT} with Maven failed (exit {proc.returncode}): "
                                       f"{tail_text(proc.stdout)}")
            with tarfile.open(archives[0]) as tar:
                tar.extractall(tmp / "app", filter="data")
            shutil.rmtree(app, ignore_errors=True)
            (tmp / "app").rename(app)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return app


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def up(home=None, *, timeout: float = 180.0, progress=None) -> str:
    """Start the registry beside the running local stack in ``home`` (idempotent); its Confluent API URL."""
    h = resolve_home(home)
    java = find_java()
    if java is None:
        raise StackError(f"Apicurio Registry {APICURIO_VERSION} needs Java {JAVA_MIN}+ (found none; "
                               "set STREAMLEARN_REGISTRY_JAVA_HOME)")
    app = ensure_apicurio(progress)
    with flock(h / ".lock"):
        state = require_state(h)
        reg = state.get("schema_registry")
        if reg and alive(reg["pid"], MARKER):
            return reg["url"]
        port = free_ports(1)[0]
        url = f"http://127.0.0.1:{port}{CCOMPAT_PATH}"
        log = h / "schema-registry" / "registry.log"
        # the management interface would take 0.0.0.0:9000 (one per machine): off
        cmd = [java, "-Xmx512m", "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={port}",
               "-Dquarkus.management.enabled=false", "-jar", str(app / MARKER)]
        pid = spawn(cmd, log=log, cwd=app)
        state["schema_registry"] = {"pid": pid, "port": port, "url": url, "log": str(log)}
        write_state(h, state)
    deadline = time.monotonic() + timeout
    while not _ready(url):
        if not alive(pid, MARKER) or time.monotonic() > deadline:
            down(h)
            raise StackError(f"Apicurio Registry did not start (log {log}):\n{log_tail(log)}")
        time.sleep(0.5)
    return url


def down(home=None) -> None:
    """Stop the registry of the local stack in ``home``, if one runs."""
    h = resolve_home(home)
    state = read_state(h)
    reg = (state or {}).get("schema_registry")
    if reg:
        stop_pid(reg["pid"], MARKER, timeout=20)
        state.pop("schema_registry")
        write_state(h, state)


def url(home=None) -> str | None:
    """The Confluent API URL of the running registry of the stack in ``home``, else None."""
    state = read_state(resolve_home(home)) or {}
    reg = state.get("schema_registry")
    return reg["url"] if reg and alive(reg["pid"], MARKER) else None


__all__ = ["APICURIO_VERSION", "find_java", "ensure_apicurio", "up", "down", "url"]
