"""ServerLimits on a fake clock: a policy from the headers, requests held until answered."""

import asyncio

from paceline.http import ServerLimits
from paceline.signals import ServerSignals
from paceline.testing import FakeClock

MS = 1_000_000
POLICY_2_PER_S = ServerSignals(quota=2, window_s=1.0)


def test_no_policy_no_wait_and_every_request_is_counted_in_flight():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        for _ in range(50):
            await limits.acquire_async()
        assert limits.in_flight == 50
        limits.answered()
        assert limits.in_flight == 49
        assert clock.sleeps == []

    asyncio.run(main())


def test_a_third_request_waits_for_an_answer_then_one_window_after_it():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        limits.observe(POLICY_2_PER_S)
        assert await limits.acquire_async() == 0
        assert await limits.acquire_async() == 0
        third = asyncio.create_task(limits.acquire_async())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not third.done()  # two in flight: no amount of waiting alone makes room
        clock.advance(0.1)
        limits.answered()  # answered at 0.1 s: its place is free at 1.101 s (W + 1 ms margin)
        assert await third == 1_101 * MS
        assert clock.sleeps == [1.001]
        assert limits.in_flight == 2

    asyncio.run(main())


def test_requests_sent_before_the_policy_was_known_count_against_it():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        for _ in range(3):
            await limits.acquire_async()
        clock.advance(0.5)
        limits.answered()  # two answered at 0.5 s, one still in flight
        limits.answered()
        limits.observe(ServerSignals(quota=3, window_s=1.0))
        assert await limits.acquire_async() == 1_501 * MS

    asyncio.run(main())


def test_zero_remaining_without_a_policy_holds_every_request_until_the_reset():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        limits.observe(ServerSignals(remaining=0, reset_s=2.0))
        assert await limits.acquire_async() == 2_000 * MS
        # Once the policy is known, "0 remaining" is the expected state of a full window.
        limits.observe(ServerSignals(quota=5, window_s=1.0, remaining=0, reset_s=1.0))
        assert await limits.acquire_async() == 2_000 * MS

    asyncio.run(main())


def test_remaining_until_reset_is_a_budget_less_the_requests_in_flight():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        await limits.acquire_async()
        await limits.acquire_async()
        limits.answered()  # one answered, one still in flight (perhaps not counted yet)
        limits.observe(ServerSignals(remaining=3, reset_s=2.0))
        assert limits.budget == 2
        assert await limits.acquire_async() == 0
        assert await limits.acquire_async() == 0
        assert await limits.acquire_async() == 2_000 * MS  # the budget is spent: the reset
        assert await limits.acquire_async() == 2_000 * MS  # a new window, no budget known
        assert clock.sleeps == [2.0]
        limits.observe(ServerSignals(remaining=5, reset_s=None))  # no reset: nothing to hold to
        assert limits.budget_until_ns == 0

    asyncio.run(main())


def test_waiters_are_served_in_arrival_order():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        limits.observe(ServerSignals(quota=1, window_s=1.0))
        await limits.acquire_async()
        order: list[int] = []

        async def request(n: int) -> None:
            await limits.acquire_async()
            order.append(n)
            limits.answered()

        tasks = [asyncio.create_task(request(n)) for n in range(4)]
        await asyncio.sleep(0)
        limits.answered()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3]
        assert clock.now_ns == 4 * 1_001 * MS  # each one W + margin after the previous answer

    asyncio.run(main())


def test_a_far_reset_with_zero_remaining_holds_nobody():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)  # the retry policy's max_retry_after_s: 300 s
        limits.observe(ServerSignals(remaining=0, reset_s=900_000_000.0))  # 28 years
        assert await limits.acquire_async() == 0
        assert clock.sleeps == []
        assert limits.hold_until_ns == 0
        assert limits.hold_reason() == ""
        assert "900000000 s" in limits.ignored
        assert "max hold 300 s" in limits.ignored

    asyncio.run(main())


def test_a_spent_budget_whose_reset_is_beyond_the_bound_is_not_held():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock, max_hold_s=60.0)
        limits.observe(ServerSignals(remaining=2, reset_s=3600.0))  # an hourly window
        assert await limits.acquire_async() == 0
        assert await limits.acquire_async() == 0
        assert await limits.acquire_async() == 0  # spent, and the reset is an hour away
        assert clock.sleeps == []
        assert limits.hold_until_ns == 0

    asyncio.run(main())


def test_a_hold_within_the_bound_is_applied_and_shown_with_its_reason():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock, max_hold_s=60.0)
        limits.observe(ServerSignals(remaining=0, reset_s=42.0, source="x-ratelimit"))
        assert limits.hold_until_ns == 42_000 * MS
        assert limits.hold_reason() == "server said remaining=0, reset in 42 s (x-ratelimit)"
        assert await limits.acquire_async() == 42_000 * MS
        assert clock.sleeps == [42.0]
        assert limits.hold_until_ns == 0
        assert limits.hold_reason() == ""

    asyncio.run(main())


def test_a_policy_whose_window_is_beyond_the_bound_is_not_learned():
    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        limits.observe(ServerSignals(quota=1, window_s=900_000_000.0))
        assert limits.policy is None
        assert "window 900000000 s" in limits.ignored
        for _ in range(3):
            await limits.acquire_async()
            limits.answered()
        assert clock.sleeps == []
        limits.observe(ServerSignals(quota=1, window_s=1.0))  # a sane policy still applies
        assert limits.policy == (1, 1.0)

    asyncio.run(main())


def test_the_bound_comes_from_the_retry_policy_of_the_http_face():
    from paceline.http._face import DEFAULT_RETRY

    assert ServerLimits().max_hold_s == DEFAULT_RETRY.max_retry_after_s == 300.0
