"""BatchExecutor: seeds 000 (results, stop or collect), 001 (parallel, limiter at submission)
and 002 (threads, max_workers, "auto", progress), plus the semantics docs/design.md pins.

No wall-clock assertions: concurrency is proven with barriers and counted under a lock,
ordering with lists, "started or not" with flags.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import Mock

import pytest

from paceline import BatchExecutor, BatchResult, ErrorCode
from paceline.testing import FakeRateLimiter

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0  # upper bound for waits that only time out when paceline is broken


class Boom(Exception):
    pass


class ThreadRecordingLimiter(FakeRateLimiter):
    """A fake limiter that also records which thread asked for each token."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def acquire(self, weight: int = 1) -> None:
        self.threads.append(threading.get_ident())
        super().acquire(weight)


class ConcurrencyMeter:
    """Counts calls running at once, under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def __enter__(self) -> ConcurrencyMeter:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.running -= 1


def returning(value: Any) -> Callable[[], Any]:
    return lambda: value


# -- seed 000 -------------------------------------------------------------------------------


class TestSeedSequential:
    def test_execute_returns_the_task_result(self):
        executor = BatchExecutor()
        assert executor.execute(lambda: "success") == "success"

    def test_execute_propagates_the_task_exception(self):
        executor = BatchExecutor()

        def failing_task() -> str:
            raise ValueError("Task failed")

        with pytest.raises(ValueError, match="Task failed"):
            executor.execute(failing_task)

    def test_execute_batch_all_success(self):
        executor = BatchExecutor(stop_on_error=False)
        tasks = [returning(1), returning(2), returning(3)]

        result = executor.execute_batch(tasks, item_ids=["a", "b", "c"])

        assert isinstance(result, BatchResult)
        assert result.total == 3
        assert result.successful == 3
        assert result.failed == 0
        assert result.all_successful is True
        assert [i.result for i in result] == [1, 2, 3]
        assert [i.item_id for i in result] == ["a", "b", "c"]

    def test_execute_batch_collects_failures_when_not_stopping(self):
        executor = BatchExecutor(stop_on_error=False)
        err = ValueError("failed")

        def fail() -> None:
            raise err

        result = executor.execute_batch(
            [returning(1), fail, returning(3)], item_ids=["a", "b", "c"]
        )

        assert result.total == 3
        assert result.successful == 2
        assert result.failed == 1
        assert result.failed_items[0].item_id == "b"
        assert "failed" in result.failed_items[0].error
        assert result.failed_items[0].exception is err
        assert result.failed_items[0].error_code is ErrorCode.INVALID_INPUT
        assert [i.result for i in result if i.success] == [1, 3]

    def test_execute_batch_stop_on_error_raises_the_first_failure(self):
        executor = BatchExecutor(stop_on_error=True)

        def fail() -> None:
            raise ValueError("stop here")

        with pytest.raises(ValueError, match="stop here"):
            executor.execute_batch([returning(1), fail, returning(3)], item_ids=["a", "b", "c"])


# -- seed 001 -------------------------------------------------------------------------------


def test_parallel_batch_acquires_a_mock_limiter_once_per_operation():
    # The seed wrote [lambda: i for i in range(5)], which binds i late (every call returns 4).
    operations = [lambda i=i: i for i in range(5)]
    rate_limiter = Mock()
    executor = BatchExecutor(rate_limiter=rate_limiter, max_workers=3)

    results = executor.execute_batch(operations)

    assert len(results) == 5
    assert [item.result for item in results] == [0, 1, 2, 3, 4]
    assert rate_limiter.acquire.call_count == 5


# -- seed 002 -------------------------------------------------------------------------------


class TestSeedConcurrent:
    def test_tasks_run_concurrently(self):
        # Three tasks that can only finish if all three run at the same time.
        barrier = threading.Barrier(3, timeout=WAIT)
        executor = BatchExecutor(stop_on_error=False, max_workers=3)

        def meet() -> str:
            barrier.wait()
            return "met"

        result = executor.execute_batch([meet, meet, meet], item_ids=["a", "b", "c"])

        assert result.total == 3
        assert result.successful == 3, [i.error for i in result.failed_items]

    @pytest.mark.parametrize("workers", [2, 3])
    def test_max_workers_is_respected_and_used(self, workers):
        meter = ConcurrencyMeter()
        barrier = threading.Barrier(workers, timeout=WAIT)
        executor = BatchExecutor(stop_on_error=False, max_workers=workers)

        def tracking_task() -> int:
            with meter:
                barrier.wait()  # only passes when `workers` tasks run at once
            return 1

        n = workers * 4
        result = executor.execute_batch([tracking_task] * n, item_ids=[str(i) for i in range(n)])

        assert result.total == n
        assert result.successful == n, [i.error for i in result.failed_items]
        assert meter.peak == workers

    def test_calculate_optimal_workers_small_batch(self):
        executor = BatchExecutor(max_workers="auto")
        assert 1 <= executor._calculate_optimal_workers(5) <= 5

    def test_calculate_optimal_workers_large_batch(self):
        executor = BatchExecutor(max_workers="auto")
        small = executor._calculate_optimal_workers(10)
        large = executor._calculate_optimal_workers(100)
        assert large >= small

    def test_optimal_workers_never_exceed_the_batch(self):
        executor = BatchExecutor(max_workers="auto")
        for n in range(1, 60):
            assert 1 <= executor._calculate_optimal_workers(n) <= n

    def test_adaptive_execution(self):
        executor = BatchExecutor(stop_on_error=False, max_workers="auto")
        tasks = [lambda i=i: i for i in range(10)]

        result = executor.execute_batch(tasks, item_ids=[str(i) for i in range(10)])

        assert result.total == 10
        assert result.successful == 10
        assert [i.result for i in result] == list(range(10))


# -- item ids -------------------------------------------------------------------------------


class TestItemIds:
    @pytest.mark.parametrize("workers", [None, 3])
    def test_item_ids_default_to_positions(self, workers):
        result = BatchExecutor(max_workers=workers).execute_batch([returning(v) for v in "xyz"])
        assert [i.item_id for i in result] == ["0", "1", "2"]
        assert [i.result for i in result] == ["x", "y", "z"]

    @pytest.mark.parametrize("workers", [None, 3])
    def test_mismatched_lengths_name_both_lengths_and_run_nothing(self, workers):
        ran: list[int] = []
        tasks = [lambda i=i: ran.append(i) for i in range(3)]

        with pytest.raises(ValueError, match="same length") as info:
            BatchExecutor(max_workers=workers).execute_batch(tasks, item_ids=["a"] * 5)

        assert "3" in str(info.value)
        assert "5" in str(info.value)
        assert ran == []

    @pytest.mark.parametrize("workers", [None, 3])
    def test_a_generator_with_more_tasks_than_ids_is_rejected(self, workers):
        tasks = (returning(i) for i in range(4))
        with pytest.raises(ValueError, match="item_ids"):
            BatchExecutor(max_workers=workers).execute_batch(tasks, item_ids=["a", "b"])

    @pytest.mark.parametrize("workers", [None, 3])
    def test_a_generator_with_fewer_tasks_than_ids_names_both_counts(self, workers):
        tasks = (returning(i) for i in range(2))
        with pytest.raises(ValueError, match="same length") as info:
            BatchExecutor(max_workers=workers).execute_batch(
                tasks, item_ids=["a", "b", "c", "d", "e"]
            )
        assert "2" in str(info.value)
        assert "5" in str(info.value)

    def test_a_single_string_is_not_taken_as_a_list_of_ids(self):
        with pytest.raises(TypeError, match="item_ids"):
            BatchExecutor().execute_batch([returning(1), returning(2)], item_ids="ab")


# -- order ----------------------------------------------------------------------------------


def test_threads_keep_input_order_when_tasks_finish_in_reverse():
    n = 5
    finished = [threading.Event() for _ in range(n)]
    completion: list[int] = []
    lock = threading.Lock()

    def task(i: int) -> int:
        if i + 1 < n:
            assert finished[i + 1].wait(WAIT), f"task {i + 1} never finished"
        with lock:
            completion.append(i)
        finished[i].set()
        return i * 10

    executor = BatchExecutor(stop_on_error=False, max_workers=n)
    result = executor.execute_batch([lambda i=i: task(i) for i in range(n)])

    assert completion == [4, 3, 2, 1, 0]
    assert result.all_successful, [i.error for i in result.failed_items]
    assert [i.result for i in result] == [0, 10, 20, 30, 40]
    assert [i.item_id for i in result] == ["0", "1", "2", "3", "4"]


# -- stop_on_error --------------------------------------------------------------------------


class TestStopOnError:
    def test_sequential_raises_the_original_exception_and_starts_nothing_after(self):
        err = Boom("the first failure")
        started: list[int] = []

        def task(i: int) -> int:
            started.append(i)
            if i == 1:
                raise err
            return i

        with pytest.raises(Boom) as info:
            BatchExecutor(stop_on_error=True).execute_batch([lambda i=i: task(i) for i in range(5)])

        assert info.value is err
        assert started == [0, 1]

    def test_sequential_takes_no_token_after_the_failure(self):
        limiter = FakeRateLimiter()

        def fail() -> None:
            raise Boom

        with pytest.raises(Boom):
            BatchExecutor(stop_on_error=True, rate_limiter=limiter).execute_batch(
                [returning(0), fail, returning(2), returning(3)]
            )

        assert limiter.acquire_count == 2

    def test_threads_raise_the_original_exception_object(self):
        err = Boom("original")

        def fail() -> None:
            raise err

        with pytest.raises(Boom) as info:
            BatchExecutor(stop_on_error=True, max_workers=3).execute_batch(
                [returning(0), fail, returning(2)]
            )

        assert info.value is err

    def test_threads_start_nothing_new_after_a_failure(self):
        # Two workers. Item 0 fails while item 1 is still running (item 1 is held until the
        # failure has been reported through on_progress). Item 0 waits until the input has been
        # read past item 2, so a runner that queues work ahead has item 2 queued when item 0
        # fails. No item after 1 may start.
        err = Boom("stop")
        read_past_item_2 = threading.Event()
        held_started = threading.Event()
        failure_reported = threading.Event()
        started_late: list[int] = []

        def failing() -> None:
            assert held_started.wait(WAIT), "the two workers never ran at once"
            read_past_item_2.wait(1.0)  # a runner that does not read ahead never sets it
            raise err

        def held() -> str:
            held_started.set()
            failure_reported.wait(WAIT)
            return "held"

        def late(i: int) -> Callable[[], int]:
            def task() -> int:
                started_late.append(i)
                return i

            return task

        def tasks() -> Iterator[Callable[[], Any]]:
            yield failing
            yield held
            for i in range(2, 12):
                if i == 3:
                    read_past_item_2.set()
                yield late(i)

        executor = BatchExecutor(stop_on_error=True, max_workers=2)
        with pytest.raises(Boom) as info:
            executor.execute_batch(tasks(), on_progress=lambda c, t: failure_reported.set())

        assert info.value is err
        assert started_late == []

    def test_threads_with_a_limiter_take_no_token_after_the_failure(self):
        limiter = FakeRateLimiter()
        failure_reported = threading.Event()
        started_late: list[int] = []

        def failing() -> None:
            raise Boom

        def held() -> str:
            failure_reported.wait(WAIT)
            return "held"

        tasks = [failing, held] + [lambda i=i: started_late.append(i) for i in range(2, 10)]
        executor = BatchExecutor(stop_on_error=True, max_workers=2, rate_limiter=limiter)
        with pytest.raises(Boom):
            executor.execute_batch(tasks, on_progress=lambda c, t: failure_reported.set())

        # one token for the failing task, at most one more taken before its failure was seen
        assert limiter.acquire_count in (1, 2)
        assert started_late == []

    def test_threads_wait_for_calls_already_running_before_raising(self):
        release = threading.Event()
        finished = threading.Event()

        def failing() -> None:
            raise Boom

        def running() -> str:
            release.wait(WAIT)
            finished.set()
            return "done"

        executor = BatchExecutor(stop_on_error=True, max_workers=2)
        with pytest.raises(Boom):
            executor.execute_batch([running, failing], on_progress=lambda c, t: release.set())

        assert finished.is_set()


# -- progress -------------------------------------------------------------------------------


class ProgressRecorder:
    """on_progress that records calls and notices two calls overlapping (no timing)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.overlaps = 0
        self._busy = threading.Lock()

    def __call__(self, completed: int, total: int | None) -> None:
        if not self._busy.acquire(blocking=False):
            self.overlaps += 1
            return
        try:
            self.calls.append((completed, total))
            time.sleep(0)  # give another thread the chance to call in meanwhile
        finally:
            self._busy.release()


