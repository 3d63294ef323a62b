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
in a window ``W + J``, which the actor kept to N. The limiter's own ``margin_s`` (how much
later than its start the server may count an attempt) is added on top, as in-process.

A limit without a ``burst`` is *paced* on the cluster: consecutive slots ``W'/N`` apart (the
log stays behind the pacer, so the limit is as strict as ever). The log alone hands each
window's N slots out as fast as workers ask, and a window's N starts then run at once on a
few worker event loops: their requests reach the server spread by those loops' lag (tens of
ms), and the server's window counts the late tail of one bunch with the prompt head of the
next (measured: 536-547 arrivals in some 1 s at 500/s while the starts held 500). Paced, the
lag shrinks to a few ms and the count to 503-510. A given-back slot's place is booked again
(up to ``N/4`` owed), and a schedule that fell behind (a waiter late to ask) catches up by up
to ``N/50`` slots, each halfway between two paced ones: a late slot costs its item a wait,
not the rate. ``burst=`` keeps the limit's own pacer (``burst=N``: the log alone, bunched).
Measured with 2 worker processes at a shared 500/s: see docs/benchmarks.md, "Dask runner".

A server's pause (a 429's ``Retry-After``, :meth:`LimitActor.pause`) holds every booking until
it ends, and the paced schedule restarts there at its pace. The slots booked before it are the
workers': every booking's answer carries the pause's end (and the process that saw the 429
knows it at once), and a worker gives back a slot inside it instead of starting, and books
again (docs/design.md, "A server's pause on the cluster").

The actor lives on one worker and dies with it (Dask does not move actors). The driver then
hosts a new one *fenced*: it grants nothing until the dead actor's last grants — booked at
most a horizon ahead — have left their windows (:func:`fence_for`).

>>> from paceline.policy.limits import Limit
>>> from paceline.policy.rate import Rate
>>> actor = LimitActor([Limit(Rate(2, 1_000_000_000), margin_ns=0)], 0, 1_000_000_000)
>>> [slot > now for _booked, slot, now in (actor.book_now(), actor.book_now(), actor.book_now())]
[False, False, True]
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from paceline._limiter import RateLimiter
from paceline.errors import InvalidArgument, PacelineError
from paceline.policy.limits import Limit, LimitPolicy
from paceline.policy.rate import NS_PER_S, REQUESTS

# The margin J between a slot and the latest start it allows. Slots are asked for ahead by the
# slowest recent round trip (LEAD_TRIPS), so J covers the sleep's overshoot (an event loop's
# wake-up lag): a round trip worker -> actor -> worker took 1-4 ms on a busy 2-core machine,
# a wake-up up to 10+ ms. 10 ms costs 1 % of a 1 s window's rate (the actor's windows are
# W + J). 5 ms was tried once (load 5): 11 % of the slots back, 0.92 of the rate, where 10 ms
# gave 2 % just before (but 11 % in another run at load 8): not shown better, so 10 ms stays.
DEFAULT_MARGIN_S = 0.010

# The limiter's own margin on a cluster when it was not given one (``margin_s=None``; the CLI's
# ``--rate`` without ``--rate-margin``): how much later than its start the server may see an
# attempt. In one process it is at most 1 ms; a cluster's requests leave from several worker
# processes' event loops, whose start -> arrival spread is wider: at 1 ms, 503-510 arrivals
# reached the server in some second at a shared 500/s while the starts held 500. Measured per
# request at a shared 500/s, quiet (docs/design.md, "Dask runner: where a request waits"):
# start -> arrival p99 1.6-4.3 ms, p99.9 4-12 ms; the tail beyond was the workers' full
# collections (23-42 ms; 4-18 ms with the heap frozen, dask_chunk) and the server's own
# stalls, which no margin covers. 5 ms: with J the windows are W + 15 ms, 0.985 of the rate at
# most (0.980 at 10 ms). Old/new alternating, 8 pairs: the rate 0.975 -> 0.982 (median), and
# <= 500 arrivals in every quiet run (load <= 2.3: 4 of 4); at load 3-4 over 500 in 2 of 4
# runs in either tree (docs/benchmarks.md). A given margin_s is kept.
DEFAULT_ARRIVAL_MARGIN_S = 0.005

# How long a worker waits for the actor's answer before calling it lost. Answers take 1-4 ms
# (70 ms in the tail on a busy machine); a call to a dead worker is otherwise retried until
# Dask's connect timeout (30 s), and every worker waiting on it would stall that long.
ACTOR_TIMEOUT_S = 5.0

