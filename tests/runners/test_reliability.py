"""Retries, halt rules, timeouts and deadlines on real event loops and threads."""

import asyncio
import random
import threading
import time

import pytest

from paceline import BatchExecutor, ErrorCode, RetryPolicy, Throttled, batch_execute, stream
from paceline.policy.retry import RetryBudget
from paceline.testing import FakeRateLimiter

FAST = {"base_s": 0.001, "cap_s": 0.002}

pytestmark = pytest.mark.timeout(30)


class Flaky:
    """Fails each key ``failures`` times (with ``error``), then returns it; thread-safe."""

    def __init__(self, failures: int, error: type[Exception] = TimeoutError) -> None:
        self.failures = failures
        self.error = error
        self.calls: dict[object, int] = {}
        self.lock = threading.Lock()

    def count(self, key: object) -> int:
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            return self.calls[key]

    def sync(self, key: object) -> object:
        if self.count(key) <= self.failures:
            raise self.error(f"flaky {key}")
        return key

    async def aio(self, key: object) -> object:
        await asyncio.sleep(0)
        return self.sync(key)


def tasks_for(flaky: Flaky, n: int):
    return [lambda k=k: flaky.sync(k) for k in range(n)]


@pytest.mark.parametrize("face", ["async", "threads", "sequential"])
def test_transient_failures_are_retried_until_they_succeed(face):
    flaky = Flaky(failures=2)
    limiter = FakeRateLimiter()
    policy = RetryPolicy(attempts=3, rng=random.Random(1), **FAST)
    budget = RetryBudget(ratio=2.0, floor=0)  # two retries per item: enough for this test
    if face == "async":
        results = asyncio.run(
            batch_execute(
                range(20), flaky.aio, 4, rate_limiter=limiter, retry=policy, retry_budget=budget
            )
        )
        assert [r.value for r in results] == list(range(20))
    else:
        executor = BatchExecutor(
            stop_on_error=False,
            rate_limiter=limiter,
            max_workers=4 if face == "threads" else None,
            retry=policy,
            retry_budget=budget,
        )
        result = executor.execute_batch(tasks_for(flaky, 20))
        assert result.results == list(range(20))
        assert all(item.attempts == 3 for item in result)
        assert [len(item.history) for item in result] == [3] * 20
        assert [a.error for a in result[0].history] == ["flaky 0", "flaky 0", None]
    assert flaky.calls == dict.fromkeys(range(20), 3)
    # every retry took a token like a first attempt
    assert limiter.acquire_count == 60


def test_the_default_budget_refuses_a_retry_storm():
    flaky = Flaky(failures=2)
    budget = RetryBudget()  # 20 % of first attempts + 10
    asyncio.run(batch_execute(range(20), flaky.aio, retry=RetryPolicy(**FAST), retry_budget=budget))
    assert budget.spent == 10 + 4
    assert sum(flaky.calls.values()) == 20 + 14


def test_exhausted_attempts_settle_the_last_error():
    flaky = Flaky(failures=5)
    result = BatchExecutor(
        stop_on_error=False, max_workers=2, retry=RetryPolicy(attempts=3, **FAST)
    ).execute_batch(tasks_for(flaky, 4))
    assert result.failed == 4
    assert all(item.attempts == 3 and item.error_code == ErrorCode.TIMEOUT for item in result)
    assert flaky.calls == dict.fromkeys(range(4), 3)


def test_permanent_failures_are_not_retried():
    flaky = Flaky(failures=1, error=ValueError)
    results = asyncio.run(batch_execute(range(5), flaky.aio, retry=RetryPolicy(**FAST)))
    assert all(r.is_failure and r.error_code == ErrorCode.INVALID_INPUT for r in results)
    assert flaky.calls == dict.fromkeys(range(5), 1)


def test_the_retry_budget_caps_retries_for_the_whole_batch():
    flaky = Flaky(failures=100)
    budget = RetryBudget(ratio=0.1, floor=2)
    asyncio.run(
        batch_execute(
            range(50),
            flaky.aio,
            5,
            retry=RetryPolicy(attempts=10, **FAST),
            retry_budget=budget,
        )
    )
    retries = sum(flaky.calls.values()) - 50
    assert retries == budget.spent
    assert retries <= 2 + 0.1 * 50


def test_retry_after_sets_the_floor_of_the_wait():
    calls: list[float] = []

    async def op(key):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise Throttled(retry_after=0.2)
        return key

    results = asyncio.run(batch_execute([1], op, retry=RetryPolicy(attempts=2, **FAST)))
    assert results[0].value == 1
    assert calls[1] - calls[0] >= 0.19


