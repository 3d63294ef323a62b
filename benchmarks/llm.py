"""Costs in tokens against the test API's LLM mode (issue 13): the two targets, side by side.

The server (its own process, on loopback) is an OpenAI-style chat API: 300,000 tokens a minute
(5,000 a second) in a bucket of 25,000, 60,000 requests a minute (they never bind). Each call
asks for ``max_tokens`` 300 with a 9-token prompt: the server reserves 309 at admission and
refunds what the answer did not use (about 99 used on average: completion ratio 0.3), so
about 50 calls a second fill the limit (a rate the client keeps up with on a shared core).

1. **Explicit limits** (``RateLimiter.from_rates("2500/5s", "tokens:25000/5s")``, the server's
   limit headers hidden): each request reserves its estimate (309) and, with settling, the
   answer's ``usage.total_tokens`` settles it. Figure: the tokens the server saw used after the
   first window, per complete window, over the limit (25,000 per 5 s); 429s (target: zero, and
   >= 0.95 with settling). Without settling the estimate stays charged, so the same batch runs
   at about actual/estimate of the limit (0.32 here).
2. **Limits only in headers** (no rate limiter; ``x-ratelimit-*-tokens`` announced): the
   requests carry their cost, which lets the headers' token limit hold them (paceline.http's
   ``ServerLimits``), against the same batch without costs (requests only: adaptive control
   finds the pace from 429s). Figures: the share of requests answered 429 (target <= 1 %
   after the first answer; the figure counts every 429, the stricter measure) and the tokens
   used over what the bucket allowed in the span (its 25,000 plus 5,000 a second; target
   >= 0.9).

    .venv/bin/python benchmarks/llm.py [--reps 1]      # about a minute a rep
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from typing import Any

from paceline import RateLimiter
from paceline.http import fetch_all, request_cost
from paceline.testing.api_server import ApiConfig, ApiServer, LlmConfig

TOKENS_PER_MIN = 300_000
TOKENS_BURST = 25_000
WINDOW_S = 5.0
TOKENS_PER_WINDOW = 25_000  # the bucket as a strict window: never overdraws it (docs/units.md)
MAX_TOKENS = 300
ESTIMATE = 9 + MAX_TOKENS  # the prompt's tokens and max_tokens: what the server reserves
LLM = LlmConfig(requests_per_min=60_000, tokens_per_min=TOKENS_PER_MIN, tokens_burst=TOKENS_BURST)


def _chat(i: int) -> dict[str, Any]:
    body = {
        "model": "t",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": MAX_TOKENS,
    }
    return {
        "url": "/v1/chat/completions",
        "method": "POST",
        "json": body,
        "id": f"c{i}",
        "cost": {"tokens": ESTIMATE},
    }


def _window_share(admissions: list[list[float]]) -> float:
    """Tokens used in the complete windows after the first, over the limit for them."""
    start = admissions[0][0]
    windows = int((admissions[-1][0] - start) // WINDOW_S)
    if windows < 2:
        return float("nan")
    end = start + windows * WINDOW_S
    used = sum(u for t, _r, u in admissions if start + WINDOW_S <= t < end)
    return used / (TOKENS_PER_WINDOW * (windows - 1))


def _throttled(stats: dict[str, Any]) -> int:
    return int(stats["throttled_429_tokens"] + stats["throttled_429_requests"])


async def explicit(items: int, settle: bool) -> dict[str, float]:
    config = ApiConfig(base_latency_s=0.01, llm=dataclasses.replace(LLM, announce=False), seed=13)
    with ApiServer.spawn(config) as server:
        limiter = RateLimiter.from_rates("2500/5s", f"tokens:{TOKENS_PER_WINDOW}/5s")
        results = await fetch_all(
            [_chat(i) for i in range(items)],
            base_url=server.url,
            rate_limiter=limiter,
            max_concurrent=16,
            **({} if settle else {"actual_cost": lambda _answer: None}),
        )
        stats = (await asyncio.to_thread(server.stats, True))["llm"]
    assert all(r.is_success for r in results)
    return {"share": _window_share(stats["admissions"]), "429": _throttled(stats)}


async def headers_only(items: int, costs: bool) -> dict[str, float]:
    config = ApiConfig(base_latency_s=0.01, llm=LLM, seed=13)
    with ApiServer.spawn(config) as server:
        started = time.monotonic()
        results = await fetch_all(
            [_chat(i) for i in range(items)],
            base_url=server.url,
            cost=request_cost if costs else None,
        )
        elapsed_s = time.monotonic() - started
        stats = (await asyncio.to_thread(server.stats))["llm"]
    assert all(r.is_success for r in results)
    allowed = TOKENS_BURST + TOKENS_PER_MIN / 60 * stats["admitted_span_s"]
    sent = stats["requests_admitted"] + _throttled(stats)
    return {
        "share": stats["tokens_used"] / allowed,
        "429": _throttled(stats),
        "429_share": _throttled(stats) / sent,
        "elapsed_s": elapsed_s,
    }


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for label, run in (
        ("explicit limits, settled", lambda: explicit(1000, settle=True)),
        ("explicit limits, not settled", lambda: explicit(330, settle=False)),
    ):
        runs = [asyncio.run(run()) for _ in range(args.reps)]
        rows.append((label, _median(runs, "share"), _median(runs, "429"), ""))
    for label, costs in (("headers only, costs", True), ("headers only, no costs", False)):
        runs = [asyncio.run(headers_only(500, costs)) for _ in range(args.reps)]
        share_429 = f"{_median(runs, '429_share'):.3f}"
        rows.append((label, _median(runs, "share"), _median(runs, "429"), share_429))
    print(f"{'run':32} {'of the token limit':>18} {'429s':>6} {'429 share':>10}")
    for label, share, throttled, share_429 in rows:
        print(f"{label:32} {share:18.3f} {throttled:6.0f} {share_429:>10}")


if __name__ == "__main__":
    main()
