"""Leased permits (the fast path for limits far from binding) stay strict on real starts."""

import asyncio
import bisect
import threading
import time

import pytest

from paceline import BatchExecutor, RateLimiter, batch_execute
from paceline.testing import FakeClock


def _entries(limiter: RateLimiter) -> list[tuple[int, int]]:
    """The (stamp, count) entries of the limiter's first log."""
    log = limiter._policy._logs[0]
    return list(zip(log._times, log._counts, strict=True))


def most_in_any_window(starts: list[int], window_ns: int) -> int:
    starts = sorted(starts)
    return max(bisect.bisect_left(starts, t + window_ns) - i for i, t in enumerate(starts))


# serial: starts timed in real time hold the limit only while the process is not descheduled
# between a grant and its start for longer than the margin; alone (./dev test).
@pytest.mark.serial
@pytest.mark.timeout(60)
def test_async_workers_with_leases_never_exceed_the_limit_on_starts():
    limiter = RateLimiter(1000, 0.2)  # lease size 62: leases are in play
    assert limiter._lease_size() > 0
    starts: list[int] = []

    async def op(i):
        starts.append(time.monotonic_ns())
        if i % 7 == 0:
            await asyncio.sleep(0)
        return i

    results = asyncio.run(batch_execute(range(3000), op, 50, rate_limiter=limiter))
    assert [r.value for r in results] == list(range(3000))
    assert most_in_any_window(starts, 200_000_000) <= 1000


@pytest.mark.serial  # the GIL switch margin (5 ms) assumes a machine that is not overloaded
@pytest.mark.timeout(60)
def test_the_thread_dispatcher_with_a_switch_interval_margin_never_exceeds_the_limit():
    # Calls begin up to a GIL switch interval after their grant: the documented margin.
    limiter = RateLimiter(1000, 0.2, margin_s=0.005)
    assert limiter._lease_size() > 0
    result = BatchExecutor(stop_on_error=False, rate_limiter=limiter, max_workers=4).execute_batch(
        [lambda i=i: i for i in range(2500)]
    )
    assert result.results == list(range(2500))
    starts = [item.started_ns for item in result]
    assert most_in_any_window(starts, 200_000_000) <= 1000


def test_unused_leased_permits_are_given_back():
    limiter = RateLimiter(10_000, 1.0)

    async def op(i):
        return i

    asyncio.run(batch_execute(range(10), op, 4, rate_limiter=limiter))
    # 10 permits used; every leased permit not used went back to the limiter
    assert limiter._policy._logs[0].held(time.monotonic_ns()) == 10


# -- a worker that starts late checks its grant again (in-process limiter) -----------------


def test_a_grant_started_within_its_margin_stands():
    clock = FakeClock(10_000_000_000)
    limiter = RateLimiter("10/s", clock=clock)  # margin: W/1000 = 1 ms
    granted = limiter.acquire()
    clock.advance(ns=1_000_000)  # exactly the margin late: still counted
    assert limiter._recheck(granted) == granted
    assert _entries(limiter) == [(granted, 1)]


def test_a_grant_started_past_its_margin_is_given_back_and_taken_again_now():
    clock = FakeClock(10_000_000_000)
    limiter = RateLimiter("10/s", clock=clock)
    granted = limiter.acquire()
    clock.advance(ns=1_000_001)
    assert limiter._recheck(granted) == granted + 1_000_001
    assert _entries(limiter) == [(granted + 1_000_001, 1)]  # moved to the start, not doubled


def test_a_grant_started_a_window_late_waits_for_room():
    # Moving an entry to the start needs no wait while the entry is still in the window (its
    # place frees the room); a worker later than a whole window finds the window full again.
    clock = FakeClock(10_000_000_000)
    limiter = RateLimiter("1/s", clock=clock, margin_s=0.01)
    late = limiter.acquire()  # handed to a worker that wakes 1.5 s later
    clock.advance(1.01)
    prompt = limiter.acquire()  # the first's entry aged out: room for this one
    assert prompt == late + 1_010_000_000
    clock.advance(0.49)
    assert limiter._recheck(late) == prompt + 1_010_000_000
    assert _entries(limiter) == [(prompt + 1_010_000_000, 1)]  # the prompt one aged out then
    assert clock.sleeps == [0.52]


