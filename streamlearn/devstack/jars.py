"""Apache Kafka's jars from Maven Central: fetched once with Maven into the cache.

``mvn dependency:copy-dependencies`` on a tiny pom (:data:`KAFKA_POM`) into
``$STREAMLEARN_CACHE/kafka-<version>/libs`` (default ``~/.cache/streamlearn``). Needs Java 17+
and Maven on PATH (``$JAVA_HOME/bin/java`` is preferred when set).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from streamlearn.devstack.procs import tail_text
from streamlearn.devstack.state import StackError, cache_dir, flock

KAFKA_VERSION = "4.3.1"


SCALA_VERSION = "2.13"


LOG4J_VERSION = "2.24.3"

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


def kafka_dir(env: Mapping[str, str] | None = None) -> Path:
    return cache_dir(env) / f"kafka-{KAFKA_VERSION}"


def java_path() -> str | None:
    jh = os.environ.get("JAVA_HOME")
    if jh and os.access(Path(jh) / "bin" / "java", os.X_OK):
        return str(Path(jh) / "bin" / "java")
    return shutil.which("java")


def check_prerequisites(*, need_maven: bool | None = None) -> list[str]:
    """Problems that prevent the local stack from starting (empty list: all good)."""
    problems = []
    if java_path() is None:
        problems.append("Java 17+ not found (install openjdk-17-jre-headless or set JAVA_HOME)")
    if shutil.which("redis-server") is None:
        problems.append("redis-server not found on PATH (apt-get install -y redis-server)")
    if need_maven is None:
        need_maven = not kafka_ready(kafka_dir())
    if need_maven and shutil.which("mvn") is None:
        problems.append(
            f"Maven (mvn) not found: it is needed once to fetch Kafka {KAFKA_VERSION} into "
            f"{kafka_dir()} (apt-get install -y maven)"
        )
    return problems


def kafka_ready(kdir: Path) -> bool:
    return (kdir / ".complete").exists() and (
        kdir / "libs" / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar"
    ).exists()


def ensure_kafka(progress: Callable[[str], None] | None = None) -> Path:
    """The directory of Kafka's jars, fetching them with Maven the first time (cached, locked)."""
    kdir = kafka_dir()
    if kafka_ready(kdir):
        return kdir / "libs"
    with flock(kdir.parent / f".kafka-{KAFKA_VERSION}.lock"):
        if kafka_ready(kdir):
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
                    f"{' '.join(cmd)}\n{tail_text(proc.stdout)}"
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
