"""Limits in units (requests, tokens, ...), costs per unit, reserve then settle (issue 13)."""

import asyncio
import threading
import time

import pytest

from paceline import RateLimiter, RateSpecError
from paceline.policy.cost import as_cost
from paceline.policy.limits import Limit, LimitPolicy, Reservation
from paceline.policy.rate import Rate
from paceline.policy.schedule import EXACT_UP_TO, min_duration_ns
from paceline.testing import FakeClock

S = 1_000_000_000
MIN = 60 * S


def tokens_per_min(n: int, burst: int | None = None) -> Limit:
    return Limit(Rate(n, MIN, "tokens"), burst=burst, margin_ns=0)


def reserve(policy: LimitPolicy, now: int, cost: dict[str, int]) -> Reservation:
    result = policy.try_reserve(now, cost)
    assert isinstance(result, Reservation), f"expected a grant, had to wait {result} ns"
    return result


# --- rate strings and costs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("tokens:90000/min", Rate(90_000, MIN, "tokens")),
        ("tokens:20000/10s", Rate(20_000, 10 * S, "tokens")),
        (" Input_Tokens : 5 / 2 seconds ", Rate(5, 2 * S, "input_tokens")),
        ("cost:100/d", Rate(100, 86_400 * S, "cost")),
        ("500/min", Rate(500, MIN, "requests")),
        ("requests:500/min", Rate(500, MIN)),
        ("request:500/min", Rate(500, MIN)),
        ("req:500/min", Rate(500, MIN)),
    ],
)
def test_rate_strings_take_the_unit_as_a_prefix(text, rate):
    assert Rate.parse(text) == rate


def test_a_rate_prints_its_unit_unless_it_counts_requests():
    assert str(Rate.parse("tokens:90000/min")) == "tokens:90000/60s"
    assert str(Rate.parse("500/min")) == "500/60s"
    assert Rate.parse(str(Rate.parse("bytes:10/1.5s"))) == Rate.parse("bytes:10/1.5s")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("9tokens:5/s", "expected '<count>/<window>'"), ("tokens:/s", "expected")],
)
def test_a_bad_unit_prefix_names_the_value_and_the_fix(text, fragment):
    with pytest.raises(RateSpecError) as info:
        Rate.parse(text)
    assert repr(text) in str(info.value)
    assert fragment in str(info.value)
    assert "tokens:90000/min" in str(info.value)  # the example shows the prefix


def test_a_rate_built_with_a_bad_unit_name_says_what_a_name_may_hold():
    with pytest.raises(RateSpecError, match="unit 'Tokens!': must be a lower-case name"):
        Rate(5, S, "Tokens!")


def test_a_plain_weight_is_a_cost_in_requests_and_a_mapping_is_one_request_by_default():
    assert as_cost(3) == {"requests": 3}
    assert as_cost({"tokens": 1200}) == {"tokens": 1200, "requests": 1}
    assert as_cost({"Tokens": 5, "req": 0}) == {"tokens": 5, "requests": 0}
    assert as_cost({"tokens": 5}, fill_requests=False) == {"tokens": 5}


@pytest.mark.parametrize(
    ("cost", "error", "fragment"),
    [
        (0, ValueError, "weight 0: must be at least 1"),
        ({"tokens": -1}, ValueError, "tokens -1 must be a whole number of 0 or more"),
        ({"tokens": 1.5}, ValueError, "tokens 1.5 must be a whole number"),
        ({"tokens": True}, ValueError, "tokens True must be a whole number"),
        ({3: 1}, TypeError, "unit 3 must be a name"),
        ("5", TypeError, "must be a whole number of requests or a mapping"),
    ],
)
def test_a_bad_cost_names_the_value_and_the_fix(cost, error, fragment):
    with pytest.raises(error) as info:
        as_cost(cost)
    assert fragment in str(info.value)


# --- the policy on integer nanoseconds --------------------------------------------------------


def test_a_second_reservation_waits_exactly_until_the_first_leaves_the_window():
    policy = LimitPolicy([tokens_per_min(90_000)])
    reserve(policy, 0, {"tokens": 60_000})
    assert policy.try_reserve(0, {"tokens": 40_000}) == MIN
    assert policy.try_reserve(MIN - 1, {"tokens": 40_000}) == 1
    assert isinstance(policy.try_reserve(MIN, {"tokens": 40_000}), Reservation)


