"""The exception hierarchy every public entry point raises.

``StreamlearnError`` is the root. ``UserError``: the request was wrong and the message says
how to fix it (unknown job, bad parameter, missing topic, rejected credentials…); the CLI
prints it as one line and exits 2. ``ServiceUnavailable``: Kafka or Redis cannot be reached
right now; the CLI exits 3. The specific types (``ParamError``, ``JobError``…) stay in the
modules that raise them and subclass one of these, so ``except sl.UserError`` catches them
all without this module importing any of them.
"""
from __future__ import annotations

__all__ = ["StreamlearnError", "UserError", "ServiceUnavailable"]


class StreamlearnError(Exception):
    """Base class of every error streamlearn raises on purpose."""


class UserError(StreamlearnError):
    """Bad input: the message names what is wrong and what to do instead (CLI exit 2)."""


class ServiceUnavailable(StreamlearnError):
    """Kafka or Redis cannot be reached (CLI exit 3)."""
