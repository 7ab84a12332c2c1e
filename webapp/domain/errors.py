"""The three ways a handler can fail, and how an unknown exception is classified."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum


class ErrorKind(StrEnum):
    """How the engine treats a failure."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    DEFERRED = "deferred"


class PermanentError(Exception):
    """A failure that no retry can fix (invalid address, a 4xx other than 408/429).

    The operation is dead-lettered at once.
    """


class TransientError(Exception):
    """A failure that a later attempt may not meet (timeouts, 5xx, network errors).

    Any exception that is not a :class:`PermanentError` or a :class:`Deferral` is treated the same.
    """


class Deferral(Exception):
    """Not now, try again at ``until`` (rate limit, ``Retry-After``); no attempt is consumed."""

    def __init__(self, until: datetime, reason: str = "deferred"):
        super().__init__(reason)
        self.until = until
        self.reason = reason


def classify(exc: BaseException) -> ErrorKind:
    """Map an exception raised by a handler to how the engine must treat it."""
    if isinstance(exc, Deferral):
        return ErrorKind.DEFERRED
    if isinstance(exc, PermanentError):
        return ErrorKind.PERMANENT
    return ErrorKind.TRANSIENT
