"""Server signals: every header format with exact numbers, the precedence, and no crashes."""

import email.utils
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paceline.signals import (
    KNOWN_HEADERS,
    Policy,
    Remaining,
    ServerSignals,
    parse_ratelimit,
    parse_ratelimit_policy,
    parse_reset,
    parse_retry_after,
    parse_signals,
)

IMF_DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
IMF_EPOCH = 784111777.0  # the same instant, as RFC 9110 writes it in all three formats
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


# --- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("0", 0.0), (" 7\t", 7.0), ("1.5", 1.5), ("1000000", 1000000.0)],
)
def test_retry_after_delay_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_huge_retry_after_is_returned_as_is_for_the_caller_to_surface():
    assert parse_retry_after("1000000") == 1000000.0
    assert parse_signals({"Retry-After": "1000000"}).retry_after_s == 1000000.0


@pytest.mark.parametrize(
    "value",
    ["", "   ", "-1", "-0.5", "+5", "abc", "1e3", "nan", "inf", "1_000", "5 s", "\u0661\u0662",
     "9" * 400, "Sun, 06 Nov 1994 08:49:37", "Sun, 32 Nov 1994 08:49:37 GMT", "120, 60"],
)  # fmt: skip
def test_retry_after_rejects_negative_garbage_and_empty(value):
    assert parse_retry_after(value, now_epoch_s=NOW) is None


def test_retry_after_date_is_measured_against_the_responses_own_date():
    # The local clock is far off (now_epoch_s = NOW); server clock against server clock wins.
    value = "Sun, 06 Nov 1994 08:51:37 GMT"
    assert parse_retry_after(value, date=IMF_DATE, now_epoch_s=NOW) == 120.0
    headers = {"Retry-After": value, "Date": IMF_DATE}
    assert parse_signals(headers, now_epoch_s=NOW).retry_after_s == 120.0


def test_retry_after_date_without_a_date_header_is_measured_against_now():
    assert parse_retry_after(IMF_DATE, now_epoch_s=IMF_EPOCH - 30) == 30.0
    assert (
        parse_signals({"Retry-After": IMF_DATE}, now_epoch_s=IMF_EPOCH - 30).retry_after_s == 30.0
    )


def test_retry_after_date_with_a_malformed_date_header_falls_back_to_now():
    assert parse_retry_after(IMF_DATE, date="yesterday", now_epoch_s=IMF_EPOCH - 5) == 5.0


def test_retry_after_date_in_the_past_is_zero():
    assert parse_retry_after(IMF_DATE, now_epoch_s=NOW) == 0.0
    assert parse_retry_after(IMF_DATE, date="Sun, 06 Nov 1994 08:50:00 GMT") == 0.0


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:51:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:51:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:51:37 1994",  # obsolete asctime
        "sun, 6 nov 1994 08:51:37 utc",  # lenient: case, one-digit day, UTC
    ],
)
def test_retry_after_accepts_all_three_http_date_formats(value):
    assert parse_retry_after(value, date=IMF_DATE, now_epoch_s=NOW) == 120.0


def test_retry_after_date_defaults_to_the_real_clock():
    value = email.utils.formatdate(time.time() + 3600, usegmt=True)
    wait = parse_retry_after(value)
    assert wait is not None
    assert 3590 <= wait <= 3600


def test_retry_after_ms_headers_are_milliseconds():
    assert parse_signals({"retry-after-ms": "250"}).retry_after_s == 0.25
    assert parse_signals({"x-ms-retry-after-ms": "1500"}).retry_after_s == 1.5


def test_retry_after_ms_wins_over_retry_after_seconds():
    signals = parse_signals({"Retry-After": "1", "retry-after-ms": "250"})
    assert signals.retry_after_s == 0.25
    assert signals.source == "retry-after"


def test_a_malformed_retry_after_ms_falls_back_to_retry_after():
    assert parse_signals({"Retry-After": "2", "retry-after-ms": "soon"}).retry_after_s == 2.0


