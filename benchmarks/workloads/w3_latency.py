"""W3 latency-bound: 2,000 calls of ``await asyncio.sleep(0.01)``, concurrency 50.

The ideal is ``items / concurrency * 0.01 s`` (0.4 s); efficiency = ideal / actual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from workloads import Target, Tool, Workload
from workloads import impls as I
from workloads.common import (
    W3_CONCURRENCY,
    W3_SLEEP_S,
    Figures,
    Sizes,
    check_in_order,
    timed,
)

WARMUP_ITEMS = 200

Impl = Callable[[list[int], Callable[[Any], Awaitable[Any]], int], Awaitable[list[Any]]]


async def sleepy(x: int) -> int:
    await asyncio.sleep(W3_SLEEP_S)
    return x


async def _instant(x: int) -> int:
    await asyncio.sleep(0)
    return x


def measure_latency(impl: Impl, n: int) -> Figures:
    keys = list(range(n))
    ideal = n / W3_CONCURRENCY * W3_SLEEP_S

    async def main() -> Figures:
        check_in_order(
            await impl(keys[:WARMUP_ITEMS], _instant, W3_CONCURRENCY), keys[:WARMUP_ITEMS]
        )
        elapsed, values = await timed(impl, keys, sleepy, W3_CONCURRENCY)
        check_in_order(values, keys)
        return {"efficiency": ideal / elapsed, "seconds": elapsed, "ideal": ideal, "items": n}

    return asyncio.run(main())


def _run(impl: Impl) -> Callable[[Sizes], Figures]:
    return lambda sizes: measure_latency(impl, sizes.w3_items)


def describe(f: Figures) -> str:
    return f"efficiency {f['efficiency']:.3f} ({f['seconds']:.3f} s)"


def _at_least(floor: float) -> Target:
    def check(f: Figures, _ratio: float | None) -> tuple[bool, str]:
        return f["efficiency"] >= floor, f"{f['efficiency']:.3f} (target ≥ {floor:.2f})"

    return Target(f"≥ {floor:.2f}", check)


BASE = ("W3", "gather")
WORKLOAD = Workload(
    key="W3",
    title="latency-bound",
    main="efficiency",
    describe=describe,
    tools=[
        Tool("gather", "asyncio Semaphore+gather (baseline)", _run(I.gather_semaphore), None, BASE),
        Tool(
            "paceline",
            "paceline.batch_execute",
            _run(I.paceline_batch),
            "paceline",
            BASE,
            _at_least(0.95),
        ),
        Tool(
            "aiometer", "aiometer.run_all(max_at_once)", _run(I.aiometer_run_all), "aiometer", BASE
        ),
        Tool("anyio", "anyio task group+CapacityLimiter", _run(I.anyio_task_group), "anyio", BASE),
        Tool(
            "floor", "reference floor: 50 bare worker coroutines", _run(I.worker_pool), None, BASE
        ),
    ],
)
