"""``streamlearn predict``: score a file with a job's snapshot, one JSON line per record."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import redis

from streamlearn.algorithms.base import Model, ParamError
from streamlearn.batch import Batch
from streamlearn.jobs import JobError, load_spec
from streamlearn.snapshots.format import decode_snapshot, load_model
from streamlearn.snapshots.store import ModelStore
from streamlearn.streams.files import read_examples


def load_job_model(client: redis.Redis, job: str, version: int | None = None) -> Model:
    """The job's newest (or given) snapshot from the model store, verified and loaded."""
    load_spec(client, job)
    store = ModelStore(client)
    if version is None and store.latest_version(job) is None:
        raise JobError(f"job {job!r} has no snapshot yet (it publishes one when it finishes, "
                       f"or run `streamlearn snapshot {job}`)")
    return load_model(decode_snapshot(store.get(job, version)))


def with_options(model: Model, params: dict[str, str]) -> Model:
    """Apply predict-time options: option NAME calls the model's ``with_NAME(value)`` (e.g.
    ``--param k=5`` re-solves a k-means model for k=5 from the summary in its snapshot)."""
    for name, value in params.items():
        configure = getattr(model, f"with_{name}", None)
        if configure is None:
            raise ParamError(f"{model.algorithm} models take no predict option {name!r}")
        try:
            model = configure(json.loads(value) if isinstance(value, str) else value)
        except (ValueError, TypeError) as exc:
            raise ParamError(f"{model.algorithm}: bad predict option {name}={value!r}: {exc}") from None
    return model


def predict_file(client: redis.Redis, job: str, path: Path, output: Path | None = None,
                 version: int | None = None, params: dict[str, str] | None = None,
                 text_column: str | None = None) -> int:
    """``text_column``: documents as raw text, read with the model's vocabulary."""
    model = with_options(load_job_model(client, job, version), params or {})
    out = open(output, "w") if output else sys.stdout
    n = 0
    try:
        for X, _y in (_text_chunks(model, path, text_column) if text_column else read_examples(path)):
            for row in model.predict_records(Batch(np.asarray(X, dtype=np.float32) if not hasattr(X, "indptr") else X)):
                out.write(json.dumps(row) + "\n")
                n += 1
    finally:
        if output:
            out.close()
    return n


def _text_chunks(model: Model, path: Path, column: str):
    from streamlearn.streams.text import read_texts

    vocabulary = getattr(model, "text_vocabulary", None)
    if vocabulary is None:
        raise ParamError(f"{model.algorithm} models do not read raw text (--text-column)")
    for texts in read_texts(path, column):
        yield vocabulary().vectorize(texts)[0], None
