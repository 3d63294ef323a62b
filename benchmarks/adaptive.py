"""Adaptive control against the test API (issue 4's scenarios), the server in its own process.

usage: benchmarks/.venv/bin/python benchmarks/adaptive.py [--short]

Each scenario streams an endless input of GETs through paceline.http for a fixed time and
reads what the *server* saw: accepted requests against the quota over that time, the share
answered 429/503, and the most accepted in any window.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from paceline.http import stream_requests
from paceline.http._pool import ShardedTransport
from paceline.policy.retry import RetryPolicy
from paceline.testing.api_server import ApiConfig, ApiServer

RETRY = RetryPolicy(attempts=100, base_s=0.05, cap_s=2.0)


@dataclass
class Scenario:
    name: str
    config: ApiConfig
    seconds: float
    target: str


class AnswerLog:
    """httpx event hooks: 429s answered to requests sent after the first answer came."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.first_answer: float | None = None
        self.late_429 = 0

    async def on_request(self, request: httpx.Request) -> None:
        self.sent[id(request)] = time.monotonic()

    async def on_response(self, response: httpx.Response) -> None:
        sent = self.sent.pop(id(response.request), 0.0)
        if self.first_answer is None:
            self.first_answer = time.monotonic()
        elif response.status_code == 429 and sent > self.first_answer:
            self.late_429 += 1


async def drive(url: str, seconds: float, log: AnswerLog) -> int:
    urls = (f"{url}/items/{i}" for i in itertools.count())
    done = 0
    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [log.on_request],
        "response": [log.on_response],
    }
    # The client paceline would make (its split pool, at its most concurrency), plus the hooks.
    client = httpx.AsyncClient(transport=ShardedTransport(256), event_hooks=hooks)
    async with client:
        async for _ in stream_requests(urls, deadline_s=seconds, retry=RETRY, client=client):
            done += 1
    return done


def run(scenario: Scenario) -> str:
    log = AnswerLog()
    with ApiServer.spawn(scenario.config) as server:
        started = time.monotonic()
        asyncio.run(drive(server.url, scenario.seconds, log))
        elapsed = time.monotonic() - started
        stats = server.stats()
    config = scenario.config
    requests = max(1, stats["requests"])
    parts = []
    if config.quota is not None:
        share = stats["accepted"] / (config.quota / config.window_s * elapsed)
        parts.append(f"{share:.3f} of the quota")
        parts.append(f"max {stats['max_accepted_in_any_window']}/{config.quota} per window")
    else:
        parts.append(f"{stats['accepted'] / elapsed:.0f} accepted/s")
        if config.capacity is not None:
            # What the server can serve at best: the most requests per second any number in
            # flight up to the capacity gets through, given how latency grows with load.
            best = max(n / config.latency_s(n) for n in range(1, config.capacity + 1))
            parts.append(f"{stats['accepted'] / elapsed / best:.2f} of capacity ({best:.0f}/s)")
    parts.append(
        f"429 {stats['throttled_429'] / requests:.1%} ({log.late_429} after the 1st answer)"
    )
    parts.append(f"503 {stats['overloaded_503'] / requests:.1%}")
    if stats.get("latency_p50_s"):
        parts.append(f"p50 {stats['latency_p50_s'] * 1000:.1f} ms")
    return f"{scenario.name:<44} {', '.join(parts)}   (target: {scenario.target})"


async def plain_httpx(url: str, seconds: float, concurrency: int, pooled: bool = False) -> int:
    """What a user writes: one httpx client, a semaphore, workers. ``pooled``: the same over
    paceline's split connection pool (to tell the pool's gain from the rest of paceline)."""
    sem = asyncio.Semaphore(concurrency)
    done = 0
    deadline = time.monotonic() + seconds
    client = (
        httpx.AsyncClient(transport=ShardedTransport(concurrency))
        if pooled
        else httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency))
    )
    async with client:

        async def worker() -> None:
            nonlocal done
            for i in itertools.count():
                if time.monotonic() >= deadline:
                    return
                async with sem:
                    response = await client.get(f"{url}/items/{i}")
                    response.raise_for_status()
                    done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def plain_httpx_pooled(url: str, seconds: float, concurrency: int) -> int:
    return await plain_httpx(url, seconds, concurrency, pooled=True)


async def paceline_fixed(url: str, seconds: float, concurrency: int) -> int:
    urls = (f"{url}/items/{i}" for i in itertools.count())
    done = 0
    async for _ in stream_requests(
        urls, deadline_s=seconds, max_concurrent=concurrency, adaptive=False, ordered=False
    ):
        done += 1
    return done