def test_settling_below_the_estimate_lets_the_next_grant_go_at_once():
    policy = LimitPolicy([tokens_per_min(90_000)])
    first = reserve(policy, 0, {"tokens": 60_000})
    assert policy.try_grant(5 * S, {"tokens": 40_000}) == MIN - 5 * S
    policy.settle(5 * S, first, {"tokens": 20_000})
    assert first.cost == {"tokens": 20_000, "requests": 1}
    assert first.settled
    assert policy.try_grant(5 * S, {"tokens": 40_000}) == 0
    assert policy._logs[0].held(5 * S) == 60_000


def test_an_overrun_that_fits_is_charged_now_and_leaves_one_window_later():
    policy = LimitPolicy([tokens_per_min(90_000)])
    first = reserve(policy, 0, {"tokens": 10_000})
    policy.settle(10 * S, first, {"tokens": 30_000})  # 20 000 more, room for them at 10 s
    assert policy.try_grant(10 * S, {"tokens": 60_000}) == 0  # 90 000 held: full
    assert policy.try_grant(10 * S, {"tokens": 10_000}) == MIN - 10 * S  # the 10 000 at 0 s
    assert policy.try_grant(MIN, {"tokens": 10_000}) == 0
    # the overrun holds its 20 000 from 10 s to 70 s, as a grant at 10 s would
    assert policy.try_grant(MIN, {"tokens": 1}) == 10 * S


def test_an_overrun_without_room_is_charged_from_the_first_moment_it_fits():
    policy = LimitPolicy([tokens_per_min(90_000)])
    first = reserve(policy, 0, {"tokens": 60_000})
    policy.settle(10 * S, first, {"tokens": 100_000})
    # 40 000 more do not fit beside the 60 000 until those leave at 60 s: charged at 60 s,
    # so the next grant waits 50 s and then finds the overrun's 40 000 in the window.
    assert policy.try_grant(10 * S, {"tokens": 1_000}) == 50 * S
    assert policy.try_grant(MIN, {"tokens": 50_000}) == 0
    assert policy.try_grant(MIN, {"tokens": 1}) == MIN  # 90 000 held until 120 s


def test_an_overrun_larger_than_the_limit_is_charged_one_full_window_after_another():
    policy = LimitPolicy([tokens_per_min(90_000)])
    first = reserve(policy, 0, {"tokens": 90_000})
    policy.settle(S, first, {"tokens": 200_000})  # 110 000 more: 90 000 at 60 s, 20 000 at 120 s
    assert policy.try_grant(S, {"tokens": 1}) == 2 * MIN - S
    assert policy.try_grant(2 * MIN, {"tokens": 70_000}) == 0
    assert policy.try_grant(2 * MIN, {"tokens": 1}) == MIN


def test_a_settle_after_the_window_passed_gives_nothing_back_and_charges_an_overrun_now():
    policy = LimitPolicy([tokens_per_min(90_000)])
    low = reserve(policy, 0, {"tokens": 60_000})
    high = reserve(policy, 0, {"tokens": 30_000})
    policy.settle(70 * S, low, {"tokens": 1})  # long gone from the window: nothing to return
    assert policy._logs[0].held(70 * S) == 0
    policy.settle(70 * S, high, {"tokens": 70_000})  # 40 000 more, charged at 70 s
    assert policy.try_grant(70 * S, {"tokens": 60_000}) == MIN
    assert policy.try_grant(70 * S, {"tokens": 50_000}) == 0


def test_a_grant_is_atomic_across_every_limit():
    policy = LimitPolicy(
        [Limit(Rate(2, S), margin_ns=0), Limit(Rate(100, S, "tokens"), margin_ns=0)]
    )
    assert policy.try_grant(0, {"tokens": 80}) == 0
    assert policy.try_grant(0, {"tokens": 30}) == S  # tokens say wait ...
    assert policy._logs[0].held(0) == 1  # ... so requests were not charged either
    assert policy.try_grant(0, {"tokens": 20}) == 0
    assert policy.try_grant(0, {"tokens": 0}) == S  # now requests say wait
    assert policy._logs[1].held(0) == 100


