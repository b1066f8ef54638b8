"""A trial's score at a rung: its current state, finalized in memory (no snapshot is
published), scored on the study's validation data — a validation topic read once into
memory, or, for the linear learner, its content-hashed holdout (the packed models'
validation metric, accumulated on records it never trained on)."""
from __future__ import annotations

import math
from typing import Any

import redis

from streamlearn.algorithms.base import Algorithm, Model
from streamlearn.algorithms.linear_learner import VAL_METRICS
from streamlearn.batch import Batch
from streamlearn.errors import UserError
from streamlearn.runtime.jobs import load_spec
from streamlearn.runtime.local import sample_model
from streamlearn.statestore.redis_state import RedisState
from streamlearn.registry.reading import read_messages, topic_ranges
from streamlearn.wire.decode import decode_messages


class MetricError(UserError, ValueError):
    """A study metric that the algorithm's models do not report (or cannot be measured)."""


def holdout_metrics(algo: Algorithm) -> tuple[str, ...]:
    """Metrics an algorithm scores on its own holdout (no validation topic needed)."""
    return VAL_METRICS[algo.predictor_type] if algo.name == "linear_learner" else ()


def check_metric(algo: Algorithm, metric: str, has_validation_topic: bool) -> None:
    """``metric`` must be one the algorithm's model reports (on a tiny in-process fit of the
    resolved parameters), and measurable: a validation topic, or the holdout."""
    reported = sample_model(algo).metric_names()
    if metric not in reported:
        raise MetricError(f"{algo.name} does not report metric {metric!r}; it reports {list(reported)}")
    if not has_validation_topic and metric not in holdout_metrics(algo):
        where = (f"its holdout scores only {list(holdout_metrics(algo))}" if holdout_metrics(algo)
                 else "it has no holdout")
        raise MetricError(f"{algo.name}: metric {metric!r} needs --validation-topic ({where})")


def read_topic(kafka_conf: dict, topic: str, algo: Algorithm, timeout: float = 120.0) -> Batch:
    """Every record of ``topic`` (low to high watermark), decoded for ``algo``, as one batch."""
    messages = read_messages(kafka_conf, topic, topic_ranges(kafka_conf, topic), timeout)
    result = decode_messages([m.value for m in messages], algo.n_features(), algo.accepts_sparse, algo.needs_label)
    if not result.n_records:
        raise UserError(f"validation topic {topic} holds no record this algorithm can read")
    return result.batch


def current_model(client: redis.Redis, job: str) -> tuple[Model, int]:
    """The model of ``job``'s state now (one consistent cut) and the records applied in it."""
    spec = load_spec(client, job)
    state = RedisState(client, job)
    _, counters = state.load_consistent()
    return spec.algorithm_instance().finalize(state), int(counters.get("records_applied", 0))


def score(model: Model, metric: str, validation: Batch | None) -> float:
    """The metric on the validation batch, else the selected packed model's holdout value."""
    if validation is not None:
        return float(model.score(validation, metric))
    attrs: dict[str, Any] = model.attrs
    value = attrs["models"][attrs["selected_model"]].get(metric)
    return math.nan if value is None else float(value)
