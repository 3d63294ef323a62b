import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline import Throttled
from paceline.policy.retry import (
    RetryAfterTooLong,
    RetryBudget,
    RetryBudgetExhausted,
    RetryPolicy,
    is_throttle,
)

S = 1_000_000_000


def test_full_jitter_draws_uniformly_below_the_doubling_ceiling():
    rng = random.Random(42)
    expected = random.Random(42)
    policy = RetryPolicy(attempts=10, base_s=0.1, cap_s=100.0, rng=rng)
    for n in range(1, 6):
        ceiling = 0.1 * 2 ** (n - 1)
        assert policy.backoff_ns(n) == round(expected.uniform(0.0, ceiling) * S)


def test_backoff_is_capped():
    policy = RetryPolicy(attempts=100, base_s=1.0, cap_s=5.0, rng=random.Random(1))
    assert all(policy.backoff_ns(n) <= 5 * S for n in range(1, 80))


def test_only_transient_failures_are_retried_by_default():
    policy = RetryPolicy(rng=random.Random(0))
    assert policy.decide(1, TimeoutError()).retry
    assert policy.decide(1, ConnectionResetError()).retry
    assert policy.decide(1, Throttled()).retry
    decision = policy.decide(1, ValueError("bad"))
    assert not decision.retry
    assert decision.reason == "not retryable (ValueError)"


def test_retry_on_accepts_types_or_a_predicate_and_a_retryable_attribute_wins():
    by_type = RetryPolicy(retry_on=(KeyError,))
    assert by_type.decide(1, KeyError("x")).retry
    assert not by_type.decide(1, TimeoutError()).retry
    by_predicate = RetryPolicy(retry_on=lambda e: "again" in str(e))
    assert by_predicate.decide(1, RuntimeError("try again")).retry
    assert not by_predicate.decide(1, RuntimeError("no")).retry
    flagged = RuntimeError("flagged")
    flagged.retryable = True  # type: ignore[attr-defined]
    assert RetryPolicy().decide(1, flagged).retry
    unflagged = TimeoutError("final")
    unflagged.retryable = False  # type: ignore[attr-defined]
    assert not RetryPolicy().decide(1, unflagged).retry


def test_attempts_count_the_first_try():
    policy = RetryPolicy(attempts=3, rng=random.Random(0))
    assert policy.decide(1, TimeoutError()).retry
    assert policy.decide(2, TimeoutError()).retry
    assert policy.decide(3, TimeoutError()).reason == "attempts exhausted (3 of 3)"
    assert not RetryPolicy(attempts=1).decide(1, TimeoutError()).retry


def test_retry_after_sets_a_floor_on_the_wait():
    policy = RetryPolicy(attempts=5, base_s=0.001, cap_s=0.002, rng=random.Random(3))
    decision = policy.decide(1, Throttled(retry_after=2.5))
    assert decision.retry
    assert decision.delay_ns == round(2.5 * S)


def test_an_absurd_retry_after_is_surfaced_not_obeyed():
    policy = RetryPolicy(max_retry_after_s=300)
    cause = Throttled(retry_after=1_000_000)
    decision = policy.decide(1, cause)
    assert not decision.retry
    assert isinstance(decision.error, RetryAfterTooLong)
    assert decision.error.cause is cause
    assert "1e+06 s" in str(decision.error)
    assert "max_retry_after_s=300" in str(decision.error)


@pytest.mark.parametrize("value", [-5, float("nan"), float("inf"), "soon", None])
def test_a_negative_or_nonsense_retry_after_is_ignored(value):
    error = TimeoutError()
    error.retry_after = value  # type: ignore[attr-defined]
    decision = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.01, rng=random.Random(0)).decide(
        1, error
    )
    assert decision.retry
    assert decision.delay_ns <= 10_000_000


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"attempts": 0}, "at least 1"),
        ({"attempts": 2.5}, "whole number"),
        ({"base_s": -1}, "base_s=-1"),
        ({"cap_s": float("inf")}, "cap_s=inf"),
        ({"max_throttles": 0}, "max_throttles=0: must be at least 1"),
        ({"max_throttles": True}, "max_throttles=True: a whole number"),
    ],
)
def test_bad_retry_settings_name_the_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        RetryPolicy(**kwargs)


def test_the_budget_stops_retries_when_spent():
    policy = RetryPolicy(attempts=10, rng=random.Random(0))
    budget = RetryBudget(ratio=0.1, floor=2)
    for _ in range(10):
        budget.first_attempt()
    outcomes = [policy.decide(1, TimeoutError(), budget).retry for _ in range(5)]
    assert outcomes == [True, True, True, False, False]
    assert policy.decide(1, TimeoutError(), budget).reason == (
        "retry budget spent (3 retries for 10 first attempts)"
    )


