"""Times in rate-limit headers: delay seconds, HTTP-dates, epochs, Go durations, RFC 3339.

Everything here is pure: the caller passes "now" (and the response's ``Date``) in; nothing reads
a clock. Every parser returns ``None`` for a value it does not understand instead of raising.
"""

from __future__ import annotations

import calendar
import datetime
import math
import re
import time

__all__ = [
    "collapse_repeats",
    "parse_go_duration",
    "parse_http_date",
    "parse_number",
    "parse_reset",
    "parse_retry_after",
    "parse_rfc3339",
]

# A non-negative decimal number, ASCII digits only: float() alone would also take "nan", "inf",
# "1e3", "1_000", "+5" and non-ASCII digits, none of which any server means as a duration.
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")

# Plain numbers in a reset header are read by size (GitHub sends epoch seconds, most others a
# delta). 1e9 s is 2001-09-09 as an epoch but 31.7 years as a delta: no window is that long, and
# every current epoch is past it. 1e12 is the same instant in milliseconds (epoch-ms senders); as
# epoch seconds it would be the year 33658. A delta in milliseconds is NOT guessed from its size
# (250 ms and 250 s look alike): it needs an explicit unit ("250ms", or a "-ms" header name).
# Misreading ms as s errs towards waiting longer, which the retry policy caps and surfaces.
EPOCH_S_THRESHOLD = 1e9
EPOCH_MS_THRESHOLD = 1e12

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 §5.6.7: recipients MUST accept all three formats. Matching is case-insensitive and
# takes a one-digit day or "UTC" for "GMT": being lenient here costs nothing.
_IMF_FIXDATE = re.compile(
    rf"[a-z]{{3}},[ ]+([0-9]{{1,2}})[ ]([a-z]{{3}})[ ]([0-9]{{4}})[ ]{_TIME}[ ](?:gmt|utc)", re.I
)
_RFC850_DATE = re.compile(
    rf"[a-z]{{6,9}},[ ]([0-9]{{2}})-([a-z]{{3}})-([0-9]{{2}})[ ]{_TIME}[ ](?:gmt|utc)", re.I
)
_ASCTIME_DATE = re.compile(
    rf"[a-z]{{3}}[ ]([a-z]{{3}})[ ]+([0-9]{{1,2}})[ ]{_TIME}[ ]([0-9]{{4}})", re.I
)
# RFC 3339 §5.6 date-time; "t"/"z" may be lower case and a space may replace "T" (§5.6 NOTE).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
# Go's time.Duration.String() and ParseDuration units (OpenAI sends "6m0s", "1.5s", "20ms").
_GO_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign, as Go prints it
    "\u03bcs": 1e-6,  # Greek mu, which Go also accepts
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_DURATION = re.compile(rf"(?:{_GO_PART.pattern})+")


