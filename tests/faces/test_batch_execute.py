"""The async faces: ``batch_execute`` (seed 004), ``stream``, and running them from sync code.

Sync test functions drive their own event loop with ``asyncio.run``. Concurrency is counted
inside the operation, cancellation observed with flags, order with lists; the only clock read
is the shared-limiter test, which checks recorded timestamps, never how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from unittest.mock import AsyncMock, Mock

import pytest

from paceline import (
    BatchItemResult,
    ErrorCode,
    Failure,
    RateLimiter,
    Success,
    batch_execute,
    batch_execute_sync,
    fetch_many,
    run_sync,
    stream,
)
from paceline.testing import FakeRateLimiter

pytestmark = pytest.mark.timeout(30)


class Boom(Exception):
    pass


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def settle_loop(rounds: int = 100) -> None:
    """Let the loop run other tasks until only the current one is left (or give up)."""
    me = asyncio.current_task()
    for _ in range(rounds):
        if asyncio.all_tasks() == {me}:
            return
        await asyncio.sleep(0)


def other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


class Meter:
    """Operations running at once (single event loop: no lock needed)."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    def __enter__(self) -> Meter:
        self.running += 1
        self.peak = max(self.peak, self.running)
        return self

    def __exit__(self, *exc: object) -> None:
        self.running -= 1


def reverse_finishers(n: int):
    """An operation whose key i finishes only after key i + 1 has: completion order n-1..0."""
    done = {i: asyncio.Event() for i in range(n)}
    completion: list[int] = []

    async def op(i: int) -> int:
        if i + 1 < n:
            await done[i + 1].wait()
        completion.append(i)
        done[i].set()
        return i * 10

    return op, completion


# -- batch_execute (seed 004) ----------------------------------------------------------------