# A worker asks for its slot ahead: by the longest of its last 64 round trips. Without it, a
# slot granted "now" is already past when the reply arrives, and a reply slower than the
# margin (a busy machine: 15-70 ms) sends it back — measured: 140/s of a 500/s limit, most
# slots given back; with the 90th percentile, 0.77 of the rate (a tenth of the replies came
# after their slot). A given-back slot is lost to the rate: slots never go backwards. Ahead
# costs a start's latency, not the rate. Capped at 100 ms: a start never waits longer for it.
LEAD_TRIPS = 64
MAX_LEAD_NS = 100_000_000

# A worker process's booking thread ends after this long with nothing to book (a new one
# starts with the next request): no thread outlives a batch by more than that.
BOOKER_IDLE_S = 5.0

# The margin grows by half (at most to MAX_MARGIN_FACTOR x its start) when more than 5 % of
# the last 200 slots came back late: a late slot is lost to the rate (measured on a loaded
# machine: 25 % late at J = 10 ms, 0.67 of the rate; 0.83-0.91 at J = 30 ms). 5 % late costs
# about as much rate as a margin 5 % of the window, so beyond it a longer margin is cheaper.
MARGIN_SAMPLE = 200
MARGIN_GROW_AT = 0.05
MAX_MARGIN_FACTOR = 5

# A paced actor (a limit without ``burst``, see LimitActor) books a given-back slot's place
# again, so a late slot costs a round trip and its item's wait, not the rate: its margin grows
# only when more than half of the slots come back late (then the waiters spend more time
# re-booking than starting), over 1,000 slots (2 s at 500/s), so that a stall of a worker
# process (200+ ms at load 12: every slot in it late, and no margin would have covered it)
# does not lengthen the windows for the rest of the batch.
MARGIN_GROW_AT_PACED = 0.5
MARGIN_SAMPLE_PACED = 1000
# How far a paced actor's schedule may fall behind its slots, in slots (a share of N): what a
# paced limit makes up after a pause in demand (a waiter late to ask), at double density (one
# slot halfway between two paced ones), never at one instant. Without it, a paced slot not
# booked in time is lost to the rate for good (a pacer does not catch up). 2 % of N (10 of
# 500/s: 20 ms of slots, a slow round trip's worth); a longer pause is real (nobody asked).
CATCH_UP_SHARE = 50  # N // 50
# The slots given back whose places a paced actor books again, at most (a share of N): each
# goes halfway between two paced slots, so N/4 owed (125 of 500/s) is made up within a quarter
# of a window at double density. Measured at load 9: 11 % of the slots came back late
# (J = 10 ms); made up only within the catch-up above, the rate fell to 0.86; a stalled worker
# process gives back every slot it held at once (~100 at 500/s).
OWED_SHARE = 4  # N // 4: a 250 ms stall's slots
# A limit paced one at a time (``burst=1``, the CLI's ``--rate`` without ``--burst``) promises
# consecutive starts at least W'/N apart, as a server's ``limit_req`` without burst counts them
# (nginx refuses a request sooner than 1/rate after the last one). A start lies anywhere in
# [slot, slot + lateness allowed], so the actor puts its slots W'/N + P apart and a worker gives
# back a slot it cannot start within P of it: two starts are then never closer than W'/N.
# P is an eighth of W'/N (2.5 ms at 50/s: worker event loops wake 0.1-3 ms late on a busy
# 2-core machine), at most the margin J: it costs 1/9 of the rate (at 50/s: 44.4/s), where
# the margin J alone let 19-21 % of the requests be refused (starts 10 ms apart).
SPACED_PAD_SHARE = 8
# Below this P a limit is not spaced (above 125/s with P = W'/N/8): a worker's wake-up lag
# is not held to a fraction of a ms, so nearly every slot would come back late; such a limit
# keeps the margin J as its lateness, and its starts are W'/N apart on average, J at worst.
MIN_SPACED_PAD_NS = 1_000_000


# The topics of ended batches whose handler is still :func:`_ignore_event` in this process.
_ENDED_TOPICS: list[str] = []


def _ignore_event(event: Any) -> None:
    """An ended batch's topic: an event still on its way is dropped."""


class LimiterLost(PacelineError):
    """The cluster's limiter could not be reached (its worker died, or the scheduler went
    away): the attempt did not start and took nothing."""


