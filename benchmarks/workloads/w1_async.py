"""W1 async overhead: 100,000 no-op async calls, concurrency 100, results in input order."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

from workloads import Tool, Workload, ratio_at_most
from workloads import impls as I
from workloads.common import (
    W1_CONCURRENCY,
    Figures,
    Sizes,
    check_in_order,
    more_runs,
    noop,
    per_item,
    timed,
)

WARMUP_ITEMS = 2_000

Impl = Callable[[list[int]], Awaitable[list[Any]]]


def measure_overhead(make: Callable[[], Impl], n: int) -> Figures:
    """Warm up on a small batch, then time batches of ``n`` keys (see ``more_runs``),
    checking every result of every batch.

    ``make()`` builds a fresh runner (and limiter, if any) for each batch.
    """
    keys = list(range(n))

    async def main() -> Figures:
        check_in_order(await make()(keys[:WARMUP_ITEMS]), keys[:WARMUP_ITEMS])
        times: list[float] = []
        while more_runs(times):
            run = make()
            elapsed, values = await timed(run, keys)
            check_in_order(values, keys)
            times.append(elapsed)
        return per_item(times, n)

    return asyncio.run(main())


MakeImpl = Callable[[], Impl]

PAIRED_BUDGET_S = 2.0
PAIRED_MIN = 2
PAIRED_MAX = 7


def measure_paired(plain: MakeImpl, variant: MakeImpl, n: int) -> Figures:
    """The paired measurement of W6 and W7: time ``plain`` and ``variant`` batches
    alternately, ABBA (at least two pairs, then until about 2 s of batches or 7 pairs),
    checking every result; report both medians and their ratio (``paired_ratio``)."""
    keys = list(range(n))

    async def main() -> Figures:
        for make in (plain, variant):
            check_in_order(await make()(keys[:WARMUP_ITEMS]), keys[:WARMUP_ITEMS])
        times: dict[str, list[float]] = {"plain": [], "variant": []}
        pair = 0
        while pair < PAIRED_MIN or (
            pair < PAIRED_MAX and sum(map(sum, times.values())) < PAIRED_BUDGET_S
        ):
            order = ("plain", "variant") if pair % 2 == 0 else ("variant", "plain")
            for name in order:
                run = (plain if name == "plain" else variant)()
                elapsed, values = await timed(run, keys)
                check_in_order(values, keys)
                times[name].append(elapsed)
            pair += 1
        with_variant = statistics.median(times["variant"])
        without = statistics.median(times["plain"])
        return {
            "us_per_item": with_variant / n * 1e6,
            "us_per_item_plain": without / n * 1e6,
            "paired_ratio": with_variant / without,
            "pairs": pair,
            "items": n,
        }

    return asyncio.run(main())


def _gather(sizes: Sizes) -> Figures:
    return measure_overhead(
        lambda: lambda k: I.gather_semaphore(k, noop, W1_CONCURRENCY), sizes.w1_items
    )


def _floor(sizes: Sizes) -> Figures:
    return measure_overhead(
        lambda: lambda k: I.worker_pool(k, noop, W1_CONCURRENCY), sizes.w1_items
    )


def _paceline(sizes: Sizes) -> Figures:
    return measure_overhead(
        lambda: lambda k: I.paceline_batch(k, noop, W1_CONCURRENCY), sizes.w1_items
    )


def _aiometer(sizes: Sizes) -> Figures:
    return measure_overhead(
        lambda: lambda k: I.aiometer_run_all(k, noop, W1_CONCURRENCY), sizes.w1_items
    )


def _anyio(sizes: Sizes) -> Figures:
    return measure_overhead(
        lambda: lambda k: I.anyio_task_group(k, noop, W1_CONCURRENCY), sizes.w1_items
    )


def describe(f: Figures) -> str:
    return f"{f['us_per_item']:.2f} µs/item"


BASE = ("W1", "gather")
WORKLOAD = Workload(
    key="W1",
    title="async overhead",
    main="us_per_item",
    describe=describe,
    tools=[
        Tool("gather", "asyncio Semaphore+gather (baseline)", _gather, None, BASE),
        Tool(
            "paceline", "paceline.batch_execute", _paceline, "paceline", BASE, ratio_at_most(0.35)
        ),
        Tool("aiometer", "aiometer.run_all(max_at_once)", _aiometer, "aiometer", BASE),
        Tool("anyio", "anyio task group+CapacityLimiter", _anyio, "anyio", BASE),
        Tool("floor", "reference floor: 100 bare worker coroutines", _floor, None, BASE),
    ],
)
