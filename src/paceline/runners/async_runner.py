"""The async runner: a bounded pool of worker coroutines pulling from one iterator.

No task per item: ``concurrency`` workers each loop "pull an item → take a token → await the
operation → settle it", so memory holds only what is in flight, and lazy or endless inputs
(sync or async iterables) are read as work frees up. A token is taken immediately before the
attempt starts, by the worker that starts it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from typing import Generic, TypeVar, cast

from paceline.policy.batch import BatchState
from paceline.runners._common import ProgressCallback, Wrap, sized_length
from paceline.runners.gates import LeaseGate, async_acquirer

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")

_monotonic_ns = time.monotonic_ns


class _Stop(Exception):
    """Internal: the input ran out."""


class AsyncRunner(Generic[K, T, R]):
    """Run ``operation(item)`` for every item with at most ``concurrency`` in flight.

    ``ok``/``err`` build each item's result; ``stop_on_error`` re-raises the first failure
    (the original exception) after cancelling the work still in flight.
    """

    def __init__(
        self,
        operation: Callable[[K], Awaitable[T]],
        *,
        concurrency: int | None,
        ok: Wrap[K, T, R],
        err: Wrap[K, BaseException, R],
        limiter: object | None = None,
        stop_on_error: bool = False,
        on_progress: ProgressCallback | None = None,
        weight: Callable[[K], int] | None = None,
        timed: bool = False,
        read_ahead: int | None = None,
    ) -> None:
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ValueError(
                f"max_concurrent={concurrency!r}: use a whole number of at least 1 (or 'auto')"
            )
        if read_ahead is not None and read_ahead < 1:
            raise ValueError(f"read_ahead={read_ahead!r}: must be at least 1")
        self.operation = operation
        self.concurrency = concurrency
        self.ok = ok
        self.err = err
        self.stop_on_error = stop_on_error
        self.on_progress = on_progress
        self.weight = weight
        self.timed = timed
        self.read_ahead = read_ahead
        self._limiter = limiter
        self._try_now, self._acquire = async_acquirer(limiter)

    # -- public entry points -------------------------------------------------------------

    async def collect(self, items: Iterable[K] | AsyncIterable[K]) -> BatchState[R]:
        """Run every item; results land in ``state.slots`` in input order."""
        state: BatchState[R] = BatchState(sized_length(items), self.stop_on_error)
        await _Batch(self, state, items, bound=None).run()
        return state

    async def stream(
        self, items: Iterable[K] | AsyncIterable[K], *, ordered: bool = True
    ) -> AsyncGenerator[R, None]:
        """Yield results as they settle (``ordered``: in input order), reading the input at most
        ``read_ahead`` items (default 2x concurrency) ahead of what was handed out."""
        state: BatchState[R] = BatchState(
            sized_length(items), self.stop_on_error, streaming=True, ordered=ordered
        )
        workers = self._workers_for(state.total)
        bound = self.read_ahead if self.read_ahead is not None else 2 * workers
        batch = _Batch(self, state, items, bound=max(bound, 1))
        runner = asyncio.ensure_future(batch.run())
        try:
            while True:
                while state.ready:
                    result = state.pop_ready()
                    batch.space_freed()
                    yield result
                if runner.done():
                    runner.result()  # re-raise a failure or an input error
                    while state.ready:
                        yield state.pop_ready()
                    return
                await batch.wait_for_results(runner)
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    # -- helpers -------------------------------------------------------------------------

    def _workers_for(self, total: int | None) -> int:
        if self.concurrency is None:
            if total is None:
                raise ValueError(
                    "max_concurrent=None (no limit) needs an input with a length; "
                    "give a number for lazy or endless inputs"
                )
            return max(1, total)
        return max(1, min(self.concurrency, total)) if total is not None else self.concurrency


class _Batch(Generic[K, T, R]):
    """One run of an :class:`AsyncRunner` over one input."""

    def __init__(
        self,
        runner: AsyncRunner[K, T, R],
        state: BatchState[R],
        items: Iterable[K] | AsyncIterable[K],
        bound: int | None,
    ) -> None:
        self.runner = runner
        self.state = state
        self.items = items
        self.bound = bound
        self.pulled = 0
        self.failure: BaseException | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self._results_waiter: asyncio.Future[None] | None = None
        self._space_waiter: asyncio.Future[None] | None = None
        self._pull_lock = asyncio.Lock()
        self.lease = LeaseGate.for_limiter(runner._limiter)

    async def run(self) -> None:
        runner, state = self.runner, self.state
        count = runner._workers_for(state.total)
        if isinstance(self.items, AsyncIterable):
            aiter_ = self.items.__aiter__()
            workers = [self._worker(self._async_puller(aiter_), True) for _ in range(count)]
        else:
            it = iter(self.items)
            workers = [self._worker(self._sync_puller(it), False) for _ in range(count)]
        self.tasks = [asyncio.ensure_future(w) for w in workers]
        try:
            await asyncio.gather(*self.tasks)
        except BaseException:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if self.failure is not None:
                raise self.failure from None
            raise
        finally:
            if self.lease is not None:
                self.lease.close()
            self._wake_results()
        if self.failure is not None:
            raise self.failure

    # pulling ----------------------------------------------------------------------------

    def _sync_puller(self, it: Iterator[K]) -> Callable[[], Awaitable[K] | K]:
        nxt = it.__next__

        def pull() -> K:
            try:
                return nxt()
            except StopIteration:
                raise _Stop from None

        return pull

    def _async_puller(self, it: AsyncIterator[K]) -> Callable[[], Awaitable[K] | K]:
        async def pull() -> K:
            try:
                return await it.__anext__()
            except StopAsyncIteration:
                raise _Stop from None

        return pull

    # flow control (stream mode) -----------------------------------------------------------

    def _wake_results(self) -> None:
        waiter = self._results_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_for_results(self, runner_task: asyncio.Future[None]) -> None:
        """Suspend the consumer until a result is ready or the batch ends."""
        if self.state.ready or runner_task.done():
            return
        self._results_waiter = asyncio.get_running_loop().create_future()
        await self._results_waiter
        self._results_waiter = None

    def space_freed(self) -> None:
        waiter = self._space_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_for_space(self) -> None:
        state, bound = self.state, cast(int, self.bound)
        while self.pulled - state.delivered >= bound and not state.stopped:
            waiter = self._space_waiter
            if waiter is None or waiter.done():
                waiter = self._space_waiter = asyncio.get_running_loop().create_future()
            self._wake_results()
            await waiter

    # the worker ---------------------------------------------------------------------------

    async def _worker(self, pull: Callable[[], Awaitable[K] | K], is_async_pull: bool) -> None:
        runner, state = self.runner, self.state
        operation, ok, err = runner.operation, runner.ok, runner.err
        try_now, acquire, lease = runner._try_now, runner._acquire, self.lease
        weigh, timed, progress = runner.weight, runner.timed, runner.on_progress
        total, bound, streaming = state.total, self.bound, state.streaming
        while not state.stopped:
            if is_async_pull:
                # One puller at a time: async generators refuse a second __anext__ while one
                # runs, and the read-ahead check must see the count the pull will change.
                async with self._pull_lock:
                    if bound is not None and self.pulled - state.delivered >= bound:
                        await self._wait_for_space()
                    if state.stopped:
                        return
                    try:
                        item = await cast(Callable[[], Awaitable[K]], pull)()
                    except _Stop:
                        return
                    index = self.pulled
                    self.pulled = index + 1
            else:
                if bound is not None and self.pulled - state.delivered >= bound:
                    await self._wait_for_space()
                    if state.stopped:
                        return
                try:
                    item = cast(Callable[[], K], pull)()
                except _Stop:
                    return
                index = self.pulled
                self.pulled = index + 1
            if acquire is not None:
                weight = weigh(item) if weigh is not None else 1
                if weight != 1 or lease is None or not lease.take():
                    if try_now is None or try_now(weight) is None:
                        await acquire(weight)
                    if state.stopped:
                        return
            started = _monotonic_ns() if timed else 0
            try:
                value = await operation(item)
            except Exception as exc:
                result = err(index, item, exc, started, _monotonic_ns() - started if timed else 0)
                state.settle(index, result, True)
                if runner.stop_on_error:
                    if self.failure is None:
                        self.failure = exc
                    self._cancel_others()
            else:
                result = ok(index, item, value, started, _monotonic_ns() - started if timed else 0)
                state.settle(index, result, False)
            if progress is not None:
                progress(state.completed, total)
            if streaming:
                self._wake_results()

    def _cancel_others(self) -> None:
        me = asyncio.current_task()
        for task in self.tasks:
            if task is not me:
                task.cancel()
        self.space_freed()
