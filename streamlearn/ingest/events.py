"""What a raw JSON event must be to become a training example (the ingest app's door).

A JSON event::

    {"features": [0.5, 1, -2.25], "label": 1, "weight": 2.0, "key": "user-7", "event_time": 1718000000000}
    {"indices": [0, 7], "values": [1.0, 0.5], "n_features": 10, "label": 0}

The checks a worker also makes (dimension, sparse indices, label, weight) are
:mod:`streamlearn.wire.rules`, so an event this accepts is a record a worker accepts; JSON
adds its own (types, unknown fields, float32 range, distinct sparse indices).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamlearn.batch import SparseRows
from streamlearn.wire.rules import (
    R_NONFINITE_X, both_forms, dense_reason, label_reason, no_features, sparse_reason, weight_reason,
)
from streamlearn.wire.serde import encode_training_batch, encode_training_record

FIELDS = frozenset(("features", "indices", "values", "n_features", "label", "weight", "key", "event_time"))
_F32_MAX = float(np.finfo(np.float32).max)
_I64 = 2 ** 63

# Reasons specific to JSON events (the shared ones are in streamlearn.wire.rules).
R_NOT_JSON = "not JSON"
R_NOT_OBJECT = "event is not a JSON object"
R_UNKNOWN_FIELDS = "unknown field(s)"
R_F32_RANGE = "feature out of float32 range"


class InvalidEvent(ValueError):
    """A raw event that cannot become a training example; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class IngestConfig:
    """What a valid event is, and how valid ones are forwarded.

    ``n_features``: the width every event must have; ``label_required``: events without a
    label are dead-lettered; ``batch_size``: 1 = one ``training_record`` per event, > 1 = up
    to that many events (of one raw partition, arriving within ``batch_within_s``) per
    ``training_batch``; ``allow_extra_fields``: ignore unknown top-level fields instead of
    dead-lettering the event (the default rejects them: a typo such as ``"lable"`` would
    otherwise silently drop labels).
    """

    n_features: int
    label_required: bool = False
    batch_size: int = 1
    batch_within_s: float = 0.2
    allow_extra_fields: bool = False


@dataclass(frozen=True)
class TrainingEvent:
    """A validated event: dense ``features`` or sparse ``indices``/``values`` (lists)."""

    features: list | None = None
    indices: list | None = None
    values: list | None = None
    n_features: int | None = None
    label: float | None = None
    weight: float = 1.0
    key: str | None = None
    event_time: int | None = None

    @property
    def sparse(self) -> bool:
        return self.features is None

    def encode_record(self) -> bytes:
        """The Avro single-object ``training_record`` of this event."""
        if self.sparse:
            return encode_training_record(indices=self.indices, values=self.values, n_features=self.n_features,
                                          label=self.label, weight=self.weight, key=self.key,
                                          event_time=self.event_time)
        return encode_training_record(self.features, label=self.label, weight=self.weight, key=self.key,
                                      event_time=self.event_time)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check(reason: str | None) -> None:
    if reason is not None:
        raise InvalidEvent(reason)


def _number_list(name: str, x: Any) -> list:
    if not isinstance(x, list):
        raise InvalidEvent(f"{name} is not a list")
    for v in x:
        if not _is_number(v):
            raise InvalidEvent(f"{name} holds a non-number ({type(v).__name__})")
    out = [float(v) for v in x]  # OverflowError impossible: JSON ints that large become floats first
    for v in out:
        if v - v != 0.0:
            raise InvalidEvent(R_NONFINITE_X)
        if abs(v) > _F32_MAX:
            raise InvalidEvent(R_F32_RANGE)
    return out


