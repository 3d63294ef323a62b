"""W5 streaming memory: 1,000,000 items from a generator, no-op work, concurrency 100,
results consumed as a stream.

Figures: peak RSS growth (MiB) over the RSS after imports and a warm-up (the kernel's peak
mark is reset there), and the most items read from the generator ahead of the results the
consumer had received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

from workloads import Target, Tool, Workload
from workloads import impls as I
from workloads.common import (
    W5_CONCURRENCY,
    Figures,
    Sizes,
    WrongAnswer,
    noop,
    peak_rss_growth_mib,
    reset_peak_rss,
)

WARMUP_ITEMS = 2_000


class ReadAhead:
    """Counts items pulled from the input against results received by the consumer."""

    def __init__(self) -> None:
        self.pulled = 0
        self.received = 0
        self.max_ahead = 0

    def source(self, n: int) -> Iterator[int]:
        for i in range(n):
            self.pulled += 1
            ahead = self.pulled - self.received
            if ahead > self.max_ahead:
                self.max_ahead = ahead
            yield i


class Seen:
    """Checks an unordered stream: every index exactly once (a byte per item)."""

    def __init__(self, n: int) -> None:
        self.flags = bytearray(n)

    def mark(self, index: int, value: object) -> None:
        if value != index:
            raise WrongAnswer(f"result for item {index} is {value!r}")
        if self.flags[index]:
            raise WrongAnswer(f"item {index} delivered twice")
        self.flags[index] = 1

    def check_all(self) -> None:
        missing = self.flags.count(0)
        if missing:
            raise WrongAnswer(f"{missing} results missing")


# A tool: consume the whole stream of results for `source`, calling `got(index, value)` per
# result; returns notes (e.g. "not lazy").
Consume = Callable[[Iterator[int], Callable[[int, object], None]], Any]


def measure_stream(consume: Consume, n: int, ordered: bool) -> Figures:
    async def main() -> Figures:
        warm = ReadAhead()
        await consume(warm.source(WARMUP_ITEMS), lambda _i, _v: None)
        seen = Seen(n) if not ordered else None
        counter = ReadAhead()
        expected = 0

        def got(index: int, value: object) -> None:
            nonlocal expected
            counter.received += 1
            if seen is not None:
                seen.mark(index, value)
                return
            if index != expected or value != expected:
                raise WrongAnswer(f"got item {index} = {value!r}, expected item {expected}")
            expected += 1

        baseline_kib = reset_peak_rss()
        start = time.perf_counter()
        notes = await consume(counter.source(n), got)
        elapsed = time.perf_counter() - start
        growth = peak_rss_growth_mib(baseline_kib)
        if seen is not None:
            seen.check_all()
        elif expected != n:
            raise WrongAnswer(f"{expected} results for {n} items")
        return {
            "rss_mib": growth,
            "read_ahead": counter.max_ahead,
            "seconds": elapsed,
            "items": n,
            "notes": notes or "",
        }

    return asyncio.run(main())


async def _paceline(source: Iterator[int], got: Callable[[int, object], None]) -> str:
    import paceline

    async for r in paceline.stream(source, noop, max_concurrent=W5_CONCURRENCY):
        if not r.success:
            raise WrongAnswer(f"item {r.index} failed: {r.error}")
        if r.index is None:
            raise WrongAnswer(f"item {r.item_id} has no index")
        got(r.index, r.result)
    return "lazy"


async def _gather(source: Iterator[int], got: Callable[[int, object], None]) -> str:
    results = await I.gather_semaphore(source, noop, W5_CONCURRENCY)
    for i, value in enumerate(results):
        got(i, value)
    return "not lazy: one task per item"


async def _aiometer(source: Iterator[int], got: Callable[[int, object], None]) -> str:
    import aiometer

    note = "not lazy"
    amap: Any = aiometer.amap  # typed for Sequence: the point is to try a generator
    try:
        async with amap(noop, source, max_at_once=W5_CONCURRENCY) as results:
            async for _ in results:
                raise WrongAnswer("aiometer.amap accepted a generator (update the note)")
    except TypeError:
        note = "not lazy: amap rejects generators (needs len()), given a list"
    args = list(source)
    async with aiometer.amap(
        noop, args, max_at_once=W5_CONCURRENCY, _include_index=True
    ) as indexed:
        async for index, value in indexed:
            got(index, value)
    return note


async def _anyio(source: Iterator[int], got: Callable[[int, object], None]) -> str:
    import math

    import anyio

    limiter = anyio.CapacityLimiter(W5_CONCURRENCY)
    send, receive = anyio.create_memory_object_stream[tuple[int, object]](math.inf)

    async def one(index: int, key: int) -> None:
        async with limiter:
            value = await noop(key)
        await send.send((index, value))

    async def consumer() -> None:
        async with receive:
            async for index, value in receive:
                got(index, value)

    async with anyio.create_task_group() as outer:
        outer.start_soon(consumer)
        async with send, anyio.create_task_group() as tg:
            for index, key in enumerate(source):
                tg.start_soon(one, index, key)
    return "not lazy: one task per item"


def _run(consume: Consume, ordered: bool, shrink: int = 1) -> Callable[[Sizes], Figures]:
    """``shrink``: run on ``1/shrink`` of the items (a peer too slow for the full size)."""

    def run(sizes: Sizes) -> Figures:
        figures = measure_stream(consume, sizes.w5_items // shrink, ordered)
        if shrink > 1:
            figures["notes"] += f"; {figures['items']:,} items only (1/{shrink} of W5)"
        return figures

    return run


# anyio's one-task-per-item idiom at the full 1,000,000 items took 108 s and 6,006 MiB here
# (one run, 2026-11-23): three repetitions would take most of the suite's time budget, and
# its memory grows linearly with the item count, so it runs on a fifth of them.
ANYIO_SHRINK = 5


def describe(f: Figures) -> str:
    return f"{f['rss_mib']:.1f} MiB, read-ahead {f['read_ahead']:,} ({f['seconds']:.1f} s)"


def _bounded(max_mib: float, max_ahead: int) -> Target:
    def check(f: Figures, _ratio: float | None) -> tuple[bool, str]:
        ok = f["rss_mib"] <= max_mib and f["read_ahead"] <= max_ahead
        return ok, (
            f"{f['rss_mib']:.1f} MiB (≤ {max_mib:g}), read-ahead {f['read_ahead']} (≤ {max_ahead})"
        )

    return Target(f"≤{max_mib:g} MiB, ≤{max_ahead} ahead", check)


BASE = ("W5", "gather")
WORKLOAD = Workload(
    key="W5",
    title="streaming memory",
    main="rss_mib",
    describe=describe,
    worst=("read_ahead",),
    tools=[
        Tool("gather", "asyncio Semaphore+gather (baseline)", _run(_gather, True), None, BASE),
        Tool(
            "paceline",
            "paceline.stream",
            _run(_paceline, True),
            "paceline",
            BASE,
            _bounded(30, 2 * W5_CONCURRENCY),
        ),
        Tool("aiometer", "aiometer.amap(max_at_once)", _run(_aiometer, False), "aiometer", BASE),
        Tool(
            "anyio",
            "anyio task group+CapacityLimiter",
            _run(_anyio, False, ANYIO_SHRINK),
            "anyio",  # no ratio: a fifth of the items
        ),
    ],
)
