"""Limits the server announces in its headers, applied before each request."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from paceline.limiter import RateLimiter
from paceline.signals import ServerSignals

# The server counts a request when it arrives, a little after we send it: its window seen from
# here is W + J. 2 % of W (at least 25 ms) covers a loopback or LAN hop and event-loop lag
# (measured: at 1 % a few requests in 6,000 arrived early enough to be answered 429).
_ARRIVAL_MARGIN_FRACTION = 0.02
_ARRIVAL_MARGIN_MIN_S = 0.025


class ServerLimits:
    """A limiter that learns from responses: once a ``RateLimit-Policy`` (or an
    ``X-RateLimit-Limit`` with a window) arrives it becomes that strict limit — counting the
    requests already sent in the current window — and when the server says nothing remains
    (``remaining`` 0) it holds every request until the reset.

    Used as the ``rate_limiter`` of an HTTP batch; ``user`` is a limiter of the caller's own,
    applied first.
    """

    def __init__(self, user: RateLimiter | None = None) -> None:
        self.user = user
        self.learned: RateLimiter | None = None
        self.policy: tuple[int, float] | None = None
        self.hold_until_ns = 0
        self._recent: deque[int] = deque()  # our starts, for the window a policy will name

    async def acquire_async(self, weight: int = 1) -> int:
        if self.user is not None:
            await self.user.acquire_async(weight)
        while True:
            now = time.monotonic_ns()
            if now >= self.hold_until_ns:
                break
            await asyncio.sleep((self.hold_until_ns - now) / 1e9)
        granted = (
            await self.learned.acquire_async(weight)
            if self.learned is not None
            else time.monotonic_ns()
        )
        recent = self._recent
        recent.append(granted)
        while len(recent) > 100_000:
            recent.popleft()
        return granted

    def acquire(self, weight: int = 1) -> int:  # pragma: no cover - the async face uses the above
        raise TypeError("ServerLimits is for the async HTTP face; use acquire_async")

    def observe(self, signals: ServerSignals) -> None:
        """Learn from one response's signals."""
        if signals.quota is not None and signals.window_s:
            policy = (signals.quota, float(signals.window_s))
            if policy != self.policy:
                self.policy = policy
                margin = max(_ARRIVAL_MARGIN_MIN_S, _ARRIVAL_MARGIN_FRACTION * policy[1])
                limiter = RateLimiter(policy[0], policy[1], margin_s=margin)
                now = time.monotonic_ns()
                horizon = now - round((policy[1] + margin) * 1e9)
                # Requests sent before the policy was known may reach the server as late as
                # now (the first ones also open their connections): count them as of now.
                earlier = sum(1 for t in self._recent if t > horizon)
                limiter.note_past_grants([now] * earlier)
                self.learned = limiter
        # With the policy known the strict limiter already spaces requests; "0 remaining" is
        # then the expected state at a full window, and its reset is rounded to whole seconds.
        if self.learned is None and signals.remaining == 0 and signals.reset_s:
            until = time.monotonic_ns() + round(signals.reset_s * 1e9)
            self.hold_until_ns = max(self.hold_until_ns, until)
