"""ServerLimits on a fake clock: a policy from the headers, requests held until answered."""

import asyncio
import contextlib

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


# -- token headers teach a limit in tokens (issue 13, item 4) ---------------------------------

OPENAI_TOKENS = {
    "x-ratelimit-limit-tokens": "6000",
    "x-ratelimit-remaining-tokens": "500",
    "x-ratelimit-reset-tokens": "5s",
    "x-ratelimit-limit-requests": "100",
    "x-ratelimit-remaining-requests": "99",
    "x-ratelimit-reset-requests": "600ms",
}


def test_token_headers_hold_a_costed_request_until_the_refill_covers_it():
    from paceline.signals import parse_signals

    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        limits.observe(parse_signals(OPENAI_TOKENS))
        assert limits.unit_limits == {"tokens": 6000}
        first = await limits.reserve_async({"tokens": 300})
        assert clock.sleeps == []
        # 200 left at 100 a second (6,000 a minute): 400 more need 2 s.
        await limits.reserve_async({"tokens": 400})
        assert clock.now_ns == 2 * 1_000_000_000
        assert limits.in_flight == 2
        limits.answered()  # the second one's answer: its 400 are no longer in flight
        assert limits._units_in_flight == {"tokens": 300}
        first.give_back()  # never sent after all: its 300 come back to the bucket
        assert limits._units_in_flight == {"tokens": 0}
        await limits.reserve_async({"tokens": 300})
        assert clock.now_ns == 2 * 1_000_000_000  # at once

    asyncio.run(main())


def test_a_tokens_limit_never_holds_plain_requests_and_requests_never_learn_tokens():
    from paceline.signals import parse_signals

    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        drained = dict(OPENAI_TOKENS, **{"x-ratelimit-remaining-tokens": "0"})
        limits.observe(parse_signals(drained))
        for _ in range(50):  # no cost: requests only, as before
            await limits.acquire_async()
        await limits.reserve_async({"requests": 1})  # a cost with no tokens: not held either
        assert clock.sleeps == []
        assert limits.policy is None  # 6,000 tokens never became a request quota

    asyncio.run(main())


def test_a_cancelled_wait_for_tokens_gives_the_tokens_back():
    from paceline.signals import parse_signals

    async def main() -> None:
        limits = ServerLimits()  # the real clock: the wait is 10 s, cancelled at once
        limits.observe(parse_signals(OPENAI_TOKENS))
        await limits.reserve_async({"tokens": 500})
        waiting = asyncio.create_task(limits.reserve_async({"tokens": 1000}))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert limits.in_flight == 1
        assert limits._units_in_flight == {"tokens": 500}

    asyncio.run(main())


def test_anthropic_input_and_output_token_limits_apply_to_their_own_units():
    from paceline.signals import parse_signals

    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock)
        limits.observe(
            parse_signals(
                {
                    "anthropic-ratelimit-input-tokens-limit": "6000",
                    "anthropic-ratelimit-input-tokens-remaining": "100",
                    "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:00Z",
                },
                now_epoch_s=1767225590.0,
            )
        )
        assert limits.unit_limits == {"input_tokens": 6000}
        await limits.reserve_async({"tokens": 5000})  # no tokens limit learned: not held
        await limits.reserve_async({"input_tokens": 80})
        await limits.reserve_async({"input_tokens": 70})  # 50 short at 100 a second
        assert clock.sleeps == [0.5]

    asyncio.run(main())


def test_a_token_limit_that_would_hold_beyond_max_hold_is_not_obeyed():
    from paceline.signals import parse_signals

    async def main() -> None:
        clock = FakeClock()
        limits = ServerLimits(clock=clock, max_hold_s=10.0)
        broken = {
            "x-ratelimit-limit-tokens": "1",  # one token a minute: 300 take five hours
            "x-ratelimit-remaining-tokens": "5",
            "x-ratelimit-reset-tokens": "1m",
        }
        limits.observe(parse_signals(broken))
        await limits.reserve_async({"tokens": 300})  # above the bucket: it waits for a full one
        assert limits.ignored == ""
        await limits.reserve_async({"tokens": 300})  # 300 owed: five hours of refill
        assert clock.sleeps == []
        assert "beyond max hold 10 s" in limits.ignored

    asyncio.run(main())