class TestProgress:
    @pytest.mark.parametrize("workers", [None, 2, 8])
    def test_progress_is_called_once_per_item_serially_with_increasing_counts(self, workers):
        n = 60
        progress = ProgressRecorder()
        executor = BatchExecutor(stop_on_error=False, max_workers=workers)

        result = executor.execute_batch([lambda i=i: i for i in range(n)], on_progress=progress)

        assert result.total == n
        assert progress.overlaps == 0
        assert [c for c, _ in progress.calls] == list(range(1, n + 1))
        assert {t for _, t in progress.calls} == {n}

    @pytest.mark.parametrize("workers", [None, 3])
    def test_progress_counts_failures_too(self, workers):
        progress = ProgressRecorder()

        def fail() -> None:
            raise Boom

        BatchExecutor(stop_on_error=False, max_workers=workers).execute_batch(
            [returning(1), fail, fail, returning(4)], on_progress=progress
        )

        assert progress.calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    @pytest.mark.parametrize("workers", [None, 3])
    def test_progress_total_is_none_for_a_lazy_input(self, workers):
        progress = ProgressRecorder()
        BatchExecutor(max_workers=workers).execute_batch(
            (returning(i) for i in range(4)), on_progress=progress
        )
        assert progress.calls == [(1, None), (2, None), (3, None), (4, None)]


