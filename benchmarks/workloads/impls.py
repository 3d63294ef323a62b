""" "Run ``op`` on every key, at most ``conc`` at once, results in key order", once per tool.

W1, W3, W4 and W6 share these; each returns the plain values in key order so the workload can
check them. ``conc=None`` means no concurrency limit. Peers are imported inside the functions.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from workloads.common import WrongAnswer

AsyncOp = Callable[[Any], Awaitable[Any]]


async def gather_semaphore(keys: Iterable[Any], op: AsyncOp, conc: int | None) -> list[Any]:
    """The baseline: one task per key, ``asyncio.Semaphore`` + ``asyncio.gather``."""
    if conc is None:
        return await asyncio.gather(*(op(k) for k in keys))
    sem = asyncio.Semaphore(conc)

    async def guarded(key: Any) -> Any:
        async with sem:
            return await op(key)

    return await asyncio.gather(*(guarded(k) for k in keys))


async def worker_pool(keys: Sequence[Any], op: AsyncOp, conc: int | None) -> list[Any]:
    """The floor, for reference: ``conc`` bare worker coroutines pulling from one iterator
    (no error handling, no progress, no cancellation: what no library can beat by much)."""
    results: list[Any] = [None] * len(keys)
    work = iter(enumerate(keys))

    async def worker() -> None:
        for i, key in work:
            results[i] = await op(key)

    count = len(keys) if conc is None else min(conc, len(keys))
    await asyncio.gather(*(worker() for _ in range(count)))
    return results


async def paceline_batch(
    keys: Sequence[Any], op: AsyncOp, conc: int | None, limiter: object | None = None
) -> list[Any]:
    """``paceline.batch_execute``; a failure anywhere is a wrong answer."""
    import paceline

    results = await paceline.batch_execute(keys, op, max_concurrent=conc, rate_limiter=limiter)
    values = []
    for i, r in enumerate(results):
        if not r.is_success:
            raise WrongAnswer(f"item {i} failed: {r!r}")
        values.append(r.value)
    return values


async def aiometer_run_all(
    keys: Sequence[Any], op: AsyncOp, conc: int | None, per_second: float | None = None
) -> list[Any]:
    """``aiometer.run_all`` over one ``functools.partial`` per key (it refuses lambdas)."""
    import aiometer

    jobs = [functools.partial(op, k) for k in keys]
    return await aiometer.run_all(jobs, max_at_once=conc, max_per_second=per_second)


async def anyio_task_group(keys: Sequence[Any], op: AsyncOp, conc: int | None) -> list[Any]:
    """anyio's idiom: a task group, one task per key, a ``CapacityLimiter`` around each call."""
    import anyio

    results: list[Any] = [None] * len(keys)

    if conc is None:

        async def one(i: int, key: Any) -> None:
            results[i] = await op(key)

    else:
        limiter = anyio.CapacityLimiter(conc)

        async def one(i: int, key: Any) -> None:
            async with limiter:
                results[i] = await op(key)

    async with anyio.create_task_group() as tg:
        for i, key in enumerate(keys):
            tg.start_soon(one, i, key)
    return results


def aiolimiter_wrap(op: AsyncOp, max_rate: float, period: float) -> AsyncOp:
    """``op`` behind an ``aiolimiter.AsyncLimiter(max_rate, period)``."""
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(max_rate, period)

    async def limited(key: Any) -> Any:
        async with limiter:
            return await op(key)

    return limited


def pyrate_wrap(op: AsyncOp, limit: int, window_s: float) -> tuple[AsyncOp, Callable[[], None]]:
    """``op`` behind a pyrate-limiter v4 ``Limiter`` (in-memory sliding log, awaited with
    ``try_acquire_async``); also returns the limiter's ``close`` (it runs a leak thread)."""
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

    window_ms = round(window_s * Duration.SECOND.value)
    limiter = Limiter(InMemoryBucket([Rate(limit, window_ms)]))

    async def limited(key: Any) -> Any:
        if not await limiter.try_acquire_async("bench"):
            raise WrongAnswer("pyrate-limiter refused a permit")
        return await op(key)

    return limited, limiter.close
