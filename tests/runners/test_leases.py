"""Leased permits (the fast path for limits far from binding) stay strict on real starts."""

import asyncio
import bisect
import time

import pytest

from paceline import BatchExecutor, RateLimiter, batch_execute


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
