"""fetch_all with costs in tokens against the test API's LLM mode (real loopback HTTP): each
request reserves its estimate, the answer's usage settles it, and the server never says 429."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from paceline import RateLimiter, Success
from paceline.errors import InvalidArgument
from paceline.http import HttpResponse, fetch_all_sync, request_cost
from paceline.testing.api_server import ApiConfig, ApiServer, LlmConfig

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Say hello."}]
PROMPT_TOKENS = 9  # what the server charges this prompt (3 + 3 + 3, see tests/testing)
MAX_TOKENS = 100


def _chat(i: int, **extra: Any) -> dict[str, Any]:
    body = {"model": "test", "messages": HELLO, "max_tokens": MAX_TOKENS}
    return {"url": CHAT, "method": "POST", "json": body, "id": f"chat-{i}", **extra}


@pytest.fixture
def llm() -> Iterator[ApiServer]:
    # 3,000 requests (bucket of 100) and 30,000 tokens (bucket of 1,000) a minute: the tokens
    # bind. No limit headers, so only the client's own limiter keeps the calls in the buckets.
    config = LlmConfig(
        requests_per_min=3_000,
        requests_burst=100,
        tokens_per_min=30_000,
        tokens_burst=1_000,
        announce=False,
    )
    server = ApiServer(ApiConfig(base_latency_s=0, llm=config, seed=13)).start()
    yield server
    server.close()


def _limiter() -> RateLimiter:
    # The server's buckets as sliding windows: 100 requests and 1,000 tokens in any 2 s never
    # overdraw a bucket of 100 (1,000) refilled at 3,000 (30,000) a minute.
    return RateLimiter.from_rates("100/2s", "tokens:1000/2s")


@pytest.mark.serial  # the server's token bucket refills in real time: alone (./dev test)
def test_costs_from_the_requests_settled_from_usage_keep_the_server_from_429(llm):
    estimate = {"tokens": PROMPT_TOKENS + MAX_TOKENS}  # what the server reserves at admission
    started = time.monotonic()
    results = fetch_all_sync(
        [_chat(i, cost=estimate) for i in range(60)],
        base_url=llm.url,
        rate_limiter=_limiter(),
        max_concurrent=8,
        retry=None,
    )
    elapsed_s = time.monotonic() - started
    assert all(isinstance(r, Success) and r.value.status_code == 200 for r in results)
    stats = llm.stats()["llm"]
    assert stats["throttled_429_tokens"] == 0
    assert stats["throttled_429_requests"] == 0
    assert stats["requests_answered"] == 60
    # Settling gives the unused estimate back: the batch used far less than 60 estimates.
    assert stats["tokens_used"] < 60 * (PROMPT_TOKENS + MAX_TOKENS)
    # What the limit allowed over the span of admissions: 1,000 at once, then 1,000 per 2 s.
    allowed = 1_000 * (1 + stats["admitted_span_s"] / 2)
    print(
        f"tokens used {stats['tokens_used']} in {elapsed_s:.2f} s, span "
        f"{stats['admitted_span_s']:.2f} s: {stats['tokens_used'] / allowed:.2f} of the limit"
    )


def test_a_cost_function_and_a_usage_path(llm):
    settled: list[Any] = []

    def actual(response: HttpResponse) -> dict[str, int]:
        settled.append(response.body["usage"]["total_tokens"])
        return {"tokens": response.body["usage"]["total_tokens"]}

    results = fetch_all_sync(
        [_chat(i) for i in range(10)],
        base_url=llm.url,
        rate_limiter=_limiter(),
        cost=lambda request: {"tokens": PROMPT_TOKENS + request["json"]["max_tokens"]},
        actual_cost=actual,
        retry=None,
    )
    assert all(isinstance(r, Success) for r in results)
    assert len(settled) == 10
    assert llm.stats()["llm"]["throttled_429_tokens"] == 0
    path_results = fetch_all_sync(
        [_chat(i, cost={"tokens": PROMPT_TOKENS + MAX_TOKENS}) for i in range(3)],
        base_url=llm.url,
        rate_limiter=_limiter(),
        actual_cost="usage.total_tokens",
        retry=None,
    )
    assert all(isinstance(r, Success) for r in path_results)


def test_a_request_without_a_cost_under_a_tokens_limit_stops_the_batch_naming_the_fix(llm):
    with pytest.raises(InvalidArgument, match=r"has no cost.*give each request a \"cost\""):
        fetch_all_sync([_chat(0)], base_url=llm.url, rate_limiter=_limiter(), retry=None)


# Limits only in headers: 6,000 requests and 60,000 tokens a minute, the tokens in a bucket
# of 2,000 (the headers say limit 60000, remaining <= 2000); the tokens bind.
HEADERS_ONLY = LlmConfig(requests_per_min=6_000, tokens_per_min=60_000, tokens_burst=2_000)


def test_costs_without_a_rate_limiter_are_limited_by_the_token_headers():
    server = ApiServer(ApiConfig(base_latency_s=0.01, llm=HEADERS_ONLY, seed=13)).start()
    try:
        estimate = {"tokens": PROMPT_TOKENS + MAX_TOKENS}
        results = fetch_all_sync(
            [_chat(i, cost=estimate) for i in range(120)],
            base_url=server.url,
            cost=request_cost,
        )
        stats = server.stats()["llm"]
    finally:
        server.close()
    assert all(isinstance(r, Success) and r.value.status_code == 200 for r in results)
    throttled = stats["throttled_429_tokens"] + stats["throttled_429_requests"]
    # Before the first answer nothing is known (a few may be refused); after it, none should.
    assert throttled <= 1, stats
    # The batch is held to the bucket: what it used fits 2,000 at once plus 1,000 a second.
    assert stats["tokens_used"] <= 2_000 + 1_000 * stats["admitted_span_s"] + 200


def test_a_budget_cap_stops_fetch_all_at_the_answers_usage(llm):
    results = fetch_all_sync(
        [_chat(i) for i in range(40)],
        base_url=llm.url,
        max_concurrent=2,
        halt="soon,tokens=300",
        retry=None,
    )
    answered = [r for r in results if isinstance(r, Success)]
    used = sum(r.value.body["usage"]["total_tokens"] for r in answered)
    assert 300 <= used < 300 + 2 * (PROMPT_TOKENS + MAX_TOKENS)  # soon: the two in flight end
    assert len(answered) < 40
    assert llm.stats()["llm"]["requests_answered"] == len(answered)


def test_a_budget_cap_without_costs_is_refused_in_a_plain_batch():
    from paceline import batch_execute_sync

    with pytest.raises(InvalidArgument, match=r"budget cap counts the tokens.*give cost="):
        batch_execute_sync([1, 2], lambda x: x, halt="soon,tokens=10")
