"""Exceptions paceline raises or understands."""

from __future__ import annotations


class PacelineError(Exception):
    """Base class of the errors paceline itself raises."""


class Throttled(Exception):
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
