import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# Re-stamping a started grant (the Dask runner's limiter, docs/design.md, "Re-stamped from the
# start"): windows W' = W + J + m, an entry moved J - L earlier for a start L late.

J = 100  # the margin for a start's lateness
M = 20  # the margin for its arrival


def restamping(n: int) -> LimitPolicy:
    return LimitPolicy([Limit(Rate(n, 1_000), margin_ns=J + M)])  # W' = 1,120


def test_a_restamped_grant_leaves_the_window_from_its_reported_start():
    policy = restamping(1)
    assert policy.try_grant(0) == 0
    assert policy.try_grant(0) == 1_120  # counted until W' = W + J + m after its slot
    assert policy.restamp(0, J - 30) is True  # it started 30 late, not up to J
    assert policy.try_grant(0) == 1_050  # W + m after its latest start
    assert policy.try_grant(1_049) == 1
    assert policy.try_grant(1_050) == 0


def test_a_restamp_never_moves_an_entry_before_the_one_in_front():
    policy = restamping(3)
    assert [policy.try_grant(t) for t in (0, 50, 60)] == [0, 0, 0]
    assert policy.restamp(60, J) is True  # asked 100 earlier: stops at the entry at 50
    assert list(policy._logs[0]._times) == [0, 50, 50]
    assert policy.try_grant(60) == 1_120 - 60  # the first still holds the window until W'
    assert policy.try_grant(1_120) == 0
    assert policy.try_grant(1_120) == 1_170 - 1_120  # the two at 50 leave at 1,170


def test_a_grant_is_restamped_once_and_only_by_its_own_shape():
    policy = restamping(4)
    assert policy.try_grant(0, 2) == 0  # one entry of 2 permits
    assert policy.restamp(0, 50, 1) is False  # a grant of 1 at 0 has no entry of its own
    assert policy.restamp(0, 50, 2) is True
    assert policy.restamp(-50, 50, 2) is False  # moved once: no report moves it again
    assert policy.restamp(0, 50, 2) is False
    assert list(policy._logs[0]._times) == [-50]
    assert policy.restamp(0, 0, 1) is False  # nothing earlier: nothing moves
    assert policy.restamp(7, 50, 1) is False  # no grant at 7


def test_a_restamped_grant_is_not_what_a_give_back_at_its_slot_removes():
    policy = restamping(2)
    assert [policy.try_grant(0), policy.try_grant(0)] == [0, 0]
    assert policy.restamp(0, 40) is True  # the first started, 60 late
    policy.give_back(0)  # the other did not start: its own entry leaves
    assert list(policy._logs[0]._times) == [-40]
    assert policy.restamp(0, 40) is False  # given back: nothing of it is left to move


def test_leased_and_other_units_keep_their_count():
    policy = LimitPolicy([Limit(Rate(10, 1_000), margin_ns=J)])
    assert policy.try_lease(0, 3, hold_ns=50) == 3  # stamped 50, granted from 0
    assert policy.restamp(50, 30, 3) is False
    tokens = LimitPolicy([Limit(Rate(100, 1_000, "tokens"), margin_ns=J)])
    assert tokens.try_grant(0, {"tokens": 10}) == 0
    assert tokens.restamp(0, 30, 1) is False


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 4),
    steps=st.lists(
        st.tuples(
            st.integers(0, 600),  # how far the clock moves before this grant
            st.integers(1, 2),  # its weight (at most n)
            st.integers(0, J),  # its start's lateness after its slot
            st.sampled_from(["report", "silent", "give back"]),
            st.integers(0, 6),  # how many grants later the report or give-back arrives
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_restamped_starts_never_exceed_n_in_any_window_w_plus_m(
    n: int, steps: list[tuple[int, int, int, str, int]]
) -> None:
    # Grants at slots that never go backwards (the actor's), each started anywhere in
    # [slot, slot + J], its report (J - its lateness) arriving some grants later or never, or
    # given back unstarted: no window of W + m holds more than N permits started.
    policy = restamping(n)
    now = last = 0
    starts: list[int] = []
    pending: list[tuple[int, int, int, int, str]] = []  # (due at grant #, slot, weight, L, fate)
    for count, (advance, weight, lateness, fate, delay) in enumerate(steps):
        for item in [p for p in pending if p[0] <= count]:
            pending.remove(item)
            _due, slot_, weight_, lateness_, fate_ = item
            if fate_ == "give back":
                policy.give_back(slot_, weight_)
            else:
                policy.restamp(slot_, J - lateness_, weight_)
        weight = min(weight, n)
        now += advance
        slot = max(now, last)
        while wait := policy.try_grant(slot, weight):
            slot += wait
        last = slot
        if fate != "give back":
            starts += [slot + lateness] * weight
        if fate != "silent":
            pending.append((count + 1 + delay, slot, weight, lateness, fate))
    starts.sort()
    assert all(starts[i + n] - starts[i] >= 1_000 + M for i in range(len(starts) - n))