def test_an_absurd_retry_after_fails_the_item_with_a_clear_error():
    async def op(key):
        raise Throttled(retry_after=1_000_000)

    results = asyncio.run(batch_execute([1], op, retry=RetryPolicy(attempts=5)))
    assert results[0].is_failure
    assert "max_retry_after_s" in results[0].message


@pytest.mark.parametrize("workers", [None, 3])
def test_halt_soon_after_n_failures_starts_nothing_new_and_says_why(workers):
    started: list[int] = []
    lock = threading.Lock()

    def make(i):
        def task():
            with lock:
                started.append(i)
            if i % 2:
                raise RuntimeError(f"odd {i}")
            return i

        return task

    result = BatchExecutor(
        stop_on_error=False, max_workers=workers, halt="soon,fail=3"
    ).execute_batch([make(i) for i in range(100)])
    assert result.failed == 3
    assert result.halted is not None
    assert result.halted.startswith("halt rule soon,fail=3")
    assert result.not_attempted == 100 - len(result)
    assert len(started) == len(result)  # everything started was settled, nothing else ran
    assert len(started) < 100


def test_halt_now_cancels_async_work_in_flight_and_marks_the_rest_not_attempted():
    cancelled: list[int] = []

    async def op(key):
        if key == 0:
            await asyncio.sleep(0.01)
            raise RuntimeError("first failure")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(key)
            raise
        return key

    results = asyncio.run(batch_execute(range(10), op, 4, halt="now,fail=1"))
    assert results[0].is_failure
    assert results[0].message == "first failure"
    assert sorted(cancelled) == [1, 2, 3]
    assert all(r.error_code == ErrorCode.CANCELLED for r in results[1:])
    assert "halt rule now,fail=1" in results[1].message


def test_an_async_attempt_past_its_timeout_is_cancelled_and_retried():
    attempts: list[int] = []

    async def op(key):
        attempts.append(key)
        if len(attempts) == 1:
            await asyncio.sleep(10)
        return key

    results = asyncio.run(
        batch_execute([7], op, timeout_s=0.05, retry=RetryPolicy(attempts=2, **FAST))
    )
    assert results[0].value == 7
    assert attempts == [7, 7]


def test_an_async_timeout_without_retry_is_a_timeout_failure():
    async def op(key):
        await asyncio.sleep(10)

    results = asyncio.run(batch_execute([1, 2], op, timeout_s=0.05))
    assert all(r.error_code == ErrorCode.TIMEOUT for r in results)


def test_a_thread_past_its_timeout_is_settled_as_timed_out_and_its_late_result_dropped():
    release = threading.Event()

    def slow():
        release.wait(5)
        return "late"

    def quick():
        return "quick"

    started = time.monotonic()
    timer = threading.Timer(0.3, release.set)
    timer.start()
    result = BatchExecutor(stop_on_error=False, max_workers=2, timeout_s=0.05).execute_batch(
        [slow, quick]
    )
    assert time.monotonic() - started >= 0.29  # the call waited for the thread to finish
    assert result[0].success is False
    assert result[0].error_code == ErrorCode.TIMEOUT
    assert "keeps running in its thread" in result[0].error
    assert result[1].result == "quick"
    timer.join()


def test_a_batch_deadline_stops_async_work_and_reports_it():
    async def op(key):
        await asyncio.sleep(0.02 if key < 3 else 10)
        return key

    started = time.monotonic()
    results = asyncio.run(batch_execute(range(20), op, 5, deadline_s=0.2))
    assert time.monotonic() - started < 5
    assert [r.value for r in results[:3]] == [0, 1, 2]
    assert all("deadline of 0.2 s passed" in r.message for r in results[3:])


def test_a_batch_deadline_stops_thread_dispatch():
    def task():
        time.sleep(0.05)
        return 1

    result = BatchExecutor(stop_on_error=False, max_workers=2, deadline_s=0.2).execute_batch(
        [task] * 100
    )
    assert result.halted == "deadline of 0.2 s passed"
    assert 2 <= len(result) < 100
    assert result.all_successful is False
    assert result.failed == 0


def test_stream_reports_attempts_and_history():
    flaky = Flaky(failures=1)

    async def main():
        return [r async for r in stream(range(3), flaky.aio, retry=RetryPolicy(**FAST))]

    out = asyncio.run(main())
    assert [r.result for r in out] == [0, 1, 2]
    assert [r.attempts for r in out] == [2, 2, 2]
    assert out[0].history[0].error == "flaky 0"
    assert out[0].history[1].error is None