class LimitActor:
    """The actor: books slots on its own monotonic clock (see the module's docstring).

    ``fence_ns``: no slot before this many ns after the actor starts (a re-created actor
    waits out its predecessor's grants, :func:`fence_for`). ``horizon_ns``: no booking further
    ahead than this; a caller asking earlier is told when to ask again. Bounding how far ahead
    slots go is what makes a fence possible at all: a dead actor's bookings end within
    ``horizon + W'`` of its death. ``pace``: space the slots of every limit without a burst
    evenly (see the module's docstring). Its methods are coroutines so Dask runs them on the
    worker's event loop, one at a time, without a hop through the actor thread.
    """

    def __init__(
        self,
        limits: Sequence[Limit],
        fence_ns: int,
        horizon_ns: int,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        *,
        margin_ns: int = 0,
        max_margin_ns: int = 0,
        pace: bool = False,
    ) -> None:
        self._policy = LimitPolicy(limits)
        # Paced: consecutive slots are W'/N apart for every request limit without a burst
        # (the log alone would let each window's N starts bunch; see the class docstring).
        self._paced = [
            (limit.window_ns, limit.rate.max_requests)
            for limit in limits
            if pace and limit.burst is None and limit.rate.unit == REQUESTS
        ]
        self._grown_ns = 0  # how much the margin grew: the paced spacing follows it
        # Spaced (SPACED_PAD_SHARE): a burst-1 request limit's slots at least W'/N + P apart,
        # every slot started within P of it (0 and None: no limit is spaced).
        self._spaced_ns, self._spaced_pad_ns = _spacing(limits, margin_ns)
        self._next_spaced_ns: int | None = None
        # The paced schedule: when the next slot is due (None before the first booking)...
        self._due_ns: int | None = None
        # ... how many slots it may fall behind (see CATCH_UP_SHARE), and the given-back
        # permits whose places are still to be booked again (at most max_owed, OWED_SHARE).
        smallest = min((n for _w, n in self._paced), default=0)
        self._catch_up = max(1, smallest // CATCH_UP_SHARE)
        self._owed = 0
        self._max_owed = max(1, smallest // OWED_SHARE)
        # The margin J (already in the limits' windows) and how far it may grow: when more
        # than MARGIN_GROW_AT of the slots come back late, J grows by half (see book_many).
        self.margin_ns = margin_ns
        self._max_margin_ns = max(margin_ns, max_margin_ns)
        self._booked = 0
        self._returned = 0
        # Over the actor's life, for its stats(): slots booked, given back, and margin growths.
        self.booked_total = 0
        self.returned_total = 0
        self.grown_total = 0
        self.paused_total = 0  # slots given back unused because they fell inside a pause
        self._clock_ns = clock_ns  # the actor's clock (a fake one in tests)
        now = clock_ns()
        self._last_ns = now  # the latest slot handed out: slots never go backwards
        self._hold_until_ns = now + fence_ns  # a fence, or a server's pause (Retry-After)
        self._horizon_ns = horizon_ns

    def book_now(self, weight: int = 1, lead_ns: int = 0) -> tuple[bool, int, int]:
        """Book ``weight`` permits at the earliest slot ``>=`` every earlier one and at least
        ``lead_ns`` from now (the caller's usual reply time: a slot already past when the reply
        arrives would come back late); return ``(True, slot_ns, now_ns)``, or
        ``(False, ask_again_ns, now_ns)`` when that slot is beyond the horizon (times on this
        actor's clock)."""
        now = self._clock_ns()
        earliest = max(now + lead_ns, self._last_ns, self._hold_until_ns)
        spacing = self._spacing_ns(weight)
        due = self._due_ns
        owed = False
        if due is not None:
            # At most CATCH_UP_SHARE behind (a long pause in demand is not made up), and never
            # closer than half a spacing to the last slot (made up at double density). A
            # given-back slot's place goes there too, outside the schedule.
            due = max(due, earliest - self._catch_up * spacing // weight)
            owed = self._owed >= weight
            earliest = max(earliest, self._last_ns + spacing // 2, earliest if owed else due)
        if self._next_spaced_ns is not None:
            earliest = max(earliest, self._next_spaced_ns)
        slot = earliest
        if slot - now > self._horizon_ns:
            return False, slot - self._horizon_ns, now
        policy = self._policy
        while wait := policy.try_grant(slot, weight):
            slot += wait
        if self._spaced_ns:
            self._next_spaced_ns = slot + weight * self._spaced_ns
        if owed:
            self._owed -= weight
            self._due_ns = due
        elif self._paced:
            # The schedule moves on by one spacing, or restarts after a slot the log held back.
            self._due_ns = slot + spacing if due is None or slot > earliest else due + spacing
        self._last_ns = slot
        return True, slot, now

    def _spacing_ns(self, weight: int) -> int:
        """A paced booking of ``weight`` takes ``weight * W'/N`` of the schedule, for the
        strictest paced limit (0 when not paced)."""
        grown = self._grown_ns
        return max(((window + grown) * weight // n for window, n in self._paced), default=0)

    async def book(self, weight: int = 1, lead_ns: int = 0) -> tuple[bool, int, int]:
        """:meth:`book_now`, as the workers call it."""
        return self.book_now(weight, lead_ns)

    async def book_many(
        self, weights: list[int], lead_ns: int, given_back: list[tuple[int, int]]
    ) -> tuple[list[tuple[bool, int]], int, int, int]:
        """Take back ``given_back`` slots ``(slot, weight)``, then book one slot per weight, in
        order: ``([(booked, slot_or_ask_again_ns), ...], now_ns, margin_ns, hold_ns)``, the
        margin being the lateness these slots may start with, and ``hold_ns`` the end of the
        server's pause (:meth:`pause`; earlier than now when none): a slot booked earlier and
        not yet started that falls before it is not used (see :class:`ClusterLimiter`). One
        round trip for every caller waiting in a worker process."""
        answers, now, margin_ns = self.book_many_now(weights, lead_ns, given_back)
        return answers, now, margin_ns, self._hold_until_ns

    def book_many_now(
        self, weights: list[int], lead_ns: int, given_back: list[tuple[int, int]]
    ) -> tuple[list[tuple[bool, int]], int, int]:
        """:meth:`book_many`, synchronously.

        The margin grows when slots keep coming back late (a busy machine's event loops wake
        up late): a given-back slot is lost to the rate. It only grows, and each slot keeps
        the margin it was booked with, so the proof of the module's docstring still holds:
        any later decision counts an earlier slot for at least W plus that slot's margin.
        """
        policy = self._policy
        for slot, weight in given_back:
            self._take_back(slot, weight)
        self._returned += len(given_back)
        self.returned_total += len(given_back)
        if self._spaced_pad_ns is None and self._booked >= (
            MARGIN_SAMPLE_PACED if self._paced else MARGIN_SAMPLE
        ):
            late = self._returned / self._booked
            grow_at = MARGIN_GROW_AT_PACED if self._paced else MARGIN_GROW_AT
            if late > grow_at and self.margin_ns < self._max_margin_ns:
                grown = min(self._max_margin_ns, max(self.margin_ns * 3 // 2, 1_000_000))
                policy.lengthen_windows(grown - self.margin_ns)
                self._grown_ns += grown - self.margin_ns
                self.margin_ns = grown
                self.grown_total += 1
            self._booked = self._returned = 0
        answers = [self.book_now(weight, lead_ns) for weight in weights]
        booked = sum(1 for booked, _at, _now in answers if booked)
        self._booked += booked
        self.booked_total += booked
        now = answers[0][2] if answers else self._clock_ns()
        return [(booked, at) for booked, at, _now in answers], now, self.lateness_ns

    @property
    def lateness_ns(self) -> int:
        """How late after its slot a start may be: the margin J, or a spaced limit's P (see
        SPACED_PAD_SHARE; the margin then does not grow: P, not J, bounds the lateness)."""
        pad = self._spaced_pad_ns
        return self.margin_ns if pad is None else pad

    async def give_back(self, slot_ns: int, weight: int = 1) -> None:
        """Return a slot that was not started within the margin."""
        self._take_back(slot_ns, weight)

    def _take_back(self, slot_ns: int, weight: int) -> None:
        self._policy.give_back(slot_ns, weight)
        if slot_ns < self._hold_until_ns:
            # A slot inside a server's pause (or booked before it, which the pause forgave):
            # its place is not made up after the pause, which resumes at its pace.
            self.paused_total += 1
        elif self._due_ns is not None:
            self._owed = min(self._max_owed, self._owed + weight)  # its place, booked again

    async def pause(self, seconds: float) -> int:
        """Hold every booking until ``seconds`` from now (a server's ``Retry-After``); return
        when the pause ends (this actor's ns). The slots booked before and not yet started
        are the workers' to drop: they learn of the pause with their next booking's answer
        (:meth:`book_many`) and give back the slots inside it."""
        return self.pause_now(seconds)

    def pause_now(self, seconds: float) -> int:
        """:meth:`pause`, synchronously."""
        until = self._clock_ns() + round(seconds * NS_PER_S)
        self._hold_until_ns = max(self._hold_until_ns, until)
        # A server that asked for a pause is not made up to at double density afterwards.
        self._owed = 0
        if self._due_ns is not None:
            self._due_ns = max(self._due_ns, until)
        return self._hold_until_ns

    async def stats(self) -> dict[str, int]:
        """What the actor did: ``booked`` slots, ``given_back`` (started too late), the margin's
        ``growths`` and its current ``margin_ns``; ``paused``: of those given back, the slots
        dropped because they fell inside a server's pause (a benchmark's and a curious user's
        view)."""
        return {
            "booked": self.booked_total,
            "given_back": self.returned_total,
            "paused": self.paused_total,
            "growths": self.grown_total,
            "margin_ns": self.margin_ns,
        }

    async def ping(self) -> bool:
        """Whether the actor answers (the driver's health check)."""
        return True

    async def clock_id(self) -> str | None:
        """The :func:`clock_id` of the actor's machine (workers there share its clock)."""
        return clock_id()


# Where Linux names the current boot: processes that read the same one share one monotonic
# clock (CLOCK_MONOTONIC is the kernel's, containers included).
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def clock_id() -> str | None:
    """This machine's boot id: two processes with the same one read the same
    ``time.monotonic_ns()`` (None where it cannot be told: not Linux)."""
    try:
        with open(BOOT_ID_PATH) as boot:
            return boot.read().strip() or None
    except OSError:
        return None


def _spacing(limits: Sequence[Limit], margin_ns: int) -> tuple[int, int | None]:
    """``(S, P)`` of the burst-1 request limits among ``limits`` (SPACED_PAD_SHARE): slots at
    least ``S`` apart, each started within ``P`` of it, so that no two starts are closer than
    any of them allows; ``(0, None)`` when none is spaced (none has ``burst=1``, or its ``P``
    would be under MIN_SPACED_PAD_NS, or ``J`` is 0: lateness is not checked then).

    >>> from paceline.policy.rate import Rate
    >>> _spacing([Limit(Rate(50, NS_PER_S), burst=1, margin_ns=10_000_000)], 10_000_000)
    (22725000, 2525000)
    """
    intervals = [
        limit.window_ns // limit.rate.max_requests
        for limit in limits
        if limit.burst == 1 and limit.rate.unit == REQUESTS
    ]
    if not intervals:
        return 0, None
    pad = min(margin_ns, min(intervals) // SPACED_PAD_SHARE)
    if pad < MIN_SPACED_PAD_NS:
        return 0, None
    return max(intervals) + pad, pad


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

    def exact(self) -> None:
        """The actor's clock is this one (same machine, :func:`clock_id`): the offset is 0,
        with no round trip's width of doubt (which a late check of a short lateness allowed
        would spend: a round trip on one machine takes 0.5-4 ms)."""
        self._current = self._older = (0, 0)
        self._since_ns = 2**62  # never refreshed

    def sample(self, sent_ns: int, actor_ns: int, received_ns: int) -> None:
        """Narrow the bounds with one round trip."""
        if self._since_ns == 2**62:
            return  # exact
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

    In each worker process one booking thread sends the actor every request waiting at that
    moment — and the slots given back since — in one call (:meth:`LimitActor.book_many`):
    an actor call costs ~1 ms of the actor's worker, and one call per attempt made it the
    bottleneck (measured: ~800 calls/s with 64 callers on a busy machine, 30-50 ms round trips).
    """

    __slots__ = (
        "_actor",
        "_booker",
        "_client",
        "_clock_id",
        "_given_back",
        "_held",
        "_hold_ns",
        "_listening",
        "_lock",
        "_offset",
        "_topic",
        "_trips",
        "_waiting",
        "_wake",
        "margin_ns",
        "timeout_s",
        "window_ns",
    )

    def __init__(
        self,
        actor: Any,
        margin_ns: int,
        window_ns: int,
        timeout_s: float = ACTOR_TIMEOUT_S,
        actor_clock_id: str | None = None,
        topic: str | None = None,
    ) -> None:
        self._actor = actor
        # The Dask event topic a pause is pushed on (None: none, each hears at its booking).
        self._topic = topic
        self.margin_ns = margin_ns
        self.window_ns = window_ns  # the longest window W + J (the fence of a successor)
        self.timeout_s = timeout_s  # how long to wait for an answer before calling it lost
        self._clock_id = actor_clock_id  # the actor's machine (clock_id), None: unknown
        # On the driver, the actor's own future: while it is held the scheduler keeps the
        # actor. (The handle alone holds it through the process's *default* client: with two
        # clients in one process, the other's — and the actor was released mid-batch.)
        self._held: Any = None
        self._local_state()

    def _local_state(self) -> None:
        self._listening = False  # subscribed to the topic in this process
        self._client: Any = None  # the Dask client it subscribed with
        self._offset = ClockOffset()
        if self._clock_id is not None and self._clock_id == clock_id():
            self._offset.exact()  # the actor's machine: one clock
        self._trips: deque[int] = deque(maxlen=LEAD_TRIPS)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: list[tuple[int, Future[tuple[bool, int, int]]]] = []
        self._given_back: list[tuple[int, int]] = []
        self._booker: threading.Thread | None = None
        # The end of the server's latest pause on the actor's clock, as last heard (from this
        # process's own pause, or any booking's answer): a slot before it is not started.
        self._hold_ns = -(2**62)

    def __getstate__(self) -> tuple[Any, int, int, float, str | None, str | None]:
        return (
            self._actor,
            self.margin_ns,
            self.window_ns,
            self.timeout_s,
            self._clock_id,
            self._topic,
        )

    def __setstate__(self, state: tuple[Any, int, int, float, str | None, str | None]) -> None:
        (
            self._actor,
            self.margin_ns,
            self.window_ns,
            self.timeout_s,
            self._clock_id,
            self._topic,
        ) = state
        self._held = None  # the driver holds the actor
        self._local_state()

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._actor, method)(*args).result(timeout=self.timeout_s)
        except Exception as exc:
            raise LimiterLost(
                f"the cluster's rate limiter did not answer ({type(exc).__name__}: {exc})"
            ) from exc

    # the booking thread -------------------------------------------------------------------

    def _request(self, weight: int) -> Future[tuple[bool, int, int]]:
        """Queue a booking for the booking thread; its future gives ``(booked, actor_ns,
        margin_ns)``: the slot (or when to ask again) and the lateness the slot allows."""
        future: Future[tuple[bool, int, int]] = Future()
        with self._lock:
            self._waiting.append((weight, future))
            if self._booker is None or not self._booker.is_alive():
                # In the caller's context: Dask finds the worker (and so the actor's
                # connection) through the context of the task that asked.
                self._booker = threading.Thread(
                    target=contextvars.copy_context().run,
                    args=(self._book_waiting,),
                    name="paceline-cluster-limiter",
                    daemon=True,
                )
                self._booker.start()
            self._wake.notify()
        return future

    def _listen(self) -> None:
        """Hear every pause of the batch the moment it is set (once per process): a Dask event
        topic that the scheduler pushes to this worker's client. Without it, a process hears
        of a pause with its next booking's answer, and its slots due before that start inside
        the pause (docs/design.md, "A server's pause on the cluster")."""
        if self._listening or self._topic is None:
            return
        self._listening = True
        try:
            from distributed import get_client

            client: Any = get_client()  # distributed's Client: untyped here
            client.subscribe_topic(self._topic, self._on_pause_event)
            self._client = client
        except Exception:  # no worker here (a test's stand-in): bookings still tell
            return

    def _on_pause_event(self, event: Any) -> None:
        """A pause pushed on the topic: ``(time, {"hold_ns": end on the actor's clock})``, or
        the batch's end (``{"end": True}``, :meth:`end`): stop listening."""
        try:
            if event[1].get("end"):
                self._stop_listening()
                return
            hold_ns = int(event[1]["hold_ns"])
        except (AttributeError, TypeError, KeyError, IndexError, ValueError):
            return
        self._heard_hold(hold_ns)

    def _stop_listening(self) -> None:
        """Unsubscribe from the ended batch's topic (on the Dask client's event loop)."""
        client, topic = self._client, self._topic
        if client is None or topic is None:
            return
        self._client = None
        with contextlib.suppress(Exception):  # a client closing: nothing left to drop
            client.unsubscribe_topic(topic)  # the scheduler stops pushing its events
            # distributed keeps the handler after unsubscribing, and an event already on its
            # way to a topic without one raises there: a bare function, not this limiter,
            # takes it; dropped at the next batch's end, long after the scheduler heard.
            handlers = client._event_handlers
            while _ENDED_TOPICS:
                old = _ENDED_TOPICS.pop()
                if handlers.get(old) is _ignore_event:
                    del handlers[old]
            handlers[topic] = _ignore_event
            _ENDED_TOPICS.append(topic)

    def end(self, client: Any) -> None:
        """On the driver, once the batch is over: every worker process listening for its
        pauses unsubscribes (otherwise each kept a handler, and this limiter, for good)."""
        if self._topic is None:
            return
        with contextlib.suppress(Exception):  # the scheduler gone: nobody is listening
            client.log_event(self._topic, {"end": True})

    def _push_pause(self, hold_ns: int) -> None:
        """Tell every process sharing the limiter of a pause ending at ``hold_ns``."""
        if self._topic is None:
            return
        try:
            from distributed import get_client

            get_client().log_event(self._topic, {"hold_ns": hold_ns})
        except Exception:  # no cluster client here: the others hear at their next booking
            return

    def _book_waiting(self) -> None:
        """The booking thread: send what waits, hand out the answers; end when idle a while."""
        self._listen()
        while True:
            with self._lock:
                if not self._waiting and not self._wake.wait_for(
                    lambda: bool(self._waiting), timeout=BOOKER_IDLE_S
                ):
                    self._booker = None
                    return
                waiting, self._waiting = self._waiting, []
                given_back, self._given_back = self._given_back, []
            # A waiter cancelled meanwhile (its chunk stopped) is dropped; the others can no
            # longer be cancelled, so their answers always land (a slot booked for a waiter
            # that then stops goes unused: a little rate lost, never a start too many).
            waiting = [
                (w, future) for w, future in waiting if future.set_running_or_notify_cancel()
            ]
            if not waiting and not given_back:
                continue
            sent = time.monotonic_ns()
            try:
                answers, actor_now, margin_ns, hold_ns = self._call(
                    "book_many", [weight for weight, _ in waiting], self.lead_ns(), given_back
                )
            except Exception as exc:  # LimiterLost, or an answer of the wrong shape
                for _weight, future in waiting:
                    future.set_exception(exc)
                continue
            received = time.monotonic_ns()
            self._trips.append(received - sent)
            self._offset.sample(sent, actor_now, received)
            self._heard_hold(hold_ns)
            for (_weight, future), (booked, at_ns) in zip(waiting, answers, strict=True):
                future.set_result((booked, at_ns, margin_ns))

    def lead_ns(self) -> int:
        """How far ahead to ask for a slot: the longest of the recent round trips (at most
        ``MAX_LEAD_NS``), so the reply arrives before its slot is due."""
        trips = self._trips
        return min(MAX_LEAD_NS, max(trips)) if trips else 0

    def _start_ns(self, at_ns: int) -> int:
        """When ``at_ns`` on the actor's clock has surely come, on this clock."""
        return at_ns - self._offset.low_ns

    def _late(self, slot: int, margin_ns: int) -> bool:
        """Whether a start now may be more than ``margin_ns`` after ``slot``."""
        return time.monotonic_ns() + self._offset.high_ns - slot > margin_ns

    def _give_back(self, slot: int, weight: int) -> None:
        with self._lock:
            self._given_back.append((slot, weight))  # sent with the next booking

    def _heard_hold(self, hold_ns: int) -> None:
        with self._lock:
            self._hold_ns = max(self._hold_ns, hold_ns)

    def _paused(self, slot: int) -> bool:
        """Whether ``slot`` falls inside a server's pause heard of since it was booked."""
        return slot < self._hold_ns

    # the limiter's face -------------------------------------------------------------------

    def acquire(self, weight: int = 1) -> int:
        """Block until a slot is due and return it (the actor's ns); give back and book again
        when the start would be later than the margin allows."""
        while True:
            booked, at_ns, margin_ns = self._request(weight).result()
            if booked and self._paused(at_ns):
                self._give_back(at_ns, weight)  # booked before a pause it falls in
                continue
            delay = self._start_ns(at_ns) - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / NS_PER_S)
            if not booked:
                continue  # beyond the horizon: ask again now
            if not self._late(at_ns, margin_ns) and not self._paused(at_ns):
                return at_ns
            self._give_back(at_ns, weight)

    async def acquire_async(self, weight: int = 1) -> int:
        """:meth:`acquire` for an event loop: the wait and the lateness check happen on the
        loop, right before the attempt starts."""
        while True:
            booked, at_ns, margin_ns = await asyncio.wrap_future(self._request(weight))
            if booked and self._paused(at_ns):
                self._give_back(at_ns, weight)
                continue
            delay = self._start_ns(at_ns) - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / NS_PER_S)
            if not booked:
                continue
            if not self._late(at_ns, margin_ns) and not self._paused(at_ns):
                return at_ns
            self._give_back(at_ns, weight)

    def pause(self, seconds: float) -> None:
        """Pause every worker sharing this limiter for ``seconds`` (a 429's ``Retry-After``).

        The slots already booked that fall inside the pause are not started: in this process
        at once, elsewhere as soon as the scheduler pushes the pause to them (a Dask event
        topic, a few ms), or with their next booking's answer; each is given back and booked
        again after the pause."""
        # At once here, on the earliest the actor's clock can read now: never later than the
        # pause the actor will set, so no slot booked after it is dropped; pushed to the
        # others before the actor's round trip, then the actor's own end.
        early_ns = time.monotonic_ns() + self._offset.low_ns + round(seconds * NS_PER_S)
        self._heard_hold(early_ns)
        self._push_pause(early_ns)
        hold_ns = int(self._call("pause", seconds))
        self._heard_hold(hold_ns)
        if hold_ns > early_ns:
            self._push_pause(hold_ns)

    def stats(self) -> dict[str, int]:
        """The actor's :meth:`LimitActor.stats`."""
        result: dict[str, int] = self._call("stats")
        return result

    def alive(self, client: Any = None) -> bool:
        """Whether the actor still answers (with ``client``: first, whether its worker is
        still in the cluster — a quick answer for a dead one)."""
        if client is not None:
            address = getattr(self._actor, "_address", None)
            if address is not None and address not in client.scheduler_info()["workers"]:
                return False
        try:
            return bool(self._call("ping"))
        except LimiterLost:
            return False


def cluster_limits(
    limiter: RateLimiter, margin_s: float, arrival_margin_s: float = DEFAULT_ARRIVAL_MARGIN_S
) -> tuple[list[Limit], int]:
    """The limits an actor enforces for ``limiter``, and the margin ``J`` in ns: each window is
    lengthened by ``J`` on top of the limiter's own margin (its ``margin_s``: how much later
    than its start the server may count an attempt, e.g. network jitter), which is
    ``arrival_margin_s`` where the limiter was not given one (DEFAULT_ARRIVAL_MARGIN_S).

    >>> limits, margin_ns = cluster_limits(RateLimiter("15/s", margin_s=0.1), 0.01)
    >>> limits[0].window_ns, margin_ns
    (1110000000, 10000000)
    >>> cluster_limits(RateLimiter("15/s"), 0.01)[0][0].window_ns   # 1 s + 10 ms + 5 ms
    1015000000
    """
    if not margin_s >= 0:
        raise InvalidArgument(f"limiter_margin_s={margin_s!r}: a number of seconds >= 0, e.g. 0.01")
    margin_ns = round(margin_s * NS_PER_S)
    arrival_ns = round(arrival_margin_s * NS_PER_S)
    return [
        replace(
            limit,
            margin_ns=margin_ns + (arrival_ns if limit.margin_ns is None else limit.margin_ns),
        )
        for limit in limiter.limits
    ], margin_ns


def cluster_share(limiter: RateLimiter, margin_s: float = DEFAULT_MARGIN_S) -> tuple[float, bool]:
    """The most of ``limiter``'s rate a batch hosted on the cluster can reach, and whether its
    slots are spaced (a ``burst=1`` limit up to 125/s, SPACED_PAD_SHARE): each window is
    ``W'`` = W + J + the arrival margin long (:func:`cluster_limits`), and a spaced limit's
    slots are W'/N + P apart. What ``--dry-run`` tells; late slots given back cost more.

    >>> share, spaced = cluster_share(RateLimiter("50/s", burst=1))  # 20 / (20.3 x 9/8) ms
    >>> round(share, 4), spaced
    (0.8758, True)
    >>> share, spaced = cluster_share(RateLimiter("500/s", burst=1))  # not spaced: 1 / 1.015 s
    >>> round(share, 4), spaced
    (0.9852, False)
    """
    limits, margin_ns = cluster_limits(limiter, margin_s)
    spaced_ns, pad_ns = _spacing(limits, margin_ns)
    # The tightest limit's rate, as typed and on the cluster (in requests per ns).
    typed = min(limit.rate.max_requests / limit.rate.window_ns for limit in limiter.limits)
    hosted = min(limit.rate.max_requests / limit.window_ns for limit in limits)
    if pad_ns is not None:
        hosted = min(hosted, 1 / spaced_ns)
    return hosted / typed, pad_ns is not None


def horizon_for(window_ns: int) -> int:
    """How far ahead the actor books: one window W' (so a waiter asks at most about once per
    window), at most 1 s (so a long window — ``5000/h`` — does not make the fence hours
    longer)."""
    return min(window_ns, NS_PER_S)


def fence_for(window_ns: int) -> int:
    """How long a successor actor grants nothing: a dead actor's last slot lies at most
    ``horizon + W'`` after its death, its start up to the margin later, and that start's
    window lasts ``W``: ``horizon + 2 W'`` covers it."""
    return horizon_for(window_ns) + 2 * window_ns


def host_limiter(
    client: Any,
    limiter: RateLimiter,
    margin_s: float = DEFAULT_MARGIN_S,
    *,
    fenced: bool = False,
    timeout_s: float = ACTOR_TIMEOUT_S,
) -> ClusterLimiter:
    """Start a :class:`LimitActor` for ``limiter``'s limits on ``client``'s cluster and return
    the handle workers use; ``fenced``: it grants nothing at first (a successor, see
    :func:`fence_for`)."""
    limits, margin_ns = cluster_limits(limiter, margin_s)
    # The longest a window can get (the margin may grow): what a successor's fence waits out.
    window_ns = max(limit.window_ns for limit in limits) + (MAX_MARGIN_FACTOR - 1) * margin_ns
    fence_ns = fence_for(window_ns) if fenced else 0
    future = client.submit(
        LimitActor,
        limits,
        fence_ns,
        horizon_for(window_ns),
        margin_ns=margin_ns,
        max_margin_ns=MAX_MARGIN_FACTOR * margin_ns,
        pace=True,
        actor=True,
        pure=False,
    )
    actor = future.result()
    # One topic per hosted actor (a successor's pauses are its own).
    topic = f"paceline-pause-{uuid.uuid4().hex}"
    # Whether workers share the actor's clock; an actor slow to say is only not trusted to.
    try:
        actor_clock = actor.clock_id().result(timeout=timeout_s)
    except Exception:
        actor_clock = None
    hosted = ClusterLimiter(actor, margin_ns, window_ns, timeout_s, actor_clock, topic)
    hosted._held = future
    return hosted
