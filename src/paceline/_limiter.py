"""``RateLimiter``: a strict limiter that threads and event loops can share.

It wraps the sans-I/O :class:`~paceline.policy.limits.LimitPolicy` with a lock, a clock and the
waiting: ``acquire()`` blocks a thread, ``await acquire_async()`` suspends a task, and both are
safe to use from many threads and many event loops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from paceline._clock import SYSTEM_CLOCK, Clock, SystemClock
from paceline._ratestore import Booking, RedisLimitStore, StoreDegraded, split_limits
from paceline.errors import AlreadySettled, InvalidArgument, InvalidState
from paceline.policy.cost import Cost, as_cost
from paceline.policy.limits import Limit, LimitPolicy, Reservation
from paceline.policy.rate import NS_PER_S, Rate, RateSpecError

__all__ = ["AsyncRateLimiterProtocol", "Grant", "RateLimiter", "RateLimiterProtocol"]


@runtime_checkable
class RateLimiterProtocol(Protocol):
    """What the executors accept as a limiter: anything with ``acquire(weight=1)`` that blocks
    until the caller may start. A ``unittest.mock.Mock`` qualifies."""

    def acquire(self, weight: int = 1) -> object:
        """Block until ``weight`` permits are granted."""
        ...


@runtime_checkable
class AsyncRateLimiterProtocol(Protocol):
    """A limiter the async runner can await without a thread: adds ``acquire_async``."""

    def acquire(self, weight: int = 1) -> object:
        """Block until ``weight`` permits are granted."""
        ...

    async def acquire_async(self, weight: int = 1) -> object:
        """Suspend until ``weight`` permits are granted."""
        ...


def _as_limit(spec: str | Rate | Limit, burst: int | None, margin_ns: int | None) -> Limit:
    if isinstance(spec, Limit):
        return spec
    rate = spec if isinstance(spec, Rate) else Rate.parse(spec)
    return Limit(rate, burst, margin_ns)


def _margin_ns(margin_s: float | None) -> int | None:
    if margin_s is None:
        return None
    if not isinstance(margin_s, (int, float)) or not margin_s >= 0:
        raise RateSpecError(f"margin_s={margin_s!r}: must be a number of seconds >= 0, e.g. 0.001")
    return round(margin_s * NS_PER_S)


class RateLimiter:
    """Never more than ``max_requests`` starts in any window of ``time_window_seconds``.

    By default the first ``max_requests`` are granted at once and the next waits for the window
    to free (a sliding-window log). ``burst=1`` paces grants evenly (one every ``W / N``);
    ``burst=B`` allows bursts of ``B`` and paces the rest at the same rate, N per W (a token
    bucket of size ``B``). The log stays behind the pacer, so the limit is strict in every
    mode. Each window is lengthened by ``margin_s`` (default W/1000, at most 1 ms) so the
    promise holds for *starts*, which follow their grants by a few microseconds; pass
    ``margin_s=0`` for the bare promise on grants, or more when the operation reaches the
    server later than it starts (network jitter). paceline's thread runner checks a grant
    again right before the call and takes a new one when the worker woke later than the
    margin (a GIL switch interval is 5 ms): a larger margin there means fewer such re-takes.

    >>> limiter = RateLimiter(2, 1.0)            # 2 per second
    >>> _ = limiter.acquire(); _ = limiter.acquire()  # the first two are immediate
    >>> limiter = RateLimiter("100/s", burst=1)  # the string form, evenly paced
    >>> both = RateLimiter.from_rates("10/s", "500/min")  # several limits, all must agree

    ``acquire`` and ``acquire_async`` return the grant's timestamp (monotonic ns), which
    :meth:`give_back` takes to return permits that were never used.
    """

    __slots__ = (
        "__weakref__",
        "_async_gates",
        "_bookings",
        "_clock",
        "_local",
        "_lock",
        "_policy",
        "_start_margin_ns",
        "_store",
        "_thread_gate",
        "_wakers",
    )

    def __init__(
        self,
        max_requests: int | str,
        time_window_seconds: float = 1.0,
        burst: int | None = None,
        *,
        margin_s: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        margin = _margin_ns(margin_s)
        if isinstance(max_requests, str):
            limit = Limit(Rate.parse(max_requests), burst, margin)
        else:
            limit = Limit(Rate.of(max_requests, time_window_seconds), burst, margin)
        self._init([limit], clock)

    def _init(
        self, limits: Sequence[Limit], clock: Clock | None, store: RedisLimitStore | None = None
    ) -> None:
        self._policy = LimitPolicy(limits)
        # How late after its entry a start may come and still be counted (the smallest window
        # margin): a worker handed a grant checks it again against this (_local_recheck).
        # 0 (margin_s=0, the bare promise on grants): no check, nothing promised on starts.
        self._start_margin_ns = min(lim.window_ns - lim.rate.window_ns for lim in limits)
        # A shared store (Redis) decides the grants instead of the policy in this process; the
        # policy still checks costs. Grants by time, for give_back(granted_ns, ...): a bounded
        # memory of recent bookings (a give-back is for a grant just made and never started).
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._store = store
        # Degraded mode: the limiter of this process's share while the store is unreachable,
        # with the outage it serves (one per outage: its grants are charged back after).
        self._local: tuple[int, RateLimiter] | None = None
        if store is not None:
            store.monotonic_ns = self._clock.monotonic_ns
        self._bookings: OrderedDict[int, Booking] = OrderedDict()
        self._lock = threading.Lock()
        # Blocking callers queue on this gate so only one of them at a time polls and sleeps;
        # async callers queue on one asyncio.Lock per event loop for the same reason.
        self._thread_gate = threading.Lock()
        self._async_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        # Reservers sleeping on the real clock, woken when a settlement may have made room.
        self._wakers: set[Callable[[], object]] = set()

    @classmethod
    def from_rates(
        cls,
        *rates: str | Rate | Limit,
        burst: int | None = None,
        margin_s: float | None = None,
        clock: Clock | None = None,
        store: str | None = None,
        key: str | None = None,
        store_outage_s: float | None = None,
        store_degraded: str = "hold",
    ) -> RateLimiter:
        """One limiter enforcing several limits at once, e.g. ``"10/s"`` and ``"500/min"``.

        ``burst`` and ``margin_s`` apply to every limit given as a string or :class:`Rate`.

        ``store="redis://host:6379/0"`` shares the limits with every process, on any machine,
        that uses the same ``key`` (default: derived from the limits): the decisions are made
        on the Redis server's clock, one round trip per grant, and the limiter can be pickled
        (to worker processes: each copy reconnects on first use). While the store cannot be
        reached nothing starts; ``store_outage_s`` (default: wait forever) turns a longer
        outage into :class:`~paceline.errors.RateStoreUnavailable`. ``store_degraded="split"``
        (opt-in; default ``"hold"``: grant nothing) runs each process, after 1 s unreachable,
        on a limiter of its own at 1/k of every limit, k being the processes the store last
        saw on the key, until the store answers again. docs/design.md, 'Shared limit store',
        says what is promised.

        >>> shared = RateLimiter.from_rates("200/s", store="redis://127.0.0.1:6379/0",
        ...                                 key="github-api")
        >>> shared.store_key
        'github-api'
        """
        if not rates:
            raise RateSpecError("from_rates() needs at least one rate, e.g. '10/s'")
        self = cls.__new__(cls)
        margin = _margin_ns(margin_s)
        limits = [_as_limit(r, burst, margin) for r in rates]
        shared = None
        if store is not None:
            if key is None:
                key = default_key(limits)
            shared = RedisLimitStore(
                store, key, limits, outage_s=store_outage_s, degraded=store_degraded
            )
        elif key is not None or store_outage_s is not None or store_degraded != "hold":
            raise InvalidArgument(
                "key=, store_outage_s= and store_degraded= only apply with store= (a shared "
                "store's URL, "
                "e.g. store='redis://127.0.0.1:6379/0')"
            )
        self._init(limits, clock, shared)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        """A limiter on a shared store pickles as its configuration (each copy reconnects on
        first use); a limiter in this process cannot be pickled (its state is local)."""
        store = self._store
        if store is None:
            raise InvalidState(
                "a RateLimiter without a shared store cannot be pickled: its grants live in "
                "this process; give store='redis://...' to share one limit among processes"
            )
        clock = None if self._clock is SYSTEM_CLOCK else self._clock
        return (_shared_limiter, (self._policy.limits, store, clock))

    @property
    def store(self) -> RedisLimitStore | None:
        """The shared store that decides grants (``None``: this process decides)."""
        return self._store

    @staticmethod
    def default_store_key(limits: Sequence[Limit], target: str | None = None) -> str:
        """The shared store's key when none is given: the limits (and the command line adds
        the target host), so two programs with the same limits against the same host share
        one quota.

        >>> RateLimiter.default_store_key(RateLimiter("200/s").limits, "api.github.com")
        'api.github.com:200/1s'
        """
        return default_key(limits, target)

    @property
    def store_key(self) -> str | None:
        """The shared store's key (``None`` without a store)."""
        return None if self._store is None else self._store.key

    @property
    def limits(self) -> tuple[Limit, ...]:
        """The limits this limiter enforces."""
        return self._policy.limits

    @property
    def max_requests(self) -> int:
        """N of the first limit."""
        return self._policy.limits[0].rate.max_requests

    @property
    def time_window_seconds(self) -> float:
        """W of the first limit, in seconds."""
        return self._policy.limits[0].rate.window_ns / NS_PER_S

    def __repr__(self) -> str:
        parts = ", ".join(
            str(lim.rate) + (f" burst={lim.burst}" if lim.burst is not None else "")
            for lim in self._policy.limits
        )
        if self._store is not None:
            parts += f", store={self._store.url!r}, key={self._store.key!r}"
        return f"RateLimiter({parts})"

    # -- a shared store: book a slot, wait for it, give it back if it cannot start in time ---

    def _local_share(self) -> RateLimiter:
        """The limiter of this process's share (1/k of each limit) for the current outage."""
        store = self._store
        assert store is not None
        since = store.local_since_ns or 0
        with self._lock:
            local = self._local
            if local is None or local[0] != since:
                limits = split_limits(self._policy.limits, store.live_seen)
                local = (since, RateLimiter.from_rates(*limits, clock=self._clock))
                self._local = local
        return local[1]

    def _forget_old_bookings(self) -> None:
        """Keep the memory of recent bookings bounded (before a booking, never between a
        grant's check and its start)."""
        if len(self._bookings) <= _BOOKINGS_KEPT:
            return
        with self._lock:
            while len(self._bookings) > _BOOKINGS_KEPT:
                self._bookings.popitem(last=False)

    def _in_time(
        self, booking: Booking, store: RedisLimitStore, give_back: bool = True
    ) -> int | None:
        """The grant time if the booking may start now, else ``None`` (after giving it back
        unless the caller returns it with its next booking): its slot passed more than its
        margin ago (a late reply or a long sleep), and a start now could fall outside the
        window the store counted it in.

        The check is the last thing before the caller's start: the lateness is noted first
        (on a clock reading of its own), and a booking in time is remembered (for
        :meth:`give_back`) with one dict store, without the lock. A thread preempted after
        the check starts late by as long as it was off the CPU, which the booking's margin
        must cover (docs/benchmarks.md measured up to 27 ms at a load of 13 on 2 cores);
        every operation moved out of that stretch is a chance of preemption less."""
        store.note_lateness(self._clock.monotonic_ns() - booking.slot_ns)
        now = self._clock.monotonic_ns()
        if now <= booking.latest_ns:
            self._bookings[now] = booking
            return now
        if give_back:
            store.give_back(booking)
        return None

    def _shared_book(
        self, amounts: tuple[int, ...], late: Booking | None = None
    ) -> tuple[Booking, int]:
        store = self._store
        assert store is not None
        self._forget_old_bookings()
        while True:
            booking = store.reserve(amounts, release=late)  # a late one returns in the same trip
            delay_ns = booking.start_ns - self._clock.monotonic_ns()
            if delay_ns > 0:
                with store.sleeping_until(booking.start_ns):
                    self._clock.sleep(delay_ns / NS_PER_S)
            granted = self._in_time(booking, store, give_back=False)
            if granted is not None:
                return booking, granted
            late = booking

    async def _shared_book_async(self, amounts: tuple[int, ...]) -> tuple[Booking, int]:
        store = self._store
        assert store is not None
        late: Booking | None = None
        self._forget_old_bookings()
        while True:
            # A late booking goes back in the call that books its replacement, and only
            # there: if that call fails (an outage past its limit, an exhausted mark, a
            # cancelled task) the store may have taken it back already, and a second
            # give-back would take a count from another grant sharing its entry. Not taken
            # back, it stays charged: stricter, never looser (as in _shared_book).
            booking = await store.reserve_async(amounts, release=late)
            late = None
            try:
                delay_ns = booking.start_ns - self._clock.monotonic_ns()
                if delay_ns > 0:
                    with store.sleeping_until(booking.start_ns):
                        await self._clock.sleep_async(delay_ns / NS_PER_S)
            except BaseException:  # cancelled while waiting for its slot: return the booking
                # (awaited: a cancelled task may still await; cancelled again, the booking
                # stays charged, which is only stricter)
                await store.give_back_async(booking)
                raise
            granted = self._in_time(booking, store, give_back=False)
            if granted is not None:
                return booking, granted
            late = booking

    def _shared_grant(self, booking: Booking, granted: int) -> Grant:
        cost = {lim.rate.unit: 0 for lim in self._policy.limits}
        for lim, amount in zip(self._policy.limits, booking.amounts, strict=True):
            cost[lim.rate.unit] = max(cost[lim.rate.unit], amount)
        return Grant(self, Reservation(granted, cost), booking)

    def _recheck(self, granted_ns: int, weight: int = 1) -> int:
        """Check a grant again right before its start, on the thread that starts it; return
        the grant time in force. A grant whose latest start has passed (the thread that took
        it handed it to another, which woke late) is given back and a new one taken and
        waited for here: its check is then the last thing before the start. On a shared
        store the give-back and the new booking go in one round trip; in-process, the latest
        start is the grant's entry plus the window margin (``margin_s``: how late after its
        entry a start may come and still be counted). Other grants pass unchanged.

        Runner plumbing (the thread runner's workers call it), not part of the public API.
        """
        if self._store is None:
            return self._local_recheck(granted_ns, weight)
        booking = self._bookings.get(granted_ns)
        if booking is None or self._clock.monotonic_ns() <= booking.latest_ns:
            return granted_ns
        # Forgotten before the call that gives it back: whether that call succeeds or fails
        # (the store may have taken it back either way), a later give_back(granted_ns) must
        # not return it a second time.
        self._bookings.pop(granted_ns, None)
        try:
            _, granted = self._shared_book(booking.amounts, late=booking)
        except StoreDegraded:  # unreachable: the late grant stands (as without this check)
            return granted_ns
        return granted

    def _local_recheck(self, granted_ns: int, weight: int) -> int:
        """:meth:`_recheck` in-process: ``granted_ns`` is the grant's entry in the log (a
        lease's stamp for a leased permit). Late beyond the margin: the entry goes back and a
        new grant is taken now (at once while the limit has room: the log only moves the
        entry to the start; a pacer's schedule is not rewound, so a paced limit waits its
        next interval: a late start must not crowd the next one)."""
        margin_ns = self._start_margin_ns
        if not margin_ns or self._clock.monotonic_ns() <= granted_ns + margin_ns:
            return granted_ns
        self.give_back(granted_ns, weight)
        return self.acquire(weight)

    def _shared_settle(self, grant: Grant, actual: int | Cost) -> None:
        store, booking, reservation = self._store, grant._booking, grant._reservation
        assert store is not None
        assert booking is not None
        if reservation.settled:
            raise AlreadySettled(
                f"the reservation granted at {reservation.granted_ns} ns was already settled "
                f"to {reservation.cost}; settle each grant once"
            )
        merged = dict(reservation.cost)
        merged.update(as_cost(actual, fill_requests=False))
        used = [merged.get(lim.rate.unit, 0) for lim in self._policy.limits]
        if all(u == 0 for u in used):
            store.give_back(booking)
        else:
            store.settle(booking, used)
        reservation.cost = merged
        reservation.settled = True

    def try_acquire(self, weight: int = 1) -> int | None:
        """Grant ``weight`` permits now if every limit allows it; return the grant time (ns)
        or ``None`` without waiting."""
        store = self._store
        if store is not None:
            amounts = self._policy.amounts(weight)
            self._forget_old_bookings()
            try:
                booking = store.reserve(amounts, book=False)
            except StoreDegraded:
                granted = self._local_share().try_acquire(weight)
                if granted is not None:
                    store.note_local(amounts)
                return granted
            if booking.wait_ns:
                return None
            return self._in_time(booking, store)
        with self._lock:
            now = self._clock.monotonic_ns()
            if self._policy.try_grant(now, weight):
                return None
            return now

    def acquire(self, weight: int = 1) -> int:
        """Block until ``weight`` permits are granted; return the grant time (monotonic ns)."""
        if self._store is not None:
            amounts = self._policy.amounts(weight)
            try:
                _, granted = self._shared_book(amounts)
            except StoreDegraded:
                granted = self._local_share().acquire(weight)
                self._store.note_local(amounts)
                return granted
            return granted
        with self._lock:
            now = self._clock.monotonic_ns()
            if not self._policy.try_grant(now, weight):
                return now
        with self._thread_gate:
            waited = False
            while True:
                with self._lock:
                    now = self._clock.monotonic_ns()
                    wait_ns = self._policy.try_grant(now, weight, waited)
                if not wait_ns:
                    return now
                waited = True
                self._clock.sleep(wait_ns / NS_PER_S)

    def _async_gate(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._lock:
            gate = self._async_gates.get(loop)
            if gate is None:
                gate = self._async_gates[loop] = asyncio.Lock()
            return gate

    async def acquire_async(self, weight: int = 1) -> int:
        """Suspend until ``weight`` permits are granted; return the grant time (monotonic ns).

        Cancelling the wait takes nothing from the limit.
        """
        if self._store is not None:
            amounts = self._policy.amounts(weight)
            try:
                _, granted = await self._shared_book_async(amounts)
            except StoreDegraded:
                granted = await self._local_share().acquire_async(weight)
                self._store.note_local(amounts)
                return granted
            return granted
        with self._lock:
            now = self._clock.monotonic_ns()
            if not self._policy.try_grant(now, weight):
                return now
        async with self._async_gate():
            waited = False
            while True:
                with self._lock:
                    now = self._clock.monotonic_ns()
                    wait_ns = self._policy.try_grant(now, weight, waited)
                if not wait_ns:
                    return now
                waited = True
                await self._clock.sleep_async(wait_ns / NS_PER_S)

    # -- costs per unit: reserve an estimate, settle the actual usage (docs/units.md) ------

    def _try_reserve(
        self, cost: int | Cost, waited: bool, waker: Callable[[], object] | None = None
    ) -> Grant | int:
        """A grant, or the ns to wait; ``waker`` (while waiting) is called when a settlement
        may have made room earlier. Registered under the same lock as the decision, so no
        settlement can fall between the two unseen."""
        with self._lock:
            now = self._clock.monotonic_ns()
            result = self._policy.try_reserve(now, cost, waited)
            if waker is not None:
                if isinstance(result, int):
                    self._wakers.add(waker)
                else:
                    self._wakers.discard(waker)
        return result if isinstance(result, int) else Grant(self, result)

    def try_reserve(self, cost: int | Cost = 1) -> Grant | None:
        """Reserve ``cost`` now if every limit has room; return a :class:`Grant` or ``None``
        without waiting.

        >>> limiter = RateLimiter.from_rates("tokens:1000/min")
        >>> limiter.try_reserve({"tokens": 800}) is not None, limiter.try_reserve({"tokens": 800})
        (True, None)
        """
        store = self._store
        if store is not None:
            amounts = self._policy.amounts(cost)
            self._forget_old_bookings()
            try:
                booking = store.reserve(amounts, book=False)
            except StoreDegraded:
                local = self._local_share().try_reserve(cost)
                if local is not None:
                    store.note_local(amounts)
                return local
            granted = None if booking.wait_ns else self._in_time(booking, store)
            return None if granted is None else self._shared_grant(booking, granted)
        result = self._try_reserve(cost, False)
        return None if isinstance(result, int) else result

    def reserve(self, cost: int | Cost = 1) -> Grant:
        """Block until every limit has room for ``cost`` (an estimate per unit, e.g.
        ``{"tokens": 1200}``: one request and 1200 tokens), then return a :class:`Grant` to
        :meth:`~Grant.settle` with the actual cost.

        A cost larger than a limit's N can never be granted and raises :class:`ValueError`;
        a unit no limit counts is ignored.

        >>> limiter = RateLimiter.from_rates("500/min", "tokens:90000/min")
        >>> grant = limiter.reserve({"tokens": 1200})
        >>> grant.settle({"tokens": 1350})   # an overrun is charged too
        """
        if self._store is not None:
            amounts = self._policy.amounts(cost)
            try:
                return self._shared_grant(*self._shared_book(amounts))
            except StoreDegraded:
                grant = self._local_share().reserve(cost)
                self._store.note_local(amounts)
                return grant
        result = self._try_reserve(cost, False)
        if not isinstance(result, int):
            return result
        with self._thread_gate:
            woken = threading.Event()
            waker = woken.set
            try:
                while True:
                    result = self._try_reserve(cost, True, waker)
                    if not isinstance(result, int):
                        return result
                    if isinstance(self._clock, SystemClock):
                        woken.wait(result / NS_PER_S)  # a settlement that frees room wakes it
                        woken.clear()
                    else:
                        self._clock.sleep(result / NS_PER_S)
            finally:
                with self._lock:
                    self._wakers.discard(waker)

    async def reserve_async(self, cost: int | Cost = 1) -> Grant:
        """Suspend until every limit has room for ``cost``, then return a :class:`Grant`
        (see :meth:`reserve`). Cancelling the wait takes nothing from the limit.

        >>> import asyncio
        >>> limiter = RateLimiter.from_rates("tokens:90000/min")
        >>> async def call() -> None:
        ...     grant = await limiter.reserve_async({"tokens": 1200})
        ...     grant.settle({"tokens": 700})   # e.g. from the response's usage
        >>> asyncio.run(call())
        """
        if self._store is not None:
            amounts = self._policy.amounts(cost)
            try:
                return self._shared_grant(*await self._shared_book_async(amounts))
            except StoreDegraded:
                grant = await self._local_share().reserve_async(cost)
                self._store.note_local(amounts)
                return grant
        result = self._try_reserve(cost, False)
        if not isinstance(result, int):
            return result
        async with self._async_gate():
            loop = asyncio.get_running_loop()
            woken = asyncio.Event()

            def waker() -> None:  # settlements may come from any thread
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                    loop.call_soon_threadsafe(woken.set)

            try:
                while True:
                    result = self._try_reserve(cost, True, waker)
                    if not isinstance(result, int):
                        return result
                    if isinstance(self._clock, SystemClock):
                        with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError on 3.11+
                            await asyncio.wait_for(woken.wait(), result / NS_PER_S)
                        woken.clear()
                    else:
                        await self._clock.sleep_async(result / NS_PER_S)
            finally:
                with self._lock:
                    self._wakers.discard(waker)

    @property
    def clock(self) -> Clock:
        """The clock this limiter reads (the real one unless a fake was given)."""
        return self._clock

    def _lease(self, count: int, hold_seconds: float) -> tuple[int, int]:
        """Take ``count`` unit permits at once, for starts within ``hold_seconds`` from now.

        Returns ``(granted, deadline_ns)``: ``granted`` is ``count`` or 0 (the limit has no room
        for all of them; nothing was taken). A leased permit must be used no later than
        ``deadline_ns`` on :attr:`clock`; return the unused ones with
        ``give_back(deadline_ns, unused)``. Runners use this to skip the lock per item while a
        limit is far from binding; limits with even pacing (``burst``) never lease.

        Runner plumbing (``runners/gates.py``), not part of the public API.
        """
        hold_ns = round(hold_seconds * NS_PER_S)
        with self._lock:
            now = self._clock.monotonic_ns()
            granted = self._policy.try_lease(now, count, hold_ns)
        return granted, now + hold_ns

    def _lease_size(self) -> int:
        """How many permits a runner should lease at once: 0 (never) for small or paced limits;
        otherwise a small fraction of the tightest limit, so a lease never crowds it. Runner
        plumbing, like :meth:`_lease`."""
        if self._store is not None:
            return 0  # a lease would be a burst of starts the shared store never saw
        sizes = [
            0 if lim.burst is not None else lim.rate.max_requests // 16
            for lim in self._policy.limits
        ]
        size = min(min(sizes), 64)
        return size if size >= 4 else 0

    def give_back(self, granted_ns: int, weight: int = 1) -> None:
        """Return ``weight`` permits granted at ``granted_ns`` that were never used (the attempt
        was cancelled before it started). The even-pacing schedule is not rewound."""
        store = self._store
        if store is not None:
            with self._lock:
                booking = self._bookings.pop(granted_ns, None)
            if booking is not None:
                store.give_back(booking)
            return
        with self._lock:
            self._policy.give_back(granted_ns, weight)


# A shared limiter remembers this many recent bookings for give_back(granted_ns, ...): a
# give-back follows its grant within one dispatch; a few thousand covers any concurrency.
_BOOKINGS_KEPT = 4096


def default_key(limits: Sequence[Limit], target: str | None = None) -> str:
    """The shared store's key when none is given: the limits (and, from the command line, the
    target host), so two commands with the same limits against the same host share a quota.

    >>> default_key([Limit(Rate.parse("200/s"))], "api.github.com")
    'api.github.com:200/1s'
    """
    spec = "+".join(
        str(lim.rate) + (f"~{lim.burst}" if lim.burst is not None else "") for lim in limits
    )
    return spec if target is None else f"{target}:{spec}"


def _shared_limiter(
    limits: Sequence[Limit], store: RedisLimitStore, clock: Clock | None
) -> RateLimiter:
    """Rebuild a pickled shared limiter (see :meth:`RateLimiter.__reduce__`)."""
    limiter = RateLimiter.__new__(RateLimiter)
    limiter._init(limits, clock, store)
    return limiter


# --- costs per unit: reserve an estimate, settle the actual usage (docs/units.md) -------------


class Grant:
    """Permits taken for an estimated cost, to be settled once the actual cost is known.

    Returned by :meth:`RateLimiter.reserve`, :meth:`RateLimiter.reserve_async` and
    :meth:`RateLimiter.try_reserve`. The estimate counts against every limit from the grant
    on; :meth:`settle` corrects it: the unused part is given back at once (a reserver waiting
    for room looks again), an overrun is charged from the first moment its limit has room for
    it (it delays later grants, never rewrites a past window). Not settling keeps the estimate.

    >>> limiter = RateLimiter.from_rates("500/min", "tokens:90000/min")
    >>> grant = limiter.reserve({"tokens": 1200})   # one request, 1200 tokens (the estimate)
    >>> grant.settle({"tokens": 900})               # the answer said 900: 300 come back
    >>> grant.cost
    {'tokens': 900, 'requests': 1}
    """

    __slots__ = ("_booking", "_limiter", "_reservation")

    def __init__(
        self, limiter: RateLimiter, reservation: Reservation, booking: Booking | None = None
    ) -> None:
        self._limiter = limiter
        self._reservation = reservation
        self._booking = booking  # where a shared store charged it

    @property
    def granted_ns(self) -> int:
        """When the permits were granted (monotonic ns on the limiter's clock)."""
        return self._reservation.granted_ns

    @property
    def cost(self) -> dict[str, int]:
        """What this grant is charged per unit: the estimate, or the actual cost once settled."""
        return dict(self._reservation.cost)

    @property
    def settled(self) -> bool:
        """Whether :meth:`settle` (or :meth:`give_back`) ran."""
        return self._reservation.settled

    def settle(self, actual: int | Cost) -> None:
        """Correct the charge to ``actual`` (a cost per unit; units left out stay as reserved).

        Call it once, when the answer is known (e.g. from the response's usage). Raises
        :class:`~paceline.errors.AlreadySettled` (a ``RuntimeError``) if the grant was already
        settled.
        """
        limiter = self._limiter
        if self._booking is not None:
            limiter._shared_settle(self, actual)
            return
        with limiter._lock:
            limiter._policy.settle(limiter._clock.monotonic_ns(), self._reservation, actual)
            wakers = list(limiter._wakers)
        for wake in wakers:  # waiting reservers look again: the unused part may be enough
            wake()

    def give_back(self) -> None:
        """Return the whole grant: the attempt never started (cancelled before it began)."""
        self.settle({unit: 0 for unit in self._reservation.cost})

    def __repr__(self) -> str:
        state = "settled" if self.settled else "reserved"
        return f"<Grant {state} {self.cost} at {self.granted_ns} ns>"


def charged_per_attempt(
    limiter: object, name: str = "rate_limiter", *, costs: bool = False
) -> None:
    """Refuse a limiter a batch cannot charge in full: without costs (``costs=False``) it takes
    one request per attempt, so a limit in another unit (``tokens:90000/min``) would never
    bind. Give the batch ``cost=`` (an estimate per item, settled by ``actual_cost=``), or
    reserve and settle inside the operation (:meth:`RateLimiter.reserve`).

    >>> charged_per_attempt(RateLimiter("10/s"))
    >>> charged_per_attempt(RateLimiter.from_rates("10/s", "tokens:900/min"), costs=True)
    >>> charged_per_attempt(RateLimiter.from_rates("10/s", "tokens:900/min"))
    Traceback (most recent call last):
    ...
    paceline.errors.InvalidArgument: rate_limiter has a limit in tokens (tokens:900/60s): ...
    """
    if costs or not isinstance(limiter, RateLimiter):
        return
    for lim in limiter.limits:
        if lim.rate.unit != "requests":
            raise InvalidArgument(
                f"{name} has a limit in {lim.rate.unit} ({lim.rate}): without costs a batch "
                f"charges each attempt one request and no {lim.rate.unit}; give cost= (e.g. "
                f"cost=lambda item: {{'{lim.rate.unit}': 1000}}, settled by actual_cost=), or "
                "give request limits only"
            )
