"""A rate limit held on a Dask cluster: one actor books start slots for every worker.

The actor (:class:`LimitActor`) wraps paceline's own limit policy (the sliding-window log,
and the pacer when ``burst`` is set) and *books*: each call gets the earliest slot at which
the limit has room, and the exact wait until it, in one round trip (no polling; docs/design.md,
"Dask runner"). The slots it hands out never go backwards, so its log is that of an
in-process limiter whose callers queue in order.

A grant reaches its worker one reply later and the attempt starts after a sleep: the start
falls after its slot, never before. Two halves keep "at most N starts in any window" true of
the *starts*:

- the actor books on windows lengthened by a margin ``J`` (``margin_s``), and
- the worker gives back any slot it could not start within ``J`` of it and books again. The
  worker reads the actor's clock through its bookings' round trips (:class:`ClockOffset`),
  so it starts no earlier than the slot and knows its lateness to within the best round trip
  seen, not the last one (a busy worker's last round trip may take 70 ms).

A start then lies in ``[slot, slot + J]``, so the starts in any window ``W`` have their slots
in a window ``W + J``, which the actor kept to N. Measured with 2 worker processes at a
shared 500/s: without the margin 507-508 starts fell into some 1 s window; with it, 500.

The actor lives on one worker and dies with it (Dask does not move actors). The driver then
hosts a new one *fenced*: it grants nothing for one window ``W + J`` after it starts, since
the dead actor's last grants may still be inside their window.

>>> from paceline.policy.limits import Limit
>>> from paceline.policy.rate import Rate
>>> actor = LimitActor([Limit(Rate(2, 1_000_000_000), margin_ns=0)], fence_ns=0)
>>> [slot > now for slot, now in (actor.book_now(1), actor.book_now(1), actor.book_now(1))]
[False, False, True]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from paceline._limiter import RateLimiter
from paceline.errors import InvalidArgument, PacelineError
from paceline.policy.limits import Limit, LimitPolicy
from paceline.policy.rate import NS_PER_S

# The margin J between a slot and the latest start it allows. It must exceed the tail of a
# booking's round trip plus the sleep's overshoot, or most slots come back late and the rate
# starves (measured: J = 5 ms over a link with up to 4 ms each way gave 6 % of the rate). A
# round trip worker -> actor -> worker took 1-4 ms on a busy 2-core machine; 10 ms leaves
# room and costs 1 % of a 1 s window's rate (the actor's windows are W + J).
DEFAULT_MARGIN_S = 0.010


class LimiterLost(PacelineError):
    """The cluster's limiter could not be reached (its worker died, or the scheduler went
    away): the attempt did not start and took nothing."""


class LimitActor:
    """The actor: books slots on its own monotonic clock (see the module's docstring).

    ``fence_ns``: no slot before this many ns after the actor starts (a re-created actor
    waits out one window of its predecessor's grants). Its methods are coroutines so Dask runs
    them on the worker's event loop, one at a time, without a hop through the actor thread.
    """

    def __init__(self, limits: Sequence[Limit], fence_ns: int) -> None:
        self._policy = LimitPolicy(limits)
        now = time.monotonic_ns()
        self._last_ns = now  # the latest slot handed out: slots never go backwards
        self._hold_until_ns = now + fence_ns  # a fence, or a server's pause (Retry-After)

    def book_now(self, weight: int = 1) -> tuple[int, int]:
        """Book ``weight`` permits at the earliest slot ``>=`` every earlier one; return
        ``(slot_ns, now_ns)``: the slot and the time of the booking, on this actor's clock."""
        now = time.monotonic_ns()
        slot = max(now, self._last_ns, self._hold_until_ns)
        policy = self._policy
        while wait := policy.try_grant(slot, weight):
            slot += wait
        self._last_ns = slot
        return slot, now

    async def book(self, weight: int = 1) -> tuple[int, int]:
        """:meth:`book_now`, as the workers call it."""
        return self.book_now(weight)

    async def give_back(self, slot_ns: int, weight: int = 1) -> None:
        """Return a slot that was not started within the margin."""
        self._policy.give_back(slot_ns, weight)

    async def pause(self, seconds: float) -> None:
        """Hold every booking until ``seconds`` from now (a server's ``Retry-After``)."""
        until = time.monotonic_ns() + round(seconds * NS_PER_S)
        self._hold_until_ns = max(self._hold_until_ns, until)

    async def ping(self) -> bool:
        """Whether the actor answers (the driver's health check)."""
        return True


class ClockOffset:
    """Where the actor's clock stands against this process's, from round trips (as NTP does):
    a booking read the actor's clock at ``a`` between sending at ``s`` and receiving at ``r``
    (local), so the offset lies in ``[a - r, a - s]``; the tightest bounds over recent
    bookings are kept. Bounds older than ``REFRESH_NS`` are dropped so two machines' clock
    drift (tens of ppm) never accumulates. On one machine the offset is 0, within the best
    round trip.

    >>> offset = ClockOffset()
    >>> offset.sample(sent_ns=100, actor_ns=1_050, received_ns=110)
    >>> offset.low_ns, offset.high_ns
    (940, 950)
    """

    REFRESH_NS = 10 * NS_PER_S  # a 10 s horizon: 50 ppm of drift is 0.5 ms within it
    __slots__ = ("_current", "_older", "_since_ns")

    def __init__(self) -> None:
        wide = (-(2**62), 2**62)
        self._current = wide  # (low, high) from this horizon's round trips
        self._older = wide  # ... and from the previous horizon's
        self._since_ns: int | None = None

    @property
    def low_ns(self) -> int:
        """The lowest the offset (actor minus local) can be."""
        return max(self._current[0], self._older[0])

    @property
    def high_ns(self) -> int:
        """The highest the offset can be."""
        return min(self._current[1], self._older[1])

    def sample(self, sent_ns: int, actor_ns: int, received_ns: int) -> None:
        """Narrow the bounds with one round trip."""
        if self._since_ns is None or received_ns - self._since_ns > self.REFRESH_NS:
            self._older = self._current
            self._current = (-(2**62), 2**62)
            self._since_ns = received_ns
        low, high = self._current
        self._current = (max(low, actor_ns - received_ns), min(high, actor_ns - sent_ns))


class ClusterLimiter:
    """What a worker takes its tokens from: a picklable handle on the cluster's
    :class:`LimitActor`, with the worker's half of the booking (the margin and give-back).

    Built by :func:`host_limiter`; passed to the worker-side runners as their
    ``rate_limiter``, so every attempt — retries included — books right before it starts.
    A slot is started no earlier than it is due on the actor's clock (its earliest reading
    here), and given back when the start may be later than the margin allows (its latest).
    """

    __slots__ = ("_actor", "_offset", "margin_ns", "window_ns")

    def __init__(self, actor: Any, margin_ns: int, window_ns: int) -> None:
        self._actor = actor
        self.margin_ns = margin_ns
        self.window_ns = window_ns  # the longest window W + J (the fence of a successor)
        self._offset = ClockOffset()

    def __getstate__(self) -> tuple[Any, int, int]:
        return self._actor, self.margin_ns, self.window_ns

    def __setstate__(self, state: tuple[Any, int, int]) -> None:
        self._actor, self.margin_ns, self.window_ns = state
        self._offset = ClockOffset()

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._actor, method)(*args).result()
        except Exception as exc:
            raise LimiterLost(
                f"the cluster's rate limiter did not answer ({type(exc).__name__}: {exc})"
            ) from exc

    def _book(self, weight: int) -> tuple[int, int]:
        """``(slot, start_ns)``: the booking, and when to start it on this clock."""
        sent = time.monotonic_ns()
        slot, actor_now = self._call("book", weight)
        offset = self._offset
        offset.sample(sent, actor_now, time.monotonic_ns())
        return slot, slot - offset.low_ns

    def _late(self, slot: int) -> bool:
        """Whether a start now may be more than the margin after ``slot``."""
        return time.monotonic_ns() + self._offset.high_ns - slot > self.margin_ns

    def acquire(self, weight: int = 1) -> int:
        """Block until a slot is due and return it (the actor's ns); give back and book again
        when the start would be later than the margin allows."""
        while True:
            slot, start = self._book(weight)
            delay = start - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / NS_PER_S)
            if not self._late(slot):
                return slot
            self._call("give_back", slot, weight)

    async def acquire_async(self, weight: int = 1) -> int:
        """:meth:`acquire` for an event loop: the booking's round trip in a thread, the wait
        and the lateness check on the loop, right before the attempt starts."""
        while True:
            slot, start = await asyncio.to_thread(self._book, weight)
            delay = start - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / NS_PER_S)
            if not self._late(slot):
                return slot
            await asyncio.to_thread(self._call, "give_back", slot, weight)

    def pause(self, seconds: float) -> None:
        """Pause every worker sharing this limiter for ``seconds`` (a 429's ``Retry-After``)."""
        self._call("pause", seconds)

    def alive(self) -> bool:
        """Whether the actor still answers."""
        try:
            return bool(self._call("ping"))
        except LimiterLost:
            return False


def cluster_limits(limiter: RateLimiter, margin_s: float) -> tuple[list[Limit], int]:
    """The limits an actor enforces for ``limiter`` (each window lengthened by ``margin_s``
    instead of the in-process margin), and the margin in ns."""
    if not margin_s >= 0:
        raise InvalidArgument(f"limiter_margin_s={margin_s!r}: a number of seconds >= 0, e.g. 0.01")
    margin_ns = round(margin_s * NS_PER_S)
    return [replace(limit, margin_ns=margin_ns) for limit in limiter.limits], margin_ns


def host_limiter(
    client: Any, limiter: RateLimiter, margin_s: float = DEFAULT_MARGIN_S, *, fenced: bool = False
) -> ClusterLimiter:
    """Start a :class:`LimitActor` for ``limiter``'s limits on ``client``'s cluster and return
    the handle workers use; ``fenced``: it grants nothing for one window (a replacement)."""
    limits, margin_ns = cluster_limits(limiter, margin_s)
    window_ns = max(limit.window_ns for limit in limits)
    future = client.submit(LimitActor, limits, window_ns if fenced else 0, actor=True, pure=False)
    return ClusterLimiter(future.result(), margin_ns, window_ns)
