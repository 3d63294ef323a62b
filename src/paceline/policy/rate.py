"""Parse and represent one rate limit: ``max_requests`` of a unit per ``window``.

A rate string reads ``"[<unit>:]<count>/<window>"`` where the window is a unit of time (``s``,
``m``, ``h``, ``d``, or the long forms) optionally preceded by a number: ``"100/s"``,
``"5000/h"``, ``"10/1.5s"``, ``"500/min"``. The optional prefix names what the limit counts:
``requests`` (the default), or any other name such as ``tokens``, ``input_tokens``, ``bytes``
or ``cost``: ``"tokens:90000/min"``. A grant's cost says how much of each unit it takes
(docs/units.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from paceline.errors import PacelineError

# Nanoseconds in a second: policy keeps time in integer ns (exact window arithmetic); the one
# spelling every layer converts seconds with.
NS_PER_S = 1_000_000_000

_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
# What a limit counts when its rate string names nothing: one per request started, as before units.
REQUESTS = "requests"
_UNIT_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
# A limit whose unit nothing is charged in never binds, so the spellings of "requests" that
# people type all mean it rather than a silent no-op limit.
_REQUEST_ALIASES = frozenset({"request", "requests", "req", "reqs"})
_RATE_RE = re.compile(
    r"^\s*(?:(?P<what>[A-Za-z_][A-Za-z0-9_]*)\s*:\s*)?"
    r"(?P<count>\d+)\s*(?:/|per)\s*(?P<num>\d+(?:\.\d+)?|\.\d+)?\s*(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE,
)
_EXAMPLE = "e.g. '100/s', '5000/h', '10/1.5s' or 'tokens:90000/min'"


class RateSpecError(PacelineError, ValueError):
    """A rate limit was given in a form paceline cannot read. The message says how to fix it."""


def unit_name(text: str) -> str:
    """The canonical name of a unit: lower case, and ``requests`` for its usual spellings.

    >>> unit_name("Tokens"), unit_name("req")
    ('tokens', 'requests')
    """
    name = text.strip().lower()
    return REQUESTS if name in _REQUEST_ALIASES else name


def seconds_to_ns(seconds: float) -> int:
    """Convert seconds to integer nanoseconds, rounding up so a window is never shortened."""
    return math.ceil(seconds * NS_PER_S)


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``max_requests`` of ``unit`` in any window of ``window_ns`` nanoseconds.

    ``unit`` is ``"requests"`` (one per start) unless the rate counts something else, in which
    case ``max_requests`` is the most of that unit per window (the name is kept from the days
    when every limit counted requests).

    >>> Rate.parse("10/1.5s")
    Rate(max_requests=10, window_ns=1500000000, unit='requests')
    >>> Rate.parse("tokens:90000/min")
    Rate(max_requests=90000, window_ns=60000000000, unit='tokens')
    """

    max_requests: int
    window_ns: int
    unit: str = REQUESTS

    def __post_init__(self) -> None:
        if not isinstance(self.unit, str) or not _UNIT_NAME_RE.match(self.unit):
            raise RateSpecError(
                f"unit {self.unit!r}: must be a lower-case name such as 'requests' or 'tokens' "
                "(letters, digits and '_', not starting with a digit)"
            )
        if isinstance(self.max_requests, bool) or not isinstance(self.max_requests, int):
            raise RateSpecError(
                f"max_requests {self.max_requests!r}: must be a whole number of {self.unit} "
                "such as 10"
            )
        if self.max_requests < 1:
            raise RateSpecError(
                f"max_requests {self.max_requests!r}: must be at least 1 "
                "(to stop all traffic, do not run the batch)"
            )
        if self.window_ns <= 0:
            raise RateSpecError(
                f"time window {self.window_ns / NS_PER_S!r}s: must be longer than zero"
            )

    @classmethod
    def of(cls, max_requests: int, time_window_seconds: float) -> Rate:
        """Build from a count and a window in seconds, checking both."""
        if isinstance(time_window_seconds, bool) or not isinstance(
            time_window_seconds, (int, float)
        ):
            raise RateSpecError(
                f"time_window_seconds {time_window_seconds!r}: must be a number of seconds "
                "such as 1 or 0.5"
            )
        if not math.isfinite(time_window_seconds) or time_window_seconds <= 0:
            raise RateSpecError(
                f"time_window_seconds {time_window_seconds!r}: must be a finite number of "
                "seconds greater than zero, such as 1 or 0.5"
            )
        return cls(max_requests, seconds_to_ns(time_window_seconds))

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Read a rate string such as ``"100/s"``; raise :class:`RateSpecError` naming the fix."""
        if not isinstance(text, str):
            raise RateSpecError(f"rate {text!r}: must be a string, {_EXAMPLE}")
        match = _RATE_RE.match(text)
        if match is None:
            raise RateSpecError(f"rate {text!r}: expected '<count>/<window>', {_EXAMPLE}")
        unit = match["unit"].lower()
        if unit not in _UNIT_SECONDS:
            raise RateSpecError(
                f"rate {text!r}: unit {match['unit']!r} must be one of ms, s, m (min), h, d "
                f"— {_EXAMPLE}"
            )
        count = int(match["count"])
        if count < 1:
            raise RateSpecError(f"rate {text!r}: the count must be at least 1, {_EXAMPLE}")
        num = float(match["num"]) if match["num"] else 1.0
        if num <= 0:
            raise RateSpecError(f"rate {text!r}: the window must be longer than zero, {_EXAMPLE}")
        what = unit_name(match["what"]) if match["what"] else REQUESTS
        return cls(count, seconds_to_ns(num * _UNIT_SECONDS[unit]), what)

    @property
    def per_second(self) -> float:
        """The long-run rate in units per second (starts per second for requests)."""
        return self.max_requests * NS_PER_S / self.window_ns

    def __str__(self) -> str:
        prefix = "" if self.unit == REQUESTS else f"{self.unit}:"
        return f"{prefix}{self.max_requests}/{self.window_ns / NS_PER_S:g}s"
