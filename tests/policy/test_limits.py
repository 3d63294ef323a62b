import asyncio

import pytest

from paceline import RateLimiter
from paceline.policy.limits import Limit, LimitPolicy
from paceline.policy.rate import Rate
from paceline.testing import FakeClock

S = 1_000_000_000


def test_all_limits_must_agree():
    policy = LimitPolicy([Limit(Rate(2, S), margin_ns=0), Limit(Rate(3, 10 * S), margin_ns=0)])
    assert [policy.try_grant(0), policy.try_grant(0)] == [0, 0]
    assert policy.try_grant(0) == S  # 2/s binds
    assert policy.try_grant(S) == 0  # the third of 10 s
    assert policy.try_grant(2 * S) == 8 * S  # 3/10s binds until the first leaves at 10 s


def test_a_limit_that_says_wait_charges_no_other_limit():
    policy = LimitPolicy([Limit(Rate(5, S), margin_ns=0), Limit(Rate(1, 10 * S), margin_ns=0)])
    assert policy.try_grant(0) == 0
    assert policy.try_grant(1) > 0
    assert policy._logs[0].held(1) == 1  # the refused grant left no trace in 5/s


def test_weight_below_one_is_refused():
    policy = LimitPolicy([Limit(Rate(5, S), margin_ns=0)])
    with pytest.raises(ValueError, match="weight 0"):
        policy.try_grant(0, 0)


def test_a_lease_is_stamped_at_its_latest_start():
    policy = LimitPolicy([Limit(Rate(100, S), margin_ns=0)])
    assert policy.try_lease(0, 10, hold_ns=1000) == 10
    assert list(policy._logs[0]._times) == [1000]
    # its permits leave the window one window after the stamp, not after the lease
    assert policy._logs[0].held(S + 999) == 10
    assert policy._logs[0].held(S + 1000) == 0


def test_a_lease_without_room_for_all_takes_nothing():
    policy = LimitPolicy([Limit(Rate(10, S), margin_ns=0)])
    for _ in range(5):
        policy.try_grant(0)
    assert policy.try_lease(0, 6, hold_ns=1000) == 0
    assert policy._logs[0].held(0) == 5
    assert policy.try_lease(0, 5, hold_ns=1000) == 5


def test_paced_limits_never_lease():
    policy = LimitPolicy([Limit(Rate(1000, S), burst=1, margin_ns=0)])
    assert policy.try_lease(0, 10, hold_ns=1000) == 0


def test_give_back_returns_unused_lease_permits():
    policy = LimitPolicy([Limit(Rate(10, S), margin_ns=0)])
    policy.try_lease(0, 10, hold_ns=1000)
    assert policy.try_grant(5) > 0
    policy.give_back(1000, 4)
    assert [policy.try_grant(5) for _ in range(5)] == [0, 0, 0, 0, S + 1000 - 5]


# --- the blocking and async wrappers on a fake clock ------------------------------------------


def test_seed_limiter_two_per_second_the_third_waits_for_the_window():
    clock = FakeClock()
    limiter = RateLimiter(2, 1.0, margin_s=0, clock=clock)
    stamps = [limiter.acquire() for _ in range(3)]
    assert stamps == [0, 0, S]
    assert clock.sleeps == [1.0]


def test_even_pacing_sleeps_exactly_one_interval_each():
    clock = FakeClock()
    limiter = RateLimiter(4, 1.0, burst=1, margin_s=0, clock=clock)
    stamps = [limiter.acquire() for _ in range(5)]
    assert stamps == [0, S // 4, S // 2, 3 * S // 4, S]
    assert clock.sleeps == [0.25, 0.25, 0.25, 0.25]


def test_several_limits_on_a_fake_clock():
    clock = FakeClock()
    limiter = RateLimiter.from_rates("2/s", "3/10s", margin_s=0, clock=clock)
    stamps = [limiter.acquire() for _ in range(4)]
    assert stamps == [0, 0, S, 10 * S]


def test_try_acquire_never_waits():
    clock = FakeClock()
    limiter = RateLimiter(1, 1.0, margin_s=0, clock=clock)
    assert limiter.try_acquire() == 0
    assert limiter.try_acquire() is None
    assert clock.sleeps == []


def test_acquire_async_waits_on_the_clock_it_was_given():
    clock = FakeClock()
    limiter = RateLimiter(2, 1.0, margin_s=0, clock=clock)

    async def main() -> list[int]:
        return [await limiter.acquire_async() for _ in range(5)]

    assert asyncio.run(main()) == [0, 0, S, S, 2 * S]
    assert clock.sleeps == [1.0, 1.0]


def test_give_back_on_the_limiter_lets_the_next_start_at_once():
    clock = FakeClock()
    limiter = RateLimiter(1, 1.0, margin_s=0, clock=clock)
    granted = limiter.acquire()
    limiter.give_back(granted)
    assert limiter.acquire() == 0
    assert clock.sleeps == []


def test_lease_size_is_zero_for_small_or_paced_limits():
    assert RateLimiter(10, 1.0)._lease_size() == 0
    assert RateLimiter(10_000, 1.0, burst=1)._lease_size() == 0
    assert RateLimiter(10_000, 1.0)._lease_size() == 64
    assert RateLimiter.from_rates("10000/s", "100/s")._lease_size() == 6


def test_by_default_each_window_is_a_thousandth_longer_so_starts_never_exceed_the_limit():
    clock = FakeClock()
    limiter = RateLimiter(2, 1.0, clock=clock)
    assert [limiter.acquire() for _ in range(3)] == [0, 0, S + S // 1000]
    paced = RateLimiter(200, 1.0, burst=1, clock=FakeClock())
    stamps = [paced.acquire() for _ in range(3)]
    assert stamps == [0, 5_005_000, 10_010_000]  # (1 s + 1 ms) / 200


def test_the_default_margin_is_capped_at_one_millisecond():
    assert Limit(Rate(5, 3600 * S)).window_ns == 3600 * S + 1_000_000
    assert Limit(Rate(5, S // 10)).window_ns == S // 10 + 100_000
    assert Limit(Rate(5, S), margin_ns=0).window_ns == S


def test_a_negative_margin_is_refused():
    with pytest.raises(ValueError, match="margin"):
        RateLimiter(2, 1.0, margin_s=-1)


def test_a_burst_keeps_the_rate():
    # Found by hand: RateLimiter("200/s", burst=200) granted 200 at once, then one per second
    # (the pacer's interval was W / (N - B + 1)); 400 acquires took 200 s.
    clock = FakeClock()
    limiter = RateLimiter("200/s", burst=200, clock=clock)
    grants = [limiter.acquire() for _ in range(400)]
    assert grants[:200] == [0] * 200
    assert grants[200:] == [1_001_000_000] * 200  # the window (W' = 1.001 s) frees the first 200
    clock = FakeClock()
    limiter = RateLimiter("10/s", burst=5, clock=clock)
    grants = [limiter.acquire() for _ in range(12)]
    # 5 at once, then every 100.1 ms until the log holds 10, then the window frees the first 5
    assert grants == [0] * 5 + [100_100_000 * k for k in range(1, 6)] + [1_001_000_000] * 2
