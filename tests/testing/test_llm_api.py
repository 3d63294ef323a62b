"""The test API's LLM mode over real loopback HTTP (httpx): admission, usage, refunds, 429s
with retry-after-ms, the headers, the server's own counts."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from paceline._signals.headers import parse_signals
from paceline.testing.api_server import ApiConfig, ApiServer, LlmConfig

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Say hello."}]  # 10 characters: 3 + 3 + 3 = 9 tokens


def _body(max_tokens: int = 100, n: int = 1, messages: Any = None) -> dict[str, Any]:
    return {"model": "test", "messages": messages or HELLO, "max_tokens": max_tokens, "n": n}


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[tuple[ApiServer, httpx.Client]] = []

    def start(llm: LlmConfig, **options: Any) -> tuple[ApiServer, httpx.Client]:
        server = ApiServer(ApiConfig(base_latency_s=0, llm=llm, **options)).start()
        client = httpx.Client(base_url=server.url, timeout=10)
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        client.close()
        server.close()


# A refill this slow (one token or request a minute) adds nothing during a test: counts are
# exact however busy the machine is.
SLOW = {"requests_per_min": 1, "requests_burst": 100, "tokens_per_min": 1, "tokens_burst": 1000}


def test_an_answer_carries_its_usage_and_the_buckets_after_the_refund(serve):
    server, client = serve(LlmConfig(**SLOW))
    first = client.post(CHAT, json=_body(max_tokens=100, n=2))
    assert first.status_code == 200
    answer = first.json()
    usage = answer["usage"]
    completions = [len(c["message"]["content"].split()) for c in answer["choices"]]
    assert usage["prompt_tokens"] == 9
    assert usage["completion_tokens"] == sum(completions)
    assert usage["total_tokens"] == 9 + sum(completions)
    assert all(1 <= c <= 60 for c in completions)  # ratio 0.3: at most 0.6 x max_tokens
    assert answer["object"] == "chat.completion"
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "1"
    assert first.headers["x-ratelimit-remaining-requests"] == "99"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - usage["total_tokens"])
    # one token a minute: the bucket is full again in total_tokens minutes
    reset = first.headers["x-ratelimit-reset-tokens"]
    assert reset.endswith("s")
    assert 0 <= (usage["total_tokens"] * 60) - _go_s(reset) < 1
    llm = server.stats()["llm"]
    assert llm["requests_admitted"] == llm["requests_answered"] == 1
    assert llm["tokens_reserved"] == 9 + 200
    assert llm["tokens_refunded"] == 200 - usage["completion_tokens"]
    assert llm["tokens_used"] == usage["total_tokens"]


def _go_s(text: str) -> float:
    signals = parse_signals({"x-ratelimit-reset-tokens": text, "x-ratelimit-remaining-tokens": "0"})
    reset = [limit.reset_s for limit in signals.service_limits]
    assert reset
    assert reset[0] is not None
    return reset[0]


def test_the_same_seed_gives_the_same_answers(serve):
    lengths = []
    for _ in range(2):
        _, client = serve(LlmConfig(**SLOW), seed=3)
        lengths.append(
            [client.post(CHAT, json=_body()).json()["usage"]["completion_tokens"] for _ in range(5)]
        )
    assert lengths[0] == lengths[1]


def test_short_of_tokens_is_429_with_retry_after_ms_and_an_openai_error(serve):
    # 6000 tokens a minute: 100 a second, so waits are in the hundreds of milliseconds
    server, client = serve(LlmConfig(requests_per_min=None, tokens_per_min=6000, tokens_burst=300))
    assert client.post(CHAT, json=_body(max_tokens=280)).status_code == 200  # 289 reserved
    refused = client.post(CHAT, json=_body(max_tokens=280))
    # The wait counts from the server's answer, so from no earlier than its arrival here (timed
    # from before sending, a request slow to reach the server came back 5 ms too soon: a 429).
    answered = time.monotonic()
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert "tokens per min (TPM): Limit 6000, Requested 289" in error["message"]
    wait_ms = int(refused.headers["retry-after-ms"])
    remaining = int(refused.headers["x-ratelimit-remaining-tokens"])
    # the wait is for the tokens missing, at 10 ms each, less what refilled within a token
    assert (289 - remaining - 1) * 10 < wait_ms <= (289 - remaining) * 10
    assert refused.headers["retry-after"] == str(max(1, math.ceil(wait_ms / 1000)))
    time.sleep(max(0.0, wait_ms / 1000 - (time.monotonic() - answered)) + 0.005)
    assert client.post(CHAT, json=_body(max_tokens=280)).status_code == 200
    stats = server.stats()
    assert (stats["llm"]["throttled_429_tokens"], stats["llm"]["throttled_429_requests"]) == (1, 0)
    assert (stats["throttled_429"], stats["accepted"]) == (1, 2)


def test_short_of_requests_is_429_naming_requests(serve):
    server, client = serve(
        LlmConfig(requests_per_min=1, requests_burst=2, tokens_per_min=1, tokens_burst=1000)
    )
    assert [client.post(CHAT, json=_body()).status_code for _ in range(2)] == [200, 200]
    refused = client.post(CHAT, json=_body())
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "requests"
    assert 59_000 < int(refused.headers["retry-after-ms"]) <= 60_000
    assert refused.headers["retry-after"] == "60"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    llm = server.stats()["llm"]
    assert (llm["throttled_429_requests"], llm["throttled_429_tokens"]) == (1, 0)
    assert llm["requests_admitted"] == 2


def test_a_call_larger_than_the_bucket_is_429_without_a_time_to_retry(serve):
    server, client = serve(LlmConfig(**SLOW))
    refused = client.post(CHAT, json=_body(max_tokens=500, n=2))
    assert refused.status_code == 429
    assert "Request too large" in refused.json()["error"]["message"]
    assert "retry-after-ms" not in refused.headers
    assert "retry-after" not in refused.headers
    assert server.stats()["llm"]["too_large_429"] == 1


def test_announce_false_hides_the_limit_headers_but_not_the_time_to_retry(serve):
    _, client = serve(
        LlmConfig(requests_per_min=1, requests_burst=1, tokens_per_min=None, announce=False)
    )
    served = client.post(CHAT, json=_body())
    refused = client.post(CHAT, json=_body())
    assert served.status_code == 200
    assert not [name for name in served.headers if name.startswith("x-ratelimit")]
    assert refused.status_code == 429
    assert not [name for name in refused.headers if name.startswith("x-ratelimit")]
    assert int(refused.headers["retry-after-ms"]) > 59_000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "messages: required"),
        (_body(max_tokens=0), "max_tokens 0: must be a whole number, at least 1"),
        (_body(messages=[{"role": "user", "content": 5}]), "messages[0].content: must be"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_a_bad_body_is_400_and_charges_nothing(serve, body, message):
    server, client = serve(LlmConfig(**SLOW))
    answer = client.post(CHAT, json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert message in answer.json()["error"]["message"]
    stats = server.stats()
    assert (stats["bad_requests"], stats["requests"], stats["llm"]["tokens_reserved"]) == (1, 0, 0)


def test_content_parts_and_max_completion_tokens_are_read(serve):
    _, client = serve(LlmConfig(**SLOW))
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcd"}] * 3}]
    body = {"messages": parts, "max_completion_tokens": 10}
    answer = client.post(CHAT, json=body)
    usage = answer.json()["usage"]
    assert usage["prompt_tokens"] == 3 + 3 + 3
    assert 1 <= usage["completion_tokens"] <= 6  # at most 0.6 x max_completion_tokens
    assert answer.headers["x-ratelimit-remaining-tokens"] == str(1000 - usage["total_tokens"])


def test_injected_failures_refund_the_whole_completion(serve):
    server, client = serve(LlmConfig(**SLOW), error_rate=1.0)
    answer = client.post(CHAT, json=_body(max_tokens=100))
    assert answer.status_code == 500
    assert answer.json()["error"]["type"] == "server_error"
    assert answer.headers["x-ratelimit-remaining-tokens"] == str(1000 - 9)
    llm = server.stats()["llm"]
    assert (llm["tokens_used"], llm["tokens_refunded"], llm["requests_answered"]) == (9, 100, 0)


def test_the_anthropic_flavour_serves_messages_with_its_usage_and_headers(serve):
    _, client = serve(LlmConfig(**SLOW, flavour="anthropic"))
    body = {"model": "claude", "system": "Be brief.", "messages": HELLO, "max_tokens": 50}
    answer = client.post("/v1/messages", json=body)
    assert answer.status_code == 200
    usage = answer.json()["usage"]
    assert usage["input_tokens"] == 3 + (3 + 3) + (3 + 3)
    assert 1 <= usage["output_tokens"] <= 30
    spent = usage["input_tokens"] + usage["output_tokens"]
    assert answer.headers["anthropic-ratelimit-tokens-remaining"] == str(1000 - spent)
    assert answer.headers["anthropic-ratelimit-requests-reset"].endswith("+00:00")
    assert client.post(CHAT, json=_body()).status_code == 404
    missing = client.post("/v1/messages", json={"messages": HELLO})
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"


def test_a_greedy_client_that_obeys_retry_after_ms_gets_the_token_rate_and_no_more(serve):
    # 60,000 tokens a minute (1000 a second) from a bucket of 500: each call reserves 209 and
    # uses about 39, so tokens bind long before requests.
    server, client = serve(
        LlmConfig(requests_per_min=60_000, tokens_per_min=60_000, tokens_burst=500)
    )
    deadline = time.monotonic() + 1.5
    refused = 0
    while time.monotonic() < deadline:
        answer = client.post(CHAT, json=_body(max_tokens=200))
        if answer.status_code == 429:
            refused += 1
            time.sleep(int(answer.headers["retry-after-ms"]) / 1000)
        else:
            assert answer.status_code == 200
    llm = server.stats()["llm"]
    assert llm["throttled_429_tokens"] == refused
    assert llm["throttled_429_requests"] == 0
    span_s = llm["admitted_span_s"]
    # The server's guarantee, exact: never more than the burst plus the refill.
    assert llm["tokens_used"] <= 500 + 1000 * span_s + 209
    assert llm["max_tokens_used_in_any_s"] <= 500 + 1000
    # The client's share: a loose floor here, on a busy machine; benchmarks measure the ratio.
    assert llm["tokens_used"] >= 0.5 * 1000 * span_s


def test_a_spawned_server_serves_the_llm_mode_too():
    config = ApiConfig(base_latency_s=0, llm=LlmConfig(**SLOW))
    with ApiServer.spawn(config) as server, httpx.Client(base_url=server.url) as client:
        assert client.post(CHAT, json=_body()).status_code == 200
        llm = server.stats()["llm"]
    assert (llm["requests_admitted"], llm["tokens_per_min"], llm["tokens_burst"]) == (1, 1, 1000)


def test_concurrent_calls_add_up_the_same_on_both_sides(serve):
    # Eight clients at once, with answers that take time to generate: every token the answers
    # report is a token the server counted, and every reservation is either used or refunded.
    server, _client = serve(
        LlmConfig(requests_per_min=60_000, tokens_per_min=600_000, output_token_s=0.0001),
        capacity=4,
    )
    totals: list[int] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as own:
            for _ in range(15):
                answer = own.post(CHAT, json=_body(max_tokens=50, n=2))
                with lock:
                    statuses.append(answer.status_code)
                    if answer.status_code == 200:
                        totals.append(answer.json()["usage"]["total_tokens"])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stats = server.stats()
    llm = stats["llm"]
    assert len(statuses) == 120
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) == stats["overloaded_503"]
    assert llm["requests_admitted"] == 120
    assert llm["requests_answered"] == len(totals) == stats["accepted"]
    assert llm["tokens_reserved"] == 120 * (9 + 100)
    assert llm["tokens_reserved"] - llm["tokens_refunded"] == llm["tokens_used"]
    # a 503 keeps its prompt charged and nothing else
    assert llm["tokens_used"] == sum(totals) + 9 * statuses.count(503)
    assert stats["max_in_flight"] <= 4


def test_reset_forgets_the_llm_counts_and_fills_the_buckets(serve):
    server, client = serve(LlmConfig(**SLOW))
    client.post(CHAT, json=_body())
    assert server.stats()["llm"]["requests_admitted"] == 1
    server.reset()
    assert server.stats()["llm"]["requests_admitted"] == 0
    answer = client.post(CHAT, json=_body())
    assert answer.headers["x-ratelimit-remaining-requests"] == "99"
    assert answer.headers["x-ratelimit-remaining-tokens"] == str(
        1000 - answer.json()["usage"]["total_tokens"]
    )
