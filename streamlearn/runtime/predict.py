"""``streamlearn predict`` / ``evaluate``: a job's snapshot applied to a file — one JSON line
per record, or the model's metrics (the same ``Model.score`` code as training)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import redis

from streamlearn.algorithms import algorithm_class
from streamlearn.algorithms.base import Model, ParamError
from streamlearn.batch import Batch, SparseRows
from streamlearn.runtime.jobs import JobError, load_spec
from streamlearn.snapshots.format import load_model
from streamlearn.snapshots.signing import require_verifier
from streamlearn.snapshots.store import ModelStore
from streamlearn.snapshots.verified import stored_snapshot
from streamlearn.streams.files import FileFormatError, read_examples
from streamlearn.streams.text import read_texts


def load_job_model(client: redis.Redis, job: str, version: int | None = None) -> Model:
    """The job's newest (or given) snapshot from the model store, verified and loaded."""
    load_spec(client, job)
    require_verifier(job)
    store = ModelStore(client)
    if version is None and store.latest_version(job) is None:
        raise JobError(f"job {job!r} has no snapshot yet (it publishes one when it finishes, "
                       f"or run `streamlearn snapshot {job}`)")
    return load_model(stored_snapshot(store, job, version))


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


def _features(X) -> "np.ndarray | SparseRows":
    return X if isinstance(X, SparseRows) else np.asarray(X, dtype=np.float32)


def read_for_model(client: redis.Redis, job: str, path: Path, label_column: str | None = None,
                   header: bool | None = None) -> Iterator[tuple["np.ndarray | SparseRows", "np.ndarray | None"]]:
    """The ``(X, y)`` chunks of ``path`` without its label column, checked against the input
    width of the job's model (one :class:`FileFormatError` line instead of a numpy traceback)."""
    width = load_spec(client, job).algorithm_instance().n_features()
    for X, y in read_examples(path, label_column=label_column, n_features=width, header=header):
        found = X.n_features if isinstance(X, SparseRows) else X.shape[1]
        if found != width:
            what = "feature columns besides the label" if label_column else "columns"
            hint = " (did you mean --label-column?)" if label_column is None and found > width else ""
            raise FileFormatError(f"the model expects {width} features, {path} has {found} {what}{hint}")
        yield _features(X), y


def predict_file(client: redis.Redis, job: str, path: Path, output: Path | None = None,
                 version: int | None = None, params: dict[str, str] | None = None,
                 label_column: str | None = None, header: bool | None = None,
                 text_column: str | None = None) -> int:
    """Write one JSON line per record of ``path`` (to ``output``, else stdout); returns the
    number of records. ``label_column`` is dropped before predicting; ``text_column``: the
    documents as raw text, read with the model's vocabulary."""
    model = with_options(load_job_model(client, job, version), params or {})
    chunks = (_text_chunks(model, path, text_column) if text_column
              else read_for_model(client, job, path, label_column, header))
    return write_json_lines((row for X, _y in chunks for row in model.predict_records(Batch(X))), output)


def write_json_lines(records: Iterable[dict], output: Path | None = None) -> int:
    """One JSON line per record, to ``output`` (else stdout), as they come; returns how many."""
    out = open(output, "w") if output else sys.stdout
    n = 0
    try:
        for rec in records:
            out.write(json.dumps(rec) + "\n")
            n += 1
    finally:
        if output:
            out.close()
    return n


def _concat(parts: list) -> "np.ndarray | SparseRows":
    if not isinstance(parts[0], SparseRows):
        return np.vstack(parts)
    offsets = np.cumsum([0] + [len(p.indices) for p in parts[:-1]])
    indptr = np.concatenate([parts[0].indptr[:1]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
    return SparseRows(indptr.astype(np.int64), np.concatenate([p.indices for p in parts]),
                      np.concatenate([p.values for p in parts]), parts[0].n_features)


def evaluate_file(client: redis.Redis, job: str, path: Path, label_column: str | None = None,
                  version: int | None = None, metrics: list[str] | None = None, params: dict[str, str] | None = None,
                  header: bool | None = None) -> dict[str, float]:
    """``{metric: value}`` of the job's model on the examples of ``path`` (one batch, so
    rank metrics such as AUC see every row): every metric the model reports, or ``metrics``."""
    model = with_options(load_job_model(client, job, version), params or {})
    if algorithm_class(model.algorithm).needs_label and label_column is None:
        raise FileFormatError(f"{model.algorithm} models are scored against labels: give --label-column")
    chunks = list(read_for_model(client, job, path, label_column, header))
    if not chunks:
        raise FileFormatError(f"{path}: no examples")
    y = None if label_column is None else np.concatenate([c[1] for c in chunks])
    if y is not None and np.isnan(y).any():
        raise FileFormatError(f"{path}: row {int(np.flatnonzero(np.isnan(y))[0]) + 1} has no {label_column!r} value")
    return score_batch(model, Batch(_concat([c[0] for c in chunks]), y), metrics)


def check_metrics(model: Model, metrics: list[str] | None) -> list[str | None]:
    """The metrics to score: ``metrics`` (each one the model reports, else a
    :class:`ParamError`), or every one it reports ([None]: its only, default score)."""
    reported = model.metric_names()
    for name in metrics or []:
        if reported and name not in reported:
            raise ParamError(f"{model.algorithm} models do not report metric {name!r}; they report {list(reported)}")
    return list(metrics or reported or [None])


def score_batch(model: Model, batch: Batch, metrics: list[str] | None = None) -> dict[str, float | None]:
    """``{metric: value}`` of ``model`` on ``batch`` with ``Model.score`` (the training code's
    metrics): ``metrics``, or every metric the model reports; NaN is reported as None."""
    result = {}
    for name in check_metrics(model, metrics):
        try:
            value = model.score(batch, name)
        except ValueError as exc:  # an unknown metric name
            raise ParamError(str(exc)) from None
        result[name or "score"] = None if math.isnan(value) else value
    return result


def _text_chunks(model: Model, path: Path, column: str):
    vocabulary = getattr(model, "text_vocabulary", None)
    if vocabulary is None:
        raise ParamError(f"{model.algorithm} models do not read raw text (--text-column)")
    for texts in read_texts(path, column):
        yield vocabulary().vectorize(texts)[0], None
