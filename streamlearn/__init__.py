"""streamlearn: elastic, resumable, streaming model training on Kafka with a Redis parameter state.

The public API (everything else is internal)::

    import streamlearn as sl
    conn = sl.connect()                                   # STREAMLEARN_KAFKA / STREAMLEARN_REDIS / local stack
    conn.create_topic("events", partitions=4)
    conn.produce("events", X, y)                          # numpy, pandas (y = a column name), scipy sparse
    job = conn.create_job("ctr", sl.LinearLearner(n_features=30), topic="events")
    job.run_workers(2)
    job.wait(timeout=300)
    model = conn.subscribe("ctr").wait_for()
    model.predict(X)

Names are loaded on first use, so ``import streamlearn`` stays cheap for the command line
and the worker processes.

Public beyond this module (documented in the README): writing an algorithm with
``streamlearn.algorithms`` (``register``), ``streamlearn.algorithms.params`` (the parameter
declarations) and ``streamlearn.algorithms.checks`` (``check_algorithm``). Everything else is
internal and may change without notice: ``cli``, ``config``, ``labels``, ``datasets``,
``demo``, and the packages ``runtime``, ``wire``, ``ingest``, ``streams``, ``snapshots``,
``statestore``, ``backends``, ``devstack`` and ``registry`` (``_``-prefixed modules anywhere).
"""
from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import Any

from streamlearn.errors import ServiceUnavailable, StreamlearnError, UserError

try:
    __version__ = _metadata.version("streamlearn")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> the module that defines it
_HOMES = {
    "connect": "streamlearn.client",
    "Connection": "streamlearn.client",
    "Job": "streamlearn.client",
    "WorkerProcess": "streamlearn.client",
    "Client": "streamlearn.serving.client",
    "Algorithm": "streamlearn.algorithms.base",
    "Model": "streamlearn.algorithms.base",
    "State": "streamlearn.statestore.base",
    "Batch": "streamlearn.batch",
    "fit_local": "streamlearn.runtime.local",
    "Counter": "streamlearn.algorithms.counter",
    "FactorizationMachines": "streamlearn.algorithms.factorization_machines",
    "KMeans": "streamlearn.algorithms.kmeans",
    "LinearLearner": "streamlearn.algorithms.linear_learner",
    "Median": "streamlearn.algorithms.median",
    "PCA": "streamlearn.algorithms.pca",
}

__all__ = ["__version__", "StreamlearnError", "UserError", "ServiceUnavailable", *_HOMES]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'streamlearn' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups do not come here again
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