# --- reset times -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),  # delta seconds
        ("1.5", 1.5),
        ("0", 0.0),
        ("1700000060", 60.0),  # epoch seconds (GitHub)
        ("1700000060.5", 60.5),  # epoch with decimals (Discord)
        ("1700000060000", 60.0),  # epoch milliseconds
        ("1699999000", 0.0),  # an epoch in the past
        ("2023-11-14T22:14:20Z", 60.0),  # RFC 3339
        ("2023-11-14T22:14:20.25Z", 60.25),
        ("2023-11-14t22:14:20z", 60.0),
        ("2023-11-14 22:14:20Z", 60.0),
        ("2023-11-15T00:14:20+02:00", 60.0),
        ("2023-11-14T16:44:20.5-05:30", 60.5),
        ("2023-11-14T22:14:20-00:00", 60.0),
        ("2020-01-01T00:00:00Z", 0.0),  # in the past
        ("Tue, 14 Nov 2023 22:14:20 GMT", 60.0),  # HTTP-date
    ],
)
def test_reset_formats(value, expected):
    assert parse_reset(value, now_epoch_s=NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("1h", 3600.0),
        ("2h45m", 9900.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("1s500ms", 1.5),
        ("6m0.5s", 360.5),
    ],
)
def test_reset_go_durations(value, expected):
    assert parse_reset(value, now_epoch_s=NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("20ms", 0.02), ("1us", 1e-6), ("1\u00b5s", 1e-6), ("1\u03bcs", 1e-6),
                            ("100ns", 1e-7), ("1m0.001s", 60.001)]
)  # fmt: skip
def test_reset_go_durations_below_a_millisecond(value, expected):
    assert parse_reset(value, now_epoch_s=NOW) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "value",
    ["", "-1", "-1s", "1d", "1 s", "s", "1S", "5m-1s", "+1s", "soon", "nan", "1e3",
     "2023-13-01T00:00:00Z", "2023-02-30T00:00:00Z", "2023-11-14T24:00:00Z",
     "2023-11-14T22:14:20", "2023-11-14T22:14:20+24:00", "2023-11-14"],
)  # fmt: skip
def test_reset_rejects_what_it_cannot_read(value):
    assert parse_reset(value, now_epoch_s=NOW) is None


def test_absolute_resets_are_measured_against_the_responses_date():
    date = "Tue, 14 Nov 2023 22:13:00 GMT"  # the server's clock: 20 s behind ours
    assert parse_reset("1700000060", now_epoch_s=NOW, date=date) == 80.0
    assert parse_reset("2023-11-14T22:14:20Z", now_epoch_s=NOW, date=date) == 80.0
    assert parse_reset("30", now_epoch_s=NOW, date=date) == 30.0  # a delta ignores clocks


def test_a_millisecond_scale_applies_to_plain_numbers_only():
    assert parse_reset("250", now_epoch_s=NOW, scale_s=0.001) == 0.25
    assert parse_reset("1700000060000", now_epoch_s=NOW, scale_s=0.001) == 60.0  # epoch ms
    assert parse_reset("2s", now_epoch_s=NOW, scale_s=0.001) == 2.0


# --- RateLimit-Policy and RateLimit (draft-10) -------------------------------------------------


def test_policy_field_from_the_draft():
    assert parse_ratelimit_policy('"permin";q=50;w=60') == [Policy("permin", 50, 60.0, None)]


def test_several_policies_in_one_field_with_partition_key_and_unit():
    value = '"burst";q=100;w=60,"daily";q=1000;w=86400, "peruser";q=65535;qu="content-bytes";w=10;pk=:cHsdsRa894==:'  # noqa: E501
    assert parse_ratelimit_policy(value) == [
        Policy("burst", 100, 60.0, None),
        Policy("daily", 1000, 86400.0, None),
        Policy("peruser", 65535, 10.0, b"p{\x1d\xb1\x16\xbc\xf7", "content-bytes"),
    ]


def test_policy_names_may_be_tokens_and_draft06_items_are_the_quota():
    assert parse_ratelimit_policy("permin;q=50;w=60") == [Policy("permin", 50, 60.0, None)]
    assert parse_ratelimit_policy("10;w=1, 50;w=60") == [
        Policy("", 10, 1.0, None),
        Policy("", 50, 60.0, None),
    ]


def test_a_policy_without_a_window_has_none():
    assert parse_ratelimit_policy('"q";q=5') == [Policy("q", 5, None, None)]


