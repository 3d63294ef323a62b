"""W4 rate accuracy: 800 no-op calls at a limit of 200 per 1 s, concurrency unbounded.

Each call records its start (``time.monotonic_ns``) inside the operation. Figures:

- ``rate``: steady rate / 200, where steady rate = ``(n - B) / (t_last - t_first)`` and ``B``
  is the tool's initial burst (``B = 200`` for tools that grant the whole first window at once,
  ``B = 1`` for evenly paced ones): the first B starts are free, the rest arrive at the rate.
- ``max_1s`` / ``max_100ms``: most starts in any half-open window ``[t, t + W)``, exact.
- ``tightest_ms``: the shortest span holding 201 starts (a strict limiter keeps it ≥ 1000 ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from workloads import Target, Tool, Workload
from workloads import impls as I
from workloads.common import (
    NEVER_BINDS,
    W4_LIMIT,
    W4_WINDOW_S,
    Figures,
    Sizes,
    WrongAnswer,
    check_in_order,
    max_in_window,
    noop,
    settle,
    tightest_span,
)

NS = 1_000_000_000
WARMUP_ITEMS = 50

AsyncOp = Callable[[Any], Awaitable[Any]]
Impl = Callable[[list[int], AsyncOp], Awaitable[list[Any]]]
MakeImpl = Callable[[int], tuple[Impl, Callable[[], None]]]
"""``make(limit)`` -> (a runner limited to ``limit`` per W4_WINDOW_S, its cleanup)."""


def measure_rate(make: MakeImpl, n: int, burst: int) -> Figures:
    keys = list(range(n))
    starts: list[int] = []

    async def recorded(x: int) -> int:
        starts.append(time.monotonic_ns())
        return x

    async def main() -> Figures:
        warm, close = make(NEVER_BINDS)
        check_in_order(await warm(keys[:WARMUP_ITEMS], noop), keys[:WARMUP_ITEMS])
        close()
        run, close = make(W4_LIMIT)
        settle()
        try:
            values = await run(keys, recorded)
        finally:
            close()
        check_in_order(values, keys)
        if len(starts) != n:
            raise WrongAnswer(f"{len(starts)} starts recorded for {n} calls")
        first, last = min(starts), max(starts)
        steady = (n - burst) / ((last - first) / NS)
        return {
            "rate": steady / (W4_LIMIT / W4_WINDOW_S),
            "max_1s": max_in_window(starts, round(W4_WINDOW_S * NS)),
            "max_100ms": max_in_window(starts, round(W4_WINDOW_S * NS / 10)),
            "tightest_ms": (tightest_span(starts, W4_LIMIT + 1) or 0) / 1e6,
            "seconds": (last - first) / NS,
            "burst": burst,
            "items": n,
        }

    return asyncio.run(main())


def _nothing() -> None:
    return None


def _paceline(burst: int | None) -> MakeImpl:
    def make(limit: int) -> tuple[Impl, Callable[[], None]]:
        import paceline

        limiter = paceline.RateLimiter(limit, W4_WINDOW_S, burst=burst)
        return (lambda keys, op: I.paceline_batch(keys, op, None, limiter)), _nothing

    return make


def _aiometer(limit: int) -> tuple[Impl, Callable[[], None]]:
    return (lambda keys, op: I.aiometer_run_all(keys, op, None, limit / W4_WINDOW_S)), _nothing


def _aiolimiter(limit: int) -> tuple[Impl, Callable[[], None]]:
    def run(keys: list[int], op: AsyncOp) -> Awaitable[list[Any]]:
        return I.gather_semaphore(keys, I.aiolimiter_wrap(op, limit, W4_WINDOW_S), None)

    return run, _nothing


def _pyrate(limit: int) -> tuple[Impl, Callable[[], None]]:
    closers: list[Callable[[], None]] = []

    def run(keys: list[int], op: AsyncOp) -> Awaitable[list[Any]]:
        limited, close = I.pyrate_wrap(op, limit, W4_WINDOW_S)
        closers.append(close)
        return I.gather_semaphore(keys, limited, None)

    def close_all() -> None:
        for close in closers:
            close()

    return run, close_all


def _run(make: MakeImpl, burst: int) -> Callable[[Sizes], Figures]:
    return lambda sizes: measure_rate(make, sizes.w4_items, burst)


def describe(f: Figures) -> str:
    over = ""
    if f["max_1s"] > W4_LIMIT:
        over = f" OVER LIMIT ({W4_LIMIT + 1} within {f['tightest_ms']:.3f} ms)"
    return (
        f"rate {f['rate']:.3f}, max/1s {f['max_1s']}{over}, max/0.1s {f['max_100ms']} "
        f"(B={f['burst']})"
    )


def _strict(max_per_100ms: int | None) -> Target:
    def check(f: Figures, _ratio: float | None) -> tuple[bool, str]:
        ok = f["rate"] >= 0.99 and f["max_1s"] <= W4_LIMIT
        text = f"rate {f['rate']:.3f} (≥ 0.99), max/1s {f['max_1s']} (≤ {W4_LIMIT})"
        if max_per_100ms is not None:
            ok = ok and f["max_100ms"] <= max_per_100ms
            text += f", max/0.1s {f['max_100ms']} (≤ {max_per_100ms})"
        return ok, text

    spec = "≥0.99, ≤200/1s" + (f", ≤{max_per_100ms}/0.1s" if max_per_100ms else "")
    return Target(spec, check)


WORKLOAD = Workload(
    key="W4",
    title="rate accuracy",
    main="rate",
    describe=describe,
    worst=("max_1s", "max_100ms"),
    lowest=("tightest_ms",),
    tools=[
        Tool(
            "paceline",
            "paceline RateLimiter(200, 1.0)",
            _run(_paceline(None), W4_LIMIT),
            "paceline",
            None,
            _strict(None),
        ),
        Tool(
            "paceline-burst1",
            "paceline RateLimiter(200, 1.0, burst=1)",
            _run(_paceline(1), 1),
            "paceline",
            None,
            _strict(21),
        ),
        Tool("aiometer", "aiometer max_per_second=200", _run(_aiometer, 1), "aiometer"),
        Tool(
            "aiolimiter",
            "aiolimiter AsyncLimiter(200, 1)",
            _run(_aiolimiter, W4_LIMIT),
            "aiolimiter",
        ),
        Tool(
            "pyrate",
            "pyrate-limiter Limiter(Rate(200, 1 s))",
            _run(_pyrate, W4_LIMIT),
            "pyrate-limiter",
        ),
    ],
)