def test_a_leased_permit_started_past_the_lease_and_margin_is_taken_again():
    clock = FakeClock(10_000_000_000)
    limiter = RateLimiter(1000, 1.0, clock=clock)  # margin 1 ms; leases of 62
    granted, stamp = limiter._lease(8, 0.001)
    assert (granted, stamp) == (8, 10_001_000_000)
    clock.advance(0.002)  # in time: the entry (the lease's end) plus the margin
    assert limiter._recheck(stamp) == stamp
    clock.advance(ns=1)
    assert limiter._recheck(stamp) == 10_002_000_001
    assert _entries(limiter) == [(10_001_000_000, 7), (10_002_000_001, 1)]


def test_no_margin_promises_grants_only_and_checks_nothing():
    clock = FakeClock(10_000_000_000)
    limiter = RateLimiter("10/s", clock=clock, margin_s=0)
    granted = limiter.acquire()
    clock.advance(5.0)
    assert limiter._recheck(granted) == granted


class _LateLocalHandOver(RateLimiter):
    """An in-process limiter whose grants reach their worker late: the dispatcher is held
    50 ms after each grant (as a loaded machine holds a woken worker thread)."""

    __slots__ = ()

    def acquire(self, weight: int = 1) -> int:
        granted = super().acquire(weight)
        if threading.current_thread().name != "late-worker-check":
            time.sleep(0.05)
        return granted

    def _recheck(self, granted_ns: int, weight: int = 1) -> int:
        name = threading.current_thread().name
        threading.current_thread().name = "late-worker-check"
        try:
            in_force = super()._recheck(granted_ns, weight)
        finally:
            threading.current_thread().name = name
        _IN_FORCE.granted_ns = in_force
        _IN_FORCE.retaken = in_force != granted_ns
        return in_force


_IN_FORCE = threading.local()


class _LateLease(_LateLocalHandOver):
    """Leases reach their worker late: the dispatcher is held 50 ms after each lease."""

    __slots__ = ()

    def _lease(self, count: int, hold_seconds: float) -> tuple[int, int]:
        leased = super()._lease(count, hold_seconds)
        time.sleep(0.05)
        return leased


@pytest.mark.parametrize(
    "limiter",
    [
        pytest.param(_LateLocalHandOver("50/s", margin_s=0.005), id="grants"),  # too few to lease
        pytest.param(_LateLease(1000, 1.0, margin_s=0.005), id="leased-permits"),  # leases of 62
    ],
)
def test_a_worker_woken_late_takes_a_new_grant_before_it_starts(limiter):
    # The thread runner's dispatcher takes each grant (or leased permit) and a worker starts
    # it: a worker that starts past its entry's margin (here every one, 50 ms late) gives it
    # back and takes a new one right before the call, so every call starts within the margin
    # of its entry in the log, and the log holds one entry per call (a lease's unused permits
    # went back too).
    calls: list[tuple[int, bool]] = []  # (ns after the grant in force, taken again)

    def call() -> None:
        calls.append((time.monotonic_ns() - _IN_FORCE.granted_ns, _IN_FORCE.retaken))

    result = BatchExecutor(rate_limiter=limiter, max_workers=2).execute_batch([call] * 6)
    assert result.all_successful
    assert [retaken for _, retaken in calls] == [True] * 6, calls
    # 5 ms: the margin; a worker preempted between its check and the call could exceed it on
    # a loaded machine (the check is the last thing before the call): not a 50 ms hand-over.
    assert all(0 <= after_ns < 50_000_000 for after_ns, _ in calls), calls
    assert limiter._policy._logs[0].held(time.monotonic_ns()) == 6