def test_units_left_out_of_a_settlement_stay_as_reserved():
    policy = LimitPolicy(
        [Limit(Rate(2, S), margin_ns=0), Limit(Rate(100, S, "tokens"), margin_ns=0)]
    )
    grant = reserve(policy, 0, {"tokens": 50})
    policy.settle(1, grant, {"tokens": 10})
    assert grant.cost == {"tokens": 10, "requests": 1}
    assert [log.held(1) for log in policy._logs] == [1, 10]
    cancelled = reserve(policy, 1, {"tokens": 50})
    policy.settle(2, cancelled, {"requests": 0, "tokens": 0})  # never started: all back
    assert [log.held(2) for log in policy._logs] == [1, 10]


def test_a_unit_no_limit_counts_is_ignored_and_a_weight_charges_requests_only():
    policy = LimitPolicy(
        [Limit(Rate(2, S), margin_ns=0), Limit(Rate(100, S, "tokens"), margin_ns=0)]
    )
    assert policy.try_grant(0, {"bytes": 10**12, "tokens": 1}) == 0
    assert policy.try_grant(0, 1) == 0
    assert [log.held(0) for log in policy._logs] == [2, 1]


def test_a_cost_above_a_limit_names_the_value_and_the_fix():
    policy = LimitPolicy([Limit(Rate(2, S), margin_ns=0), tokens_per_min(90_000)])
    with pytest.raises(ValueError, match="90001 tokens") as info:
        policy.try_reserve(0, {"tokens": 90_001})
    message = str(info.value)
    assert "a cost of 90001 tokens exceeds the limit tokens:90000/60s" in message
    assert "lower the cost" in message
    assert "raise the limit" in message
    with pytest.raises(ValueError, match="a cost of 3 requests exceeds the limit 2/1s"):
        policy.try_grant(0, 3)


def test_a_reservation_settles_once():
    policy = LimitPolicy([tokens_per_min(100)])
    grant = reserve(policy, 0, {"tokens": 5})
    policy.settle(0, grant, {"tokens": 4})
    with pytest.raises(RuntimeError, match=r"already settled .* settle each grant once"):
        policy.settle(0, grant, {"tokens": 3})


def test_a_paced_limit_in_tokens_is_pushed_back_by_an_overrun_and_never_rewound():
    policy = LimitPolicy([Limit(Rate(100, S, "tokens"), burst=1, margin_ns=0)])  # 10 ms a token
    grant = reserve(policy, 0, {"tokens": 10})
    assert policy.wait_ns(0, {"tokens": 1}) == 100_000_000
    policy.settle(0, grant, {"tokens": 20})
    assert policy.wait_ns(0, {"tokens": 1}) == 200_000_000
    other = reserve(policy, 200_000_000, {"tokens": 10})
    policy.settle(200_000_000, other, {"tokens": 0})
    assert policy.wait_ns(200_000_000, {"tokens": 1}) == 100_000_000  # the pacer keeps its slot


def test_leases_count_requests_only():
    policy = LimitPolicy(
        [Limit(Rate(100, S), margin_ns=0), Limit(Rate(10, S, "tokens"), margin_ns=0)]
    )
    assert policy.try_lease(0, 20, hold_ns=1000) == 20
    assert [log.held(1000) for log in policy._logs] == [20, 0]


def test_a_requests_only_policy_is_unchanged_by_units():
    policy = LimitPolicy([Limit(Rate(2, S), margin_ns=0)])
    assert [policy.try_grant(0), policy.try_grant(0, {"requests": 1}), policy.try_grant(0)] == [
        0,
        0,
        S,
    ]
    policy.give_back(0, {"requests": 1})
    assert policy.try_grant(0) == 0


# --- the limiter on a fake clock --------------------------------------------------------------


