"""What the CLI counts while a batch runs: for the live progress, the timeline and the report.

Everything here runs on the event loop's thread (the operation wrapper and the settle
callback), so nothing locks. Times are ``time.monotonic()`` seconds.

>>> m = Metrics(total=3, clock=iter([0.0, 0.0, 0.5, 1.0, 1.0]).__next__)
>>> m.attempt_started(); m.attempt_ended(0.5, throttled=False, failed=False)
>>> m.settled(failed=False)
>>> s = m.snapshot()
>>> (s.settled, s.succeeded, s.in_flight, s.total)
(1, 1, 0, 3)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# The "recent" rates and latencies cover this many seconds.
RECENT_S = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The batch's state at one moment (this run only; ``restored`` counts items the journal
    already had, which are part of ``settled``)."""

    elapsed_s: float
    total: int | None  # items in the input; None when unknown (stdin, endless)
    settled: int  # items with a final outcome this run, restored ones included
    succeeded: int
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


class Metrics:
    """Counters and recent history of one run."""

    def __init__(self, total: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.total = total
        self.settled_count = 0
        self.succeeded = 0
        self.failed = 0
        self.restored = 0
        self.in_flight = 0
        self.attempts = 0
        self.first_attempts = 0
        self.throttled = 0
        self.errors = 0
        self.concurrency_limit: Callable[[], int | None] = lambda: None
        self.rate_limit_per_s: Callable[[], float | None] = lambda: None
        self._settles: deque[float] = deque()  # when items settled (not restored), recent
        self._starts: deque[float] = deque()  # when attempts started, recent
        self._latencies: deque[tuple[float, float]] = deque()  # (ended, seconds), recent

    # -- fed by the operation wrapper and the settle callback ------------------------------

    def attempt_started(self, first: bool = True) -> None:
        """An attempt starts (``first``: the item's first attempt)."""
        self.in_flight += 1
        self.attempts += 1
        if first:
            self.first_attempts += 1
        self._starts.append(self.clock())

    def attempt_ended(self, duration_s: float, *, throttled: bool, failed: bool) -> None:
        """An attempt ended after ``duration_s`` seconds."""
        self.in_flight -= 1
        if throttled:
            self.throttled += 1
        elif failed:
            self.errors += 1
        self._latencies.append((self.clock(), duration_s))

    def settled(self, *, failed: bool, restored: bool = False) -> None:
        """An item got its final outcome."""
        self.settled_count += 1
        if failed:
            self.failed += 1
        else:
            self.succeeded += 1
        if restored:
            self.restored += 1
        else:
            self._settles.append(self.clock())

    # -- read by the progress view and the timeline ----------------------------------------

    def snapshot(self) -> Snapshot:
        """The state now."""
        now = self.clock()
        horizon = now - RECENT_S
        for recent in (self._settles, self._starts):
            while recent and recent[0] < horizon:
                recent.popleft()
        latencies = self._latencies
        while latencies and latencies[0][0] < horizon:
            latencies.popleft()
        elapsed = now - self.started
        window = min(RECENT_S, elapsed) or 1e-9
        rate = len(self._settles) / window
        ordered = sorted(seconds for _, seconds in latencies)
        remaining = None if self.total is None else max(0, self.total - self.settled_count)
        eta = None if remaining is None or rate <= 0 else remaining / rate
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
        )
