"""Test doubles for code that uses paceline: a fake limiter and a fake clock.

>>> from paceline.testing import FakeRateLimiter
>>> fake = FakeRateLimiter()
>>> fake.acquire(); fake.acquire(weight=3)
>>> fake.acquire_count, fake.total_weight
(2, 4)
"""

from paceline.testing._fakes import FakeClock, FakeRateLimiter

__all__ = ["FakeClock", "FakeRateLimiter"]
