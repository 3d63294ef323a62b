"""The test API's LLM mode without I/O, on a fake clock: admission of both buckets or neither,
refunds, the 429's wait and its reason, the headers, the stats."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paceline._signals.headers import parse_signals
from paceline._signals.times import parse_go_duration, parse_rfc3339
from paceline.testing import FakeClock
from paceline.testing._api.llm_config import LlmConfig, estimate_prompt_tokens, go_duration
from paceline.testing._api.llm_state import Admission, LlmState
from paceline.testing.api_server import ApiConfig, _parser, config_from_args

S = 1_000_000_000
MS = 1_000_000
MIN = 60 * S


def _state(**options: object) -> LlmState:
    return LlmState(LlmConfig(**options), seed=0, now_ns=0)  # type: ignore[arg-type]


def _remaining(state: LlmState, now_ns: int = 0) -> dict[str, str]:
    return {
        name.removeprefix("x-ratelimit-"): value
        for name, value in state.headers(now_ns, now_epoch_s=0.0)
        if "remaining" in name
    }


# -- the charge ------------------------------------------------------------------------------


def test_prompt_tokens_are_a_quarter_of_the_characters_plus_three_per_message_and_reply():
    assert estimate_prompt_tokens(["a" * 8]) == 3 + 2 + 3
    assert estimate_prompt_tokens(["a" * 9]) == 3 + 3 + 3
    assert estimate_prompt_tokens(["", "abcd", "abcde"]) == 3 + (3 + 0) + (3 + 1) + (3 + 2)


def test_admission_takes_one_request_and_prompt_plus_max_tokens_times_n():
    state = _state(requests_per_min=60, tokens_per_min=6000, tokens_burst=1000)
    call = state.admit(0, prompt_tokens=40, max_tokens=100, n=3)
    assert call.admitted
    assert call.reserved_tokens == 340
    assert _remaining(state) == {"remaining-requests": "59", "remaining-tokens": "660"}
    assert len(call.completions) == 3


def test_short_of_tokens_takes_no_request_either():
    state = _state(requests_per_min=60, tokens_per_min=6000, tokens_burst=1000)
    assert state.admit(0, 100, 800).admitted
    refused = state.admit(0, 100, 100)
    assert (refused.limit, refused.completions) == ("tokens", [])
    # 100 tokens a second; 200 are needed and 100 left: back in one second
    assert refused.retry_after_ns == 1 * S
    assert _remaining(state) == {"remaining-requests": "59", "remaining-tokens": "100"}
    assert (state.throttled_429_tokens, state.throttled_429_requests) == (1, 0)


def test_short_of_requests_takes_no_tokens_either():
    state = _state(requests_per_min=60, requests_burst=1, tokens_per_min=6000, tokens_burst=1000)
    assert state.admit(0, 10, 10).admitted
    refused = state.admit(500 * MS, 10, 10)
    assert (refused.limit, refused.retry_after_ns) == ("requests", 500 * MS)
    assert _remaining(state) == {"remaining-requests": "0", "remaining-tokens": "980"}
    assert (state.throttled_429_tokens, state.throttled_429_requests) == (0, 1)
    assert state.admit(1 * S, 10, 10).admitted


def test_short_of_both_names_the_one_that_takes_longer():
    state = _state(requests_per_min=120, requests_burst=1, tokens_per_min=6000, tokens_burst=100)
    assert state.admit(0, 50, 50).admitted
    # requests: back in 0.5 s; tokens: 90 needed at 100 a second, back in 0.9 s
    refused = state.admit(0, 50, 40)
    assert (refused.limit, refused.retry_after_ns) == ("tokens", 900 * MS)
    assert (state.throttled_429_tokens, state.throttled_429_requests) == (1, 0)
    state = _state(requests_per_min=6, requests_burst=1, tokens_per_min=6000, tokens_burst=100)
    assert state.admit(0, 50, 50).admitted
    refused = state.admit(0, 10, 10)
    assert (refused.limit, refused.retry_after_ns) == ("requests", 10 * S)


def test_a_call_larger_than_the_tokens_bucket_never_fits_and_says_so():
    state = _state(tokens_per_min=6000, tokens_burst=1000)
    refused = state.admit(0, 10, 500, n=2)
    assert (refused.limit, refused.retry_after_ns) == ("tokens", None)
    assert state.too_large_429 == 1
    assert state.throttled_429_tokens == 0
    assert LlmState.retry_headers(refused, "openai") == []
    assert "Request too large" in state.refusal(refused)
    assert "requested 1010" in state.refusal(refused)


def test_no_limit_means_no_bucket_and_no_header():
    state = _state(requests_per_min=None, tokens_per_min=600, tokens_burst=100)
    for _ in range(5):
        assert state.admit(0, 5, 15).admitted
    assert not state.admit(0, 5, 15).admitted
    assert [name for name, _ in state.headers(0, 0.0)] == [
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ]


# -- the refund ------------------------------------------------------------------------------


def test_a_served_call_gives_back_the_completion_tokens_it_did_not_use():
    state = _state(tokens_per_min=6000, tokens_burst=1000)
    call = state.admit(0, 40, 100, n=2)
    used = 40 + call.completion_tokens
    state.finish(0, call, served=True)
    assert _remaining(state)["remaining-tokens"] == str(1000 - used)
    stats = state.stats()
    assert stats["tokens_reserved"] == 240
    assert stats["tokens_refunded"] == 240 - used
    assert stats["tokens_used"] == used
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (40, call.completion_tokens)


def test_a_failed_call_gives_back_all_its_completion_tokens_but_not_the_prompt():
    state = _state(tokens_per_min=6000, tokens_burst=1000)
    call = state.admit(0, 40, 100)
    state.finish(0, call, served=False)
    assert _remaining(state)["remaining-tokens"] == "960"
    stats = state.stats()
    assert (stats["tokens_used"], stats["completion_tokens"], stats["requests_answered"]) == (
        40,
        0,
        0,
    )


def test_a_refund_lets_the_next_call_in_at_once():
    state = _state(tokens_per_min=60, tokens_burst=300)  # one token a second
    first = state.admit(0, 10, 150)
    assert not state.admit(0, 10, 150).admitted
    state.finish(0, first, served=True)
    # at most 0.6 x 150 = 90 of the 150 are used: 300 - 10 - 90 = 200 are left, 160 needed
    assert first.completion_tokens <= 90
    assert state.admit(0, 10, 150).admitted


def test_completion_lengths_are_drawn_from_the_seed_around_the_ratio():
    config = LlmConfig(requests_per_min=None, tokens_per_min=None, completion_ratio=0.3)
    a, b = (LlmState(config, seed=7, now_ns=0) for _ in range(2))
    runs = [[a.admit(0, 1, 1000).completion_tokens for _ in range(2000)]]
    runs.append([b.admit(0, 1, 1000).completion_tokens for _ in range(2000)])
    assert runs[0] == runs[1]
    rng = random.Random(7 + 2)
    assert runs[0][:3] == [max(1, round(rng.uniform(0.0, 0.6) * 1000)) for _ in range(3)]
    assert all(1 <= used <= 600 for used in runs[0])
    assert abs(sum(runs[0]) / len(runs[0]) / 1000 - 0.3) < 0.02


# -- what the client is told -----------------------------------------------------------------


def test_openai_headers_give_limits_remaining_and_the_time_to_full():
    clock = FakeClock()
    state = LlmState(
        LlmConfig(requests_per_min=100, tokens_per_min=6000, tokens_burst=1000),
        seed=0,
        now_ns=clock.monotonic_ns(),
    )
    call = state.admit(clock.monotonic_ns(), 100, 400)
    clock.advance(ns=20 * MS)
    state.finish(clock.monotonic_ns(), call, served=True)
    used = 100 + call.completion_tokens
    # 100 tokens a second: 2 came back in 20 ms, the rest is back in (used - 2) * 10 ms
    assert dict(state.headers(clock.monotonic_ns(), 0.0)) == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "580ms",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": str(1000 - used + 2),
        "x-ratelimit-reset-tokens": go_duration((used - 2) * 10 * MS),
    }


def test_anthropic_headers_give_the_reset_as_an_rfc3339_time():
    state = _state(requests_per_min=60, tokens_per_min=6000, flavour="anthropic")
    state.admit(0, 100, 500)
    headers = dict(state.headers(0, now_epoch_s=1_795_428_000.0))
    assert headers["anthropic-ratelimit-requests-remaining"] == "59"
    assert headers["anthropic-ratelimit-requests-reset"] == "2026-11-23T10:00:01+00:00"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "5400"
    assert parse_rfc3339(headers["anthropic-ratelimit-tokens-reset"]) == 1_795_428_006.0
    refused = Admission(1, 1, 1, limit="tokens", retry_after_ns=1_500 * MS)
    assert LlmState.retry_headers(refused, "anthropic") == [("retry-after", "2")]


def test_announce_false_hides_the_limit_headers():
    state = _state(announce=False)
    state.admit(0, 10, 10)
    assert state.headers(0, 0.0) == []


def test_pacelines_header_parser_reads_what_the_openai_flavour_sends():
    state = _state(requests_per_min=500, tokens_per_min=200_000)
    state.admit(0, 100, 1000)
    refused = Admission(1, 1, 1, limit="tokens", retry_after_ns=120 * MS)
    headers = dict(state.headers(0, 0.0) + LlmState.retry_headers(refused, "openai"))
    signals = parse_signals(headers)
    assert signals.retry_after_s == pytest.approx(0.12)
    assert (signals.remaining, signals.reset_s) == (499, pytest.approx(0.12))
    tokens = [limit for limit in signals.service_limits if limit.remaining == 198_900]
    assert len(tokens) == 1


@given(st.integers(0, 10 * 3600 * S))
def test_reset_durations_read_back_as_the_wait_rounded_up_to_the_millisecond(ns):
    seconds = parse_go_duration(go_duration(ns))
    assert seconds is not None
    assert round(seconds * 1000) == -(-ns // MS)


def test_reset_durations_are_written_as_openai_writes_them():
    assert [go_duration(n * MS) for n in (1, 120, 1000, 6000, 60_000, 360_000, 3_600_000)] == [
        "1ms",
        "120ms",
        "1s",
        "6s",
        "1m0s",
        "6m0s",
        "1h0m0s",
    ]
    assert go_duration(8_640 * MS) == "8.64s"


# -- stats -----------------------------------------------------------------------------------


def test_stats_count_the_most_tokens_and_requests_in_any_minute_and_second():
    state = _state(requests_per_min=None, tokens_per_min=None)
    calls = [(t, state.admit(t, 10, 90)) for t in (0, 500 * MS, 30 * S, 60 * S, 61 * S)]
    for t, call in calls[:-1]:
        state.finish(t, call, served=True)
    used = [10 + call.completion_tokens for _, call in calls[:-1]] + [100]  # last in flight
    stats = state.stats(times=True)
    assert stats["max_requests_in_any_min"] == 3
    assert stats["max_tokens_reserved_in_any_min"] == 300
    assert stats["max_tokens_used_in_any_min"] == max(sum(used[:3]), sum(used[1:4]), sum(used[2:5]))
    assert stats["max_tokens_used_in_any_s"] == max(used[0] + used[1], *used[2:])
    assert stats["admitted_span_s"] == 61.0
    assert stats["admissions"][4] == [61.0, 100, 100]


@given(
    st.lists(
        st.tuples(st.integers(0, 400 * MS), st.integers(1, 300), st.integers(1, 200)),
        max_size=80,
    )
)
def test_tokens_used_in_any_minute_never_exceed_the_burst_plus_a_minutes_refill(calls):
    # The server's own count, as benchmarks read it: never more than burst + tokens_per_min.
    state = _state(requests_per_min=None, tokens_per_min=6000, tokens_burst=1000)
    now = 0
    for gap, prompt, max_tokens in calls:
        now += gap
        call = state.admit(now, prompt, max_tokens)
        state.finish(now, call, served=True)
    stats = state.stats()
    assert stats["max_tokens_used_in_any_min"] <= 1000 + 6000
    assert stats["max_tokens_used_in_any_s"] <= 1000 + 100


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tokens_per_min": 0}, "tokens_per_min 0: must be a whole number"),
        ({"requests_burst": 5, "requests_per_min": None}, "requests_burst 5: a bucket needs"),
        ({"completion_ratio": 0}, "completion_ratio 0: must be a fraction above 0"),
        ({"output_token_s": -1}, "output_token_s -1: must be seconds"),
        ({"flavour": "gemini"}, "flavour 'gemini': must be one of openai, anthropic"),
    ],
)
def test_bad_llm_options_are_refused_with_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        LlmConfig(**options)


@pytest.mark.parametrize(
    "llm",
    [
        LlmConfig(),
        LlmConfig(requests_per_min=None, tokens_per_min=600, tokens_burst=100, announce=False),
        LlmConfig(completion_ratio=0.5, output_token_s=0.01, flavour="anthropic"),
    ],
)
def test_the_command_line_gives_back_the_same_llm_config(llm):
    config = ApiConfig(quota=5, llm=llm)
    assert config_from_args(_parser().parse_args(config.to_argv())) == config


def test_llm_options_without_llm_are_refused():
    with pytest.raises(ValueError, match="the LLM options need --llm"):
        config_from_args(_parser().parse_args(["--llm-tokens-per-min", "600"]))
