"""Test doubles for code that uses paceline: a fake limiter and a fake clock.

>>> from paceline.testing import FakeRateLimiter
>>> fake = FakeRateLimiter()
>>> fake.acquire(); fake.acquire(weight=3)
>>> fake.acquire_count, fake.total_weight
(2, 4)

:class:`Clock` is what ``RateLimiter(clock=...)`` takes; :class:`FakeClock` is one whose time
moves only when told (or when a limiter sleeps on it).
"""

from paceline._clock import Clock
from paceline.testing._fakes import FakeClock, FakeRateLimiter

__all__ = ["Clock", "FakeClock", "FakeRateLimiter"]
