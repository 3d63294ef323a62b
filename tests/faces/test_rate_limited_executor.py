"""RateLimitedExecutor (seed 003): a token is taken immediately before each task starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from paceline import RateLimitedExecutor, RateLimiter
from paceline.testing import FakeRateLimiter

pytestmark = pytest.mark.timeout(30)


def test_executor_single_task_takes_one_token():
    fake_limiter = FakeRateLimiter()
    executor = RateLimitedExecutor(rate_limiter=fake_limiter)

    def task() -> str:
        return "result"

    assert executor.execute(task) == "result"
    assert fake_limiter.acquire_count == 1


def test_executor_multiple_tasks_keep_order_and_take_a_token_each():
    fake_limiter = FakeRateLimiter()
    executor = RateLimitedExecutor(rate_limiter=fake_limiter)

    def task(value: int) -> int:
        return value * 2

    results = executor.execute_batch([lambda: task(1), lambda: task(2), lambda: task(3)])

    assert results == [2, 4, 6]
    assert fake_limiter.acquire_count == 3


def test_executor_task_failure_propagates_after_taking_a_token():
    fake_limiter = FakeRateLimiter()
    executor = RateLimitedExecutor(rate_limiter=fake_limiter)

    def failing_task() -> None:
        raise ValueError("Task failed")

    with pytest.raises(ValueError, match="Task failed"):
        executor.execute(failing_task)

    assert fake_limiter.acquire_count == 1


def test_executor_batch_partial_failure_puts_the_exception_in_place():
    fake_limiter = FakeRateLimiter()
    executor = RateLimitedExecutor(rate_limiter=fake_limiter, stop_on_error=False)
    err = ValueError("Failed")

    def good_task() -> str:
        return "success"

    def bad_task() -> None:
        raise err

    results = executor.execute_batch([good_task, bad_task, good_task])

    assert len(results) == 3
    assert results[0] == "success"
    assert isinstance(results[1], Exception)
    assert results[1] is err
    assert results[2] == "success"
    assert fake_limiter.acquire_count == 3


def test_executor_stop_on_error_takes_no_token_after_the_first_failure():
    fake_limiter = FakeRateLimiter()
    executor = RateLimitedExecutor(rate_limiter=fake_limiter, stop_on_error=True)
    calls: list[str] = []
    err = ValueError("Failed")

    def bad_task() -> None:
        calls.append("bad")
        raise err

    with pytest.raises(ValueError, match="Failed") as info:
        executor.execute_batch([bad_task, bad_task])

    assert info.value is err
    assert fake_limiter.acquire_count == 1
    assert calls == ["bad"]


def test_executor_acquires_before_execution():
    fake_limiter = FakeRateLimiter()
    executor = RateLimitedExecutor(rate_limiter=fake_limiter)
    execution_order: list[str] = []

    def task() -> None:
        execution_order.append("task_executed")

    original_acquire = fake_limiter.acquire

    def tracked_acquire(weight: int = 1) -> None:
        execution_order.append("rate_limit_acquired")
        original_acquire(weight)

    fake_limiter.acquire = tracked_acquire  # type: ignore[method-assign]

    executor.execute(task)

    assert execution_order == ["rate_limit_acquired", "task_executed"]


def test_batch_acquires_before_each_execution():
    fake_limiter = FakeRateLimiter()
    order: list[str] = []
    original_acquire = fake_limiter.acquire

    def tracked_acquire(weight: int = 1) -> None:
        order.append("acquire")
        original_acquire(weight)

    fake_limiter.acquire = tracked_acquire  # type: ignore[method-assign]
    tasks: list[Callable[[], None]] = [lambda i=i: order.append(f"task{i}") for i in range(3)]

    RateLimitedExecutor(fake_limiter).execute_batch(tasks)

    assert order == ["acquire", "task0", "acquire", "task1", "acquire", "task2"]


def test_batch_with_workers_takes_tokens_in_the_calling_thread_and_keeps_order():
    caller = threading.get_ident()
    threads: list[int] = []

    class Limiter(FakeRateLimiter):
        def acquire(self, weight: int = 1) -> None:
            threads.append(threading.get_ident())
            super().acquire(weight)

    limiter = Limiter()
    results = RateLimitedExecutor(limiter, max_workers=4).execute_batch(
        [lambda i=i: i for i in range(20)]
    )

    assert results == list(range(20))
    assert limiter.acquire_count == 20
    assert set(threads) == {caller}


def test_executor_requires_a_limiter_with_acquire():
    with pytest.raises(TypeError, match="acquire"):
        RateLimitedExecutor(rate_limiter=object())


# -- seed 003 integration test: the only wall-clock test of the faces -------------------------


def test_third_call_waits_for_the_window():
    limiter = RateLimiter(max_requests=2, time_window_seconds=1.0)
    executor = RateLimitedExecutor(rate_limiter=limiter)
    call_times: list[float] = []

    def task() -> None:
        call_times.append(time.monotonic())

    executor.execute_batch([task, task, task])

    assert len(call_times) == 3
    # the first two start together (generous bound: the box may be busy)...
    assert call_times[1] - call_times[0] < 0.5
    # ...and the third waits until the first has left the window
    assert call_times[2] - call_times[0] >= 0.9
