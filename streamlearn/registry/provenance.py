"""Who and what produced an artifact: the code's version (package version, git commit where
the package runs from a checkout), the libraries it ran with, the host and the user.

Recorded by the runtime for every job, snapshot, evaluation and backtest (Schelter et al.:
"who created the model at what time"), never asked of the user."""
from __future__ import annotations

import functools
import getpass
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

#: libraries whose version can change a model or its scores (those installed are recorded)
LIBRARIES = ("numpy", "scipy", "confluent-kafka", "redis", "fastavro", "torch", "mxnet", "datasketches")

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{"streamlearn": version, "git_commit": sha or None, "git_dirty": bool or None}``."""
    try:
        version = metadata.version("streamlearn")
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit = _git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"streamlearn": version, "git_commit": commit, "git_dirty": dirty}


def _git(*args: str) -> str | None:
    """``git args`` in the package's checkout; None when it is no checkout (an installed wheel)
    or git is missing."""
    if not (_PACKAGE_DIR.parent / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(_PACKAGE_DIR.parent), *args], capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        return str(os.getuid())


def provenance() -> dict[str, Any]:
    """Code, libraries, host and user of this process."""
    return {"code": code_version(), "libraries": library_versions(), "host": socket.gethostname(), "user": _user()}


__all__ = ["code_version", "library_versions", "provenance"]
