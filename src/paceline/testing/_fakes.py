"""A limiter that records calls and never waits, and a clock that only moves when told."""

from __future__ import annotations

import asyncio
import threading

from paceline.policy.rate import NS_PER_S


class FakeRateLimiter:
    """Grants everything at once and counts: ``acquire_count`` calls, ``total_weight`` permits.

    Thread-safe, and usable by the async runner (it has ``acquire_async``).
    """

    def __init__(self) -> None:
        self.acquire_count = 0
        self.total_weight = 0
        self.weights: list[int] = []
        self._lock = threading.Lock()

    def acquire(self, weight: int = 1) -> None:
        """Record one grant of ``weight`` permits."""
        with self._lock:
            self.acquire_count += 1
            self.total_weight += weight
            self.weights.append(weight)

    async def acquire_async(self, weight: int = 1) -> None:
        """Record one grant of ``weight`` permits."""
        self.acquire(weight)


class FakeClock:
    """A monotonic clock that only moves when told, or when someone sleeps on it.

    ``sleep(s)`` advances the clock by ``s`` at once (as if the sleeper slept exactly that
    long) and records the request in ``sleeps``; ``sleep_async`` does the same and yields to
    the event loop once. Time is kept in integer nanoseconds.

    >>> clock = FakeClock()
    >>> clock.sleep(1.5); clock.monotonic_ns()
    1500000000
    """

    def __init__(self, start_ns: int = 0) -> None:
        self.now_ns = start_ns
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def monotonic_ns(self) -> int:
        return self.now_ns

    def advance(self, seconds: float = 0.0, *, ns: int = 0) -> None:
        """Move the clock forward by ``seconds`` plus ``ns`` nanoseconds."""
        with self._lock:
            self.now_ns += round(seconds * NS_PER_S) + ns

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now_ns += round(seconds * NS_PER_S)

    async def sleep_async(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)
