"""How a runner takes a token from whatever limiter it was given."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from paceline.limiter import RateLimiter

AsyncAcquire = Callable[[int], Awaitable[Any]]


def async_acquirer(limiter: object | None) -> tuple[Callable[[int], Any] | None, AsyncAcquire | None]:
    """Return ``(try_now, acquire_async)`` for ``limiter``.

    ``try_now(weight)`` grants without waiting or returns ``None`` (only for paceline's own
    limiter: a synchronous fast path that saves a coroutine per item when the limit is not
    binding); ``acquire_async(weight)`` waits for a grant. A limiter with only a blocking
    ``acquire`` is called in a worker thread so it never blocks the event loop.
    """
    if limiter is None:
        return None, None
    try_now = limiter.try_acquire if isinstance(limiter, RateLimiter) else None
    acquire_async = getattr(limiter, "acquire_async", None)
    if acquire_async is not None and inspect.iscoroutinefunction(acquire_async):
        return try_now, acquire_async
    acquire = getattr(limiter, "acquire", None)
    if acquire is None or not callable(acquire):
        raise TypeError(
            f"rate_limiter {limiter!r} has no acquire(weight) method; pass a "
            "paceline.RateLimiter or any object with acquire(weight=1)"
        )

    async def acquire_in_thread(weight: int) -> Any:
        return await asyncio.to_thread(acquire, weight)

    return try_now, acquire_in_thread


def sync_acquirer(limiter: object | None) -> Callable[[int], Any] | None:
    """Return the blocking ``acquire(weight)`` of ``limiter`` (``None``: no limit)."""
    if limiter is None:
        return None
    acquire = getattr(limiter, "acquire", None)
    if acquire is None or not callable(acquire):
        raise TypeError(
            f"rate_limiter {limiter!r} has no acquire(weight) method; pass a "
            "paceline.RateLimiter or any object with acquire(weight=1)"
        )
    return acquire  # type: ignore[no-any-return]