CLIENTS = {
    "paceline.http": paceline_fixed,
    "httpx+semaphore": plain_httpx,
    "the same over paceline's pool": plain_httpx_pooled,
}


def unlimited(seconds: float, concurrency: int, reps: int = 5) -> str:
    """The clients against one server, interleaved ``reps`` times; medians compared, of the
    throughput and of the client's CPU time per request (steadier on a noisy machine: single
    runs on fresh servers swung between 0.88x and 1.14x here)."""
    config = ApiConfig(base_latency_s=0.002)
    rates: dict[str, list[float]] = {name: [] for name in CLIENTS}
    cpu_us: dict[str, list[float]] = {name: [] for name in CLIENTS}
    with ApiServer.spawn(config) as server:
        for _ in range(reps):
            for name, fn in CLIENTS.items():
                started, cpu = time.monotonic(), time.process_time()
                done = asyncio.run(fn(server.url, seconds, concurrency))
                rates[name].append(done / (time.monotonic() - started))
                cpu_us[name].append((time.process_time() - cpu) / max(1, done) * 1e6)
    rate = {name: statistics.median(values) for name, values in rates.items()}
    cpu = {name: statistics.median(values) for name, values in cpu_us.items()}
    ours = "paceline.http"
    lines = [
        f"{f'no limit, concurrency {concurrency}':<44} {ours} {rate[ours]:.0f}/s, "
        f"client CPU {cpu[ours]:.0f} us per request (medians of {reps})   (target: >= 0.95x)"
    ]
    for name in list(CLIENTS)[1:]:
        lines.append(
            f"{'':<44} vs {name}: {rate[name]:.0f}/s -> {rate[ours] / rate[name]:.2f}x the "
            f"throughput; CPU {cpu[name]:.0f} us -> {cpu[ours] / cpu[name]:.2f}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="10 s scenarios (smoke test)")
    parser.add_argument("--only", help="run the scenarios whose name contains this")
    args = parser.parse_args()
    scale = 10 / 60 if args.short else 1.0
    scenarios = [
        Scenario(
            "hidden quota 100/s, Retry-After",
            ApiConfig(quota=100, window_s=1.0, retry_after=True),
            60 * scale,
            ">= 0.93 of quota, <= 2% 429",
        ),
        Scenario(
            "hidden quota 100/s, no Retry-After",
            ApiConfig(quota=100, window_s=1.0),
            60 * scale,
            ">= 0.88, <= 2% 429",
        ),
        Scenario(
            "quota 100/s announced by RateLimit-Policy",
            ApiConfig(quota=100, window_s=1.0, headers="ietf"),
            60 * scale,
            ">= 0.98, no 429 after the first answer",
        ),
        Scenario(
            "quota 100/s by RateLimit-Policy, 0-20 ms delay",
            ApiConfig(quota=100, window_s=1.0, headers="ietf", network_delay_s=0.02),
            60 * scale,
            "no 429 after the first answer (the cost: the round trip)",
        ),
        Scenario(
            "long window 600 per 60 s, Retry-After",
            ApiConfig(quota=600, window_s=60.0, retry_after=True),
            180 * scale,
            ">= 0.85, <= 2% 429",
        ),
        Scenario(
            "long window 600 per 60 s, no Retry-After",
            ApiConfig(quota=600, window_s=60.0),
            180 * scale,
            ">= 0.85, <= 2% 429",
        ),
        Scenario(
            "capacity 16 in flight, no quota",
            ApiConfig(capacity=16, base_latency_s=0.01),
            30 * scale,
            ">= 0.8 of capacity, <= 2% 503, p50 <= 1.5x unloaded (10 ms)",
        ),
        Scenario(
            # The same limit at an API's usual latency: a capacity the client can reach (httpx
            # alone tops out near 400 requests/s on a 2-core machine), so this measures the
            # controller rather than the HTTP client.
            "capacity 16 in flight, 50 ms, no quota",
            ApiConfig(capacity=16, base_latency_s=0.05),
            30 * scale,
            ">= 0.8 of capacity, <= 2% 503, p50 <= 1.5x unloaded (50 ms)",
        ),
    ]
    if args.only:
        scenarios = [s for s in scenarios if args.only in s.name]
    print(time.strftime("adaptive scenarios — %Y-%m-%d %H:%M"), flush=True)
    for scenario in scenarios:
        print(run(scenario), flush=True)
    if not args.only or args.only in "no limit":
        for concurrency in (32, 10, 100):
            print(unlimited(8 * scale, concurrency), flush=True)


if __name__ == "__main__":
    main()
