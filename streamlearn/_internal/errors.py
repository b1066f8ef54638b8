"""The exception types that mean "the user asked for something wrong" (printed as one line)."""
from __future__ import annotations


def _collect() -> tuple[type[BaseException], ...]:
    from streamlearn.algorithms.base import ParamError
    from streamlearn.jobs import JobError
    from streamlearn.statestore.base import StateError

    found: list[type[BaseException]] = [ParamError, JobError, StateError, FileNotFoundError]
    for module, name in (("streamlearn.config", "ConfigError"), ("streamlearn.snapshots.format", "SnapshotError"),
                         ("streamlearn.snapshots.store", "SnapshotNotFound"),
                         ("streamlearn.streams.topics", "TopicError"), ("streamlearn.streams.files", "FileFormatError")):
        found.append(getattr(__import__(module, fromlist=[name]), name))
    return tuple(found)


USER_ERRORS = _collect()
