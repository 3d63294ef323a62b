"""The async runner with real event loops: no task outlives a call, no task per item, lazy and
endless inputs in bounded memory, cancellation, and where tokens are taken.

Each test drives its own loop with ``asyncio.run``; nothing reads a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from paceline import batch_execute, stream
from paceline.policy.retry import RetryBudget
from paceline.runners.async_runner import AsyncRunner
from paceline.runners.settle import RunOptions
from paceline.testing import FakeRateLimiter

pytestmark = pytest.mark.timeout(30)


class Boom(Exception):
    pass


def make_runner(
    operation: Callable[[Any], Awaitable[Any]], concurrency: int | None = 4, **options: Any
) -> AsyncRunner[Any, Any, tuple[str, Any]]:
    """An AsyncRunner whose results are ("ok", value) / ("err", exception)."""
    read_ahead = options.pop("read_ahead", None)
    return AsyncRunner(
        operation,
        concurrency=concurrency,
        options=RunOptions(
            ok=lambda _i, _item, value, _info: ("ok", value),
            err=lambda _i, _item, exc, _info: ("err", exc),
            **options,
        ),
        read_ahead=read_ahead,
    )


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def settle_loop(rounds: int = 100) -> None:
    """Let the loop run until only the current task is left (or give up after ``rounds``)."""
    for _ in range(rounds):
        if not other_tasks():
            return
        await asyncio.sleep(0)


class CountingInput:
    """A lazy, endless (or bounded) sync input that counts how many items were pulled."""

    def __init__(self, stop: int | None = None) -> None:
        self.pulled = 0
        self._stop = stop

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count() if self._stop is None else range(self._stop):
            self.pulled += 1
            yield i


class AsyncCountingInput:
    """The same as an async generator that awaits between items."""

    def __init__(self) -> None:
        self.pulled = 0

    async def items(self) -> AsyncIterator[int]:
        for i in itertools.count():
            await asyncio.sleep(0)
            self.pulled += 1
            yield i


async def echo(item: Any) -> Any:
    await asyncio.sleep(0)
    return item


# -- no task outlives a call ------------------------------------------------------------------


class TestNoTaskOutlivesACall:
    def test_after_collect(self):
        async def main():
            state = await make_runner(echo).collect(range(50))
            return state.slots, other_tasks()

        slots, leftover = asyncio.run(main())
        assert slots == [("ok", i) for i in range(50)]
        assert leftover == set()

    def test_after_stop_on_error(self):
        err = Boom("stop")

        async def op(i: int) -> int:
            await asyncio.sleep(0)
            if i == 2:
                raise err
            await asyncio.Event().wait()  # the others only end by cancellation
            return i

        async def main():
            with pytest.raises(Boom) as info:
                await make_runner(op, 3, stop_on_error=True).collect(range(100))
            return info.value, other_tasks()

        raised, leftover = asyncio.run(main())
        assert raised is err
        assert leftover == set()

    @pytest.mark.parametrize("kind", ["sync", "async"])
    def test_after_the_input_raises(self, kind):
        err = Boom("input broke")

        def sync_items() -> Iterator[int]:
            yield from range(5)
            raise err

        async def async_items() -> AsyncIterator[int]:
            for i in range(5):
                yield i
            raise err

        async def main():
            items = sync_items() if kind == "sync" else async_items()
            with pytest.raises(Boom) as info:
                await make_runner(echo, 3).collect(items)
            return info.value, other_tasks()

        raised, leftover = asyncio.run(main())
        assert raised is err
        assert leftover == set()

    def test_after_the_caller_is_cancelled(self):
        async def main():
            started: list[int] = []
            cancelled: list[int] = []

            async def op(i: int) -> int:
                started.append(i)
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.append(i)
                    raise
                return i

            batch = asyncio.ensure_future(batch_execute(range(100), op, max_concurrent=3))
            for _ in range(100):
                if len(started) == 3:
                    break
                await asyncio.sleep(0)
            batch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await batch
            return started, cancelled, other_tasks()

        started, cancelled, leftover = asyncio.run(main())
        assert sorted(started) == [0, 1, 2]
        assert sorted(cancelled) == [0, 1, 2]
        assert leftover == set()

    def test_a_blocking_limiter_is_called_off_the_loop_and_leaves_no_thread(self):
        loop_threads: list[int] = []
        acquire_threads: list[int] = []

        class BlockingLimiter:
            def acquire(self, weight: int = 1) -> None:
                acquire_threads.append(threading.get_ident())

        async def main():
            loop_threads.append(threading.get_ident())
            return await batch_execute(range(6), echo, 2, rate_limiter=BlockingLimiter())

        before = set(threading.enumerate())
        results = asyncio.run(main())
        leaked = [t.name for t in set(threading.enumerate()) - before]

        assert [r.value for r in results] == list(range(6))
        assert len(acquire_threads) == 6
        assert loop_threads[0] not in acquire_threads  # never blocks the event loop
        assert leaked == []


# -- no task per item -------------------------------------------------------------------------


class TestBoundedTasks:
    def test_tasks_alive_stay_bounded_by_the_concurrency_not_the_input(self):
        concurrency = 4
        seen: list[int] = []

        async def op(i: int) -> int:
            seen.append(len(asyncio.all_tasks()))
            await asyncio.sleep(0)
            return i

        async def main():
            return await make_runner(op, concurrency).collect(range(500))

        state = asyncio.run(main())
        assert len(state.slots) == 500
        # the caller, the workers, and at most a couple of helpers - never one per item
        assert max(seen) <= concurrency + 3

    def test_tasks_alive_stay_bounded_while_streaming(self):
        concurrency = 4
        seen: list[int] = []

        async def op(i: int) -> int:
            seen.append(len(asyncio.all_tasks()))
            await asyncio.sleep(0)
            return i

        async def main():
            return [r async for r in make_runner(op, concurrency).stream(range(500))]

        results = asyncio.run(main())
        assert results == [("ok", i) for i in range(500)]
        assert max(seen) <= concurrency + 3


# -- endless inputs ---------------------------------------------------------------------------


class TestEndlessInput:
    def test_stream_and_break_over_an_endless_sync_input_reads_a_bounded_amount(self):
        concurrency = 4
        source = CountingInput()
        leads: list[int] = []

        async def main():
            received = 0
            async with contextlib.aclosing(stream(source, echo, concurrency)) as results:
                async for result in results:
                    received += 1
                    leads.append(source.pulled - received)
                    if received == 1000:
                        last = result
                        break
            await settle_loop()
            return last, other_tasks()

        last, leftover = asyncio.run(main())
        assert last.result == 999
        assert max(leads) <= 2 * concurrency
        assert source.pulled <= 1000 + 2 * concurrency
        assert leftover == set()

    def test_stream_and_break_over_an_endless_async_input_reads_a_bounded_amount(self):
        concurrency = 4
        source = AsyncCountingInput()

        async def main():
            received = 0
            async with contextlib.aclosing(stream(source.items(), echo, concurrency)) as results:
                async for _ in results:
                    received += 1
                    if received == 300:
                        break
            await settle_loop()
            return other_tasks()

        leftover = asyncio.run(main())
        # the async input may be read a little further than a sync one, never without bound
        assert source.pulled <= 300 + 4 * concurrency
        assert leftover == set()

    def test_endless_input_with_fail_fast_stops_and_reads_a_bounded_amount(self):
        source = CountingInput()
        err = Boom("item 50")

        async def op(i: int) -> int:
            await asyncio.sleep(0)
            if i == 50:
                raise err
            return i

        async def main():
            with pytest.raises(Boom) as info:
                await batch_execute(source, op, max_concurrent=4, fail_fast=True)
            return info.value, other_tasks()

        raised, leftover = asyncio.run(main())
        assert raised is err
        assert leftover == set()
        assert 51 <= source.pulled <= 51 + 4

    def test_an_endless_input_needs_a_concurrency_limit(self):
        with pytest.raises(ValueError, match="max_concurrent"):
            asyncio.run(batch_execute(CountingInput(), echo, max_concurrent=None))


# -- tokens -----------------------------------------------------------------------------------


class TestTokens:
    def test_a_token_is_taken_only_by_a_worker_about_to_start(self):
        concurrency = 3
        finished = [0]
        ahead: list[int] = []

        class Limiter(FakeRateLimiter):
            async def acquire_async(self, weight: int = 1) -> None:
                ahead.append(self.acquire_count - finished[0])
                await asyncio.sleep(0)
                self.acquire(weight)

        async def op(i: int) -> int:
            for _ in range(3):
                await asyncio.sleep(0)
            finished[0] += 1
            return i

        limiter = Limiter()
        state = asyncio.run(make_runner(op, concurrency, limiter=limiter).collect(range(60)))

        assert state.slots == [("ok", i) for i in range(60)]
        assert limiter.acquire_count == 60
        # tokens granted to calls not yet finished: never more than the other workers hold
        assert max(ahead) <= concurrency - 1

    def test_workers_waiting_for_a_token_start_nothing_after_a_failure(self):
        # fail-fast cancels the workers still waiting in the limiter; none of them may start
        started: list[int] = []

        async def main():
            never = asyncio.Event()

            class SlowLimiter(FakeRateLimiter):
                async def acquire_async(self, weight: int = 1) -> None:
                    if self.acquire_count >= 1:
                        await never.wait()  # every token after the first waits forever
                    self.acquire(weight)

            async def op(i: int) -> int:
                started.append(i)
                await asyncio.sleep(0)
                raise Boom(str(i))

            runner = make_runner(op, 3, limiter=SlowLimiter(), stop_on_error=True)
            with pytest.raises(Boom, match="0"):
                await runner.collect(range(10))
            return other_tasks()

        leftover = asyncio.run(main())
        assert started == [0]
        assert leftover == set()


class TestRetriesThatFillTheReadAhead:
    """Issue 10, defect 1: when every item within the read-ahead waits for its retry, the
    worker waiting for room must also wake when a retry falls due (it used to wait forever)."""

    @pytest.mark.parametrize("kind", ["sync", "async"])
    @pytest.mark.parametrize("ordered", [True, False])
    def test_a_stream_whose_every_attempt_fails_ends(self, kind, ordered):
        attempts: dict[int, int] = {}

        async def always_fails(item: int) -> int:
            attempts[item] = attempts.get(item, 0) + 1
            raise ConnectionError("refused")

        async def numbers() -> AsyncIterator[int]:
            for i in range(20):
                yield i

        async def main() -> list[Any]:
            source: Any = range(20) if kind == "sync" else numbers()
            results = stream(source, always_fails, max_concurrent=2, retry=3, ordered=ordered)
            return [r async for r in results]

        results = asyncio.run(asyncio.wait_for(main(), 20))
        assert len(results) == 20
        assert not any(r.success for r in results)
        assert sorted(int(r.item_id) for r in results) == list(range(20))
        # Every item attempted, none more than 3 times; the default retry budget (10 + 0.2 per
        # first attempt) allows 14 retries in all, and all of them are spent.
        assert set(attempts) == set(range(20))
        assert all(1 <= n <= 3 for n in attempts.values())
        assert sum(attempts.values()) == 20 + 14

    def test_a_stream_whose_retries_then_succeed_ends_in_order(self):
        attempts: dict[int, int] = {}

        async def fails_twice(item: int) -> int:
            attempts[item] = attempts.get(item, 0) + 1
            if attempts[item] < 3:
                raise ConnectionError("refused")
            return item * 10

        async def main() -> list[Any]:
            budget = RetryBudget(ratio=2.0)  # room for two retries of every item
            results = stream(range(30), fails_twice, max_concurrent=3, retry=3, retry_budget=budget)
            return [r async for r in results]

        results = asyncio.run(asyncio.wait_for(main(), 20))
        assert [r.result for r in results] == [i * 10 for i in range(30)]