# -- the rate limiter ------------------------------------------------------------------------


class TestRateLimiter:
    @pytest.mark.parametrize("workers", [None, 2, 4, "auto"])
    def test_limiter_is_acquired_once_per_task_from_the_calling_thread(self, workers):
        limiter = ThreadRecordingLimiter()
        n = 20
        result = BatchExecutor(rate_limiter=limiter, max_workers=workers).execute_batch(
            [lambda i=i: i for i in range(n)]
        )

        assert result.successful == n
        assert limiter.acquire_count == n
        assert limiter.weights == [1] * n
        assert set(limiter.threads) == {threading.get_ident()}

    @pytest.mark.parametrize("workers", [None, 3])
    def test_each_task_starts_only_after_its_token(self, workers):
        limiter = FakeRateLimiter()
        tokens_seen: dict[int, int] = {}
        lock = threading.Lock()

        def task(i: int) -> int:
            with lock:
                tokens_seen[i] = limiter.acquire_count
            return i

        n = 15
        BatchExecutor(rate_limiter=limiter, max_workers=workers).execute_batch(
            [lambda i=i: task(i) for i in range(n)]
        )

        # Tokens are taken in input order, so task i needs at least i + 1 of them.
        assert all(tokens_seen[i] >= i + 1 for i in range(n)), tokens_seen

    @pytest.mark.parametrize("workers", [None, 3])
    def test_failing_tasks_still_take_a_token(self, workers):
        limiter = FakeRateLimiter()

        def fail() -> None:
            raise Boom

        BatchExecutor(stop_on_error=False, rate_limiter=limiter, max_workers=workers).execute_batch(
            [fail, fail, returning(1)]
        )

        assert limiter.acquire_count == 3

    def test_execute_takes_a_token_before_the_task(self):
        events: list[str] = []

        class Limiter:
            def acquire(self, weight: int = 1) -> None:
                events.append(f"acquire({weight})")

        BatchExecutor(rate_limiter=Limiter()).execute(lambda: events.append("task"))

        assert events == ["acquire(1)", "task"]

    def test_a_limiter_without_acquire_is_rejected_up_front(self):
        with pytest.raises(TypeError, match="acquire"):
            BatchExecutor(rate_limiter=object())


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, "many", 2.5, True])
def test_invalid_max_workers_is_rejected_at_construction(bad):
    with pytest.raises(ValueError, match="max_workers"):
        BatchExecutor(max_workers=bad)


def test_stop_on_error_defaults_to_true():
    assert BatchExecutor().stop_on_error is True


# -- lazy inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [None, 3, "auto"])
def test_a_lazy_generator_of_tasks_runs_every_task_in_order(workers):
    pulled: list[int] = []

    def tasks() -> Iterator[Callable[[], int]]:
        for i in range(25):
            pulled.append(i)
            yield lambda i=i: i * i

    result = BatchExecutor(max_workers=workers).execute_batch(tasks())

    assert pulled == list(range(25))
    assert result.total == 25
    assert [i.result for i in result] == [i * i for i in range(25)]
    assert [i.item_id for i in result] == [str(i) for i in range(25)]


@pytest.mark.parametrize("workers", [None, 3])
def test_an_empty_batch_returns_an_empty_result(workers):
    progress = ProgressRecorder()
    result = BatchExecutor(max_workers=workers).execute_batch([], on_progress=progress)
    assert (len(result), result.total, result.all_successful) == (0, 0, True)
    assert progress.calls == []
