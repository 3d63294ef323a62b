"""The test API's token bucket on a fake clock: exact admissions, waits and remaining tokens."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paceline.testing import FakeClock
from paceline.testing._api.bucket import TokenBucket

S = 1_000_000_000
MS = 1_000_000


def test_a_full_bucket_admits_burst_at_once_then_refuses():
    bucket = TokenBucket(quota=50, window_ns=S, burst=5, now_ns=0)
    assert [bucket.admit(0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.remaining(0) == 0


def test_an_empty_bucket_admits_one_per_refill_interval():
    clock = FakeClock()
    bucket = TokenBucket(quota=50, window_ns=S, burst=2, now_ns=clock.monotonic_ns())
    assert [bucket.admit(0), bucket.admit(0)] == [True, True]
    assert bucket.wait_ns(0) == 20 * MS
    clock.advance(ns=20 * MS - 1)
    assert not bucket.admit(clock.monotonic_ns())
    assert bucket.wait_ns(clock.monotonic_ns()) == 1
    clock.advance(ns=1)
    assert bucket.admit(clock.monotonic_ns())
    assert not bucket.admit(clock.monotonic_ns())
    assert bucket.wait_ns(clock.monotonic_ns()) == 20 * MS


def test_a_refused_request_takes_no_token():
    bucket = TokenBucket(quota=10, window_ns=S, burst=1, now_ns=0)
    assert bucket.admit(0)
    for t in range(0, 100 * MS, 10 * MS):
        assert not bucket.admit(t)
    assert bucket.admit(100 * MS)


def test_remaining_and_full_in_count_whole_tokens_refilled_so_far():
    bucket = TokenBucket(quota=10, window_ns=S, burst=4, now_ns=0)
    for _ in range(4):
        bucket.admit(0)
    assert (bucket.remaining(0), bucket.full_in_ns(0)) == (0, 400 * MS)
    assert (bucket.remaining(150 * MS), bucket.full_in_ns(150 * MS)) == (1, 250 * MS)
    assert (bucket.remaining(400 * MS), bucket.full_in_ns(400 * MS)) == (4, 0)
    # a quiet spell does not fill it beyond its capacity
    assert (bucket.remaining(10 * S), bucket.full_in_ns(10 * S)) == (4, 0)
    assert [bucket.admit(10 * S) for _ in range(5)] == [True] * 4 + [False]


def test_a_refill_interval_that_is_not_a_whole_number_of_ns_does_not_drift():
    # 3 per second: one token every 333,333,333.3 ns; the k-th is there at ceil(k / 3 s), and
    # not one nanosecond earlier, even after 30 of them. (A bucket of 1 would lose the 0.7 ns
    # by which each admission came late: a token cannot wait in a full bucket.)
    bucket = TokenBucket(quota=3, window_ns=S, burst=2, now_ns=0)
    assert [bucket.admit(0), bucket.admit(0)] == [True, True]
    for k in range(1, 31):
        due = -(-k * S // 3)
        assert not bucket.admit(due - 1)
        assert bucket.admit(due)


def test_waits_are_rounded_up_so_that_waiting_them_always_admits():
    bucket = TokenBucket(quota=3, window_ns=S, burst=1, now_ns=0)
    assert bucket.admit(0)
    wait = bucket.wait_ns(0)
    assert wait == 333_333_334
    assert not bucket.admit(wait - 1)
    assert bucket.admit(wait)


@pytest.mark.parametrize(
    ("quota", "window_ns", "burst", "message"),
    [(0, S, 1, "at least 1"), (5, 0, 1, "at least 1"), (5, S, 0, "burst 0")],
)
def test_bad_parameters_name_the_value(quota, window_ns, burst, message):
    with pytest.raises(ValueError, match=message):
        TokenBucket(quota=quota, window_ns=window_ns, burst=burst, now_ns=0)


@given(
    quota=st.integers(1, 20),
    burst=st.integers(1, 10),
    gaps=st.lists(st.integers(0, 200 * MS), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_the_refill_in_any_interval(quota, burst, gaps):
    bucket = TokenBucket(quota=quota, window_ns=S, burst=burst, now_ns=0)
    admitted: list[int] = []
    now = 0
    for gap in gaps:
        now += gap
        if bucket.admit(now):
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            # in [start, end]: at most burst + quota * (end - start) / window
            span = admitted[j] - start
            assert (j - i + 1) * S <= burst * S + quota * span


@given(
    quota=st.integers(1, 20),
    burst=st.integers(1, 10),
    gaps=st.lists(st.integers(0, 200 * MS), min_size=1, max_size=100),
)
def test_wait_ns_is_exactly_when_the_next_admission_becomes_possible(quota, burst, gaps):
    bucket = TokenBucket(quota=quota, window_ns=S, burst=burst, now_ns=0)
    now = 0
    for gap in gaps:
        now += gap
        bucket.admit(now)
        wait = bucket.wait_ns(now)
        assert (bucket.remaining(now) > 0) == (wait == 0)
        if wait > 0:
            probe = TokenBucket(quota=quota, window_ns=S, burst=burst, now_ns=0)
            probe._tat = bucket._tat
            assert not probe.admit(now + wait - 1)
            assert probe.admit(now + wait)


def test_a_request_of_several_tokens_is_admitted_whole_or_not_at_all():
    # 600 tokens a minute: one every 100 ms.
    bucket = TokenBucket(quota=600, window_ns=60 * S, burst=100, now_ns=0)
    assert bucket.admit(0, tokens=80)
    assert bucket.remaining(0) == 20
    assert not bucket.admit(0, tokens=21)
    assert bucket.remaining(0) == 20
    assert bucket.wait_ns(0, tokens=21) == 100 * MS
    assert bucket.wait_ns(0, tokens=30) == 1 * S
    assert not bucket.admit(1 * S - 1, tokens=30)
    assert bucket.admit(1 * S, tokens=30)
    assert (bucket.remaining(1 * S), bucket.full_in_ns(1 * S)) == (0, 10 * S)


def test_more_tokens_than_the_burst_are_never_admitted_and_wait_for_a_full_bucket():
    bucket = TokenBucket(quota=600, window_ns=60 * S, burst=100, now_ns=0)
    assert bucket.admit(0, tokens=50)
    assert bucket.wait_ns(0, tokens=101) == 5 * S
    assert not bucket.admit(60 * S, tokens=101)
    assert bucket.admit(60 * S, tokens=100)


def test_a_refund_gives_back_unused_tokens_but_never_beyond_the_burst():
    bucket = TokenBucket(quota=600, window_ns=60 * S, burst=100, now_ns=0)
    assert bucket.admit(0, tokens=90)
    bucket.refund(0, tokens=60)
    assert (bucket.remaining(0), bucket.full_in_ns(0)) == (70, 3 * S)
    assert bucket.admit(0, tokens=70)
    assert not bucket.admit(0, tokens=1)
    # refunding more than was ever taken fills the bucket, no more
    bucket.refund(0, tokens=500)
    assert (bucket.remaining(0), bucket.full_in_ns(0)) == (100, 0)
    assert bucket.admit(0, tokens=100)
    assert not bucket.admit(0, tokens=1)


def test_a_refund_after_a_refill_counts_from_now():
    bucket = TokenBucket(quota=600, window_ns=60 * S, burst=100, now_ns=0)
    assert bucket.admit(0, tokens=100)
    # 2 s later 20 tokens are back; 30 refunded make 50
    bucket.refund(2 * S, tokens=30)
    assert bucket.remaining(2 * S) == 50


@given(
    st.lists(
        st.tuples(st.integers(0, 300 * MS), st.integers(1, 120), st.integers(0, 120)),
        max_size=60,
    )
)
def test_admitted_minus_refunded_never_exceeds_burst_plus_refill(steps):
    # Over any run from a full bucket: tokens kept (taken - refunded) <= burst + rate * elapsed.
    rate_per_ms, burst = 0.01, 100  # 600 a minute
    bucket = TokenBucket(quota=600, window_ns=60 * S, burst=burst, now_ns=0)
    now = kept = 0
    for gap, cost, refund in steps:
        now += gap
        if bucket.admit(now, tokens=cost):
            back = min(refund, cost)
            bucket.refund(now, tokens=back)
            kept += cost - back
        assert kept <= burst + rate_per_ms * now / MS
