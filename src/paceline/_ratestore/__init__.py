"""Limit stores beneath :class:`~paceline.RateLimiter`: the Redis store shares one quota among
processes and machines (docs/design.md, 'Shared limit store')."""

from __future__ import annotations

from paceline._ratestore.redis_store import (
    Booking,
    RedisLimitStore,
    SharedQuotaExhausted,
    StoreDegraded,
    check_url,
    key_prefix,
    split_limits,
)

__all__ = [
    "Booking",
    "RedisLimitStore",
    "SharedQuotaExhausted",
    "StoreDegraded",
    "check_url",
    "key_prefix",
    "split_limits",
]