def validate_event(raw: bytes | str | dict, config: IngestConfig) -> TrainingEvent:
    """Parse and check one raw event; raises :class:`InvalidEvent` with the reason.

    Accepted: a JSON object with dense ``features`` (list of ``n_features`` finite numbers)
    *or* sparse ``indices`` (distinct ints in ``[0, n_features)``) + ``values`` (finite
    numbers, same length) + optional ``n_features`` (must equal the configured width);
    optional ``label`` (finite number or null; required with ``label_required``),
    ``weight`` (finite number >= 0, default 1), ``key`` (string or null), ``event_time``
    (integer UTC milliseconds or null). JSON's ``NaN``/``Infinity`` literals are rejected
    as non-finite values.
    """
    d = int(config.n_features)
    if isinstance(raw, dict):
        ev = raw
    else:
        try:
            # UTF-8 only (RFC 8259 for exchanged JSON); json.loads would guess UTF-16/32 from bytes
            ev = json.loads(bytes(raw).decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw)
        except json.JSONDecodeError as exc:
            raise InvalidEvent(f"{R_NOT_JSON} ({exc.msg} at char {exc.pos})") from None
        except UnicodeDecodeError:
            raise InvalidEvent(f"{R_NOT_JSON} (not UTF-8)") from None
        except (ValueError, TypeError) as exc:
            raise InvalidEvent(f"{R_NOT_JSON} ({type(exc).__name__})") from None
        except RecursionError:
            raise InvalidEvent(f"{R_NOT_JSON} (nested too deeply)") from None
    if not isinstance(ev, dict):
        raise InvalidEvent(R_NOT_OBJECT)
    if not config.allow_extra_fields:
        extra = sorted(k for k in ev if k not in FIELDS)
        if extra:
            raise InvalidEvent(f"{R_UNKNOWN_FIELDS}: {', '.join(map(repr, extra[:5]))}")

    features, indices = ev.get("features"), ev.get("indices")
    values, width = ev.get("values"), ev.get("n_features")
    out: dict = {}
    if features is not None:
        if indices is not None or values is not None:
            raise InvalidEvent(both_forms("event"))
        out["features"] = _number_list("features", features)
        _check(dense_reason(len(out["features"]), d))
    elif indices is not None or values is not None:
        if indices is None or values is None:
            raise InvalidEvent("sparse event needs both indices and values")
        if not isinstance(indices, list) or not all(_is_int(i) for i in indices):
            raise InvalidEvent("indices is not a list of integers")
        vals = _number_list("values", values)
        if width is not None and not _is_int(width):
            raise InvalidEvent("n_features is not an integer")
        _check(sparse_reason(indices, len(vals), width, d, width_required=False))
        if len(set(indices)) != len(indices):
            raise InvalidEvent("duplicate sparse index")
        out.update(indices=list(indices), values=vals, n_features=d)
    else:
        raise InvalidEvent(no_features("event"))

    label = ev.get("label")
    if label is not None and not _is_number(label):
        raise InvalidEvent(f"label is not a number ({type(label).__name__})")
    _check(label_reason(label, config.label_required))
    if label is not None:
        out["label"] = float(label)

    weight = ev.get("weight", 1.0)
    if weight is None:
        weight = 1.0
    if not _is_number(weight):
        raise InvalidEvent(f"weight is not a number ({type(weight).__name__})")
    _check(weight_reason(weight))
    out["weight"] = float(weight)

    key = ev.get("key")
    if key is not None and not isinstance(key, str):
        raise InvalidEvent(f"key is not a string ({type(key).__name__})")
    out["key"] = key

    t = ev.get("event_time")
    if t is not None:
        if not _is_int(t):
            raise InvalidEvent("event_time is not integer milliseconds")
        if not -_I64 <= t < _I64:
            raise InvalidEvent("event_time out of range")
        out["event_time"] = t
    return TrainingEvent(**out)


def check_event(raw: bytes | str | dict, config: IngestConfig) -> tuple[TrainingEvent | None, str | None]:
    """``(event, None)`` for a valid raw event, ``(None, reason)`` otherwise. Never raises."""
    try:
        return validate_event(raw, config), None
    except InvalidEvent as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - whatever a hostile payload triggers is a rejection
        return None, f"invalid event ({type(exc).__name__})"


def encode_batch(events: list[TrainingEvent], n_features: int) -> bytes:
    """One ``training_batch`` of valid events (dense unless any is sparse: then CSR)."""
    n = len(events)
    if any(e.sparse for e in events):
        indptr = np.zeros(n + 1, dtype=np.int64)
        idx: list = []
        vals: list = []
        for i, e in enumerate(events):
            if e.sparse:
                idx.extend(e.indices)
                vals.extend(e.values)
            else:
                nz = [j for j, v in enumerate(e.features) if v != 0.0]
                idx.extend(nz)
                vals.extend(e.features[j] for j in nz)
            indptr[i + 1] = len(idx)
        X = SparseRows(indptr, np.asarray(idx, dtype=np.int64), np.asarray(vals, dtype=np.float32), n_features)
    else:
        X = np.asarray([e.features for e in events], dtype=np.float32).reshape(n, n_features)
    y = None
    if any(e.label is not None for e in events):
        y = [math.nan if e.label is None else e.label for e in events]
    w = [e.weight for e in events] if any(e.weight != 1.0 for e in events) else None
    keys = [e.key for e in events] if any(e.key is not None for e in events) else None
    times = [e.event_time for e in events if e.event_time is not None]
    return encode_training_batch(X, y, w, keys, event_time=max(times) if times else None)


__all__ = ["IngestConfig", "TrainingEvent", "InvalidEvent", "validate_event", "check_event", "encode_batch"]