class Http429(Exception):
    """An HTTP face's error: a status code, retryable."""

    retryable = True

    def __init__(self, status_code: int = 429) -> None:
        super().__init__(f"HTTP {status_code}: Too Many Requests")
        self.status_code = status_code


def test_an_item_refused_by_the_budget_fails_naming_it_with_the_last_error_as_cause():
    policy = RetryPolicy(attempts=5, rng=random.Random(0))
    budget = RetryBudget(ratio=0.0, floor=1)
    budget.first_attempt()
    assert policy.decide(1, TimeoutError("first"), budget).retry
    last = ConnectionResetError("connection reset by peer")
    decision = policy.decide(2, last, budget)
    assert not decision.retry
    error = decision.error
    assert isinstance(error, RetryBudgetExhausted)
    assert str(error) == (
        "retry budget exhausted after 2 attempts (the batch spent its 1 retries): "
        "connection reset by peer"
    )
    assert error.__cause__ is last
    assert error.cause is last
    assert error.attempts == 2
    assert error.error_code == "connection"  # the last error's code
    assert not policy.is_retryable(error)
    assert budget.refused == 1


def test_a_budget_refusal_keeps_the_http_status_and_calls_a_429_rate_limited():
    policy = RetryPolicy(attempts=5, retry_on=(Http429,), rng=random.Random(0))
    budget = RetryBudget(ratio=0.0, floor=0)
    decision = policy.decide(1, Http429(500), budget)
    assert isinstance(decision.error, RetryBudgetExhausted)
    assert decision.error.status_code == 500
    assert decision.error.error_code == "unknown"
    # a 429 the caller does not count as a throttle (its own classifier) still spends
    decision = policy.decide(1, Http429(429), budget, throttled=False)
    assert isinstance(decision.error, RetryBudgetExhausted)
    assert decision.error.status_code == 429
    assert decision.error.error_code == "rate_limited"


def test_a_throttle_spends_nothing_from_the_budget():
    policy = RetryPolicy(attempts=5, retry_on=(Http429, Throttled), rng=random.Random(0))
    budget = RetryBudget(ratio=0.0, floor=0)  # already spent
    for error in (Throttled(), Http429(429), Http429(503)):
        assert policy.decide(1, error, budget).retry
    assert (budget.spent, budget.refused) == (0, 0)
    assert not policy.decide(1, Http429(500), budget).retry


def test_throttles_count_toward_max_throttles_not_attempts():
    policy = RetryPolicy(attempts=3, max_throttles=4, rng=random.Random(0))
    # attempts 1-3 throttled, then errors: attempt 6 is the item's third error
    assert policy.decide(3, Throttled(), throttles=2).retry
    assert policy.decide(5, TimeoutError(), throttles=3).retry
    assert policy.decide(6, TimeoutError(), throttles=3).reason == "attempts exhausted (3 of 3)"
    assert policy.decide(6, Throttled(), throttles=3).reason == (
        "throttled 4 times (max_throttles=4)"
    )
    # an explicit classification wins over is_throttle
    assert policy.decide(3, Throttled(), throttled=False).reason == "attempts exhausted (3 of 3)"


def test_a_throttle_backs_off_like_any_retry():
    rng, expected = random.Random(5), random.Random(5)
    policy = RetryPolicy(attempts=2, base_s=0.1, cap_s=100.0, rng=rng)
    for attempt in range(1, 8):
        decision = policy.decide(attempt, Throttled(), throttles=attempt - 1)
        assert decision.delay_ns == round(expected.uniform(0.0, 0.1 * 2 ** (attempt - 1)) * S)


def test_attempts_1_never_retries_not_even_a_throttle():
    assert not RetryPolicy(attempts=1).decide(1, Throttled()).retry


def test_is_throttle_reads_throttled_and_429_or_503():
    class Response:
        status_code = 503

    class WithResponse(Exception):
        response = Response()

    assert is_throttle(Throttled())
    assert is_throttle(Http429(429))
    assert is_throttle(WithResponse())
    assert not is_throttle(Http429(500))
    assert not is_throttle(TimeoutError())


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.floats(0, 1),
    floor=st.integers(0, 20),
    events=st.lists(st.booleans(), max_size=300),
)
def test_the_budget_is_never_overspent(ratio, floor, events):
    budget = RetryBudget(ratio=ratio, floor=floor)
    for is_first in events:
        if is_first:
            budget.first_attempt()
        else:
            budget.try_spend()
        assert budget.spent <= floor + ratio * budget.first_attempts


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0, 10),
    cap=st.floats(0, 60),
    n=st.integers(1, 200),
    seed=st.integers(0, 2**32),
)
def test_backoff_never_exceeds_its_cap(base, cap, n, seed):
    policy = RetryPolicy(attempts=1000, base_s=base, cap_s=cap, rng=random.Random(seed))
    assert 0 <= policy.backoff_ns(n) <= round(cap * S)
