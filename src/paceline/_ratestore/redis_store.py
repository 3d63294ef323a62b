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
import importlib.util
import os
import random
import socket
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from paceline._ratestore.script import LUA
from paceline.errors import InvalidArgument, InvalidState, QuotaExhausted, RateStoreUnavailable
from paceline.policy.gcra import Gcra
from paceline.policy.limits import Limit
from paceline.policy.rate import Rate
from paceline.redact import redact_text

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
_SWITCH_NS = round(sys.getswitchinterval() * 1e9)
MARGIN_FLOOR_NS = 2_000_000 + _SWITCH_NS
# Margin = floor + the lateness that minimises the expected loss (docs/design.md, 'The client's
# margin'): a margin J lengthens every window, costing J / W of the rate, and a grant later
# than J is given back and booked again, costing about one grant's round trip; J covers the
# lateness samples up to the point where covering one more costs more than it saves. Lateness
# is a start's distance past the earliest moment its slot may be on this client's clock (the
# server's clock read through ServerClock, so a slow reply that arrives before its slot costs
# nothing). The last 256 samples: a few seconds of a busy limiter, so it follows the load.
_LATE_SAMPLES = 256
# The margin while a client has fewer than 64 lateness samples: a process's first grants come
# while its threads start, connect and import, and come late by up to ~17 ms on a busy 2-core
# machine; at the floor (7 ms, all that a handful of samples justify) 1 grant in 25-30 was
# given back and booked again in benchmarks/redis_store.py at 4 x 16, every one of them within
# the first 64 samples (docs/benchmarks.md). 30 ms covers them; it lengthens the windows of a
# process's first 64 grants only (a third of a second of a 200/s key shared by 4).
START_MARGIN_NS = 30_000_000
_START_SAMPLES = 64
# Socket timeouts, always set: redis-py's default is none at all, and a hung Redis (SIGSTOP)
# then blocks every caller forever without an error. 2 s is far above any healthy round trip
# (sub-ms on a LAN, tens of ms across regions) and short enough to report an outage promptly.
DEFAULT_TIMEOUT_S = 2.0
# Retry backoff while the store is unreachable: from 50 ms (a restart takes ~0.1 s) doubling to
# 1 s (a long outage costs one connection attempt a second per process), with full jitter so
# many processes do not reconnect in lockstep.
# How long an exhausted quota seen by one process holds every process on its key. Long enough
# for each running process to book once more and stop (they book every few ms to seconds);
# short enough that a run resumed once the quota is back (a top-up, the next day) is not
# refused by a stale mark: it then learns from its own first answer, as a lone process would.
EXHAUSTED_HOLD_S = 60.0
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0
# Degraded mode ("split"): how long the store must be unreachable before a process runs on its
# own share. 1 s: a restart (~0.1 s) is bridged by the first four backoff retries (50 + 100 +
# 200 + 400 ms) and never degrades; a hung Redis is only noticed after the socket timeout
# (2 s) anyway. Then one probe a second (the backoff's ceiling) per process, with jitter.
DEGRADE_GRACE_S = 1.0
# A wait for a slot longer than this is shown with its reason on the progress line (a batch
# never waits silently; a few seconds is what a paced run's slots may be apart anyway).
SHOWN_WAIT_NS = 3_000_000_000
_PROBE_EVERY_S = _BACKOFF_MAX_S
DEGRADED_MODES = ("hold", "split")


