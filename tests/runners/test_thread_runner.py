"""The thread runner with real threads: cleanup on every exit path, interrupts, lazy and
endless inputs, and where tokens are taken.

No clock is read: "started"/"finished" are counted under a lock, concurrency with barriers.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from paceline import BatchExecutor
from paceline.runners.settle import RunOptions
from paceline.runners.thread_runner import ThreadRunner
from paceline.testing import FakeRateLimiter

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0  # only reached when paceline is broken
WORKER_PREFIX = "paceline-worker"


class Boom(Exception):
    pass


def run_threads(items: Any, operation: Callable[[Any], Any], workers: int | None = 4, **options):
    """Run the ThreadRunner, results as ("ok", value) / ("err", exception) in input order."""
    runner: ThreadRunner[Any, Any, tuple[str, Any]] = ThreadRunner(
        operation,
        workers=workers,
        options=RunOptions(
            ok=lambda _i, _item, value, _info: ("ok", value),
            err=lambda _i, _item, exc, _info: ("err", exc),
            **options,
        ),
    )
    return runner.collect(items).slots


@contextlib.contextmanager
def no_thread_survives():
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in set(threading.enumerate()) - before]
    assert leaked == [], f"threads outlived the call: {leaked}"


class Tally:
    """Calls started and finished, counted under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = 0
        self.finished = 0
        self.thread_names: set[str] = set()

    def op(self, item: Any) -> Any:
        with self.lock:
            self.started += 1
            self.thread_names.add(threading.current_thread().name)
        try:
            return item
        finally:
            with self.lock:
                self.finished += 1


class CountingInput:
    """An endless (or bounded) lazy input that counts how many items were pulled."""

    def __init__(self, stop: int | None = None) -> None:
        self.pulled = 0
        self._stop = stop

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count() if self._stop is None else range(self._stop):
            self.pulled += 1
            yield i


# -- threads: naming and cleanup --------------------------------------------------------------


class TestNoThreadOutlivesACall:
    def test_work_runs_on_named_worker_threads_that_are_gone_afterwards(self):
        tally = Tally()
        with no_thread_survives():
            results = run_threads(range(50), tally.op, workers=4)

        assert results == [("ok", i) for i in range(50)]
        assert tally.thread_names
        assert all(name.startswith(WORKER_PREFIX) for name in tally.thread_names)
        alive = [t.name for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)]
        assert alive == []

    def test_sequential_mode_runs_in_the_calling_thread(self):
        tally = Tally()
        with no_thread_survives():
            run_threads(range(5), tally.op, workers=None)
        assert tally.thread_names == {threading.current_thread().name}

    def test_threads_are_joined_after_stop_on_error(self):
        err = Boom("stop")

        def op(i: int) -> int:
            if i == 7:
                raise err
            return i

        with no_thread_survives(), pytest.raises(Boom) as info:
            run_threads(range(100), op, workers=4, stop_on_error=True)
        assert info.value is err

    def test_threads_are_joined_when_the_input_raises(self):
        err = Boom("input broke")
        tally = Tally()

        def items() -> Iterator[int]:
            yield from range(10)
            raise err

        with no_thread_survives(), pytest.raises(Boom) as info:
            run_threads(items(), tally.op, workers=3)
        assert info.value is err
        assert tally.started == tally.finished  # every call that started was waited for

    def test_threads_are_joined_when_an_operation_raises_system_exit(self):
        def op(i: int) -> int:
            if i == 3:
                raise SystemExit(3)
            return i

        with no_thread_survives(), pytest.raises(SystemExit):
            run_threads(range(40), op, workers=4)

    def test_keyboard_interrupt_in_a_worker_propagates_and_threads_are_joined(self):
        def op(i: int) -> int:
            if i == 5:
                raise KeyboardInterrupt
            return i

        with no_thread_survives(), pytest.raises(KeyboardInterrupt):
            run_threads(range(40), op, workers=4)

    def test_threads_are_joined_after_an_error_in_on_progress(self):
        def progress(completed: int, total: int | None) -> None:
            if completed == 2:
                raise Boom("progress broke")

        with no_thread_survives(), pytest.raises(Boom, match="progress broke"):
            run_threads(range(30), lambda i: i, workers=3, on_progress=progress)

    def test_batch_executor_leaves_no_thread_behind(self):
        with no_thread_survives():
            result = BatchExecutor(stop_on_error=False, max_workers=6).execute_batch(
                [lambda i=i: i for i in range(30)]
            )
        assert result.successful == 30


# -- KeyboardInterrupt from on_progress -------------------------------------------------------


class TestKeyboardInterrupt:
    @pytest.mark.parametrize("workers", [None, 1, 4])
    def test_interrupt_from_progress_stops_dispatch_joins_workers_and_propagates(self, workers):
        tally = Tally()
        source = CountingInput()  # endless: only stopping can end this batch
        progress_calls: list[int] = []

        def progress(completed: int, total: int | None) -> None:
            progress_calls.append(completed)
            if completed == 3:
                raise KeyboardInterrupt

        with no_thread_survives(), pytest.raises(KeyboardInterrupt):
            run_threads(source, tally.op, workers=workers, on_progress=progress)

        assert progress_calls == [1, 2, 3]  # nothing reported after the interrupt
        assert tally.started == tally.finished  # running calls were waited for
        # dispatch stopped: what was read is what had settled plus a bounded read-ahead
        assert source.pulled <= 3 + 4 * (workers or 1)
        assert tally.started <= source.pulled

    def test_interrupt_through_batch_executor_propagates(self):
        def progress(completed: int, total: int | None) -> None:
            if completed == 2:
                raise KeyboardInterrupt

        tasks = (lambda i=i: i for i in itertools.count())
        with no_thread_survives(), pytest.raises(KeyboardInterrupt):
            BatchExecutor(max_workers=3).execute_batch(tasks, on_progress=progress)