@pytest.mark.parametrize(
    "value",
    ['"a";q=', '"a";q=1,', '"a";Q=1', '"a;q=1', "\u00e9;q=1", '"a";q=1234567890123456',
     '"a";q=1.2345', '"a";pk=:not base64!:', '"a";q=1 "b"', "(", ""],
)  # fmt: skip
def test_a_policy_field_that_is_not_structured_field_syntax_is_ignored(value):
    assert parse_ratelimit_policy(value) == []


@pytest.mark.parametrize(
    "bad",
    ['"bad"', '"bad";w=60', '"bad";q=-1', '"bad";q=1.5', '"bad";q="10"', '"bad";q=1;w=0',
     '"bad";q=1;w=-5', '"bad";q=1;w="60"', '"bad";q=1;qu=7', '"bad";q=1;pk=?1', "?1;q=1",
     '("a" "b");q=1', ":YQ==:;q=1"],
)  # fmt: skip
def test_a_malformed_policy_member_is_dropped_alone(bad):
    assert parse_ratelimit_policy(f'"ok";q=5;w=1, {bad}') == [Policy("ok", 5, 1.0, None)]


def test_structured_field_details():
    # spaces after ";" and ",", escapes in strings, unknown params as comments, decimals, dates
    value = '"a \\"b\\"";  q=3; w=1.5;acme-burst=?1;x=@1700000000 ,\t"c";q=1;w=2'
    assert parse_ratelimit_policy(value) == [
        Policy('a "b"', 3, 1.5, None),
        Policy("c", 1, 2.0, None),
    ]
    assert parse_ratelimit_policy('"a";q=1;w=9;w=60') == [Policy("a", 1, 60.0, None)]  # last wins


def test_ratelimit_field_from_the_draft():
    assert parse_ratelimit('"permin";r=12;t=30') == [Remaining("permin", 12, 30.0)]
    assert parse_ratelimit('"default";r=999;pk=:dHJpYWwxMjEzMjM=:') == [
        Remaining("default", 999, None, b"trial121323")
    ]


def test_ratelimit_several_limits_and_malformed_members():
    assert parse_ratelimit('"a";r=0;t=1, "b";r=-1, "c";t=5, "d";r=7;t=2.5, e;r=1') == [
        Remaining("a", 0, 1.0),
        Remaining("d", 7, 2.5),
        Remaining("e", 1, None),
    ]


def test_ratelimit_draft07_dictionary():
    assert parse_ratelimit("limit=100, remaining=50, reset=30") == [Remaining("", 50, 30.0)]
    assert parse_ratelimit("limit=100, reset=30") == []


@pytest.mark.parametrize("value", ["", "garbage!", '"a";r=1,', "r=", '"a";r=1;t=-1'])
def test_a_malformed_ratelimit_field_gives_nothing(value):
    assert parse_ratelimit(value) == []


def test_signals_take_the_policy_with_the_lowest_rate():
    # 10/s against 500/min = 8.3/s: the minute policy is the tighter long-run rate.
    signals = parse_signals({"RateLimit-Policy": '"a";q=10;w=1, "b";q=500;w=60'})
    assert (signals.quota, signals.window_s, signals.source) == (500, 60.0, "ietf")
    assert signals.policies == (Policy("a", 10, 1.0, None), Policy("b", 500, 60.0, None))
    signals = parse_signals({"RateLimit-Policy": '"a";q=10;w=1, "b";q=1000;w=60'})
    assert (signals.quota, signals.window_s) == (10, 1.0)


def test_equal_rates_prefer_the_shorter_window_and_windowless_policies_come_last():
    signals = parse_signals({"RateLimit-Policy": '"m";q=60;w=60, "s";q=1;w=1'})
    assert (signals.quota, signals.window_s) == (1, 1.0)
    signals = parse_signals({"RateLimit-Policy": '"n";q=1, "m";q=60;w=60'})
    assert (signals.quota, signals.window_s) == (60, 60.0)
    signals = parse_signals({"RateLimit-Policy": '"n";q=7, "o";q=3'})
    assert (signals.quota, signals.window_s) == (3, None)


