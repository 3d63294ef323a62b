"""The thread runner: one dispatcher, worker threads, no event loop.

The calling thread is the dispatcher: it reads the input, takes the rate-limit token when a
worker is free (never inside a worker, so no worker sits blocked in the limiter and no
pre-approved work queues up), hands the item over a queue, and collects finished items from a
second queue — settling them, calling progress serially, and noticing a failure that stops the
batch. Worker threads only run calls.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from paceline.policy.batch import BatchState
from paceline.runners._common import ProgressCallback, Wrap, sized_length
from paceline.runners.gates import LeaseGate, sync_acquirer

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")

_monotonic_ns = time.monotonic_ns
_STOP = None  # sentinel on the work queue


class _Skipped:
    """A worker's answer for a queued item it did not start because the batch is halting."""

    __slots__ = ()


_SKIPPED = _Skipped()


class _Fatal:
    """A worker hit a BaseException that is not an item failure (e.g. SystemExit)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_Outcome = tuple[int, K, Any, bool, int, int] | _Fatal | _Skipped


class ThreadRunner(Generic[K, T, R]):
    """Run ``operation(item)`` for every item on ``workers`` threads (``None``: in the calling
    thread, one at a time).

    Threads cannot be cancelled: on a stop (``stop_on_error`` or an interrupt) nothing new
    starts, calls already running are waited for, and their results are still settled.
    """

    def __init__(
        self,
        operation: Callable[[K], T],
        *,
        workers: int | None,
        ok: Wrap[K, T, R],
        err: Wrap[K, BaseException, R],
        limiter: object | None = None,
        stop_on_error: bool = False,
        on_progress: ProgressCallback | None = None,
        weight: Callable[[K], int] | None = None,
        timed: bool = False,
    ) -> None:
        self.operation = operation
        self.workers = workers
        self.ok = ok
        self.err = err
        self.stop_on_error = stop_on_error
        self.on_progress = on_progress
        self.weight = weight
        self.timed = timed
        self._limiter = limiter
        self._acquire = sync_acquirer(limiter)
        self.failure: BaseException | None = None
        # Set by a worker whose item failed under stop_on_error, or by the dispatcher when it
        # stops: workers skip queued items once it is set, so nothing new starts.
        self._halting = False

    def collect(self, items: Iterable[K], total: int | None = None) -> BatchState[R]:
        """Run every item; results land in ``state.slots`` in input order. With
        ``stop_on_error`` the first failure's original exception is raised after the calls
        already running have finished. ``total``: the length of a lazy input, if known."""
        if total is None:
            total = sized_length(items)
        state: BatchState[R] = BatchState(total, self.stop_on_error)
        if self.workers is None or self.workers == 1:
            self._run_sequential(items, state)
        else:
            self._run_threaded(items, state)
        if self.failure is not None:
            raise self.failure
        return state

    # -- one at a time, in the calling thread ----------------------------------------------

    def _run_sequential(self, items: Iterable[K], state: BatchState[R]) -> None:
        operation, ok, err, acquire = self.operation, self.ok, self.err, self._acquire
        weigh, timed, progress, total = self.weight, self.timed, self.on_progress, state.total
        for index, item in enumerate(items):
            if acquire is not None:
                acquire(weigh(item) if weigh is not None else 1)
            started = _monotonic_ns() if timed else 0
            try:
                value = operation(item)
            except Exception as exc:
                elapsed = _monotonic_ns() - started if timed else 0
                state.settle(index, err(index, item, exc, started, elapsed), True)
                if self.stop_on_error:
                    self.failure = exc
            else:
                elapsed = _monotonic_ns() - started if timed else 0
                state.settle(index, ok(index, item, value, started, elapsed), False)
            if progress is not None:
                progress(state.completed, total)
            if state.stopped:
                return

    # -- dispatcher + worker threads -------------------------------------------------------

    def _run_threaded(self, items: Iterable[K], state: BatchState[R]) -> None:
        count = self.workers or 1
        total = state.total
        if total is not None:
            count = max(1, min(count, total))
        acquire, weigh = self._acquire, self.weight
        lease = LeaseGate.for_limiter(self._limiter)
        # Without a limiter a second item per worker waits in the queue so a worker that
        # finishes picks up work without a round trip through the dispatcher. With one, the
        # token must be taken right before a free worker starts, so nothing waits.
        capacity = count if acquire is not None else 2 * count
        work: queue.SimpleQueue[tuple[int, K] | None] = queue.SimpleQueue()
        done: queue.SimpleQueue[_Outcome[K]] = queue.SimpleQueue()
        threads = [
            threading.Thread(
                target=self._work, args=(work, done), name=f"paceline-worker-{i}", daemon=True
            )
            for i in range(count)
        ]
        for thread in threads:
            thread.start()
        in_flight = 0
        finished = False
        try:
            source: Iterator[K] = iter(items)
            index = 0
            while not state.stopped:
                while in_flight >= capacity or not done.empty():
                    self._settle(done.get(), state)
                    in_flight -= 1
                    if state.stopped:
                        break
                if state.stopped:
                    break
                try:
                    item = next(source)
                except StopIteration:
                    break
                if acquire is not None:
                    weight = weigh(item) if weigh is not None else 1
                    if weight != 1 or lease is None or not lease.take():
                        acquire(weight)
                    while not done.empty():
                        self._settle(done.get(), state)
                        in_flight -= 1
                    if state.stopped:
                        break
                work.put((index, item))
                index += 1
                in_flight += 1
            if state.stopped:  # nothing new starts: take back what no worker picked up yet
                self._halting = True
                in_flight -= _drain_unstarted(work)
            while in_flight > 0:
                self._settle(done.get(), state)
                in_flight -= 1
            finished = True
        finally:
            if lease is not None:
                lease.close()
            state.stopped = state.stopped or not finished
            self._halting = self._halting or state.stopped
            _drain_unstarted(work)
            for _ in threads:
                work.put(_STOP)
            for thread in threads:
                thread.join()
            if not finished:
                # Interrupted (KeyboardInterrupt, an error in progress or input): the calls
                # that were running have finished; settle them so nothing done is lost.
                while not done.empty():
                    outcome = done.get()
                    if not isinstance(outcome, _Fatal) and outcome is not _SKIPPED:
                        self._settle(outcome, state, report=False)

    def _settle(
        self,
        outcome: _Outcome[K],
        state: BatchState[R],
        report: bool = True,
    ) -> None:
        if isinstance(outcome, _Fatal):
            raise outcome.error
        if isinstance(outcome, _Skipped):
            return
        index, item, value, failed, started, elapsed = outcome
        if failed:
            state.settle(index, self.err(index, item, value, started, elapsed), True)
            if self.stop_on_error and self.failure is None:
                self.failure = value
        else:
            state.settle(index, self.ok(index, item, value, started, elapsed), False)
        if report and self.on_progress is not None:
            self.on_progress(state.completed, state.total)

    def _work(
        self,
        work: queue.SimpleQueue[tuple[int, K] | None],
        done: queue.SimpleQueue[_Outcome[K]],
    ) -> None:
        get, put, operation, timed = work.get, done.put, self.operation, self.timed
        while True:
            job = get()
            if job is None:
                return
            if self._halting:
                put(_SKIPPED)
                continue
            index, item = job
            started = _monotonic_ns() if timed else 0
            try:
                value = operation(item)
            except Exception as exc:
                if self.stop_on_error:
                    self._halting = True
                put((index, item, exc, True, started, _monotonic_ns() - started if timed else 0))
            except BaseException as exc:  # SystemExit and the like: not an item's failure
                put(_Fatal(exc))
                return
            else:
                put((index, item, value, False, started, _monotonic_ns() - started if timed else 0))


def _drain_unstarted(work: queue.SimpleQueue[Any]) -> int:
    """Take back items no worker has started; return how many."""
    taken = 0
    while True:
        try:
            job = work.get_nowait()
        except queue.Empty:
            return taken
        if job is not None:
            taken += 1
