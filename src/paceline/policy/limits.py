"""Several limits at once: an attempt needs every one of them (sans-I/O).

The whole check-then-grant runs under one caller-held lock, so "all must agree" is atomic: no
limit is charged unless every limit allows the grant now, and nothing has to be given back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from paceline.policy.gcra import Gcra
from paceline.policy.rate import Rate
from paceline.policy.window import WindowLog

# A grant and the start it allows are a few microseconds apart (a thread handoff: up to a GIL
# switch). Two grants exactly W apart can then be two starts slightly *less* than W apart, and a
# window of W measured on starts holds N + 1. Each window is therefore lengthened by this much
# (W' = W + J, docs/design.md, 'Window margin'): 0.1 % of W, at most 1 ms — 0.1 % of the rate.
DEFAULT_MARGIN_FRACTION = 1000
DEFAULT_MARGIN_MAX_NS = 1_000_000


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: ``rate`` (N per W), an optional ``burst`` (``None``: the log alone) and
    ``margin_ns`` added to the window for the spread between a grant and its start (``None``:
    W/1000, at most 1 ms; 0 for the bare promise on grants)."""

    rate: Rate
    burst: int | None = None
    margin_ns: int | None = None

    @property
    def window_ns(self) -> int:
        """The window the limiter enforces: W plus the margin."""
        if self.margin_ns is None:
            margin = min(self.rate.window_ns // DEFAULT_MARGIN_FRACTION, DEFAULT_MARGIN_MAX_NS)
        else:
            margin = self.margin_ns
        return self.rate.window_ns + margin

    def __post_init__(self) -> None:
        if self.margin_ns is not None and self.margin_ns < 0:
            raise ValueError(f"margin {self.margin_ns!r} ns: must not be negative")
        if self.burst is not None and (
            isinstance(self.burst, bool)
            or not isinstance(self.burst, int)
            or not 1 <= self.burst <= self.rate.max_requests
        ):
            raise ValueError(
                f"burst {self.burst!r}: must be a whole number from 1 (evenly paced) to "
                f"{self.rate.max_requests} (the whole limit at once) for the limit {self.rate}"
            )


class LimitPolicy:
    """Decide grants for a set of limits on integer nanoseconds.

    >>> p = LimitPolicy([Limit(Rate(2, 1_000_000_000), margin_ns=0)])
    >>> p.try_grant(0, 1), p.try_grant(0, 1), p.try_grant(0, 1)
    (0, 0, 1000000000)
    """

    __slots__ = ("_logs", "_shapers", "limits")

    def __init__(self, limits: Sequence[Limit]) -> None:
        if not limits:
            raise ValueError("at least one limit is needed, e.g. Rate.parse('10/s')")
        self.limits = tuple(limits)
        self._logs = tuple(WindowLog(lim.rate.max_requests, lim.window_ns) for lim in limits)
        self._shapers = tuple(
            Gcra.for_limit(lim.rate.max_requests, lim.window_ns, lim.burst)
            for lim in limits
            if lim.burst is not None
        )

    def wait_ns(self, now_ns: int, weight: int) -> int:
        """Nanoseconds until ``weight`` permits are allowed by every limit (0: now)."""
        if weight < 1:
            raise ValueError(f"weight {weight!r}: must be at least 1")
        wait = 0
        for shaper in self._shapers:
            w = shaper.wait_ns(now_ns, weight)
            if w > wait:
                wait = w
        for log in self._logs:
            w = log.wait_ns(now_ns, weight)
            if w > wait:
                wait = w
        return wait

    def try_grant(self, now_ns: int, weight: int = 1, waited: bool = False) -> int:
        """Grant ``weight`` permits at ``now_ns`` if every limit agrees and return 0; otherwise
        change nothing and return the nanoseconds to wait before asking again."""
        wait = self.wait_ns(now_ns, weight)
        if wait:
            return wait
        for shaper in self._shapers:
            shaper.record(now_ns, weight, waited)
        for log in self._logs:
            log.record(now_ns, weight)
        return 0

    def try_lease(self, now_ns: int, count: int, hold_ns: int) -> int:
        """Grant ``count`` unit permits at once for starts in ``[now_ns, now_ns + hold_ns]``;
        return ``count``, or 0 (granting nothing) unless every limit has room for all of them.

        The permits are recorded at ``now_ns + hold_ns``, the *latest* moment any of them may
        start. A log entry stamped no earlier than its start keeps the limit strict: at every
        grant decision, each earlier start inside the window still has its entry counted. The
        holder must not start a leased permit after that moment (give unused ones back). Only
        for plain logs: with a pacer, a lease would be a burst the pacer exists to prevent.
        """
        if self._shapers or count < 1:
            return 0
        for log in self._logs:
            if log.held(now_ns) + count > log.limit:
                return 0
        stamp = now_ns + hold_ns
        for log in self._logs:
            log.record_lease(now_ns, stamp, count)
        return count

    def give_back(self, granted_ns: int, weight: int = 1) -> None:
        """Return permits granted at ``granted_ns`` that were never used (the shaper's schedule
        is never rewound: that would let a burst through)."""
        for log in self._logs:
            log.give_back(granted_ns, weight)
