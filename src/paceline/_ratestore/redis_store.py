"""A limit store on Redis: the policy's decisions for many processes and machines at once.

:class:`RedisLimitStore` is the I/O half of a shared :class:`~paceline.RateLimiter`: it runs
the script of :mod:`paceline._ratestore.script` (one round trip per grant, on the Redis
server's clock), measures the round trips to size the client's margin, and never lets a caller
start without a grant: a store that cannot be reached is retried with backoff, and only an
explicit ``outage_s`` turns a long outage into :class:`~paceline.errors.RateStoreUnavailable`.

It is picklable: a pickle carries the URL, the key, the limits and the options, and each copy
connects lazily on first use (a Dask worker, a ``multiprocessing`` child, a forked process).

docs/design.md, 'Shared limit store', says why each rule is what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from paceline._ratestore.script import LUA
from paceline.errors import InvalidArgument, InvalidState, RateStoreUnavailable
from paceline.policy.gcra import Gcra
from paceline.policy.limits import Limit

# The script's time unit. Lua numbers are doubles (exact to 2^53); microseconds since 1970 are
# about 2^51, nanoseconds would not fit. A window is rounded *up* to whole microseconds
# (strict: at most 1 us of capacity per window).
TICKS_PER_S = 1_000_000
_NS_PER_TICK = 1_000_000_000 // TICKS_PER_S
# The longest margin any client adds to a window. Every client prunes entries older than
# W + this, so a client with a larger measured margin still sees every entry it needs. 250 ms
# is 25x the worst round-trip tail measured on a 2-10 ms link (docs/benchmarks.md); a margin
# this large costs 20 % of a 1 s window, so a link this slow needs longer windows anyway.
MAX_MARGIN_NS = 250_000_000
# The margin floor: a grant reaches its caller after a reply, a sleep and a thread switch. A
# thread woken from its sleep may wait one GIL switch interval (5 ms by default) for the
# interpreter, and the sleep itself overshoots by up to ~2 ms on a busy 2-core machine: the floor
# is their sum, 0.7 % of a 1 s window.
MARGIN_FLOOR_NS = 2_000_000 + round(sys.getswitchinterval() * 1e9)
# Margin = floor + the larger of 2 x p99 of the recent round trips and 1.25 x p99 of the
# lateness observed (a start's distance past its booked slot, as this client measures it: a
# reply plus the wake-up). SCALE-OUT measurement: J = 5 ms over a 2-10 ms link starved clients
# to 6 % of the rate (every permit late), 12 ms was exact at 100 %: measure, never fix it.
_RTT_SAMPLES = 256
# Socket timeouts, always set: redis-py's default is none at all, and a hung Redis (SIGSTOP)
# then blocks every caller forever without an error. 2 s is far above any healthy round trip
# (sub-ms on a LAN, tens of ms across regions) and short enough to report an outage promptly.
DEFAULT_TIMEOUT_S = 2.0
# Retry backoff while the store is unreachable: from 50 ms (a restart takes ~0.1 s) doubling to
# 1 s (a long outage costs one connection attempt a second per process), with full jitter so
# many processes do not reconnect in lockstep.
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0


def _p99(samples: deque[int]) -> int:
    if not samples:
        return 0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, (len(ordered) * 99) // 100)]


def key_prefix(key: str) -> str:
    """The Redis key prefix of a limiter: every key of one limiter shares one ``{hash tag}`` so
    the script's keys live on one Redis Cluster slot.

    >>> key_prefix("github-api")
    'paceline:{github-api}'
    """
    return "paceline:{" + key + "}"


def check_url(url: str) -> str:
    """Return ``url`` if it names a Redis server, else raise :class:`InvalidArgument`.

    >>> check_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    >>> check_url("http://x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.errors.InvalidArgument: rate store 'http://x': ...
    """
    if not isinstance(url, str):
        raise InvalidArgument(f"rate store {url!r}: give a URL such as redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise InvalidArgument(
            f"rate store {url!r}: expected a Redis URL such as redis://127.0.0.1:6379/0 "
            "(schemes redis, rediss, unix)"
        )
    return url


@dataclass(slots=True)
class Booking:
    """One grant booked in the store: the entry each limit was charged (``ids``, 0 where the
    limit was charged nothing), the amounts, the wait the store returned and when the request
    was sent and answered (client monotonic ns). ``margin_ns`` is the margin it was booked with:
    its start must come no later than ``sent_ns + wait_ns + margin_ns``."""

    ids: tuple[int, ...]
    amounts: tuple[int, ...]
    wait_ns: int
    sent_ns: int
    recv_ns: int
    margin_ns: int

    @property
    def start_ns(self) -> int:
        """The earliest moment the caller may start (its slot, as seen by this client)."""
        return self.recv_ns + self.wait_ns

    @property
    def latest_ns(self) -> int:
        """The latest moment the caller may start; later, the grant is given back."""
        return self.sent_ns + self.wait_ns + self.margin_ns


class RedisLimitStore:
    """Evaluate a limiter's limits on Redis, for every process that uses the same ``key``.

    Normally made by :meth:`paceline.RateLimiter.from_rates` with ``store=``; the limiter does
    the waiting, this object the round trips.

    >>> from paceline.policy.limits import Limit
    >>> from paceline.policy.rate import Rate
    >>> store = RedisLimitStore("redis://127.0.0.1:6379/0", "api", [Limit(Rate.parse("10/s"))])
    >>> store.key, store.url
    ('api', 'redis://127.0.0.1:6379/0')
    """

    def __init__(
        self,
        url: str,
        key: str,
        limits: Sequence[Limit],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        outage_s: float | None = None,
    ) -> None:
        self.url = check_url(url)
        if not isinstance(key, str) or not key or "{" in key or "}" in key:
            raise InvalidArgument(
                f"rate key {key!r}: give a non-empty name without braces, e.g. 'github-api'"
            )
        if not timeout_s > 0:
            raise InvalidArgument(f"timeout_s={timeout_s!r}: must be > 0 seconds, e.g. 2.0")
        if outage_s is not None and not outage_s >= 0:
            raise InvalidArgument(f"outage_s={outage_s!r}: must be >= 0 seconds or None")
        for lim in limits:
            if lim.window_ns - lim.rate.window_ns > MAX_MARGIN_NS:
                raise InvalidArgument(
                    f"margin of {(lim.window_ns - lim.rate.window_ns) / 1e9:g} s on {lim.rate}: "
                    f"a shared limit takes at most {MAX_MARGIN_NS / 1e9:g} s (margin_s)"
                )
        self.key = key
        self.limits = tuple(limits)
        self.timeout_s = timeout_s
        self.outage_s = outage_s
        prefix = key_prefix(key)
        self._keys = [f"{prefix}:meta"]
        for i in range(len(self.limits)):
            self._keys += [f"{prefix}:z{i}", f"{prefix}:c{i}"]
        self._reset_runtime()

    # -- pickling: configuration only; connections are made lazily in each copy ---------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "key": self.key,
            "limits": self.limits,
            "timeout_s": self.timeout_s,
            "outage_s": self.outage_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["url"],
            state["key"],
            state["limits"],
            timeout_s=state["timeout_s"],
            outage_s=state["outage_s"],
        )

    def _reset_runtime(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._client: Any = None
        self._script: Any = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._rtts: deque[int] = deque(maxlen=_RTT_SAMPLES)
        self._lates: deque[int] = deque(maxlen=_RTT_SAMPLES)
        self._margin_ns = MARGIN_FLOOR_NS
        self._samples_seen = 0
        self._down_since_ns: int | None = None
        # The caller's monotonic clock (a limiter sets its own): bookings are in its time.
        self.monotonic_ns = time.monotonic_ns
        self._last_error: str | None = None
        self.round_trips = 0

    def __repr__(self) -> str:
        return f"RedisLimitStore({self.url!r}, key={self.key!r})"

    # -- the status a progress line shows --------------------------------------------------

    def outage_s_so_far(self) -> float | None:
        """Seconds the store has been unreachable (``None``: it answers)."""
        since = self._down_since_ns
        return None if since is None else (self.monotonic_ns() - since) / 1e9

    def status(self) -> str | None:
        """``"rate store unreachable for 12 s"`` while it is, else ``None``."""
        down = self.outage_s_so_far()
        if down is None:
            return None
        return f"rate store unreachable for {down:.0f} s ({self._last_error})"

    @property
    def margin_ns(self) -> int:
        """The margin J this client books with now: floor + 2 x p99 of recent round trips."""
        return self._margin_ns

    def _note_rtt(self, rtt_ns: int) -> None:
        self._rtts.append(rtt_ns)
        self._retune()

    def note_lateness(self, late_ns: int) -> None:
        """Record how far past its booked slot a grant was handed out (the limiter calls it)."""
        self._lates.append(max(late_ns, 0))
        self._retune()

    def _retune(self) -> None:
        self._samples_seen += 1
        if self._samples_seen <= 16 or self._samples_seen % 16 == 0:
            rtt, late = _p99(self._rtts), _p99(self._lates)
            extra = max(2 * rtt, late + late // 4)
            self._margin_ns = min(MARGIN_FLOOR_NS + extra, MAX_MARGIN_NS)

    # -- the script's arguments ------------------------------------------------------------

    def _limit_args(self, margin_ns: int) -> list[int]:
        args: list[int] = [len(self.limits)]
        for lim in self.limits:
            base = -(-lim.window_ns // _NS_PER_TICK)
            window = -(-(lim.window_ns + margin_ns) // _NS_PER_TICK)
            # Every client prunes at W + twice the cap: its own margin (margin_s, at most the
            # cap) and the measured one (at most the cap) never reach past it.
            longest = -(-(lim.rate.window_ns + 2 * MAX_MARGIN_NS) // _NS_PER_TICK)
            n = lim.rate.max_requests
            coalesce = base // 1024 if n > 1024 else 0  # as policy/window.py's _MAX_ENTRIES
            if lim.burst is None:
                interval = tolerance = 0
            else:
                gcra = Gcra.for_limit(n, base, lim.burst)
                interval, tolerance = gcra.interval_ns, gcra.tolerance_ns
            args += [n, window, longest, coalesce, interval, tolerance]
        return args

    # -- connections -----------------------------------------------------------------------

    def _connect_kwargs(self, for_async: bool = False) -> dict[str, Any]:
        from redis.asyncio.retry import Retry as AsyncRetry
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Our own loop retries with backoff and reports the outage; redis-py's hidden retries
        # (3 by default) would only hide a stall from it.
        return {
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.timeout_s,
            "retry": AsyncRetry(NoBackoff(), 0) if for_async else Retry(NoBackoff(), 0),
            "retry_on_timeout": False,
        }

    def _sync_script(self) -> Any:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._reset_runtime()
        script = self._script
        if script is None:
            with self._lock:
                if self._script is None:
                    import redis

                    self._client = redis.Redis.from_url(self.url, **self._connect_kwargs())
                    self._warm_up()
                    # A Script object re-loads itself on NOSCRIPT (a restart or failover empties
                    # the script cache; a bare EVALSHA would fail forever).
                    self._script = self._client.register_script(LUA)
                script = self._script
        return script

    def _warm_up(self) -> None:
        """Load the script and time a few round trips before the first booking: its margin
        comes from them, and a first call that also connects and loads would be late."""
        client = self._client
        client.script_load(LUA)
        for _ in range(3):
            sent = self.monotonic_ns()
            client.ping()
            self._note_rtt(self.monotonic_ns() - sent)

    async def _async_script(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self.url, **self._connect_kwargs(for_async=True))
            try:
                await client.script_load(LUA)
                for _ in range(3):
                    sent = self.monotonic_ns()
                    await client.ping()
                    self._note_rtt(self.monotonic_ns() - sent)
            except BaseException:
                await client.aclose()
                raise
            entry = (client, client.register_script(LUA))
            self._async[loop] = entry
        return entry[1]

    def close(self) -> None:
        """Close the blocking client's connections (async ones close with their loop)."""
        client, self._client, self._script = self._client, None, None
        if client is not None:
            client.close()

    # -- calls, with the outage handling ---------------------------------------------------

    def _failed(self, exc: BaseException, attempt: int, sent_ns: int) -> float:
        # The outage began when the failed request was sent, not when its timeout ran out.
        now = self.monotonic_ns()
        if self._down_since_ns is None or sent_ns < self._down_since_ns:
            self._down_since_ns = sent_ns
        self._last_error = f"{type(exc).__name__}: {exc}".strip()[:120]
        down_s = (now - self._down_since_ns) / 1e9
        if self.outage_s is not None and down_s >= self.outage_s:
            raise RateStoreUnavailable(
                f"rate store {self.url} unreachable for {down_s:.0f} s "
                f"(limit {self.outage_s:g} s): {self._last_error}"
            ) from exc
        delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2**attempt)
        return random.uniform(delay / 2, delay)

    def _ok(self, sent_ns: int, recv_ns: int) -> None:
        self.round_trips += 1
        self._down_since_ns = None
        self._note_rtt(recv_ns - sent_ns)

    @staticmethod
    def _transient() -> tuple[type[BaseException], ...]:
        import redis.exceptions as rx

        # READONLY: we reached a replica (a failover in progress); BUSY/LOADING: a Redis
        # that is starting or running a slow script. All pass with time.
        return (
            rx.ConnectionError,
            rx.TimeoutError,
            rx.BusyLoadingError,
            rx.ReadOnlyError,
            OSError,
        )

    def call(
        self, args: list[Any], *, retry: bool = True, retry_args: list[Any] | None = None
    ) -> tuple[list[int], int, int]:
        """Run the script once (retrying while the store is unreachable); return its reply and
        when the request was sent and answered (monotonic ns). A failed request may still have
        run (its reply lost): retries send ``retry_args`` when given, so a give-back is never
        applied twice (a booking charged twice is only stricter)."""
        transient = self._transient()
        attempt = 0
        while True:
            if attempt and retry_args is not None:
                args = retry_args
            sent = self.monotonic_ns()
            try:
                script = self._sync_script()
                reply = script(keys=self._keys, args=args)
            except transient as exc:
                if not retry:
                    raise
                self.close()
                time.sleep(self._failed(exc, attempt, sent))
                attempt += 1
                continue
            recv = self.monotonic_ns()
            self._ok(sent, recv)
            return [int(x) for x in reply], sent, recv

    async def call_async(
        self, args: list[Any], retry_args: list[Any] | None = None
    ) -> tuple[list[int], int, int]:
        """:meth:`call` on the running event loop (redis.asyncio, one client per loop)."""
        transient = self._transient()
        attempt = 0
        while True:
            if attempt and retry_args is not None:
                args = retry_args
            sent = self.monotonic_ns()
            try:
                script = await self._async_script()
                reply = await script(keys=self._keys, args=args)
            except transient as exc:
                entry = self._async.pop(asyncio.get_running_loop(), None)
                if entry is not None:
                    await entry[0].aclose()
                await asyncio.sleep(self._failed(exc, attempt, sent))
                attempt += 1
                continue
            recv = self.monotonic_ns()
            self._ok(sent, recv)
            return [int(x) for x in reply], sent, recv

    # -- the operations --------------------------------------------------------------------

    def _reserve_args(
        self, amounts: Sequence[int], book: bool, now: str, release: Booking | None = None
    ) -> list[Any]:
        margin = self._margin_ns
        args = ["r" if book else "t", now, TICKS_PER_S, 1, *self._limit_args(margin), *amounts]
        if release is not None:
            for id_, amount in zip(release.ids, release.amounts, strict=True):
                args += [id_, amount]
        return args

    def _booking(self, amounts: Sequence[int], reply: list[int], sent: int, recv: int) -> Booking:
        wait_ns = reply[0] * _NS_PER_TICK
        ids = tuple(reply[2:]) if len(reply) > 2 else tuple(0 for _ in amounts)
        return Booking(ids, tuple(amounts), wait_ns, sent, recv, self._margin_ns)

    def reserve(
        self, amounts: Sequence[int], *, book: bool = True, release: Booking | None = None
    ) -> Booking:
        """Charge ``amounts`` (one per limit) at the earliest slot every limit allows; the
        booking says how long to wait. With ``book=False`` nothing is charged unless it can go
        now (then ``ids`` are all 0 and ``wait_ns`` > 0). ``release``: a late booking to give
        back in the same round trip."""
        margin = self._margin_ns
        reply, sent, recv = self.call(
            self._reserve_args(amounts, book, "", release),
            retry_args=self._reserve_args(amounts, book, ""),
        )
        booking = self._booking(amounts, reply, sent, recv)
        booking.margin_ns = margin
        return booking

    async def reserve_async(
        self, amounts: Sequence[int], release: Booking | None = None
    ) -> Booking:
        """:meth:`reserve` on the running event loop."""
        margin = self._margin_ns
        reply, sent, recv = await self.call_async(
            self._reserve_args(amounts, True, "", release),
            retry_args=self._reserve_args(amounts, True, ""),
        )
        booking = self._booking(amounts, reply, sent, recv)
        booking.margin_ns = margin
        return booking

    def _settle_args(self, booking: Booking, actual: Sequence[int]) -> list[Any]:
        args: list[Any] = ["s", "", TICKS_PER_S, 1, *self._limit_args(booking.margin_ns)]
        for id_, reserved, used in zip(booking.ids, booking.amounts, actual, strict=True):
            args += [id_, reserved, used]
        return args

    def settle(self, booking: Booking, actual: Sequence[int]) -> None:
        """Correct a booking to ``actual`` (one amount per limit): give back the unused part,
        charge an overrun from the first moment it fits. Sent once: a retry of a request whose
        reply was lost could give back twice; a settle that cannot be sent keeps the estimate
        (as a grant never settled does)."""
        with contextlib.suppress(*self._transient()):
            self.call(self._settle_args(booking, actual), retry=False)

    def give_back(self, booking: Booking) -> None:
        """Return a booking that was never used, if the store can be reached at once; a
        booking that cannot be returned stays charged (strict, never fails open)."""
        try:
            self.call(self._settle_args(booking, [0] * len(booking.amounts)), retry=False)
        except self._transient():
            pass

    def pause(self, seconds: float) -> float:
        """Hold every grant on this key for ``seconds`` from the server's now (a Retry-After
        seen by one process pauses them all); return the pause's end in seconds from now."""
        if not seconds > 0:
            raise InvalidArgument(f"pause of {seconds!r} s: must be > 0")
        ticks = round(seconds * TICKS_PER_S)
        args: list[Any] = ["p", "", TICKS_PER_S, 0, *self._limit_args(self._margin_ns), ticks]
        reply, _, _ = self.call(args)
        return (reply[0] - reply[1]) / TICKS_PER_S

    def share_pause(self, seconds: float) -> None:
        """:meth:`pause` if the store answers at once; never waits for an unreachable one (the
        pause still holds this process, and a store that is down grants nothing anyway)."""
        if not seconds > 0:
            return
        ticks = round(seconds * TICKS_PER_S)
        args: list[Any] = ["p", "", TICKS_PER_S, 0, *self._limit_args(self._margin_ns), ticks]
        with contextlib.suppress(*self._transient()):
            self.call(args, retry=False)

    def run_raw(self, args: list[Any]) -> list[int]:
        """Run the script with raw arguments (tests drive it on their own clock)."""
        reply, _, _ = self.call(args)
        return reply

    def check(self) -> None:
        """Reach the store once (a PING) or raise :class:`RateStoreUnavailable` at once: a run
        that cannot reach its store at the start is refused rather than left waiting."""
        try:
            script = self._sync_script()
            script.registered_client.ping()
        except self._transient() as exc:
            self.close()
            raise RateStoreUnavailable(
                f"rate store {self.url} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        except Exception as exc:  # an auth or protocol error: a wrong URL
            self.close()
            raise InvalidState(f"rate store {self.url}: {type(exc).__name__}: {exc}") from exc