def test_non_request_units_never_set_the_request_quota():
    value = '"bytes";q=1000;w=1;qu="content-bytes", "req";q=50;w=1;qu="requests"'
    signals = parse_signals(
        {"RateLimit-Policy": value, "RateLimit": '"bytes";r=0;t=9, "req";r=20;t=1'}
    )
    assert (signals.quota, signals.window_s, signals.remaining, signals.reset_s) == (
        50,
        1.0,
        20,
        1.0,
    )
    assert len(signals.policies) == 2
    assert len(signals.service_limits) == 2


def test_signals_take_the_limit_with_the_smallest_remaining_ties_to_the_later_reset():
    signals = parse_signals({"RateLimit": '"a";r=40;t=1, "b";r=3;t=30, "c";r=9;t=60'})
    assert (signals.remaining, signals.reset_s) == (3, 30.0)
    signals = parse_signals({"RateLimit": '"a";r=0;t=1, "b";r=0;t=30, "c";r=0'})
    assert (signals.remaining, signals.reset_s) == (0, 30.0)


def test_retry_after_and_ratelimit_are_both_reported():
    signals = parse_signals({"Retry-After": "120", "RateLimit": '"d";r=0;t=30'})
    assert (signals.retry_after_s, signals.remaining, signals.reset_s) == (120.0, 0, 30.0)
    assert signals.source == "retry-after+ietf"


# --- legacy and vendor headers -----------------------------------------------------------------


def test_github_x_ratelimit_with_an_epoch_reset():
    headers = {
        "X-RateLimit-Limit": "5000",
        "X-RateLimit-Remaining": "4999",
        "X-RateLimit-Reset": "1700001000",
    }
    assert parse_signals(headers, now_epoch_s=NOW) == ServerSignals(
        retry_after_s=None,
        quota=5000,
        window_s=None,
        remaining=4999,
        reset_s=1000.0,
        source="x-ratelimit",
        policies=(Policy("", 5000, None, None),),
        service_limits=(Remaining("", 4999, 1000.0),),
    )


def test_x_ratelimit_reset_as_a_delta_in_seconds_and_in_milliseconds():
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"}
    assert parse_signals(headers, now_epoch_s=NOW).reset_s == 30.0
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-Ms": "1500"}
    assert parse_signals(headers, now_epoch_s=NOW).reset_s == 1.5
    headers = {"X-RateLimit-Reset-After": "2.5", "X-RateLimit-Reset": "1700000099"}
    assert parse_signals(headers, now_epoch_s=NOW).reset_s == 2.5


def test_twitter_style_x_rate_limit():
    headers = {"x-rate-limit-limit": "900", "x-rate-limit-remaining": "899",
               "x-rate-limit-reset": "1700000900"}  # fmt: skip
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert (signals.quota, signals.remaining, signals.reset_s) == (900, 899, 900.0)


def test_older_draft_ratelimit_limit_remaining_reset():
    headers = {"RateLimit-Limit": "100", "RateLimit-Remaining": "10", "RateLimit-Reset": "7"}
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert (signals.quota, signals.window_s, signals.remaining, signals.reset_s) == (
        100,
        None,
        10,
        7.0,
    )
    assert signals.source == "ietf-legacy"


def test_draft03_quota_policies_in_the_limit_field_give_the_window():
    headers = {"RateLimit-Limit": "10, 10;w=1, 50;w=60", "RateLimit-Remaining": "9"}
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert (signals.quota, signals.window_s, signals.remaining) == (10, 1.0, 9)


def test_draft06_policy_with_legacy_counters_combines_both():
    headers = {"RateLimit-Policy": "100;w=60", "RateLimit-Limit": "100",
               "RateLimit-Remaining": "42", "RateLimit-Reset": "12"}  # fmt: skip
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert (signals.quota, signals.window_s, signals.remaining, signals.reset_s) == (
        100,
        60.0,
        42,
        12.0,
    )
    assert signals.source == "ietf+ietf-legacy"


def test_openai_headers_prefer_the_requests_kind():
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert (signals.quota, signals.window_s, signals.remaining, signals.reset_s) == (
        60,
        None,
        59,
        1.0,
    )
    assert signals.source == "openai"
    assert signals.policies == (
        Policy("requests", 60, None, None),
        Policy("tokens", 150000, None, None, "tokens"),
    )
    assert signals.service_limits == (
        Remaining("requests", 59, 1.0),
        Remaining("tokens", 149984, 360.0),
    )