def split_limits(limits: Sequence[Limit], k: int) -> tuple[Limit, ...]:
    """Each limit at ``1/k`` of its rate (at least 1 per window; a burst scaled alike): one
    process's share while the store is unreachable, ``k`` being the processes it last saw.

    >>> from paceline.policy.rate import Rate
    >>> [str(lim.rate) for lim in split_limits([Limit(Rate.parse("200/s")),
    ...                                         Limit(Rate.parse("tokens:9000/min"))], 4)]
    ['50/1s', 'tokens:2250/60s']
    """
    k = max(1, k)
    return tuple(
        Limit(
            Rate(max(1, lim.rate.max_requests // k), lim.rate.window_ns, lim.rate.unit),
            None if lim.burst is None else max(1, lim.burst // k),
            lim.margin_ns,
        )
        for lim in limits
    )


class StoreDegraded(RateStoreUnavailable):
    """The store has been unreachable past the grace and the limiter runs on its own share
    (degraded mode "split"); the limiter catches it and grants from a local limiter."""


def best_margin_ns(lates_ns: Sequence[int], window_ns: int) -> int:
    """The margin J that minimises the expected loss ``J / W + P(lateness > J)``: a margin
    lengthens every window by J, and a grant later than J is given back and booked again. The
    floor (:data:`MARGIN_FLOOR_NS`) is always added; the result is capped at
    :data:`MAX_MARGIN_NS`.

    One sample in 100 is worth 10 ms of a 1 s window: a tail sample is covered when it lies
    within that of the previous ones, else left late.

    >>> ms = 1_000_000
    >>> best_margin_ns([1 * ms] * 95 + [3 * ms] * 4 + [400 * ms], 1000 * ms) // ms - 7
    3
    >>> best_margin_ns([], 1000 * ms) // ms - 7   # no samples yet: the floor
    0
    """
    ordered = sorted(lates_ns)
    n = len(ordered)
    best, best_loss = 0, 1.0  # covering nothing: every grant with lateness > 0 is late
    for i, late in enumerate(ordered):
        loss = (MARGIN_FLOOR_NS + late) / window_ns + (n - 1 - i) / n
        if loss < best_loss:
            best, best_loss = late, loss
    return min(MARGIN_FLOOR_NS + best, MAX_MARGIN_NS)


class SharedQuotaExhausted(QuotaExhausted):
    """Raised for a grant while another process's mark of an exhausted quota holds the key
    (:meth:`RedisLimitStore.share_exhausted`): not marked again, so it never extends itself."""


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
    if parts.scheme not in URL_SCHEMES or not (parts.hostname or parts.path):
        raise InvalidArgument(
            f"rate store {url!r}: expected a Redis URL such as redis://127.0.0.1:6379/0 "
            "or redis+cluster://10.0.0.1:7000 (schemes " + ", ".join(URL_SCHEMES) + ")"
        )
    if is_cluster_url(url) and parts.path not in ("", "/", "/0"):
        raise InvalidArgument(f"rate store {url!r}: a Redis Cluster has database 0 only")
    return url


# redis+cluster / rediss+cluster: a Redis Cluster, reached through any of its nodes (the client
# learns the others and follows MOVED and ASK redirections).
URL_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``).

    >>> is_cluster_url("redis+cluster://10.0.0.1:7000"), is_cluster_url("redis://10.0.0.1")
    (True, False)
    """
    return urlsplit(url).scheme.endswith("+cluster")


def _client_url(url: str) -> str:
    """The URL redis-py takes: a cluster's scheme without ``+cluster``."""
    if is_cluster_url(url):
        scheme, rest = url.split("://", 1)
        return scheme.removesuffix("+cluster") + "://" + rest
    return url


class ServerClock:
    """Where the Redis server's clock stands against this process's, from round trips (as NTP
    does): a script read the server's clock at ``a`` between our sending at ``s`` and receiving
    at ``r``, so the offset (server minus local) lies in ``[a - r, a - s]``. The tightest bounds
    over past round trips are kept, each widened by ``DRIFT_PPM`` of its age, so two clocks
    that run at different rates (NTP slews at most 500 ppm) never leave the true offset outside
    them. Bounds that cross (a step of either clock) restart from the newest round trip.

    A slot the server booked at its time ``t`` is then at local time
    ``t - high_ns(now) .. t - low_ns(now)``: the uncertainty is the *fastest* recent round trip
    (tens of microseconds on loopback), not the slowest (a reply can wait tens of ms for the
    GIL on a busy machine).

    >>> clock = ServerClock()   # the server's clock is 1 s ahead of ours
    >>> clock.sample(sent_ns=0, server_ns=1_000_025_000, recv_ns=50_000)  # a 50 us trip
    >>> clock.bounds(50_000)
    (999975000, 1000025050)
    >>> clock.sample(sent_ns=10_000_000, server_ns=1_025_000_000, recv_ns=40_000_000)  # 30 ms
    >>> clock.bounds(40_000_000)  # the quick trip still binds, widened by 1 us per ms of age
    (999935050, 1000065000)
    """

    # The widening per unit of age: 1,000 ppm, twice the fastest slew NTP applies (500 ppm),
    # so even two clocks slewed in opposite directions stay inside. At the round trips of a busy
    # limiter (tens per second) a bound is milliseconds old: it widens by microseconds.
    DRIFT_PPM = 1_000
    __slots__ = ("_high_key", "_low_key")

    def __init__(self) -> None:
        self._low_key: int | None = None  # max of (a - r) + drift * r
        self._high_key: int | None = None  # min of (a - s) - drift * s

    def sample(self, sent_ns: int, server_ns: int, recv_ns: int, resolution_ns: int = 0) -> None:
        """Narrow the bounds with one round trip (``resolution_ns``: the server's reading
        ``server_ns`` may stand for any time up to that much later)."""
        low_key = server_ns - recv_ns + recv_ns * self.DRIFT_PPM // 1_000_000
        high_key = server_ns + resolution_ns - sent_ns - sent_ns * self.DRIFT_PPM // 1_000_000
        if self._low_key is None or self._high_key is None:
            self._low_key, self._high_key = low_key, high_key
            return
        low, high = max(self._low_key, low_key), min(self._high_key, high_key)
        if self._low(low, recv_ns) > self._high(high, recv_ns):
            low, high = low_key, high_key  # the bounds cross: a clock stepped
        self._low_key, self._high_key = low, high

    def _low(self, key: int, now_ns: int) -> int:
        return key - now_ns * self.DRIFT_PPM // 1_000_000

    def _high(self, key: int, now_ns: int) -> int:
        return key + now_ns * self.DRIFT_PPM // 1_000_000

    def bounds(self, now_ns: int) -> tuple[int, int]:
        """``(low, high)``: the offset (server minus local, ns) lies between them at
        ``now_ns`` (local). Raises :class:`InvalidState` before the first sample."""
        if self._low_key is None or self._high_key is None:
            raise InvalidState("no round trip to the rate store yet: the offset is unknown")
        return self._low(self._low_key, now_ns), self._high(self._high_key, now_ns)


@dataclass(slots=True)
class Booking:
    """One grant booked in the store: the entry each limit was charged (``ids``, 0 where the
    limit was charged nothing), the amounts, the wait the store returned, when the request was
    sent and answered, and where its slot lies on this client's monotonic clock: no earlier than
    ``slot_ns``, no later than ``start_ns`` (the server's clock read through :class:`ServerClock`).
    ``margin_ns`` is the margin it was booked with: its start must come no later than
    ``slot_ns + margin_ns``, so it is handed out no later than :attr:`latest_ns`."""

    ids: tuple[int, ...]
    amounts: tuple[int, ...]
    wait_ns: int
    sent_ns: int
    recv_ns: int
    margin_ns: int
    slot_ns: int
    start_ns: int
    # The slot on the server's clock (ticks): what benchmarks/redis_store.py's BENCH_DIAG
    # compares a start with.
    server_slot: int = 0

    @property
    def latest_ns(self) -> int:
        """The latest moment a grant may be handed out; later, it is given back. One GIL switch
        interval of the margin is kept back: every grant handed out has at least that long to
        reach its start (a thread switch, or a preemption, right after the check; without it,
        2 runs in 9 of benchmarks/redis_store.py put 201 starts into one second at a load
        average of 14-24 on 2 cores)."""
        return self.slot_ns + self.margin_ns - _SWITCH_NS


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
        degraded: str = "hold",
    ) -> None:
        self.url = check_url(url)
        if degraded not in DEGRADED_MODES:
            raise InvalidArgument(
                f"degraded={degraded!r}: 'hold' (grant nothing while the store is unreachable) "
                "or 'split' (each process runs at 1/k of the limits, k = processes last seen)"
            )
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
        # A process's first grants come with the cost of its first requests: each opens a
        # connection (TCP, maybe TLS), and their arrivals follow their starts by up to ~0.1 s
        # more than a kept-alive request's (3 commands sharing a header-learned limit drew one
        # 429 in 8 of 12 hand runs at a 50 ms --rate-margin, docs/benchmarks.md). So the first
        # ``first_grants`` grants of a process are booked with ``first_margin_ns`` more margin
        # (their entries hold a window that much longer: later grants wait for it once, not in
        # every window). 0 by default: a library caller's own connections are not known here;
        # the CLI sets them to its first workers and FIRST_GRANTS_MARGIN_S.
        self.first_grants = 0
        self.first_margin_ns = 0
        self.timeout_s = timeout_s
        self.outage_s = outage_s
        self.degraded = degraded
        prefix = key_prefix(key)
        self._keys = [f"{prefix}:meta"]
        for i in range(len(self.limits)):
            self._keys += [f"{prefix}:z{i}", f"{prefix}:c{i}"]
        self._keys.append(f"{prefix}:live")  # the processes seen: degraded mode's k
        self._reset_runtime()

    # -- pickling: configuration only; connections are made lazily in each copy ---------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "key": self.key,
            "limits": self.limits,
            "timeout_s": self.timeout_s,
            "outage_s": self.outage_s,
            "degraded": self.degraded,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["url"],
            state["key"],
            state["limits"],
            timeout_s=state["timeout_s"],
            outage_s=state["outage_s"],
            degraded=state.get("degraded", "hold"),
        )

    def _reset_runtime(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._client: Any = None
        self._script: Any = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._rtts: deque[int] = deque(maxlen=_LATE_SAMPLES)
        self._lates: deque[int] = deque(maxlen=_LATE_SAMPLES)
        self._server_clock = ServerClock()
        self._clock_lock = threading.Lock()
        self._margin_ns = START_MARGIN_NS
        self._margin_due = False  # samples noted since the margin was last worked out
        self._first_left = self.first_grants  # grants still booked with first_margin_ns
        self._background: set[asyncio.Task[Any]] = set()  # round trips sent off the loop
        self._samples_seen = 0
        self._down_since_ns: int | None = None
        # The caller's monotonic clock (a limiter sets its own): bookings are in its time.
        self.monotonic_ns = time.monotonic_ns
        self._last_error: str | None = None
        self.round_trips = 0
        # Degraded mode: this process's heartbeat id, the processes the store last saw, since
        # when this process runs on its own share (None: on the store), the next probe, and
        # its local grants (sent to the store when it answers again).
        self._me = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.live_seen = 1
        self.local_since_ns: int | None = None
        self._next_probe_ns = 0
        self._probing = False
        self._local_grants: deque[tuple[int, tuple[int, ...]]] = deque()
        # The slots this process's callers sleep for now (monotonic ns; a multiset): when the
        # earliest is far off, nothing of this process starts before it — a hold to show.
        self._sleeping: Counter[int] = Counter()

    def __repr__(self) -> str:
        return f"RedisLimitStore({self.url!r}, key={self.key!r})"

    # -- the status a progress line shows --------------------------------------------------

    def outage_s_so_far(self) -> float | None:
        """Seconds the store has been unreachable (``None``: it answers)."""
        since = self._down_since_ns
        return None if since is None else (self.monotonic_ns() - since) / 1e9

    def status(self) -> str | None:
        """``"rate store unreachable for 12 s"`` while it is, else ``None``; in degraded mode
        ``"rate store unreachable for 12 s: running at 50/1s, 1/4 of the limit"``."""
        down = self.outage_s_so_far()
        if down is None:
            return None
        return f"rate store unreachable for {down:.0f} s{self._share_text()} ({self._last_error})"

    def hold_reason(self) -> str | None:
        """What a progress line says while the store holds this process back: unreachable, or
        every caller sleeping for a slot more than :data:`SHOWN_WAIT_NS` away (the key's limits
        are spent by every process on it, or a quota a server announced to any of them is);
        ``None`` otherwise."""
        if self._down_since_ns is not None:
            return "rate store unreachable" + self._share_text()
        with self._clock_lock:
            earliest = min(self._sleeping, default=None)
        if earliest is None or earliest - self.monotonic_ns() <= SHOWN_WAIT_NS:
            return None
        return (
            f"waiting for a slot of the shared limit (key {self.key!r}: its limits, or a quota a "
            "server announced, spent by the processes on it)"
        )

    @contextlib.contextmanager
    def sleeping_until(self, start_ns: int) -> Iterator[None]:
        """Mark a caller sleeping until its booked slot ``start_ns`` (for :meth:`hold_reason`)."""
        with self._clock_lock:
            self._sleeping[start_ns] += 1
        try:
            yield
        finally:
            with self._clock_lock:
                self._sleeping[start_ns] -= 1
                if not self._sleeping[start_ns]:
                    del self._sleeping[start_ns]

    def _share_text(self) -> str:
        if self.local_since_ns is None:
            return ""
        k = self.live_seen
        rates = ", ".join(str(lim.rate) for lim in split_limits(self.limits, k))
        return f": running at {rates}, 1/{k} of the limit"

    def note_local(self, amounts: Sequence[int]) -> None:
        """Record a grant made on this process's own share (degraded mode): it is charged to
        the store when the store answers again."""
        now = self.monotonic_ns()
        horizon = now - max(lim.window_ns for lim in self.limits)
        with self._clock_lock:
            self._local_grants.append((now, tuple(amounts)))
            while self._local_grants and self._local_grants[0][0] < horizon:
                self._local_grants.popleft()

    def _charge_back_args(self) -> list[Any] | None:
        """A settle of the local grants still inside each limit's window, as an overrun of a
        booking of nothing (charged from the first moment each limit has room: strict)."""
        now = self.monotonic_ns()
        with self._clock_lock:
            grants = list(self._local_grants)
        args: list[Any] = ["s", "", TICKS_PER_S, 1, *self._limit_args(self._margin_ns)]
        total = 0
        for i, lim in enumerate(self.limits):
            used = sum(a[i] for t, a in grants if t >= now - lim.window_ns)
            total += used
            args += [0, 0, used]
        return args if total else None

    def _stay_local(self) -> StoreDegraded:
        """In degraded mode: the :class:`StoreDegraded` a grant raises (it goes to the local
        share), after starting a probe of the store if one is due (one a second, in a thread of
        its own: a hung Redis holds the probe for the socket timeout, never a grant). Raises
        :class:`RateStoreUnavailable` past ``outage_s``."""
        now = self.monotonic_ns()
        since = self._down_since_ns
        if since is not None and self.outage_s is not None and now - since >= self.outage_s * 1e9:
            raise RateStoreUnavailable(
                f"rate store {self.url} unreachable for {(now - since) / 1e9:.0f} s "
                f"(limit {self.outage_s:g} s): {self._last_error}"
            )
        with self._clock_lock:
            due = now >= self._next_probe_ns and not self._probing
            if due:
                self._probing = True
                self._next_probe_ns = now + round(random.uniform(0.5, 1.0) * _PROBE_EVERY_S * 1e9)
        if due:
            probe = threading.Thread(target=self._probe, name="paceline-store-probe", daemon=True)
            probe.start()
        return StoreDegraded(self.status() or "rate store unreachable")

    def _probe(self) -> None:
        """Reach the store once: charge it with the local grants still inside a window, then a
        booking of nothing (a heartbeat). Answered: the store decides again."""
        sent = self.monotonic_ns()
        try:
            charge = self._charge_back_args()
            if charge is not None:
                self.call(charge, retry=False)
            heartbeat = self._reserve_args([0] * len(self.limits), False, "", self._margin_ns)
            self.call(heartbeat, retry=False)
        except SharedQuotaExhausted:
            self._back()  # the store answers; the next booking says the quota is exhausted
        except self._transient() as exc:
            self.close()
            with contextlib.suppress(RateStoreUnavailable):  # the callers check the deadline
                self._failed(exc, 0, sent)
        except Exception:  # a probe must not die noisily: stay local, probe again later
            self.close()
        else:
            self._back()
        finally:
            self._probing = False

    def _back(self) -> None:
        self.local_since_ns = None
        with self._clock_lock:
            self._local_grants.clear()

    @property
    def margin_ns(self) -> int:
        """The margin J this client books with now (see :func:`best_margin_ns`), from the
        lateness samples noted so far."""
        if self._margin_due:
            self._margin_due = False
            window = min(lim.rate.window_ns for lim in self.limits)
            margin = best_margin_ns(self._lates, window)
            if self._samples_seen < _START_SAMPLES:
                margin = max(margin, START_MARGIN_NS)
            self._margin_ns = margin
        return self._margin_ns

    def _note_rtt(self, rtt_ns: int) -> None:
        self._rtts.append(rtt_ns)

    def note_lateness(self, late_ns: int) -> None:
        """Record how far past the earliest moment of its slot a grant was handed out (the
        limiter calls it). Only noted: the margin is worked out from the samples when the
        next booking reads it (:attr:`margin_ns`), not here, between a grant's check and its
        start, where every microsecond of work is a chance for the thread to be preempted."""
        self._lates.append(max(late_ns, 0))
        self._samples_seen += 1
        if self._samples_seen <= 16 or self._samples_seen % 16 == 0:
            self._margin_due = True

    # -- the script's arguments ------------------------------------------------------------

    def _limit_args(self, margin_ns: int) -> list[int]:
        args: list[int] = [len(self.limits)]
        for lim in self.limits:
            # The window and the margin (the limit's own margin_s plus the measured one), each
            # rounded up to whole ticks: stricter by at most a tick.
            base = -(-lim.window_ns // _NS_PER_TICK)
            window = -(-lim.rate.window_ns // _NS_PER_TICK)
            margin = -(-(lim.window_ns - lim.rate.window_ns + margin_ns) // _NS_PER_TICK)
            # Entries are stamped with their latest start and every window reaches back W from
            # a slot no earlier than now: pruning at now - W would do; twice the cap past it
            # keeps a fence (one such window) long enough for any booking made before a loss.
            longest = -(-(lim.rate.window_ns + 2 * MAX_MARGIN_NS) // _NS_PER_TICK)
            n = lim.rate.max_requests
            coalesce = base // 1024 if n > 1024 else 0  # as policy/window.py's _MAX_ENTRIES
            if lim.burst is None:
                interval = tolerance = 0
            else:
                gcra = Gcra.for_limit(n, base, lim.burst)
                interval, tolerance = gcra.interval_ns, gcra.tolerance_ns
            args += [n, window, margin, longest, coalesce, interval, tolerance]
        return args

    # -- connections -----------------------------------------------------------------------

    def _connect_kwargs(self, for_async: bool = False) -> dict[str, Any]:
        from redis.asyncio.retry import Retry as AsyncRetry
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Our own loop retries with backoff and reports the outage; redis-py's hidden retries
        # (3 by default) would only hide a stall from it.
        kwargs: dict[str, Any] = {
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.timeout_s,
            "retry": AsyncRetry(NoBackoff(), 0) if for_async else Retry(NoBackoff(), 0),
            "retry_on_timeout": False,
            # A bare handshake: redis-py 8 opens every connection with HELLO 3, then a
            # pipelined CLIENT SETINFO pair (the library's name for CLIENT LIST): two round
            # trips per connection, and a process opens one per thread that books at the same
            # moment (16 for 16 threads): 0.13 round trips per grant in benchmarks/
            # redis_store.py's 1,000 calls (docs/benchmarks.md). RESP2 needs no HELLO and the
            # script's replies are the same in both; without a name there is no SETINFO. A
            # connection then costs no round trip of its own (AUTH and SELECT, when the URL
            # asks for them, still do).
            "protocol": 2,
        }
        if importlib.util.find_spec("redis.driver_info") is not None:  # redis-py >= 7
            kwargs["driver_info"] = None
        else:  # redis-py 5-6: the older spelling (deprecated in 7)
            kwargs.update(lib_name=None, lib_version=None)
        return kwargs

    def _sync_script(self) -> Any:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._reset_runtime()
        script = self._script
        if script is None:
            with self._lock:
                script = self._script
                if script is None:
                    import redis
                    import redis.cluster

                    kwargs = self._connect_kwargs()
                    # Held in a local: another thread's failed call may close() (and clear
                    # self._client) while this one warms up (seen at a load of 12-17: an
                    # AttributeError on None escaped from acquire()).
                    client = (
                        redis.cluster.RedisCluster.from_url(_client_url(self.url), **kwargs)
                        if is_cluster_url(self.url)
                        else redis.Redis.from_url(self.url, **kwargs)
                    )
                    self._client = client
                    self._warm_up(client)
                    # A Script object re-loads itself on NOSCRIPT (a restart or failover empties
                    # the script cache; a bare EVALSHA would fail forever).
                    script = self._script = client.register_script(LUA)
        return script

    def _warm_up(self, client: Any) -> None:
        """Load the script and time a few round trips before the first booking: its margin
        comes from them, and a first call that also connects and loads would be late."""
        if is_cluster_url(self.url):
            # A cluster: the script loaded on every master, the clock read on the node that
            # holds the key's slot (the script reads that node's clock; the masters' clocks
            # differ by as much as their hosts' do).
            client.script_load(LUA)
            node = client.get_node_from_key(self._keys[0])
            for _ in range(2):
                sent = self.monotonic_ns()
                seconds, micros = client.time(target_nodes=node)
                self._note_time(sent, seconds * TICKS_PER_S + micros, self.monotonic_ns())
            return
        # Two round trips: the script's load and a clock reading in one pipeline, then a
        # reading on the warm connection (the quickest trip bounds the offset; every booking's
        # reply narrows it further). Three more readings were 0.012 round trips per grant.
        pipe = client.pipeline(transaction=False)
        pipe.script_load(LUA)
        pipe.time()
        for i in range(2):
            sent = self.monotonic_ns()
            seconds, micros = pipe.execute()[1] if i == 0 else client.time()
            self._note_time(sent, seconds * TICKS_PER_S + micros, self.monotonic_ns())

    async def _async_script(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is None:
            import redis.asyncio
            import redis.asyncio.cluster

            kwargs = self._connect_kwargs(for_async=True)
            if is_cluster_url(self.url):
                kwargs.pop("retry_on_timeout")  # not taken by the async cluster (retry=0 is)
                cluster = redis.asyncio.cluster.RedisCluster.from_url(
                    _client_url(self.url), **kwargs
                )
                try:  # as _warm_up's cluster branch
                    await cluster.initialize()
                    await cluster.script_load(LUA)
                    node = cluster.get_node_from_key(self._keys[0])
                    for _ in range(2):
                        sent = self.monotonic_ns()
                        seconds, micros = await cluster.time(target_nodes=node)
                        self._note_time(sent, seconds * TICKS_PER_S + micros, self.monotonic_ns())
                except BaseException:
                    await cluster.aclose()
                    raise
                entry = (cluster, cluster.register_script(LUA))
                self._async[loop] = entry
                return entry[1]
            client = redis.asyncio.Redis.from_url(self.url, **kwargs)
            try:
                pipe = client.pipeline(transaction=False)
                pipe.script_load(LUA)
                pipe.time()
                for i in range(2):  # as _warm_up: two round trips
                    sent = self.monotonic_ns()
                    seconds, micros = (await pipe.execute())[1] if i == 0 else await client.time()
                    self._note_time(sent, seconds * TICKS_PER_S + micros, self.monotonic_ns())
            except BaseException:
                await client.aclose()
                raise
            entry = (client, client.register_script(LUA))
            self._async[loop] = entry
        return entry[1]

    def close(self) -> None:
        """Drop the blocking client and close its idle connections (async ones close with
        their loop). A connection another thread is reading from is left to that thread: it
        fails or finishes there and goes back to the dropped pool (closed when collected).
        Closing it under the reader (redis-py's ``close()`` disconnects connections in use)
        made that thread's call raise ``AttributeError`` from inside redis-py, not a
        connection error: a Redis restarted mid-run lost one caller's item that way."""
        client, self._client, self._script = self._client, None, None
        if client is None:
            return
        pools = (
            [n.redis_connection.connection_pool for n in client.get_nodes() if n.redis_connection]
            if is_cluster_url(self.url)
            else [client.connection_pool]
        )
        for pool in pools:
            if pool is not None:
                pool.disconnect(inuse_connections=False)

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

    def _answered(
        self, args: list[Any], reply: list[Any], sent_ns: int
    ) -> tuple[list[int], int, int]:
        """What :meth:`call` and :meth:`call_async` return for the script's reply: its integers
        (an exhausted mark's message left out), sent and received ns; the round trip is noted,
        and an exhausted mark raises."""
        recv_ns = self.monotonic_ns()
        ints = [int(x) for x in reply[:3]] + [int(x) for x in reply[3:] if reply[0] != -1]
        self._ok(sent_ns, recv_ns, args, ints)
        if ints[0] == -1:
            raise self._exhausted(ints, reply[3])
        return ints, sent_ns, recv_ns

    def _ok(self, sent_ns: int, recv_ns: int, args: list[Any], reply: list[int]) -> None:
        self.round_trips += 1
        self._down_since_ns = None
        if args[1] == "":  # the script read the server's clock (tests pass their own)
            self._note_time(sent_ns, reply[1], recv_ns)

    def _note_time(self, sent_ns: int, server_ticks: int, recv_ns: int) -> None:
        self._note_rtt(recv_ns - sent_ns)
        # A reading of t ticks is a server time in [t, t + 1) ticks.
        with self._clock_lock:  # threads of one process sample it at once
            self._server_clock.sample(sent_ns, server_ticks * _NS_PER_TICK, recv_ns, _NS_PER_TICK)

    @staticmethod
    def _transient() -> tuple[type[BaseException], ...]:
        import redis.exceptions as rx

        # READONLY: we reached a replica (a failover in progress); BUSY/LOADING: a Redis
        # that is starting or running a slow script; CLUSTERDOWN, TRYAGAIN (a slot being
        # migrated), an uncovered slot or a master marked down: a cluster that is failing over
        # or resharding. ClusterError is redis-py's "TTL exhausted.": its own redirect and
        # TRYAGAIN retries (about 0.4 s) ran out while a slot was still moving. All pass with
        # time.
        return (
            rx.ConnectionError,
            rx.ClusterError,
            rx.TimeoutError,
            rx.BusyLoadingError,
            rx.ReadOnlyError,
            rx.ClusterDownError,
            rx.TryAgainError,
            rx.SlotNotCoveredError,
            rx.MasterDownError,
            OSError,
        )

    def call(
        self,
        args: list[Any],
        *,
        retry: bool = True,
        retry_args: list[Any] | None = None,
        degrade: bool = False,
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
                delay_s = self._failed(exc, attempt, sent)
                if degrade and self._grace_over():
                    raise self._enter_local() from exc
                time.sleep(delay_s)
                attempt += 1
                continue
            return self._answered(args, reply, sent)

    async def call_async(
        self,
        args: list[Any],
        retry_args: list[Any] | None = None,
        *,
        retry: bool = True,
        degrade: bool = False,
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
                if not retry:
                    raise
                delay_s = self._failed(exc, attempt, sent)
                if degrade and self._grace_over():
                    raise self._enter_local() from exc
                await asyncio.sleep(delay_s)
                attempt += 1
                continue
            return self._answered(args, reply, sent)

    def _grace_over(self) -> bool:
        since = self._down_since_ns
        return (
            self.degraded == "split"
            and since is not None
            and self.monotonic_ns() - since >= DEGRADE_GRACE_S * 1e9
        )

    def _enter_local(self) -> StoreDegraded:
        if self.local_since_ns is None:
            self.local_since_ns = self.monotonic_ns()
            self._next_probe_ns = self.local_since_ns + round(_PROBE_EVERY_S * 1e9)
        return StoreDegraded(self.status() or "rate store unreachable")

    # -- the operations --------------------------------------------------------------------

    def widen_first(self, grants: int, margin_ns: int) -> None:
        """Book this process's next ``grants`` grants with ``margin_ns`` more margin (see
        ``first_grants`` in the constructor): call before the first grant.

        >>> store = RedisLimitStore("redis://127.0.0.1:6379/0", "api", [Limit(Rate.parse("9/s"))])
        >>> store.widen_first(16, 150_000_000)
        >>> store._booking_margin_ns() - store.margin_ns, store._first_left
        (150000000, 15)
        """
        if grants < 0 or margin_ns < 0:
            raise InvalidArgument(f"widen_first({grants!r}, {margin_ns!r}): give counts >= 0")
        with self._clock_lock:
            self.first_grants, self.first_margin_ns = grants, margin_ns
            self._first_left = grants

    def _booking_margin_ns(self, book: bool = True) -> int:
        """The margin of the next booking: the measured one, plus ``first_margin_ns`` for a
        process's first ``first_grants`` bookings (capped so that no booking's margin, with
        the limits' own, exceeds :data:`MAX_MARGIN_NS`). A try (``book=False``, which may be
        refused) gets the same margin but uses up none of the first grants."""
        margin = self.margin_ns
        if self._first_left <= 0 or self.first_margin_ns <= 0:
            return margin
        with self._clock_lock:
            if self._first_left <= 0:
                return margin
            if book:
                self._first_left -= 1
        own = max(lim.window_ns - lim.rate.window_ns for lim in self.limits)
        return margin + max(0, min(self.first_margin_ns, MAX_MARGIN_NS - own - margin))

    def _reserve_args(
        self,
        amounts: Sequence[int],
        book: bool,
        now: str,
        margin: int,
        release: Booking | None = None,
    ) -> list[Any]:
        # Every process beats (whatever its mode): k counts them all.
        fence = f"1:{self._me}" if now == "" else 1
        args = ["r" if book else "t", now, TICKS_PER_S, fence, *self._limit_args(margin), *amounts]
        if release is not None:
            for id_, amount in zip(release.ids, release.amounts, strict=True):
                args += [id_, amount]
        return args

    def _booking(self, amounts: Sequence[int], reply: list[int], sent: int, recv: int) -> Booking:
        wait_ns = reply[0] * _NS_PER_TICK
        n = len(amounts)
        ids = tuple(reply[2 : 2 + n]) if len(reply) > 2 else tuple(0 for _ in amounts)
        if len(reply) > 2 + n:  # a heartbeat's reply: the processes the store saw lately
            self.live_seen = max(1, reply[2 + n])
        # The slot on the server's clock, and where it lies on ours.
        slot_server_ns = (reply[1] + reply[0]) * _NS_PER_TICK
        with self._clock_lock:
            low, high = self._server_clock.bounds(recv)
        return Booking(
            ids,
            tuple(amounts),
            wait_ns,
            sent,
            recv,
            self._margin_ns,
            slot_ns=slot_server_ns - high,
            start_ns=slot_server_ns - low,
            server_slot=reply[1] + reply[0],
        )

    def reserve(
        self, amounts: Sequence[int], *, book: bool = True, release: Booking | None = None
    ) -> Booking:
        """Charge ``amounts`` (one per limit) at the earliest slot every limit allows; the
        booking says how long to wait. With ``book=False`` nothing is charged unless it can go
        now (then ``ids`` are all 0 and ``wait_ns`` > 0). ``release``: a late booking to give
        back in the same round trip."""
        # Read once: the entry is stamped with this margin and the grant checked against it
        # (another thread's lateness sample may change the margin meanwhile; a stamp with a
        # smaller margin than the check's lets a grant start after its stamp, most of all when
        # the start margin gives way to the measured one).
        margin = self._booking_margin_ns(book)
        if self.local_since_ns is not None:
            raise self._stay_local()
        reply, sent, recv = self.call(
            self._reserve_args(amounts, book, "", margin, release),
            retry_args=self._reserve_args(amounts, book, "", margin),
            degrade=self.degraded == "split",
        )
        booking = self._booking(amounts, reply, sent, recv)
        booking.margin_ns = margin
        return booking

    async def reserve_async(
        self, amounts: Sequence[int], release: Booking | None = None
    ) -> Booking:
        """:meth:`reserve` on the running event loop."""
        margin = self._booking_margin_ns()  # read once, as in reserve
        if self.local_since_ns is not None:
            raise self._stay_local()
        reply, sent, recv = await self.call_async(
            self._reserve_args(amounts, True, "", margin, release),
            retry_args=self._reserve_args(amounts, True, "", margin),
            degrade=self.degraded == "split",
        )
        booking = self._booking(amounts, reply, sent, recv)
        booking.margin_ns = margin
        return booking

    def _settle_args(self, booking: Booking, actual: Sequence[int]) -> list[Any]:
        args: list[Any] = ["s", "", TICKS_PER_S, 1, *self._limit_args(booking.margin_ns)]
        for id_, reserved, used in zip(booking.ids, booking.amounts, actual, strict=True):
            args += [id_, reserved, used]
        return args

    def _off_the_loop(self, args: list[Any], done: Callable[[bool], object] | None = None) -> bool:
        """Send one fire-and-forget script call (``retry=False``) as a task of the event loop
        running in this thread, if one runs; ``False`` when none does (the caller then makes
        the round trip itself, blocking). Sync code called from a coroutine (an HTTP face's
        settle, a runner's shared pause, a learned limit published from an answer) would
        otherwise hold every task of the loop for the round trip: up to the socket timeout
        (2 s) when Redis hangs. The call is sent once, as the blocking one is: a call the loop
        never finishes (it closed first) leaves the store as a lost reply would, and every
        such call errs on the strict side (a booking not corrected stays charged, a pause
        not shared holds this process only). ``done``, if given, is called by the task with
        whether the store answered (never, if the loop closes first)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False

        async def send() -> None:
            answered = False
            with contextlib.suppress(*self._transient()):
                await self.call_async(args, retry=False)
                answered = True
            if done is not None:
                done(answered)

        task = loop.create_task(send())
        self._background.add(task)  # held until done: the loop keeps weak references only
        task.add_done_callback(self._background.discard)
        return True

    def settle(self, booking: Booking, actual: Sequence[int]) -> None:
        """Correct a booking to ``actual`` (one amount per limit): give back the unused part,
        charge an overrun from the first moment it fits. Sent once: a retry of a request whose
        reply was lost could give back twice; a settle that cannot be sent keeps the estimate
        (as a grant never settled does). Called on an event loop's thread, it is sent by a
        task of that loop and returns at once (it never blocks the loop)."""
        args = self._settle_args(booking, actual)
        if self._off_the_loop(args):
            return
        with contextlib.suppress(*self._transient()):
            self.call(args, retry=False)

    def give_back(self, booking: Booking) -> None:
        """Return a booking that was never used, if the store can be reached at once; a
        booking that cannot be returned stays charged (strict, never fails open). On an
        event loop's thread, as :meth:`settle`."""
        self.settle(booking, [0] * len(booking.amounts))

    # The same on the running event loop: a round trip that never blocks the loop (a hung
    # Redis would hold every task of it for the socket timeout, 2 s).

    async def settle_async(self, booking: Booking, actual: Sequence[int]) -> None:
        """:meth:`settle` on the running event loop."""
        with contextlib.suppress(*self._transient()):
            await self.call_async(self._settle_args(booking, actual), retry=False)

    async def give_back_async(self, booking: Booking) -> None:
        """:meth:`give_back` on the running event loop."""
        await self.settle_async(booking, [0] * len(booking.amounts))

    async def share_pause_async(self, seconds: float) -> None:
        """:meth:`share_pause` on the running event loop."""
        if not seconds > 0:
            return
        ticks = round(seconds * TICKS_PER_S)
        args: list[Any] = ["p", "", TICKS_PER_S, 0, *self._limit_args(self._margin_ns), ticks]
        with contextlib.suppress(*self._transient()):
            await self.call_async(args, retry=False)

    async def share_exhausted_async(self, why: str, hold_s: float = EXHAUSTED_HOLD_S) -> None:
        """:meth:`share_exhausted` on the running event loop."""
        with contextlib.suppress(*self._transient()):
            await self.call_async(self._exhausted_args(why, hold_s), retry=False)

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
        if self._off_the_loop(args):  # on an event loop's thread: sent by a task of it
            return
        with contextlib.suppress(*self._transient()):
            self.call(args, retry=False)

    def _exhausted(self, reply: list[int], why: bytes | str) -> SharedQuotaExhausted:
        text = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
        left_s = (reply[2] - reply[1]) / TICKS_PER_S
        return SharedQuotaExhausted(
            f"quota exhausted on the shared key {self.key!r}, another process was told: {text} "
            f"(no grant on this key for {left_s:.0f} s more; resume when the quota is back)"
        )

    def share_exhausted(self, why: str, hold_s: float = EXHAUSTED_HOLD_S) -> None:
        """Tell every process on this key that the quota is exhausted (an answer said so, to
        this process): their next grant raises :class:`~paceline.errors.QuotaExhausted` for
        ``hold_s``. Never waits for an unreachable store (this process stops anyway); on an
        event loop's thread it is sent by a task of that loop and returns at once."""
        args = self._exhausted_args(why, hold_s)
        if self._off_the_loop(args):
            return
        with contextlib.suppress(*self._transient()):
            self.call(args, retry=False)

    def _exhausted_args(self, why: str, hold_s: float) -> list[Any]:
        ticks = round(hold_s * TICKS_PER_S)
        args: list[Any] = ["x", "", TICKS_PER_S, 0, *self._limit_args(self._margin_ns), ticks]
        said = "quota exhausted (resume when the quota is back): "  # an HTTP face's preamble
        why = why[len(said) :] if why.startswith(said) else why
        return [*args, redact_text(why)[:300]]

    def share_server_limit(
        self, quota: int, window_s: float, done: Callable[[Any], object] | None = None
    ) -> Any:
        """Every process on this key keeps a quota a server announced to this one, together
        (:func:`paceline._ratestore.learned.share_server_limit`: returns a
        :class:`~paceline._ratestore.learned.Publication`)."""
        from paceline._ratestore.learned import share_server_limit

        return share_server_limit(self, quota, window_s, done)

    async def share_server_limit_async(self, quota: int, window_s: float) -> Any:
        """:meth:`share_server_limit` on the running event loop, awaited (never ``QUEUED``)."""
        from paceline._ratestore.learned import share_server_limit_async

        return await share_server_limit_async(self, quota, window_s)

    def adaptive_share(self, server: str) -> Any:
        """The :class:`~paceline._ratestore.learned.AdaptiveShare` of ``server``'s adaptive
        rate on this key."""
        from paceline._ratestore.learned import AdaptiveShare

        return AdaptiveShare(self, server)

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
