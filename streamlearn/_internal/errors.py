"""How the CLI classifies an exception: a user error (one line, exit 2) or an unreachable
service (one line, exit 3); anything else is a bug and keeps its traceback."""
from __future__ import annotations

import os

from streamlearn.errors import UserError

#: what the CLI prints as one line with exit status 2 (a missing input file is the user's too)
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def unreachable_service(exc: BaseException) -> str | None:
    """One line for "Redis or Kafka cannot be reached" (no traceback, no credentials), else None."""
    import redis
    from confluent_kafka import KafkaException

    from streamlearn.config import KafkaUnreachable, mask_url

    if isinstance(exc, KafkaUnreachable):
        return str(exc)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        where = mask_url(os.environ.get("STREAMLEARN_REDIS", "")) or "the local stack's Redis"
        return f"cannot reach Redis at {where}: {exc}"
    if isinstance(exc, KafkaException):
        return f"Kafka error: {exc}"
    return None
