"""W2 sync overhead: 20,000 no-op sync callables on 8 threads, results in input order."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from workloads import Tool, Workload, ratio_at_most
from workloads.common import (
    W2_THREADS,
    Figures,
    Sizes,
    WrongAnswer,
    check_in_order,
    identity,
    more_runs,
    per_item,
    settle,
)

WARMUP_ITEMS = 500

Task = Callable[[], Any]
Runner = Callable[[list[Task]], list[Any]]


def _call(task: Task) -> Any:
    return task()


def measure_threads(run: Runner, n: int) -> Figures:
    """Warm up, then time ``run`` over ``n`` zero-argument callables (pool start and shutdown
    included, as every tool here starts its threads per batch; see :func:`more_runs`) and
    check every result."""
    tasks: list[Task] = [functools.partial(identity, i) for i in range(n)]
    expected = list(range(n))
    check_in_order(run(tasks[:WARMUP_ITEMS]), expected[:WARMUP_ITEMS])
    times: list[float] = []
    while more_runs(times):
        settle()
        start = time.perf_counter()
        values = run(tasks)
        times.append(time.perf_counter() - start)
        check_in_order(values, expected)
    return per_item(times, n)


def _tpe_map(tasks: list[Task]) -> list[Any]:
    with ThreadPoolExecutor(W2_THREADS) as pool:
        return list(pool.map(_call, tasks))


def _paceline_executor(tasks: list[Task]) -> list[Any]:
    import paceline

    result = paceline.BatchExecutor(stop_on_error=False, max_workers=W2_THREADS).execute_batch(
        tasks
    )
    for item in result:
        if not item.success:
            raise WrongAnswer(f"item {item.item_id} failed: {item.error}")
    return list(result.results)


def _anyio_to_thread(tasks: list[Task]) -> list[Any]:
    import anyio
    import anyio.to_thread

    async def main() -> list[Any]:
        limiter = anyio.CapacityLimiter(W2_THREADS)
        results: list[Any] = [None] * len(tasks)

        async def one(i: int, task: Task) -> None:
            results[i] = await anyio.to_thread.run_sync(task, limiter=limiter)

        async with anyio.create_task_group() as tg:
            for i, task in enumerate(tasks):
                tg.start_soon(one, i, task)
        return results

    return asyncio.run(main())


def _run(runner: Runner) -> Callable[[Sizes], Figures]:
    return lambda sizes: measure_threads(runner, sizes.w2_items)


def describe(f: Figures) -> str:
    return f"{f['us_per_item']:.2f} µs/item"


BASE = ("W2", "tpe")
WORKLOAD = Workload(
    key="W2",
    title="sync overhead",
    main="us_per_item",
    describe=describe,
    tools=[
        Tool("tpe", "ThreadPoolExecutor(8).map (baseline)", _run(_tpe_map), None, BASE),
        Tool(
            "paceline",
            "paceline.BatchExecutor(max_workers=8)",
            _run(_paceline_executor),
            "paceline",
            BASE,
            ratio_at_most(1.25),
        ),
        Tool(
            "anyio", "anyio to_thread.run_sync (limiter 8)", _run(_anyio_to_thread), "anyio", BASE
        ),
    ],
)
