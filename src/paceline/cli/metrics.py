"""What the CLI counts while a batch runs: for the live progress, the timeline and the report.

Everything here runs on the event loop's thread (the operation wrapper and the settle
callback), so nothing locks. Times are ``time.monotonic()`` seconds.

>>> m = Metrics(total=3, clock=iter([0.0, 0.0, 0.5, 1.0, 1.0]).__next__)
>>> m.attempt_started(); m.attempt_ended(0.5, throttled=False, failed=False)
>>> m.settled(failed=False)
>>> s = m.snapshot()
>>> (s.settled, s.succeeded, s.in_flight, s.total)
(1, 1, 0, 3)

Whatever holds the whole batch back (a server's pause, a spent budget, a graceful stop) is
reported with :meth:`Metrics.hold` and shown by the progress view once it lasts a while.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from paceline.policy.rate import NS_PER_S

# The "recent" rates and latencies cover this many seconds.
RECENT_S = 5.0
# A hold is shown once it lasts (or is known to last) longer than this: long enough that the
# pacer's ordinary waits between starts (1 s at 1/s) are not called holds, short enough that a
# stopped batch is never silent for more than a couple of progress lines.
HOLD_SHOWN_AFTER_S = 2.0
# The shortest time a rate per second is taken over (see Metrics.snapshot).
RATE_WINDOW_MIN_S = 1.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The batch's state at one moment (this run only; ``restored`` counts items the journal
    already had, which are part of ``settled``)."""

    elapsed_s: float
    total: int | None  # items in the input; None when unknown (stdin, endless)
    settled: int  # items with a final outcome this run, restored ones included
    succeeded: int  # restored ones included
    failed: int
    restored: int
    in_flight: int  # attempts running now
    attempts: int  # attempts started this run
    retries: int  # attempts beyond each item's first
    throttled: int  # attempts answered 429/503 or that raised Throttled
    errors: int  # failed attempts other than throttles
    concurrency_limit: int | None  # the current limit (adaptive or fixed); None: unlimited
    rate_limit_per_s: float | None  # the tightest rate limit in force, in starts/s
    rate_per_s: float  # items settled per second, over the last RECENT_S (restored excluded)
    attempt_rate_per_s: float  # attempts started per second, over the last RECENT_S
    eta_s: float | None  # seconds to go at the recent rate; None when unknown
    latency_p50_s: float | None  # of attempts that ended in the last RECENT_S
    latency_p90_s: float | None
    latency_p99_s: float | None
    # What holds the whole batch back now, once it lasts (or will last) over HOLD_SHOWN_AFTER_S:
    hold_reason: str | None = None  # e.g. "the server asked to wait (Retry-After)"
    hold_left_s: float | None = None  # seconds until it ends; None: until something happens
    held_s: float | None = None  # seconds it has lasted so far
    run_succeeded: int = 0  # items that succeeded in this run (restored ones excluded)
    # Failed items refused a retry because the batch's retry budget was spent (part of failed)
    budget_exhausted: int = 0
    # Units other than requests (tokens...), when a limit counts them: used per second over
    # the last RECENT_S (by the items that succeeded, from their answers' usage), the limit in
    # force per second (from --rate, or learned from the server's headers), and the run's total.
    units_per_s: dict[str, float] = field(default_factory=dict)
    unit_limits_per_s: dict[str, float] = field(default_factory=dict)
    units_used: dict[str, int] = field(default_factory=dict)

    def average_per_s(self) -> tuple[float, float]:
        """Items settled and items succeeded per second over the whole run, restored ones
        excluded: what ``avg`` says at the end.

        >>> Snapshot(10.0, 60, 50, 40, 10, 20, 0, 35, 5, 0, 0, None, None, 3.0, 3.5, None,
        ...          None, None, None, run_succeeded=25).average_per_s()
        (3.0, 2.5)
        """
        if self.elapsed_s <= 0:
            return 0.0, 0.0
        return (self.settled - self.restored) / self.elapsed_s, self.run_succeeded / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of already sorted values (None for none).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([], 0.9)
    (2.0, None)
    """
    if not sorted_values:
        return None
    rank = max(1, -(-round(fraction * len(sorted_values) * 1e9) // 10**9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class _Hold:
    reason: str
    since_s: float
    until_s: float | None


class Metrics:
    """Counters and recent history of one run."""

    def __init__(self, total: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.total = total
        self.settled_count = 0
        self.succeeded = 0
        self.run_succeeded = 0
        self.failed = 0
        self.budget_exhausted = 0
        self.restored = 0
        self.in_flight = 0
        self.attempts = 0
        self.first_attempts = 0
        self.throttled = 0
        self.errors = 0
        self.open_items = 0  # items with an attempt this run and no outcome yet
        self.concurrency_limit: Callable[[], int | None] = lambda: None
        self.rate_limit_per_s: Callable[[], float | None] = lambda: None
        # Called first thing in every snapshot: tells :meth:`hold` what others hold now (the CLI
        # calls hold_from_pacing there, and says when a graceful stop waits).
        self.read_holds: Callable[[], None] = lambda: None
        self._settles: deque[float] = deque()  # when items settled (not restored), recent
        # Units used by items that succeeded this run (tokens...): totals, and recent events.
        self.units_used: dict[str, int] = {}
        self._units: deque[tuple[float, str, int]] = deque()
        # The limits per second in force for units other than requests (see Snapshot).
        self.unit_limits_per_s: Callable[[], dict[str, float]] = dict
        self._starts: deque[float] = deque()  # when attempts started, recent
        self._latencies: deque[tuple[float, float]] = deque()  # (ended, seconds), recent
        self._holds: dict[str, _Hold] = {}
        self._idle_since: float | None = None  # when the last running attempt ended

    # -- fed by the operation wrapper and the settle callback ------------------------------

    def attempt_started(self, first: bool = True) -> None:
        """An attempt starts (``first``: the item's first attempt)."""
        self.in_flight += 1
        self.attempts += 1
        self._idle_since = None
        if first:
            self.first_attempts += 1
            self.open_items += 1
        self._starts.append(self.clock())

    def attempt_ended(self, duration_s: float, *, throttled: bool, failed: bool) -> None:
        """An attempt ended after ``duration_s`` seconds."""
        now = self.clock()
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle_since = now
        if throttled:
            self.throttled += 1
        elif failed:
            self.errors += 1
        self._latencies.append((now, duration_s))

    def settled(
        self,
        *,
        failed: bool,
        restored: bool = False,
        attempted: bool = True,
        budget_exhausted: bool = False,
    ) -> None:
        """An item got its final outcome (``attempted``: after an attempt of this run; not a
        restored item, nor a bad input row failed without one; ``budget_exhausted``: it failed
        because the batch's retry budget was spent, with retries left)."""
        self.settled_count += 1
        if attempted and not restored:
            self.open_items = max(0, self.open_items - 1)
        if failed:
            self.failed += 1
            self.budget_exhausted += budget_exhausted
        else:
            self.succeeded += 1
            if not restored:
                self.run_succeeded += 1
        if restored:
            self.restored += 1
        else:
            self._settles.append(self.clock())

    def used(self, cost: dict[str, int]) -> None:
        """An item of this run succeeded using ``cost`` (units other than requests are kept)."""
        now = self.clock()
        for unit, amount in cost.items():
            if unit != "requests" and amount:
                self.units_used[unit] = self.units_used.get(unit, 0) + amount
                self._units.append((now, unit, amount))

    def hold(self, source: str, reason: str | None, *, until_s: float | None = None) -> None:
        """Say that ``source`` holds the whole batch back for ``reason`` until ``until_s``
        (on :attr:`clock`: ``time.monotonic()`` seconds; None: until told otherwise), or with
        ``reason=None`` that it no longer does.

        Call it whenever you know (each progress tick is fine): the hold keeps the time it
        started while ``source`` gives the same reason, and ends by itself at ``until_s``. The
        snapshot shows the longest hold once it lasts, or will last, over
        :data:`HOLD_SHOWN_AFTER_S` (a known end first; one without an end after that long).

        >>> m = Metrics(total=None, clock=iter([0.0, 1.0, 1.0, 2.0, 2.0]).__next__)
        >>> m.hold("server", "the server asked to wait (Retry-After)", until_s=31.0)
        >>> s = m.snapshot()
        >>> s.hold_reason, s.hold_left_s, s.held_s
        ('the server asked to wait (Retry-After)', 30.0, 0.0)
        >>> m.hold("server", None); m.snapshot().hold_reason is None
        True
        """
        if reason is None:
            self._holds.pop(source, None)
            return
        now = self.clock()
        held = self._holds.get(source)
        since = held.since_s if held is not None and held.reason == reason else now
        self._holds[source] = _Hold(reason, since, until_s)

    def _current_hold(self, now: float) -> tuple[str, float | None, float] | None:
        """The hold to show now: (reason, seconds left or None, seconds held)."""
        holds = self._holds
        for source in [s for s, h in holds.items() if h.until_s is not None and h.until_s <= now]:
            del holds[source]
        # What was said first; then, only without it, the wait Metrics sees by itself (often
        # a consequence of what was said: items wait out a server's pause to retry).
        hold = _longest(holds.values(), now)
        if hold is None and self.in_flight == 0 and self.open_items > 0:
            assert self._idle_since is not None  # attempts started, none running
            waiting = format(self.open_items, ",")
            noun = "item" if self.open_items == 1 else "items"
            retry = _Hold(f"waiting to retry {waiting} {noun}", self._idle_since, None)
            hold = _longest([retry], now)
        if hold is None:
            return None
        left = None if hold.until_s is None else hold.until_s - now
        return hold.reason, left, now - hold.since_s

    # -- read by the progress view and the timeline ----------------------------------------

    def snapshot(self) -> Snapshot:
        """The state now."""
        self.read_holds()
        now = self.clock()
        horizon = now - RECENT_S
        for recent in (self._settles, self._starts):
            while recent and recent[0] < horizon:
                recent.popleft()
        units = self._units
        while units and units[0][0] < horizon:
            units.popleft()
        latencies = self._latencies
        while latencies and latencies[0][0] < horizon:
            latencies.popleft()
        elapsed = now - self.started
        # Not less than a second: a rate over the first tenths would extrapolate a burst (7
        # starts in 0.2 s showed as 35/s against a limit of 1.6/s).
        window = max(min(RECENT_S, elapsed), RATE_WINDOW_MIN_S)
        rate = len(self._settles) / window
        ordered = sorted(seconds for _, seconds in latencies)
        remaining = None if self.total is None else max(0, self.total - self.settled_count)
        eta = None if remaining is None or rate <= 0 else remaining / rate
        hold = self._current_hold(now)
        return Snapshot(
            elapsed_s=elapsed,
            total=self.total,
            settled=self.settled_count,
            succeeded=self.succeeded,
            failed=self.failed,
            restored=self.restored,
            in_flight=self.in_flight,
            attempts=self.attempts,
            retries=self.attempts - self.first_attempts,
            throttled=self.throttled,
            errors=self.errors,
            concurrency_limit=self.concurrency_limit(),
            rate_limit_per_s=self.rate_limit_per_s(),
            rate_per_s=rate,
            attempt_rate_per_s=len(self._starts) / window,
            eta_s=0.0 if remaining == 0 else eta,
            latency_p50_s=percentile(ordered, 0.5),
            latency_p90_s=percentile(ordered, 0.9),
            latency_p99_s=percentile(ordered, 0.99),
            hold_reason=None if hold is None else hold[0],
            hold_left_s=None if hold is None else hold[1],
            held_s=None if hold is None else hold[2],
            run_succeeded=self.run_succeeded,
            budget_exhausted=self.budget_exhausted,
            units_per_s=self._unit_rates(window),
            unit_limits_per_s=self.unit_limits_per_s(),
            units_used=dict(self.units_used),
        )

    def _unit_rates(self, window: float) -> dict[str, float]:
        rates: dict[str, float] = dict.fromkeys(self.units_used, 0.0)
        for _, unit, amount in self._units:
            rates[unit] += amount / window
        return rates


def _longest(holds: Iterable[_Hold], now: float) -> _Hold | None:
    """Of the holds that last, or will last, over HOLD_SHOWN_AFTER_S, the one ending last (an
    end not known: after those known), the oldest among equals."""
    shown = [
        (hold, now - hold.since_s + (0.0 if hold.until_s is None else hold.until_s - now))
        for hold in holds
    ]
    shown = [(hold, length) for hold, length in shown if length > HOLD_SHOWN_AFTER_S]
    if not shown:
        return None
    hold, _ = max(shown, key=lambda e: (e[0].until_s is None, e[0].until_s or 0.0, e[1]))
    return hold


# -- holds the pacing policy decides -----------------------------------------------------------


class _Pausing(Protocol):
    pause_until_ns: int
    events: list[tuple[int, str, float]]


class _Budgeted(Protocol):
    budget: int
    budget_until_ns: int


def hold_from_pacing(
    metrics: Metrics, controller: _Pausing | None, server: _Budgeted | None, now_ns: int
) -> None:
    """Tell ``metrics`` about the holds the pacing keeps now: the adaptive controller's pause
    (a ``Retry-After``, or the wait before probing a server that throttled without one) and
    the HTTP face's spent budget (``remaining: 0`` until the reset). ``now_ns`` is the
    controller's clock (``time.monotonic_ns()``) read now; call it on every progress tick.

    >>> from paceline.policy.adaptive import AdaptiveController
    >>> m, c = Metrics(total=None, clock=lambda: 100.0), AdaptiveController()
    >>> c.pause_until_ns, c.events = 30 * NS_PER_S, [(0, "pause", 30.0)]
    >>> hold_from_pacing(m, c, None, now_ns=0)
    >>> s = m.snapshot(); s.hold_reason, s.hold_left_s
    ('the server asked to wait (Retry-After)', 30.0)
    """
    now_s = metrics.clock()
    reason: str | None = None
    until_ns = 0
    if controller is not None and controller.pause_until_ns > now_ns:
        until_ns = controller.pause_until_ns
        last = next((kind for _, kind, _ in reversed(controller.events) if kind in _PAUSES), None)
        reason = _PAUSES.get(last or "pause")
    metrics.hold("pause", reason, until_s=now_s + (until_ns - now_ns) / NS_PER_S)
    reason = None
    if server is not None and server.budget <= 0 and server.budget_until_ns > now_ns:
        reason = "the server said no requests remain until its reset"
    until_s = now_s + ((server.budget_until_ns if server else 0) - now_ns) / NS_PER_S
    metrics.hold("budget", reason, until_s=until_s)


_PAUSES = {
    "pause": "the server asked to wait (Retry-After)",
    "probe": "throttled without a Retry-After: waiting to try again",
}
