"""Exceptions paceline raises or understands, and how a failure is classified.

Every error paceline raises is a :class:`PacelineError`, so ``except paceline.PacelineError``
catches them all. Each one that used to be a built-in kind stays one as well (h11 puts all of
its errors under one ``ProtocolError`` the same way): a bad rate string is a
``PacelineError`` *and* a ``ValueError``, an HTTP timeout a ``PacelineError`` *and* a
``TimeoutError``, so ``except ValueError`` and the default retry rules keep working.

>>> import paceline
>>> try:
...     paceline.RateLimiter("10/x")
... except ValueError as exc:
...     print(isinstance(exc, paceline.PacelineError))
True

The one exception is :class:`paceline.BatchInterrupted`: it is a ``KeyboardInterrupt``, raised
when Ctrl-C or SIGTERM stops a sync batch, and must pass through ``except Exception`` (and
``except PacelineError``) handlers the way Ctrl-C always does.
"""

from __future__ import annotations

import asyncio
import enum

__all__ = [
    "AlreadySettled",
    "ErrorCode",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidState",
    "PacelineError",
    "QuotaExhausted",
    "RateStoreUnavailable",
    "Throttled",
]


class PacelineError(Exception):
    """Base class of the errors paceline itself raises.

    >>> from paceline import PacelineError, RateLimiter
    >>> try:
    ...     RateLimiter(0, 1.0)
    ... except PacelineError as exc:
    ...     print(type(exc).__name__)
    RateSpecError
    """


class InvalidArgument(PacelineError, ValueError):
    """An argument has a value paceline cannot use (also a ``ValueError``); the message names
    the argument, the value and what to pass instead.

    >>> from paceline.policy.halt import HaltRule
    >>> HaltRule.parse("later")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.errors.InvalidArgument: halt rule 'later': expected ...
    """


class InvalidArgumentType(PacelineError, TypeError):
    """An argument is of a type paceline cannot use (also a ``TypeError``); the message says
    which types it takes."""


class InvalidState(PacelineError, RuntimeError):
    """An object was used in a state that does not allow it (a test server used before it
    started, or started twice), or did not reach the state asked of it (a test server that
    would not start). Also a ``RuntimeError``."""


class AlreadySettled(InvalidState):
    """A rate-limit grant was settled a second time: settle each grant once."""


class RateStoreUnavailable(PacelineError):
    """A shared rate store (Redis) could not be reached for longer than the run allows
    (``outage_s``): nothing started without a grant; resume the batch once the store is back."""


class Throttled(PacelineError):
    """Raise from an operation to say "the other side told me to slow down".

    ``retry_after`` (seconds, optional) is the server's hint of when to try again.

    >>> raise Throttled(retry_after=2.5)
    Traceback (most recent call last):
    ...
    paceline.errors.Throttled: throttled; retry after 2.5 s
    """

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        if message is None:
            message = "throttled"
            if retry_after is not None:
                message += f"; retry after {retry_after:g} s"
        super().__init__(message)


class QuotaExhausted(PacelineError):
    """Raise from an operation to say "the other side's quota is gone and will not come back
    soon" (billing, credit, a daily quota): it is not retried, nothing more is sent to that
    server (or, without servers, the batch stops starting items), and a journal keeps the
    items not done for ``resume`` once the quota is back.

    >>> raise QuotaExhausted("insufficient_quota: check your plan and billing details")
    Traceback (most recent call last):
    ...
    paceline.errors.QuotaExhausted: insufficient_quota: check your plan and billing details
    """

    retryable = False
    error_code = "quota_exhausted"

    def __init__(self, message: str = "quota exhausted") -> None:
        super().__init__(message)


class ErrorCode(str, enum.Enum):
    """What kind of failure an item had, for sorting failures without parsing messages."""

    UNKNOWN = "unknown"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    RATE_LIMITED = "rate_limited"
    THROTTLED = "rate_limited"  # the same code: throttled answers were always "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    NOT_FOUND = "not_found"
    INVALID_INPUT = "invalid_input"
    PERMISSION_DENIED = "permission_denied"
    SERVER_ERROR = "server_error"
    CANCELLED = "cancelled"
    # A request that is not idempotent failed after it may have been processed, and was not
    # sent again (no idempotency key): check on the server whether it was done.
    MAYBE_PROCESSED = "maybe_processed"


def error_code_for(error: BaseException) -> ErrorCode:
    """Classify an exception. An ``error_code`` attribute on the exception wins."""
    declared = getattr(error, "error_code", None)
    if isinstance(declared, ErrorCode):
        return declared
    if isinstance(declared, str):
        try:
            return ErrorCode(declared)
        except ValueError:
            pass
    if isinstance(error, Throttled):
        return ErrorCode.RATE_LIMITED
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        return ErrorCode.TIMEOUT
    if isinstance(error, asyncio.CancelledError):
        return ErrorCode.CANCELLED
    if isinstance(error, PermissionError):
        return ErrorCode.PERMISSION_DENIED
    if isinstance(error, ConnectionError):
        return ErrorCode.CONNECTION
    if isinstance(error, (LookupError, FileNotFoundError)):
        return ErrorCode.NOT_FOUND
    if isinstance(error, (ValueError, TypeError)):
        return ErrorCode.INVALID_INPUT
    return ErrorCode.UNKNOWN
