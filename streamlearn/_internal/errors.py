"""The exception types that mean "the user asked for something wrong" (printed as one line)."""
from __future__ import annotations


def _collect() -> tuple[type[BaseException], ...]:
    from streamlearn.algorithms.base import ParamError
    from streamlearn.jobs import JobError
    from streamlearn.statestore.base import StateError

    found: list[type[BaseException]] = [ParamError, JobError, StateError, FileNotFoundError]
    for module, name in (("streamlearn.config", "ConfigError"), ("streamlearn.snapshots.format", "SnapshotError"),
                         ("streamlearn.snapshots.store", "SnapshotNotFound"),
                         ("streamlearn.streams.topics", "TopicError"), ("streamlearn.streams.files", "FileFormatError"),
                         ("streamlearn.streams.schema_store", "SchemaRegistrationError")):
        found.append(getattr(__import__(module, fromlist=[name]), name))
    return tuple(found)


USER_ERRORS = _collect()


def unreachable_service(exc: BaseException) -> str | None:
    """One line for "Redis or Kafka cannot be reached" (no traceback, no credentials), else None."""
    import redis
    from confluent_kafka import KafkaException

    from streamlearn.config import KafkaUnreachable, mask_url

    if isinstance(exc, KafkaUnreachable):
        return str(exc)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        import os

        where = mask_url(os.environ.get("STREAMLEARN_REDIS", "")) or "the local stack's Redis"
        return f"cannot reach Redis at {where}: {exc}"
    if isinstance(exc, KafkaException):
        return f"Kafka error: {exc}"
    return None