def collapse_repeats(text: str) -> str:
    """``"120, 120"`` -> ``"120"``: one value a proxy repeated, joined as HTTP joins lines.

    A singleton field sent twice with the same value is still that value; two different values
    are left joined (and so fail to parse: there is no telling which one the server meant).

    >>> collapse_repeats("120, 120"), collapse_repeats("120, 60")
    ('120', '120, 60')
    """
    parts = [part.strip(" \t") for part in text.split(",")]
    for size in range(1, len(parts) // 2 + 1):
        if len(parts) % size == 0 and parts == parts[:size] * (len(parts) // size):
            return ", ".join(parts[:size])
    return text.strip(" \t")


def parse_number(text: str) -> float | None:
    """A non-negative decimal (``"120"``, ``"0.25"``), or ``None``; never inf or nan."""
    text = text.strip(" \t")
    if _NUMBER.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None  # 310+ digits overflow to inf


def _epoch(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float | None:
    """Seconds since the epoch for a UTC calendar time, or ``None`` if it names no such time."""
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second, as RFC 3339 allows
        return None
    try:
        datetime.date(year, month, day)
    except ValueError:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def _rfc850_year(two_digits: int, now_epoch_s: float) -> int:
    """RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is the one a century back."""
    current = time.gmtime(now_epoch_s).tm_year
    year = current // 100 * 100 + two_digits
    if year > current + 50:
        year -= 100
    elif year + 100 <= current + 50:
        year += 100
    return year


def parse_http_date(text: str, now_epoch_s: float = 0.0) -> float | None:
    """An HTTP-date (any of RFC 9110's three formats) as epoch seconds, or ``None``.

    ``now_epoch_s`` only resolves the century of the obsolete two-digit-year format.

    >>> parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT")
    784111777.0
    >>> parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now_epoch_s=1.7e9)
    784111777.0
    >>> parse_http_date("Sun Nov  6 08:49:37 1994")
    784111777.0
    """
    text = text.strip(" \t")
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
        year_number = int(year)
    elif match := _RFC850_DATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
        year_number = _rfc850_year(int(year), now_epoch_s)
    elif match := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
        year_number = int(year)
    else:
        return None
    month_number = _MONTHS.get(month.lower())
    if month_number is None:
        return None
    return _epoch(year_number, month_number, int(day), int(hour), int(minute), int(second))


def parse_rfc3339(text: str) -> float | None:
    """An RFC 3339 timestamp as epoch seconds (fractions and offsets kept), or ``None``.

    >>> parse_rfc3339("2026-11-23T10:00:00Z"), parse_rfc3339("2026-11-23T12:00:00.5+02:00")
    (1795428000.0, 1795428000.5)
    """
    match = _RFC3339.fullmatch(text.strip(" \t"))
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    epoch = _epoch(int(year), int(month), int(day), int(hour), int(minute), int(second))
    if epoch is None:
        return None
    if fraction:
        epoch += float("0" + fraction)
    if sign:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = int(off_h) * 3600 + int(off_m) * 60
        epoch -= offset if sign == "+" else -offset
    return epoch


def parse_go_duration(text: str) -> float | None:
    """A Go duration (``"6m0s"``, ``"1h2m3.5s"``, ``"250ms"``, ``"0s"``) in seconds, or ``None``.

    Signs are refused: a reset or a wait is never negative. A bare ``"0"`` is a plain number.

    >>> parse_go_duration("6m0s"), parse_go_duration("1h2m3.5s"), parse_go_duration("250ms")
    (360.0, 3723.5, 0.25)
    """
    text = text.strip(" \t")
    if _GO_DURATION.fullmatch(text) is None:
        return None
    total = 0.0
    for amount, unit in _GO_PART.findall(text):
        total += float(amount) * _GO_UNITS_S[unit]
    return total if math.isfinite(total) else None


def _reference(date: str | None, now_epoch_s: float) -> float:
    """The instant an absolute time is measured from: the response's ``Date`` if it parses.

    Server clock against server clock: the local clock may be minutes off the server's, and the
    difference of two server timestamps does not care (RFC 9110 §10.2.3 for Retry-After).
    """
    if date is not None:
        server_now = parse_http_date(date, now_epoch_s)
        if server_now is not None:
            return server_now
    return now_epoch_s


def parse_retry_after(
    value: str, *, date: str | None = None, now_epoch_s: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date.

    A date is measured against ``date`` (the same response's ``Date`` header) when that parses,
    else against ``now_epoch_s`` (default: ``time.time()``). A date in the past gives ``0.0``.
    Negative numbers, garbage and empty values give ``None``. Huge values are returned as they
    are: whether to obey them is the retry policy's decision (``max_retry_after_s``). Decimals
    (``"1.5"``) are accepted although RFC 9110 only defines whole seconds.

    >>> parse_retry_after("120"), parse_retry_after("1000000"), parse_retry_after("-1")
    (120.0, 1000000.0, None)
    >>> parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", date="Sun, 06 Nov 1994 08:49:37 GMT")
    120.0
    """
    text = collapse_repeats(value)
    seconds = parse_number(text)
    if seconds is not None:
        return seconds
    now = time.time() if now_epoch_s is None else now_epoch_s
    when = parse_http_date(text, now)
    if when is None:
        return None
    return max(0.0, when - _reference(date, now))


def parse_reset(
    value: str, *, now_epoch_s: float, date: str | None = None, scale_s: float = 1.0
) -> float | None:
    """Seconds from now until more quota, from a reset header in any format servers use.

    Rules, in order (``None`` if none applies; never negative):

    - A plain number is multiplied by ``scale_s`` (``0.001`` for a header whose name ends in
      ``-ms``), then read by size: ``>= 1e12`` epoch milliseconds, ``>= 1e9`` epoch seconds
      (GitHub), anything smaller a delta in seconds.
    - A Go duration (``"6m0s"``, ``"250ms"``, OpenAI) is a delta.
    - An RFC 3339 timestamp (``"2026-11-23T10:00:00Z"``, offsets and fractions allowed) or an
      HTTP-date is absolute.

    Absolute times are measured against ``date`` (the response's ``Date``) when it parses, else
    ``now_epoch_s``; a time in the past gives ``0.0``.

    >>> parse_reset("30", now_epoch_s=1.7e9), parse_reset("1700000060", now_epoch_s=1.7e9)
    (30.0, 60.0)
    >>> parse_reset("6m0s", now_epoch_s=0), parse_reset("250", now_epoch_s=0, scale_s=0.001)
    (360.0, 0.25)
    """
    text = collapse_repeats(value)
    number = parse_number(text)
    if number is not None:
        number *= scale_s
        if number >= EPOCH_MS_THRESHOLD:
            when = number / 1000.0
        elif number >= EPOCH_S_THRESHOLD:
            when = number
        else:
            return number
    else:
        delta = parse_go_duration(text)
        if delta is not None:
            return delta
        absolute = parse_rfc3339(text)
        if absolute is None:
            absolute = parse_http_date(text, now_epoch_s)
        if absolute is None:
            return None
        when = absolute
    return max(0.0, when - _reference(date, now_epoch_s))