class TestBatchExecute:
    def test_returns_a_result_per_key_in_key_order(self):
        async def main():
            op, completion = reverse_finishers(6)
            results = await batch_execute(list(range(6)), op, max_concurrent=6)
            return results, completion

        results, completion = asyncio.run(main())
        assert completion == [5, 4, 3, 2, 1, 0]
        assert results == [Success(i * 10) for i in range(6)]
        assert all(r.is_success for r in results)

    def test_concurrency_never_exceeds_max_concurrent_and_reaches_it(self):
        meter = Meter()

        async def mock_get(key: int) -> int:
            with meter:
                for _ in range(3):
                    await asyncio.sleep(0)
            return key

        results = asyncio.run(batch_execute(list(range(20)), mock_get, max_concurrent=5))

        assert [r.value for r in results] == list(range(20))
        assert meter.peak == 5

    def test_progress_is_called_once_per_key_and_ends_at_total(self):
        progress_calls: list[tuple[int, int | None]] = []

        asyncio.run(
            batch_execute(
                ["P1", "P2", "P3"],
                double_str,
                on_progress=lambda c, t: progress_calls.append((c, t)),
            )
        )

        assert len(progress_calls) == 3
        assert progress_calls[-1] == (3, 3)
        assert [c for c, _ in progress_calls] == [1, 2, 3]

    def test_errors_do_not_break_the_batch(self):
        errors = {2: KeyError("NONEXISTENT"), 4: TimeoutError("slow")}

        async def get(key: int) -> int:
            await asyncio.sleep(0)
            if key in errors:
                raise errors[key]
            return key

        results = asyncio.run(batch_execute(list(range(6)), get, max_concurrent=3))

        assert len(results) == 6
        assert [r.is_success for r in results] == [True, True, False, True, False, True]
        failure = results[2]
        assert isinstance(failure, Failure)
        assert failure.error is errors[2]
        assert failure.error_code is ErrorCode.NOT_FOUND
        assert results[4].error_code is ErrorCode.TIMEOUT  # type: ignore[union-attr]
        assert [r.value for r in results if r.is_success] == [0, 1, 3, 5]

    def test_fail_fast_raises_the_original_exception_and_cancels_in_flight_work(self):
        err = Boom("first failure")

        async def main():
            started: list[int] = []
            cancelled: list[int] = []

            async def op(key: int) -> int:
                started.append(key)
                if key == 0:
                    for _ in range(100):  # let the other two start first
                        if len(started) >= 3:
                            break
                        await asyncio.sleep(0)
                    raise err
                try:
                    await asyncio.Event().wait()  # never set: only cancellation ends it
                except asyncio.CancelledError:
                    cancelled.append(key)
                    raise
                return key

            with pytest.raises(Boom) as info:
                await batch_execute(list(range(10)), op, max_concurrent=3, fail_fast=True)
            return info.value, started, cancelled, other_tasks()

        raised, started, cancelled, leftover = asyncio.run(main())
        assert raised is err
        assert sorted(started) == [0, 1, 2]  # nothing new started after the failure
        assert sorted(cancelled) == [1, 2]
        assert leftover == set()

    def test_fail_fast_false_attempts_every_key(self):
        attempted: list[int] = []

        async def op(key: int) -> int:
            attempted.append(key)
            raise Boom(str(key))

        results = asyncio.run(batch_execute(list(range(5)), op, max_concurrent=2))

        assert sorted(attempted) == [0, 1, 2, 3, 4]
        assert all(r.is_failure for r in results)
        assert [r.message for r in results] == ["0", "1", "2", "3", "4"]  # type: ignore[union-attr]

    def test_an_async_generator_of_keys_works(self):
        async def keys() -> AsyncIterator[int]:
            for i in range(7):
                await asyncio.sleep(0)
                yield i

        results = asyncio.run(batch_execute(keys(), double, max_concurrent=3))
        assert [r.value for r in results] == [0, 2, 4, 6, 8, 10, 12]

    def test_a_sync_generator_of_keys_works(self):
        def keys() -> Iterator[int]:
            yield from range(7)

        results = asyncio.run(batch_execute(keys(), double, max_concurrent=3))
        assert [r.value for r in results] == [0, 2, 4, 6, 8, 10, 12]

    def test_progress_total_is_none_for_a_generator(self):
        calls: list[tuple[int, int | None]] = []
        asyncio.run(
            batch_execute(iter(range(3)), double, on_progress=lambda c, t: calls.append((c, t)))
        )
        assert calls == [(1, None), (2, None), (3, None)]

    def test_auto_concurrency_runs_everything_with_more_than_one_at_once(self):
        meter = Meter()

        async def op(key: int) -> int:
            with meter:
                await asyncio.sleep(0)
            return key

        results = asyncio.run(batch_execute(list(range(30)), op, max_concurrent="auto"))

        assert [r.value for r in results] == list(range(30))
        assert 1 < meter.peak <= 30

    def test_max_workers_is_accepted_as_the_concurrency_limit(self):
        meter = Meter()

        async def op(key: int) -> int:
            with meter:
                await asyncio.sleep(0)
            return key

        asyncio.run(batch_execute(list(range(12)), op, max_workers=2))
        assert meter.peak == 2

    def test_no_limit_runs_every_key_at_once(self):
        meter = Meter()

        async def op(key: int) -> int:
            with meter:
                await asyncio.sleep(0)
            return key

        asyncio.run(batch_execute(list(range(15)), op, max_concurrent=None))
        assert meter.peak == 15

    def test_an_empty_batch_returns_an_empty_list(self):
        calls: list[object] = []
        assert asyncio.run(batch_execute([], double, on_progress=lambda *a: calls.append(a))) == []
        assert calls == []

    @pytest.mark.parametrize("bad", [0, -3])
    def test_invalid_concurrency_is_rejected(self, bad):
        with pytest.raises(ValueError, match="max_concurrent"):
            asyncio.run(batch_execute([1], double, max_concurrent=bad))

    def test_no_task_outlives_the_call(self):
        async def main():
            await batch_execute(list(range(20)), double, max_concurrent=4)
            return other_tasks()

        assert asyncio.run(main()) == set()


async def double_str(key: str) -> str:
    await asyncio.sleep(0)
    return key * 2


# -- rate limiters with batch_execute ---------------------------------------------------------