def test_the_limiter_reserves_and_settles_on_its_clock():
    clock = FakeClock()
    limiter = RateLimiter.from_rates("500/min", "tokens:90000/min", margin_s=0, clock=clock)
    first = limiter.reserve({"tokens": 60_000})
    assert first.granted_ns == 0
    clock.advance(5)
    assert limiter.try_reserve({"tokens": 40_000}) is None
    first.settle({"tokens": 20_000})
    second = limiter.reserve({"tokens": 40_000})
    assert second.granted_ns == 5 * S
    assert clock.sleeps == []
    assert repr(first) == "<Grant settled {'tokens': 20000, 'requests': 1} at 0 ns>"


def test_reserve_sleeps_exactly_until_the_window_has_room():
    clock = FakeClock()
    limiter = RateLimiter.from_rates("tokens:90000/min", margin_s=0, clock=clock)
    limiter.reserve({"tokens": 60_000})
    second = limiter.reserve({"tokens": 40_000})
    assert second.granted_ns == MIN
    assert clock.sleeps == [60.0]


def test_an_overrun_delays_the_next_reservation_by_what_the_arithmetic_says():
    clock = FakeClock()
    limiter = RateLimiter.from_rates("tokens:90000/min", margin_s=0, clock=clock)
    first = limiter.reserve({"tokens": 60_000})
    clock.advance(10)
    first.settle({"tokens": 100_000})  # 40 000 more, charged from 60 s (the first moment it fits)
    assert limiter.reserve({"tokens": 50_000}).granted_ns == MIN
    assert limiter.reserve({"tokens": 1}).granted_ns == 2 * MIN
    assert clock.sleeps == [50.0, 60.0]


def test_reserve_async_waits_on_the_fake_clock_and_give_back_returns_everything():
    clock = FakeClock()
    limiter = RateLimiter.from_rates("2/s", "tokens:100/s", margin_s=0, clock=clock)

    async def main() -> list[int]:
        a = await limiter.reserve_async({"tokens": 70})
        b = await limiter.reserve_async({"tokens": 70})  # waits a window for the tokens
        b.give_back()  # never started
        c = await limiter.reserve_async({"tokens": 30})
        return [a.granted_ns, b.granted_ns, c.granted_ns]

    assert asyncio.run(main()) == [0, S, S]
    assert clock.sleeps == [1.0]


def test_a_plain_weight_still_works_beside_tokens_and_charges_no_tokens():
    clock = FakeClock()
    limiter = RateLimiter.from_rates("2/s", "tokens:10/s", margin_s=0, clock=clock)
    assert [limiter.acquire(), limiter.acquire(), limiter.acquire()] == [0, 0, S]
    assert limiter.try_reserve({"tokens": 10}) is not None
    assert limiter.try_reserve(1) is None  # requests: 2 per second


# --- a settlement wakes reservers waiting on the real clock ------------------------------------
# The waits below are a minute long; a woken reserver goes within milliseconds. The bounds
# (10 s) only tell "woken" from "slept the minute", robustly on a busy machine.


def test_a_settlement_wakes_a_thread_waiting_to_reserve():
    limiter = RateLimiter.from_rates("tokens:100/min")
    first = limiter.reserve({"tokens": 60})
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(limiter.reserve({"tokens": 60}).granted_ns))
    waiter.start()
    time.sleep(0.05)  # let it start waiting (it works either way: the wait is re-checked)
    first.settle({"tokens": 10})
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert got
    assert got[0] - first.granted_ns < 10 * S


def test_a_settlement_from_another_thread_wakes_a_task_waiting_to_reserve():
    limiter = RateLimiter.from_rates("tokens:100/min")
    first = limiter.reserve({"tokens": 60})

    async def main() -> int:
        timer = threading.Timer(0.05, lambda: first.settle({"tokens": 10}))
        timer.start()
        try:
            grant = await asyncio.wait_for(limiter.reserve_async({"tokens": 60}), timeout=10)
        finally:
            timer.join()
        return grant.granted_ns

    assert asyncio.run(main()) - first.granted_ns < 10 * S


def test_a_dry_run_schedule_of_requests_is_not_slowed_by_token_limits():
    limits = [Limit(Rate(2, S), margin_ns=0), tokens_per_min(1)]
    assert min_duration_ns(limits, 5) == (2 * S, True)
    assert min_duration_ns([tokens_per_min(1)], EXACT_UP_TO + 10) == (0, False)