def test_token_quotas_alone_do_not_become_a_request_quota():
    headers = {"x-ratelimit-limit-tokens": "150000", "x-ratelimit-remaining-tokens": "0",
               "x-ratelimit-reset-tokens": "6m0s"}  # fmt: skip
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert (signals.quota, signals.remaining, signals.reset_s, signals.source) == (
        None, None, None, "none"
    )  # fmt: skip
    assert signals.service_limits == (Remaining("tokens", 0, 360.0),)


def test_anthropic_headers_with_rfc3339_resets():
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:21.5Z",
        "anthropic-ratelimit-tokens-remaining": "1000",
    }
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert (signals.quota, signals.remaining, signals.reset_s, signals.source) == (
        50, 49, 1.5, "anthropic"
    )  # fmt: skip


def test_ietf_wins_over_x_ratelimit_when_both_are_sent():
    headers = {"RateLimit-Policy": '"p";q=50;w=60', "RateLimit": '"p";r=5;t=9',
               "X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "4000",
               "X-RateLimit-Reset": "1700001000"}  # fmt: skip
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert (signals.quota, signals.remaining, signals.reset_s) == (50, 5, 9.0)
    assert signals.source == "ietf"


def test_a_remaining_count_is_never_paired_with_another_familys_reset():
    headers = {"RateLimit-Remaining": "3", "X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "5"}
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert (signals.remaining, signals.reset_s, signals.source) == (3, None, "ietf-legacy")


def test_a_reset_without_a_count_is_still_reported():
    signals = parse_signals({"X-RateLimit-Reset": "30"}, now_epoch_s=NOW)
    assert (signals.remaining, signals.reset_s, signals.source) == (None, 30.0, "x-ratelimit")


# --- malformed values, names, repeats ----------------------------------------------------------


def test_no_signal_headers_at_all():
    assert parse_signals({"Content-Type": "text/plain"}) == ServerSignals()
    assert ServerSignals().source == "none"


def test_malformed_fields_never_poison_the_others():
    headers = {
        "Retry-After": "soon",
        "RateLimit-Policy": '"p";q=50;w=60',
        "RateLimit": "r=?",
        "X-RateLimit-Remaining": "-3",
        "X-RateLimit-Reset": "45",
    }
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert signals.retry_after_s is None
    assert (signals.quota, signals.window_s) == (50, 60.0)
    assert (signals.remaining, signals.reset_s) == (None, 45.0)
    assert signals.source == "ietf+x-ratelimit"


@pytest.mark.parametrize("value", ["5000.0", "lots", "-1", "", "1" * 16, "5 000"])
def test_malformed_counts_are_ignored(value):
    signals = parse_signals({"X-RateLimit-Limit": value, "X-RateLimit-Remaining": value})
    assert (signals.quota, signals.remaining) == (None, None)


def test_header_names_are_case_insensitive():
    headers = {"RETRY-AFTER": "3", "ratelimit-POLICY": '"p";q=5;w=1', "X-RATELIMIT-REMAINING": "2"}
    signals = parse_signals(headers)
    assert (signals.retry_after_s, signals.quota, signals.remaining) == (3.0, 5, 2)


def test_repeated_header_lines_are_joined_like_http_does():
    headers = [
        ("RateLimit-Policy", '"a";q=10;w=1'),
        ("Content-Type", "text/plain"),
        ("ratelimit-policy", '"b";q=100;w=60'),
        ("Retry-After", "5"),
        ("retry-after", "5"),  # a duplicated line is the same value
        ("Date", IMF_DATE),
        ("date", IMF_DATE),
    ]
    signals = parse_signals(headers, now_epoch_s=NOW)
    assert [p.name for p in signals.policies] == ["a", "b"]
    assert (signals.quota, signals.window_s, signals.retry_after_s) == (100, 60.0, 5.0)


def test_conflicting_repeats_of_a_single_value_field_are_ignored():
    headers = [("X-RateLimit-Remaining", "5"), ("X-RateLimit-Remaining", "7"), ("Retry-After", "1")]
    headers.append(("Retry-After", "9"))
    signals = parse_signals(headers)
    assert (signals.remaining, signals.retry_after_s) == (None, None)
    assert parse_signals({"X-RateLimit-Limit": "5000, 6000"}).quota is None


def test_an_already_joined_mapping_value_is_collapsed():
    # httpx.Headers joins repeated lines with ", " in its mapping view
    signals = parse_signals({"retry-after": "120, 120", "x-ratelimit-remaining": "4, 4"})
    assert (signals.retry_after_s, signals.remaining) == (120.0, 4)


def test_raw_bytes_header_pairs_are_read():
    signals = parse_signals([(b"Retry-After", b"2"), (b"X-RateLimit-Limit", b"10")])
    assert (signals.retry_after_s, signals.quota) == (2.0, 10)


def test_malformed_header_pairs_are_skipped():
    signals = parse_signals([("Retry-After",), ("Retry-After", 5), ("Retry-After", "2")])  # type: ignore[list-item]
    assert signals.retry_after_s == 2.0


# --- properties --------------------------------------------------------------------------------


def _assert_sane(signals: ServerSignals) -> None:
    for seconds in (signals.retry_after_s, signals.reset_s):
        assert seconds is None or (seconds >= 0 and not math.isnan(seconds))
    assert signals.quota is None or signals.quota >= 0
    assert signals.remaining is None or signals.remaining >= 0
    assert signals.window_s is None or signals.window_s > 0
    assert signals.source


_FIELDISH = st.text(alphabet='0123456789.,;:=" -()?*@+abcdefhlmnpqrstuwxzTZGM\t/\\', max_size=40)
_VALUES = st.one_of(st.text(max_size=60), _FIELDISH)


@pytest.mark.parametrize("name", sorted(KNOWN_HEADERS))
@given(value=_VALUES)
def test_parse_signals_never_raises_on_any_value_of_a_known_header(name, value):
    _assert_sane(parse_signals({name: value}, now_epoch_s=NOW))
    _assert_sane(parse_signals([(name.upper(), value), (name, value + ",")], now_epoch_s=NOW))


@given(st.dictionaries(st.sampled_from(sorted(KNOWN_HEADERS)), _VALUES, max_size=8))
def test_parse_signals_never_raises_on_any_mix_of_known_headers(headers):
    _assert_sane(parse_signals(headers, now_epoch_s=NOW))


@given(value=_VALUES, date=st.one_of(st.none(), _VALUES))
def test_the_single_field_parsers_never_raise(value, date):
    wait = parse_retry_after(value, date=date, now_epoch_s=NOW)
    assert wait is None or wait >= 0
    reset = parse_reset(value, now_epoch_s=NOW, date=date)
    assert reset is None or reset >= 0
    assert all(p.quota >= 0 for p in parse_ratelimit_policy(value))
    assert all(r.remaining >= 0 for r in parse_ratelimit(value))


@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**15 - 1),
            st.integers(1, 10**6),
            st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_written_policies_read_back(policies):
    value = ", ".join(f'"{name}";q={q};w={w}' for q, w, name in policies)
    assert parse_ratelimit_policy(value) == [Policy(n, q, float(w), None) for q, w, n in policies]


# --- Bounded work per response ---------------------------------------------------------------


def test_an_absurdly_long_pacing_header_is_ignored_quickly():
    """A 72 KB RateLimit-Policy (valid, thousands of policies) cost ~45-150 ms per response."""
    huge = ", ".join(f'"p{i}";q={i + 1};w=1' for i in range(4000))
    assert len(huge) > 72_000
    started = time.perf_counter()
    for _ in range(20):
        signals = parse_signals([("RateLimit-Policy", huge), ("Retry-After", "1" * 72_000)])
    assert time.perf_counter() - started < 1.0  # ~3 s before the bound; microseconds after
    assert signals.source == "none"
    assert signals.quota is None
    assert signals.retry_after_s is None


def test_a_pacing_header_at_the_bound_is_still_read():
    policies = ", ".join(f'"p{i}";q={i + 1};w=60' for i in range(60))
    assert len(policies) <= 1024
    assert parse_signals({"RateLimit-Policy": policies}).quota == 1
