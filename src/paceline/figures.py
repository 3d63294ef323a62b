"""Figures for people: counts, durations, latencies, rates and percentages, written one way
wherever paceline shows them (the live bar, the summary, the text and HTML reports, both dry
runs). Pure functions of the standard library, below every other layer.

>>> format_count(1234567), format_duration(78), format_rate(43.14), format_latency(0.1204)
('1,234,567', '1m18s', '43.1/s', '120ms')
"""

from __future__ import annotations

import math

__all__ = [
    "format_count",
    "format_duration",
    "format_latency",
    "format_percent",
    "format_rate",
]


def format_count(n: int) -> str:
    """A count with thousands separators.

    >>> format_count(0), format_count(999), format_count(1234), format_count(-5000)
    ('0', '999', '1,234', '-5,000')
    """
    return f"{n:,}"


def format_duration(seconds: float) -> str:
    """A duration, rounded to the second, in at most two units.

    >>> [format_duration(s) for s in (0, 0.4, 45, 59.6, 78, 600, 3599)]
    ['0s', '0s', '45s', '1m00s', '1m18s', '10m00s', '59m59s']
    >>> [format_duration(s) for s in (3600, 7380, 86399, 90000, 10 * 86400)]
    ['1h00m', '2h03m', '23h59m', '1d01h', '10d00h']
    >>> format_duration(-3), format_duration(math.inf), format_duration(math.nan)
    ('0s', '?', '?')
    """
    if not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def format_rate(per_s: float, *, trim: bool = False) -> str:
    """A rate per second with one decimal (``k``/``M`` for large ones, per minute for tiny ones).

    ``trim`` drops a ``.0`` (for limits, which are usually round: ``50/s``).

    >>> [format_rate(r) for r in (0, 0.5, 43.14, 999.94, 999.96, 1234, 2_500_000)]
    ['0.0/s', '0.5/s', '43.1/s', '999.9/s', '1.0k/s', '1.2k/s', '2.5M/s']
    >>> format_rate(1 / 60), format_rate(50.0, trim=True), format_rate(12.5, trim=True)
    ('1.0/min', '50/s', '12.5/s')
    >>> format_rate(-1), format_rate(math.nan)
    ('0.0/s', '?/s')
    """
    if math.isnan(per_s):
        return "?/s"
    per_s = max(0.0, per_s)
    if 0 < per_s < 0.05:
        value, unit = per_s * 60, "/min"
    elif round(per_s, 1) < 1000:
        value, unit = per_s, "/s"
    elif round(per_s / 1000, 1) < 1000:
        value, unit = per_s / 1000, "k/s"
    else:
        value, unit = per_s / 1_000_000, "M/s"
    text = f"{value:.1f}"
    if trim and text.endswith(".0"):
        text = text[:-2]
    return text + unit


def format_latency(seconds: float) -> str:
    """A latency: milliseconds below a second, then seconds, then a duration.

    >>> [format_latency(s) for s in (0.0004, 0.0123, 0.1204, 0.9996, 1.234, 12.34, 95)]
    ['0.4ms', '12ms', '120ms', '1.00s', '1.23s', '12.3s', '1m35s']
    """
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 0.00995:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 9.995:
        return f"{seconds:.2f}s"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    return format_duration(seconds)


def format_percent(done: int, total: int) -> str:
    """How much of ``total`` is ``done``, rounded down (100% only when all is done).

    >>> format_percent(1200, 5000), format_percent(4999, 5000), format_percent(5000, 5000)
    ('24%', '99%', '100%')
    >>> format_percent(0, 0), format_percent(7, 5)
    ('100%', '100%')
    """
    if total <= 0 or done >= total:
        return "100%"
    return f"{max(0, done) * 100 // total}%"
