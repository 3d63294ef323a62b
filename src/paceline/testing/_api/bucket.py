"""The test API's token bucket: ``burst`` tokens at most, refilled continuously at a rate.

A request takes one token or is refused. This is the other common shape of a server's quota
beside the sliding window (AWS API Gateway, Stripe, GitHub's secondary limits, nginx's
``limit_req ... burst=N nodelay``, which holds ``N + 1``): a full bucket lets ``burst`` requests
through at once, then one every ``1 / rate`` seconds.

It is kept as a GCRA (the "generic cell rate algorithm", the token bucket's exact twin): one
integer, the theoretical arrival time ``tat`` at which the bucket would be full again. Times are
scaled by ``quota`` so that the refill interval ``window_ns / quota`` stays an integer and no
boundary is rounded (a float boundary admits an extra request exactly at the edge).

>>> bucket = TokenBucket(quota=10, window_ns=1_000_000_000, burst=2, now_ns=0)
>>> [bucket.admit(now_ns=0) for _ in range(3)]
[True, True, False]
>>> bucket.wait_ns(now_ns=0), bucket.admit(now_ns=100_000_000)
(100000000, True)

A request may cost several tokens (an LLM API charges a call's estimated tokens), and what it
did not use can be given back:

>>> tokens = TokenBucket(quota=600, window_ns=60_000_000_000, burst=100, now_ns=0)
>>> tokens.admit(now_ns=0, tokens=80), tokens.admit(now_ns=0, tokens=30)
(True, False)
>>> tokens.refund(now_ns=0, tokens=50); tokens.remaining(now_ns=0)
70
"""

from __future__ import annotations

from paceline.errors import InvalidArgument

__all__ = ["TokenBucket"]


class TokenBucket:
    """``burst`` tokens at most, ``quota`` of them refilled every ``window_ns``; starts full.

    - ``quota``, ``window_ns``: the refill rate, ``quota`` tokens per ``window_ns``
      nanoseconds, continuously (one token every ``window_ns / quota``).
    - ``burst``: the capacity, the most requests admitted at once after a quiet spell.
    - ``now_ns``: when the bucket starts (full).
    """

    __slots__ = ("_burst", "_interval", "_quota", "_tat")

    def __init__(self, quota: int, window_ns: int, burst: int, now_ns: int) -> None:
        if quota < 1 or window_ns < 1:
            raise InvalidArgument(f"token bucket {quota}/{window_ns} ns: both must be at least 1")
        if burst < 1:
            raise InvalidArgument(f"token bucket burst {burst!r}: must be at least 1, e.g. 10")
        self._quota = quota
        self._burst = burst
        self._interval = window_ns  # one token's refill time, in ns scaled by quota
        self._tat = now_ns * quota  # full at and after this (scaled) time

    @property
    def burst(self) -> int:
        """The capacity: the most tokens the bucket holds."""
        return self._burst

    def _tat_now(self, now_ns: int) -> tuple[int, int]:
        now = now_ns * self._quota
        return now, max(self._tat, now)

    def admit(self, now_ns: int, tokens: int = 1) -> bool:
        """Take ``tokens`` at ``now_ns``; ``False`` (nothing taken) when fewer are left.

        More tokens than ``burst`` are never admitted.
        """
        now, tat = self._tat_now(now_ns)
        if tat + tokens * self._interval - now > self._burst * self._interval:
            return False
        self._tat = tat + tokens * self._interval
        return True

    def refund(self, now_ns: int, tokens: int) -> None:
        """Give back ``tokens`` taken earlier and not used; a bucket never holds more than
        ``burst``, so what would overflow it is lost."""
        now, tat = self._tat_now(now_ns)
        self._tat = max(now, tat - tokens * self._interval)

    def remaining(self, now_ns: int) -> int:
        """Whole tokens left at ``now_ns``: how many requests :meth:`admit` would take now."""
        now, tat = self._tat_now(now_ns)
        return self._burst - -(-(tat - now) // self._interval)

    def wait_ns(self, now_ns: int, tokens: int = 1) -> int:
        """Nanoseconds from ``now_ns`` until ``tokens`` are there (0 when they are), rounded up.

        For more tokens than ``burst`` the answer is the wait until the bucket is full: even
        then they do not fit, and the caller must say so.
        """
        now, tat = self._tat_now(now_ns)
        tokens = min(tokens, self._burst)
        scaled = tat + tokens * self._interval - self._burst * self._interval - now
        return max(0, -(-scaled // self._quota))

    def full_in_ns(self, now_ns: int) -> int:
        """Nanoseconds from ``now_ns`` until the bucket is full again, rounded up."""
        now, tat = self._tat_now(now_ns)
        return -(-(tat - now) // self._quota)