class TestBatchExecuteWithLimiters:
    def test_a_mock_limiter_is_acquired_once_per_key(self):
        limiter = Mock()
        results = asyncio.run(batch_execute(list(range(5)), double, 2, rate_limiter=limiter))

        assert [r.value for r in results] == [0, 2, 4, 6, 8]
        assert limiter.acquire.call_count == 5
        for call in limiter.acquire.call_args_list:
            assert (list(call.args) + list(call.kwargs.values())) in ([], [1])

    def test_an_async_mock_limiter_is_awaited_once_per_key(self):
        limiter = Mock()
        limiter.acquire_async = AsyncMock()
        asyncio.run(batch_execute(list(range(4)), double, 2, rate_limiter=limiter))

        assert limiter.acquire_async.await_count == 4
        assert limiter.acquire.call_count == 0

    def test_the_fake_limiter_records_one_token_per_key(self):
        limiter = FakeRateLimiter()
        asyncio.run(batch_execute(list(range(8)), double, 3, rate_limiter=limiter))
        assert limiter.acquire_count == 8
        assert limiter.total_weight == 8

    def test_weight_decides_how_many_permits_each_key_takes(self):
        limiter = FakeRateLimiter()
        asyncio.run(batch_execute([1, 2, 3], double, rate_limiter=limiter, weight=lambda k: k * 10))
        assert sorted(limiter.weights) == [10, 20, 30]
        assert limiter.total_weight == 60

    def test_failing_operations_still_take_a_token(self):
        limiter = FakeRateLimiter()

        async def op(key: int) -> int:
            raise Boom

        asyncio.run(batch_execute(list(range(4)), op, rate_limiter=limiter))
        assert limiter.acquire_count == 4

    def test_a_limiter_without_acquire_is_rejected(self):
        with pytest.raises(TypeError, match="acquire"):
            asyncio.run(batch_execute([1], double, rate_limiter=object()))

    def test_a_limiter_shared_by_two_event_loops_and_threads_respects_the_limit(self):
        n, window_s = 20, 0.2
        window_ns = int(window_s * 1e9)
        limiter = RecordingRateLimiter(n, window_s)
        starts: list[int] = []
        starts_lock = threading.Lock()
        errors: list[BaseException] = []

        def record_start() -> None:
            now = time.monotonic_ns()
            with starts_lock:
                starts.append(now)

        async def op(key: int) -> int:
            record_start()
            await asyncio.sleep(0)
            return key

        def loop_thread() -> None:
            try:
                results = asyncio.run(
                    batch_execute(list(range(30)), op, max_concurrent=5, rate_limiter=limiter)
                )
                assert all(r.is_success for r in results)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        def acquiring_thread() -> None:
            try:
                for _ in range(10):
                    limiter.acquire()
                    record_start()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=loop_thread) for _ in range(2)]
        threads += [threading.Thread(target=acquiring_thread) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)

        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert len(starts) == 2 * 30 + 2 * 10
        # Every start had exactly one grant, and the grants never exceed the limit in any
        # half-open window [t, t + W): exact integer arithmetic on the limiter's own times.
        assert len(limiter.grants) == len(starts)
        assert max_in_any_window(limiter.grants, window_ns) == n
        # The observed starts agree; they come a little after their grant, by an amount that
        # varies (GIL, a busy box), so they are checked over a shorter window.
        assert max_in_any_window(starts, window_ns // 2) <= n


class RecordingRateLimiter(RateLimiter):
    """paceline's RateLimiter, recording the time of every grant it returns."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.grants: list[int] = []
        self._record_lock = threading.Lock()

    def _record(self, granted_ns: int | None) -> None:
        if granted_ns is not None:
            with self._record_lock:
                self.grants.append(granted_ns)

    def try_acquire(self, weight: int = 1) -> int | None:
        granted = super().try_acquire(weight)
        self._record(granted)
        return granted

    def acquire(self, weight: int = 1) -> int:
        granted = super().acquire(weight)
        self._record(granted)
        return granted

    async def acquire_async(self, weight: int = 1) -> int:
        granted = await super().acquire_async(weight)
        self._record(granted)
        return granted


def max_in_any_window(times_ns: list[int], window_ns: int) -> int:
    """The most timestamps in any half-open window ``[t, t + window_ns)``."""
    ts = sorted(times_ns)
    best = end = 0
    for start, t in enumerate(ts):
        while end < len(ts) and ts[end] < t + window_ns:
            end += 1
        best = max(best, end - start)
    return best


def test_max_in_any_window_counts_half_open_windows():
    assert max_in_any_window([0, 99, 100, 199], 100) == 2
    assert max_in_any_window([0, 50, 99], 100) == 3
    assert max_in_any_window([], 100) == 0


# -- stream ---------------------------------------------------------------------------------


async def collect_stream(agen: AsyncIterator[BatchItemResult]) -> list[BatchItemResult]:
    return [r async for r in agen]


async def collect_into(out: list[BatchItemResult], agen: AsyncIterator[BatchItemResult]) -> None:
    async for r in agen:
        out.append(r)


class TestStream:
    def test_ordered_stream_yields_in_input_order(self):
        async def main():
            op, completion = reverse_finishers(5)
            results = await collect_stream(stream(list(range(5)), op, 5))
            return results, completion

        results, completion = asyncio.run(main())
        assert completion == [4, 3, 2, 1, 0]
        assert [r.result for r in results] == [0, 10, 20, 30, 40]
        assert [r.index for r in results] == [0, 1, 2, 3, 4]

    def test_unordered_stream_yields_in_completion_order(self):
        async def main():
            op, completion = reverse_finishers(5)
            results = await collect_stream(stream(list(range(5)), op, 5, ordered=False))
            return results, completion

        results, completion = asyncio.run(main())
        assert [r.result for r in results] == [i * 10 for i in completion]
        assert [r.result for r in results] == [40, 30, 20, 10, 0]

    def test_stream_reports_failures_as_items(self):
        err = Boom("bad key")

        async def op(key: int) -> int:
            if key == 1:
                raise err
            return key

        results = asyncio.run(collect_stream(stream(list(range(3)), op)))
        assert [r.success for r in results] == [True, False, True]
        assert results[1].exception is err
        assert results[1].error == "bad key"

    def test_item_ids_default_to_str_and_int_keys_else_positions(self):
        async def echo(key: object) -> object:
            return key

        ids = asyncio.run(collect_stream(stream(["a", 7, ("t",)], echo)))
        assert [r.item_id for r in ids] == ["a", "7", "2"]

    def test_item_id_callable_names_each_result(self):
        async def echo(key: dict[str, int]) -> int:
            return key["n"]

        keys = [{"n": 1}, {"n": 2}]
        results = asyncio.run(collect_stream(stream(keys, echo, item_id=lambda k: f"n{k['n']}")))
        assert [r.item_id for r in results] == ["n1", "n2"]

    def test_fail_fast_stream_raises_the_original_exception_and_leaves_no_task(self):
        err = Boom("stop the stream")

        async def main():
            async def op(key: int) -> int:
                await asyncio.sleep(0)
                if key == 3:
                    raise err
                return key

            got: list[BatchItemResult] = []
            with pytest.raises(Boom) as info:
                await collect_into(got, stream(list(range(50)), op, 2, fail_fast=True))
            await settle_loop()
            return info.value, got, other_tasks()

        raised, got, leftover = asyncio.run(main())
        assert raised is err
        successes = [r.result for r in got if r.success]
        assert successes == list(range(len(successes)))  # in order, and only keys before 3
        assert len(successes) <= 3
        assert leftover == set()

    @pytest.mark.parametrize("concurrency", [1, 3])
    def test_read_ahead_from_a_sync_generator_stays_within_twice_the_concurrency(self, concurrency):
        async def main():
            received = 0
            lead: list[int] = []

            def keys() -> Iterator[int]:
                for i in range(120):
                    lead.append(i + 1 - received)  # items pulled minus results received
                    yield i

            async def op(key: int) -> int:
                await asyncio.sleep(0)
                return key

            async for _ in stream(keys(), op, concurrency):
                received += 1
                for _ in range(3):  # a slow consumer
                    await asyncio.sleep(0)
            return received, lead

        received, lead = asyncio.run(main())
        assert received == 120
        assert max(lead) <= 2 * concurrency

    @pytest.mark.parametrize("concurrency", [1, 3])
    def test_read_ahead_from_an_async_generator_stays_within_twice_the_concurrency(
        self, concurrency
    ):
        async def main():
            received = 0
            lead: list[int] = []

            async def keys() -> AsyncIterator[int]:
                for i in range(120):
                    await asyncio.sleep(0)  # e.g. reading a page from a database
                    lead.append(i + 1 - received)
                    yield i

            async def op(key: int) -> int:
                await asyncio.sleep(0)
                return key

            async for _ in stream(keys(), op, concurrency):
                received += 1
                for _ in range(3):
                    await asyncio.sleep(0)
            return received, lead

        received, lead = asyncio.run(main())
        assert received == 120
        assert max(lead) <= 2 * concurrency

    def test_explicit_read_ahead_bounds_how_far_the_input_is_read(self):
        async def main():
            received = 0
            lead: list[int] = []

            def keys() -> Iterator[int]:
                for i in range(60):
                    lead.append(i + 1 - received)
                    yield i

            async def op(key: int) -> int:
                await asyncio.sleep(0)
                return key

            async for _ in stream(keys(), op, 4, read_ahead=5):
                received += 1
                await asyncio.sleep(0)
            return lead

        assert max(asyncio.run(main())) <= 5

    def test_closing_the_stream_early_cancels_in_flight_work_at_once(self):
        async def main():
            started: list[int] = []
            cancelled: list[int] = []

            async def op(key: int) -> int:
                started.append(key)
                if key == 0:
                    return key
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.append(key)
                    raise
                return key

            async with contextlib.aclosing(stream(range(100), op, 3)) as results:
                first = await anext(results)
            # aclose() has returned: nothing of the stream may still be running
            leftover = other_tasks()
            await settle_loop()
            return first, started, cancelled, leftover

        first, started, cancelled, leftover = asyncio.run(main())
        assert first.result == 0
        assert leftover == set()
        assert len(started) <= 1 + 2 * 3
        assert sorted(cancelled) == sorted(k for k in started if k != 0)

    def test_breaking_out_of_the_stream_cancels_in_flight_work_and_leaves_no_task(self):
        async def main():
            started: list[int] = []
            cancelled: list[int] = []

            async def op(key: int) -> int:
                started.append(key)
                if key == 0:
                    return key
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.append(key)
                    raise
                return key

            async for r in stream(range(100), op, 3):
                first = r
                break
            await settle_loop()  # the abandoned generator is closed by the loop
            return first, started, cancelled, other_tasks()

        first, started, cancelled, leftover = asyncio.run(main())
        assert first.result == 0
        assert leftover == set()
        assert len(cancelled) >= 1
        assert sorted(cancelled) == sorted(k for k in started if k != 0)

    def test_progress_is_reported_while_streaming(self):
        calls: list[tuple[int, int | None]] = []
        asyncio.run(
            collect_stream(stream([1, 2, 3], double, on_progress=lambda c, t: calls.append((c, t))))
        )
        assert calls == [(1, 3), (2, 3), (3, 3)]

    def test_stream_takes_one_token_per_key(self):
        limiter = FakeRateLimiter()
        asyncio.run(collect_stream(stream(list(range(9)), double, 3, rate_limiter=limiter)))
        assert limiter.acquire_count == 9


# -- from sync code -------------------------------------------------------------------------


class TestSyncWrappers:
    def test_batch_execute_sync_outside_an_event_loop(self):
        results = batch_execute_sync([1, 2, 3], double)
        assert results == [Success(2), Success(4), Success(6)]

    def test_batch_execute_sync_inside_a_running_event_loop(self):
        async def handler():
            asyncio.get_running_loop()  # we are inside a loop: asyncio.run would fail here
            return batch_execute_sync([1, 2, 3], double, max_concurrent=2)

        assert asyncio.run(handler()) == [Success(2), Success(4), Success(6)]

    def test_run_sync_outside_an_event_loop(self):
        assert run_sync(double(21)) == 42

    def test_run_sync_inside_a_running_event_loop(self):
        async def handler():
            return run_sync(double(21))

        assert asyncio.run(handler()) == 42

    @pytest.mark.parametrize("inside_loop", [False, True])
    def test_run_sync_raises_the_original_exception(self, inside_loop):
        err = Boom("from the coroutine")

        async def failing() -> None:
            await asyncio.sleep(0)
            raise err

        if inside_loop:

            async def handler():
                with pytest.raises(Boom) as info:
                    run_sync(failing())
                return info.value

            assert asyncio.run(handler()) is err
        else:
            with pytest.raises(Boom) as info:
                run_sync(failing())
            assert info.value is err

    def test_batch_execute_sync_fail_fast_raises_the_original_exception(self):
        err = Boom("sync fail fast")

        async def op(key: int) -> int:
            if key == 2:
                raise err
            return key

        with pytest.raises(Boom) as info:
            batch_execute_sync(list(range(5)), op, fail_fast=True)
        assert info.value is err

    def test_batch_execute_sync_passes_options_through(self):
        limiter = FakeRateLimiter()
        batch_execute_sync([1, 2], double, rate_limiter=limiter)
        assert limiter.acquire_count == 2


def test_a_limit_in_another_unit_is_refused_not_silently_ignored():
    # The faces charge one request per attempt: a tokens limit would never bind.
    limiter = RateLimiter.from_rates("10/s", "tokens:900/min")

    async def op(n: int) -> int:
        return n

    with pytest.raises(ValueError, match=r"limit in tokens \(tokens:900/60s\)"):
        asyncio.run(batch_execute(range(3), op, rate_limiter=limiter))


def test_the_typed_options_are_exactly_batch_executes_keyword_options():
    # batch_execute_sync and fetch_many take **options: Unpack[BatchOptions]; an option added
    # to batch_execute and not to BatchOptions would be refused by them.
    import inspect

    from paceline.faces.batch import BatchOptions

    keyword_only = {
        name
        for name, p in inspect.signature(batch_execute).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert set(BatchOptions.__annotations__) == keyword_only


def test_a_misspelt_option_names_the_function_called_and_the_nearest_option():
    async def op(x):
        return x

    said = "got an unexpected keyword argument 'retires' \\(did you mean 'retry'\\?\\)"
    with pytest.raises(TypeError, match=rf"^batch_execute_sync\(\) {said}"):
        batch_execute_sync([1], op, retires=3)
    with pytest.raises(TypeError, match=rf"^fetch_many\(\) {said}"):
        asyncio.run(fetch_many([1], op, retires=3))
