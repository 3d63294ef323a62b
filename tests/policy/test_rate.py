import pytest

from paceline import RateLimiter, RateSpecError
from paceline.policy.limits import Limit
from paceline.policy.rate import Rate

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "count", "window_ns"),
    [
        ("100/s", 100, S),
        ("5000/h", 5000, 3600 * S),
        ("10/1.5s", 10, 1_500_000_000),
        ("500/min", 500, 60 * S),
        ("500/m", 500, 60 * S),
        ("1/d", 1, 86400 * S),
        ("10/100ms", 10, 100_000_000),
        (" 7 / 2 seconds ", 7, 2 * S),
        ("3 per hour", 3, 3600 * S),
        ("20/.5s", 20, 500_000_000),
    ],
)
def test_rate_strings_parse_to_exact_nanoseconds(text, count, window_ns):
    assert Rate.parse(text) == Rate(count, window_ns)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10/x", "unit 'x' must be one of"),
        ("ten/s", "expected '<count>/<window>'"),
        ("10", "expected '<count>/<window>'"),
        ("0/s", "at least 1"),
        ("10/0s", "longer than zero"),
        ("-5/s", "expected '<count>/<window>'"),
        ("", "expected '<count>/<window>'"),
    ],
)
def test_bad_rate_strings_name_the_value_and_the_fix(text, fragment):
    with pytest.raises(RateSpecError) as info:
        Rate.parse(text)
    message = str(info.value)
    assert repr(text) in message
    assert fragment in message
    assert "e.g." in message


def test_a_non_string_rate_is_refused_clearly():
    with pytest.raises(RateSpecError, match="must be a string"):
        Rate.parse(10)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((0, 1.0), "at least 1"),
        ((-3, 1.0), "at least 1"),
        ((2.5, 1.0), "whole number"),
        ((True, 1.0), "whole number"),
        ((2, 0), "greater than zero"),
        ((2, -1.0), "greater than zero"),
        ((2, float("inf")), "finite"),
        ((2, float("nan")), "finite"),
        ((2, "1"), "number of seconds"),
    ],
)
def test_bad_limiter_arguments_are_refused_with_the_value(args, fragment):
    with pytest.raises(RateSpecError) as info:
        RateLimiter(*args)
    assert fragment in str(info.value)
    assert repr(args[0] if fragment in ("at least 1", "whole number") else args[1]) in str(
        info.value
    )


@pytest.mark.parametrize("burst", [0, 3, -1, 1.5])
def test_burst_outside_one_to_n_is_refused(burst):
    with pytest.raises(ValueError, match=r"burst .*must be a whole number from 1"):
        RateLimiter(2, 1.0, burst=burst)


def test_the_string_form_and_the_seed_form_build_the_same_limit():
    assert RateLimiter("2/s").limits == RateLimiter(2, 1.0).limits == (Limit(Rate(2, S)),)


def test_several_limits_are_kept_in_the_order_given():
    limiter = RateLimiter.from_rates("10/s", "500/min", burst=1)
    assert [str(lim.rate) for lim in limiter.limits] == ["10/1s", "500/60s"]
    assert all(lim.burst == 1 for lim in limiter.limits)


def test_from_rates_needs_at_least_one_rate():
    with pytest.raises(RateSpecError, match="at least one rate"):
        RateLimiter.from_rates()


def test_per_second_is_the_long_run_rate():
    assert Rate.parse("5000/h").per_second == pytest.approx(5000 / 3600)
