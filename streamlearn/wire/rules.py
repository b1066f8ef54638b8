"""What a valid training example is, and the reason a record that is not is dead-lettered with.

One set of rules for both doors: the worker's readers (:mod:`streamlearn.wire.decode`, Avro
records) and the ingest app (:mod:`streamlearn.ingest.app`, JSON events). Each check returns
the reason (a one-line string, the ``streamlearn.reason`` header of the dead letter) or None.
Feature finiteness is the readers' own (checked over a whole run of records at once).
"""
from __future__ import annotations

import math
from typing import Sequence

# Reason strings (prefixes; some carry numbers after them).
R_NOT_AVRO = "not Avro single-object encoded (bad magic)"
R_TRUNCATED = "truncated message"
R_MALFORMED = "malformed Avro body"
R_TRAILING = "trailing bytes after the Avro body"
R_UNKNOWN_FP = "unknown schema fingerprint"
R_NOT_TRAINING = "not a training schema"
R_NONFINITE_X = "NaN or inf in features"
R_NONFINITE_Y = "NaN or inf in label"
R_INF_Y = "inf in labels"
R_NONFINITE_W = "NaN or inf in weight"
R_NEGATIVE_W = "negative weight"
R_MISSING_LABEL = "missing label"
R_SPARSE_TO_DENSE = "sparse input to a dense-only algorithm"
R_SPARSE_RANGE = "sparse index out of range"
R_SPARSE_LENGTHS = "sparse indices/values lengths differ"
R_SPARSE_NO_WIDTH = "sparse record without n_features"
R_BAD_INDPTR = "malformed sparse indptr"
R_NO_FEATURES = "no features"
R_BOTH_FORMS = "both dense and sparse features"
R_SIZE = "size mismatch"
R_KEYS = "keys count"


def both_forms(what: str) -> str:
    """``what`` ("record", "event", "batch") carries dense and sparse features at once."""
    return f"{what} has {R_BOTH_FORMS}"


def no_features(what: str) -> str:
    return f"{what} has {R_NO_FEATURES}"


def dense_reason(width: int, n_features: int) -> str | None:
    """A dense example of ``width`` values for a job of ``n_features``."""
    return None if width == n_features else f"dimension {width} != {n_features}"


def sparse_reason(indices: Sequence[int], n_values: int, width: int | None, n_features: int, *,
                  width_required: bool) -> str | None:
    """A sparse example: ``indices`` with ``n_values`` values, claiming ``width`` features (None:
    no claim, an error when ``width_required``) for a job of ``n_features``."""
    if n_values != len(indices):
        return f"{R_SPARSE_LENGTHS} ({len(indices)} != {n_values})"
    if width is None:
        if width_required:
            return R_SPARSE_NO_WIDTH
    elif width != n_features:
        return f"sparse n_features {width} != {n_features}"
    if indices and (min(indices) < 0 or max(indices) >= n_features):
        return f"{R_SPARSE_RANGE} [0, {n_features})"
    return None


def label_reason(label: float | None, needs_label: bool) -> str | None:
    if label is None:
        return R_MISSING_LABEL if needs_label else None
    return None if math.isfinite(label) else R_NONFINITE_Y


def weight_reason(weight: float) -> str | None:
    if not math.isfinite(weight):
        return R_NONFINITE_W
    return R_NEGATIVE_W if weight < 0 else None
