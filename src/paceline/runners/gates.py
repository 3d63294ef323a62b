"""How a runner takes a token from whatever limiter it was given."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from paceline._limiter import Grant, RateLimiter
from paceline._ratestore import SharedQuotaExhausted
from paceline.errors import InvalidArgumentType
from paceline.policy.answers import Verdict, verdict_of
from paceline.policy.cost import Cost
from paceline.policy.pause import DEFAULT_MAX_PAUSE_S, ServerPause
from paceline.policy.rate import NS_PER_S
from paceline.policy.retry import RetryPolicy, retry_after_of

AsyncAcquire = Callable[[int], Awaitable[Any]]


def async_acquirer(
    limiter: object | None,
) -> tuple[Callable[[int], Any] | None, AsyncAcquire | None]:
    """Return ``(try_now, acquire_async)`` for ``limiter``.

    ``try_now(weight)`` grants without waiting or returns ``None`` (only for paceline's own
    limiter: a synchronous fast path that saves a coroutine per item when the limit is not
    binding); ``acquire_async(weight)`` waits for a grant. A limiter with only a blocking
    ``acquire`` is called in a worker thread so it never blocks the event loop.
    """
    if limiter is None:
        return None, None
    try_now = None
    if isinstance(limiter, RateLimiter) and limiter.store is None:
        # A shared store's try would be a blocking round trip on the event loop.
        try_now = limiter.try_acquire
    acquire_async = getattr(limiter, "acquire_async", None)
    if acquire_async is not None and inspect.iscoroutinefunction(acquire_async):
        return try_now, acquire_async
    acquire = getattr(limiter, "acquire", None)
    if acquire is None or not callable(acquire):
        raise InvalidArgumentType(
            f"rate_limiter {limiter!r} has no acquire(weight) method; pass a "
            "paceline.RateLimiter or any object with acquire(weight=1)"
        )

    async def acquire_in_thread(weight: int) -> Any:
        return await asyncio.to_thread(acquire, weight)

    return try_now, acquire_in_thread


class CostReserver(Protocol):
    """A limiter that reserves per-item costs: paceline's :class:`RateLimiter`, or a face's
    limiter in front of one (the HTTP face's per-server limits)."""

    def reserve(self, cost: int | Cost) -> Grant:
        """Block until ``cost`` fits; a :class:`Grant` to settle."""
        ...

    async def reserve_async(self, cost: int | Cost) -> Grant:
        """Suspend until ``cost`` fits; a :class:`Grant` to settle."""
        ...


def cost_reserver(limiter: object | None, cost: object | None) -> CostReserver | None:
    """The limiter to reserve per-item costs from (``RunOptions.cost``), or ``None`` when the
    batch has no costs. Costs need paceline's own limiter: only it reserves and settles."""
    if cost is None:
        return None
    if not isinstance(limiter, RateLimiter) and not inspect.iscoroutinefunction(
        getattr(limiter, "reserve_async", None)
    ):
        raise InvalidArgumentType(
            f"cost= needs a paceline.RateLimiter as the rate limiter (got {limiter!r}): only it "
            "reserves an estimate and settles the actual cost, e.g. "
            "RateLimiter.from_rates('500/min', 'tokens:90000/min')"
        )
    return cast(CostReserver, limiter)


def sync_acquirer(limiter: object | None) -> Callable[[int], Any] | None:
    """Return the blocking ``acquire(weight)`` of ``limiter`` (``None``: no limit)."""
    if limiter is None:
        return None
    acquire = getattr(limiter, "acquire", None)
    if acquire is None or not callable(acquire):
        raise InvalidArgumentType(
            f"rate_limiter {limiter!r} has no acquire(weight) method; pass a "
            "paceline.RateLimiter or any object with acquire(weight=1)"
        )
    return acquire  # type: ignore[no-any-return]


def start_rechecker(limiter: object | None) -> Callable[[int, int], int] | None:
    """The check a worker makes right before an attempt whose grant another thread (the
    dispatcher) took: :meth:`RateLimiter._recheck` for paceline's limiter (its grants must
    start within a margin of their entry, and a worker woken late would start after it);
    ``None`` for other limiters, and for one with no margin (``margin_s=0`` promises grants,
    not starts: nothing to check)."""
    if isinstance(limiter, RateLimiter) and (
        limiter.store is not None or limiter._start_margin_ns > 0
    ):
        return limiter._recheck
    return None


# A lease covers starts within this long of being taken. Its permits are stamped at the end of
# the hold, so each may occupy its place in the window up to this much longer than needed:
# at most 1 ms per window of 1 s (0.1 %) of capacity, and only while the limit is not binding.
_LEASE_HOLD_S = 0.001
_LEASE_HOLD_FRACTION = 1000  # never more than 1/1000 of the tightest window


class LeaseGate:
    """The fast path in front of a paceline :class:`RateLimiter` that is far from binding.

    ``take()`` hands out a permit from a lease without touching the limiter's lock; when the
    lease is used up or expired it takes a new one. When the limiter has no room for a whole
    lease (the limit is near binding) it answers ``False`` and the runner asks the limiter for
    single permits as usual, retrying the lease only after ``size`` such answers.
    Used by one dispatcher (a thread runner's) or one event loop's workers: not thread-safe.
    """

    __slots__ = ("_hold_s", "_left", "_limiter", "_now", "_skip", "_stamp", "_use_by", "size")

    def __init__(self, limiter: RateLimiter, size: int) -> None:
        self._limiter = limiter
        self._now = limiter.clock.monotonic_ns
        self.size = size
        window_s = min(lim.rate.window_ns for lim in limiter.limits) / NS_PER_S
        self._hold_s = min(_LEASE_HOLD_S, window_s / _LEASE_HOLD_FRACTION)
        self._left = 0
        self._stamp = 0  # where the lease's permits sit in the limiter's log
        self._use_by = 0  # half the hold earlier: the start that follows take() must be in time
        self._skip = 0

    @classmethod
    def for_limiter(cls, limiter: object | None) -> LeaseGate | None:
        """A gate for paceline's own limiter when its limits allow leasing, else ``None``."""
        if not isinstance(limiter, RateLimiter):
            return None
        size = limiter._lease_size()
        return cls(limiter, size) if size else None

    def take(self) -> bool:
        """Use one leased permit now; ``False``: ask the limiter directly."""
        if self._left:
            if self._now() <= self._use_by:
                self._left -= 1
                return True
            self.close()
        if self._skip:
            self._skip -= 1
            return False
        granted, stamp = self._limiter._lease(self.size, self._hold_s)
        if not granted:
            self._skip = self.size
            return False
        self._left = granted - 1
        self._stamp = stamp
        self._use_by = stamp - round(self._hold_s * 5e8)
        return True

    @property
    def stamp_ns(self) -> int:
        """Where the current lease's permits sit in the limiter's log: the entry of the
        permit :meth:`take` just handed out (a worker checks its start against it)."""
        return self._stamp

    def close(self) -> None:
        """Give back what is left of the current lease."""
        if self._left:
            self._limiter.give_back(self._stamp, self._left)
            self._left = 0

    # -- leases held by the caller (one per async worker, kept in its local variables) ------

    @property
    def clock_ns(self) -> Callable[[], int]:
        """The limiter's clock, to check a held lease's ``use_by``."""
        return self._now

    def refill(self) -> tuple[int, int, int]:
        """A new lease for a caller that keeps it itself: ``(permits, use_by_ns, stamp_ns)``,
        or ``(0, 0, 0)`` when the limit has no room (ask the limiter directly then)."""
        if self._skip:
            self._skip -= 1
            return 0, 0, 0
        granted, stamp = self._limiter._lease(self.size, self._hold_s)
        if not granted:
            self._skip = self.size
            return 0, 0, 0
        return granted, stamp - round(self._hold_s * 5e8), stamp

    def release(self, stamp_ns: int, unused: int) -> None:
        """Give back ``unused`` permits of a caller-held lease stamped ``stamp_ns``."""
        if unused:
            self._limiter.give_back(stamp_ns, unused)


def server_pause_for(adaptive: object, retry: RetryPolicy | None) -> ServerPause | None:
    """The Retry-After pause a runner keeps itself: without adaptive control (which has its
    own), at a fixed concurrency, a server's "retry after" still holds every dispatch — up to
    the retry policy's ``max_retry_after_s`` (beyond it the item fails, nobody waits)."""
    if adaptive is not None and adaptive is not False:
        return None
    return ServerPause(retry.max_retry_after_s if retry is not None else DEFAULT_MAX_PAUSE_S)


def shared_limiter_of(limiter: object | None, lanes: object | None = None) -> RateLimiter | None:
    """The limiter on a shared store among a batch's gates (the batch's, or the one its HTTP
    lanes wrap as ``user``), or ``None``."""
    for candidate in (limiter, getattr(lanes, "user", None), getattr(limiter, "user", None)):
        if isinstance(candidate, RateLimiter) and candidate.store is not None:
            return candidate
    return None


def share_pause(shared: RateLimiter | None, error: BaseException) -> None:
    """A Retry-After seen by this process pauses every process on the shared store's key, and
    an exhausted quota stops them (docs/design.md, 'Shared limit store'): each would otherwise
    learn it from its own answers."""
    if shared is None or shared.store is None:
        return
    if verdict_of(error) is Verdict.EXHAUSTED and not isinstance(error, SharedQuotaExhausted):
        # (the store's own error is another process's mark coming back: not marked again)
        shared.store.share_exhausted(str(error))
        return
    retry_after = retry_after_of(error)
    if retry_after and retry_after > 0:
        shared.store.share_pause(min(retry_after, DEFAULT_MAX_PAUSE_S))