# -- inputs -----------------------------------------------------------------------------------


class TestInputs:
    @pytest.mark.parametrize("workers", [None, 3])
    def test_an_exception_from_the_input_iterator_propagates(self, workers):
        err = ValueError("bad row 4")

        def items() -> Iterator[int]:
            yield from range(4)
            raise err

        with pytest.raises(ValueError, match="bad row 4") as info:
            run_threads(items(), lambda i: i, workers=workers)
        assert info.value is err

    @pytest.mark.parametrize("workers", [None, 4])
    def test_endless_input_with_stop_on_error_reads_a_bounded_amount(self, workers):
        source = CountingInput()

        def op(i: int) -> int:
            if i == 20:
                raise Boom("item 20")
            return i

        with no_thread_survives(), pytest.raises(Boom, match="item 20"):
            run_threads(source, op, workers=workers, stop_on_error=True)

        assert 21 <= source.pulled <= 21 + 4 * (workers or 1)

    def test_a_lazy_input_is_read_as_work_frees_up(self):
        # Four workers that each hold their item until all four meet: the input may be read
        # ahead, but only by a bounded amount while nothing finishes.
        barrier = threading.Barrier(4, timeout=WAIT)
        source = CountingInput(stop=400)
        seen_lead: list[int] = []
        tally_lock = threading.Lock()
        finished = [0]

        def op(i: int) -> int:
            with tally_lock:
                seen_lead.append(source.pulled - finished[0])
            barrier.wait()
            with tally_lock:
                finished[0] += 1
            return i

        results = run_threads(source, op, workers=4)

        assert results == [("ok", i) for i in range(400)]
        assert max(seen_lead) <= 4 * 4


# -- tokens -----------------------------------------------------------------------------------


class TestTokens:
    def test_tokens_are_taken_in_the_calling_thread_only_when_a_worker_is_free(self):
        workers = 3
        caller = threading.get_ident()
        lock = threading.Lock()
        finished = [0]
        ahead: list[int] = []
        threads: list[int] = []

        class Limiter(FakeRateLimiter):
            def acquire(self, weight: int = 1) -> None:
                with lock:
                    # tokens already granted whose call has not finished yet
                    ahead.append(self.acquire_count - finished[0])
                    threads.append(threading.get_ident())
                super().acquire(weight)

        barrier = threading.Barrier(workers, timeout=WAIT)

        def op(i: int) -> int:
            barrier.wait()  # all three workers are busy at once, every round
            with lock:
                finished[0] += 1
            return i

        limiter = Limiter()
        n = workers * 10
        results = run_threads(range(n), op, workers=workers, limiter=limiter)

        assert results == [("ok", i) for i in range(n)]
        assert limiter.acquire_count == n
        assert set(threads) == {caller}
        # No pre-approved work queues up: a token is taken only for a worker that is free.
        assert max(ahead) <= workers - 1

    def test_weight_decides_each_items_permits(self):
        limiter = FakeRateLimiter()
        run_threads([1, 2, 3, 4], lambda i: i, workers=2, limiter=limiter, weight=lambda i: i)
        assert sorted(limiter.weights) == [1, 2, 3, 4]
        assert limiter.total_weight == 10

    def test_a_blocking_limiter_never_holds_a_worker(self):
        # The limiter blocks the dispatcher; workers must be idle (not inside acquire) then.
        in_workers: list[str] = []

        class Limiter:
            def acquire(self, weight: int = 1) -> None:
                name = threading.current_thread().name
                if name.startswith(WORKER_PREFIX):
                    in_workers.append(name)

        run_threads(range(20), lambda i: i, workers=4, limiter=Limiter())
        assert in_workers == []


# -- results ----------------------------------------------------------------------------------


def test_collect_mode_keeps_input_order_and_failures_in_place():
    err = Boom("odd")

    def op(i: int) -> int:
        if i % 2:
            raise err
        return i

    results = run_threads(range(10), op, workers=3)
    assert results == [("ok", i) if i % 2 == 0 else ("err", err) for i in range(10)]


def test_progress_is_called_from_one_thread_at_a_time_with_increasing_counts():
    busy = threading.Lock()
    overlaps = []
    seen: list[tuple[int, int | None]] = []

    def progress(completed: int, total: int | None) -> None:
        if not busy.acquire(blocking=False):
            overlaps.append(completed)
            return
        try:
            seen.append((completed, total))
        finally:
            busy.release()

    run_threads(list(range(100)), lambda i: i, workers=8, on_progress=progress)
    assert overlaps == []
    assert seen == [(c, 100) for c in range(1, 101)]
