"""Ctrl-C / SIGTERM in the middle of a sync batch (real signals to a real process), and undo."""

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from paceline import BatchExecutor, RateLimiter, batch_execute
from paceline.policy.limits import Limit
from paceline.policy.rate import Rate
from paceline.policy.schedule import min_duration_ns
from paceline.testing import FakeRateLimiter

CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    from paceline import BatchExecutor
    from paceline._results import BatchInterrupted

    def task(i):
        def run():
            time.sleep(0.02)
            return i
        return run

    print("ready", flush=True)
    try:
        BatchExecutor(stop_on_error=False, max_workers=4).execute_batch(
            [task(i) for i in range(2000)]
        )
        print(json.dumps({"finished": True}))
    except BatchInterrupted as exc:
        partial = exc.partial
        print(json.dumps({
            "settled": len(partial),
            "total": partial.total,
            "halted": partial.halted,
            "indexes": [item.index for item in partial],
            "threads": [t.name for t in threading.enumerate() if t.name.startswith("paceline")],
            "message": str(exc),
        }))
        sys.exit(130)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_dispatch_finishes_running_calls_and_returns_the_partial_result(sig):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    child.send_signal(sig)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    report = json.loads(out.strip().splitlines()[-1])
    assert 0 < report["settled"] < 2000
    assert report["total"] == 2000
    assert report["halted"] == "interrupted"
    assert report["indexes"] == sorted(report["indexes"])  # input order kept
    assert report["threads"] == []  # no worker outlives the call
    assert f"{report['settled']} of 2000 items settled" in report["message"]


def test_a_halted_batch_is_rolled_back_newest_first_through_the_same_limiter():
    limiter = FakeRateLimiter()
    undone: list[tuple[str, object]] = []

    def make(i):
        def task():
            if i == 5:
                raise RuntimeError("boom")
            return i * 10

        return task

    executor = BatchExecutor(
        stop_on_error=False,
        rate_limiter=limiter,
        halt="soon,fail=1",
        undo=lambda item_id, result: undone.append((item_id, result)) or f"undid {item_id}",
    )
    result = executor.execute_batch(
        [make(i) for i in range(10)], item_ids=[f"t{i}" for i in range(10)]
    )
    assert result.halted is not None
    assert undone == [(f"t{i}", i * 10) for i in (4, 3, 2, 1, 0)]
    assert result.rollback is not None
    assert [item.result for item in result.rollback] == [f"undid t{i}" for i in (4, 3, 2, 1, 0)]
    assert limiter.acquire_count == 6 + 5  # the batch's starts and the undo calls


def test_under_stop_on_error_the_rollback_rides_on_the_raised_exception():
    undone: list[str] = []

    def fail():
        raise KeyError("nope")

    executor = BatchExecutor(undo=lambda item_id, _result: undone.append(item_id))
    with pytest.raises(KeyError) as info:
        executor.execute_batch(
            [lambda: 1, lambda: 2, fail, lambda: 4], item_ids=["a", "b", "c", "d"]
        )
    assert undone == ["b", "a"]
    assert [item.item_id for item in info.value.rollback] == ["b", "a"]  # type: ignore[attr-defined]


def test_no_rollback_when_the_batch_completes():
    undone: list[str] = []
    result = BatchExecutor(stop_on_error=False, undo=lambda i, r: undone.append(i)).execute_batch(
        [lambda: 1, lambda: 2]
    )
    assert result.rollback is None
    assert undone == []


def test_the_minimum_duration_follows_every_limit():
    second = 1_000_000_000
    assert min_duration_ns([Limit(Rate(2, second), margin_ns=0)], 5) == (2 * second, True)
    assert min_duration_ns([Limit(Rate(4, second), burst=1, margin_ns=0)], 5) == (second, True)
    both = [Limit(Rate(10, second), margin_ns=0), Limit(Rate(15, 60 * second), margin_ns=0)]
    assert min_duration_ns(both, 16) == (60 * second, True)
    duration, exact = min_duration_ns([Limit(Rate(1000, second), margin_ns=0)], 1_000_000)
    assert not exact
    assert duration == pytest.approx(999 * second, rel=0.01)


def test_a_shared_limiter_is_safe_from_threads_during_an_async_batch():
    # a limiter used by threads and an event loop at once never over-grants
    limiter = RateLimiter(10, 0.2)
    grants: list[int] = []
    lock = threading.Lock()

    def record(stamp: int) -> None:
        with lock:
            grants.append(stamp)

    def thread_user():
        for _ in range(5):
            record(limiter.acquire())

    async def op(_):
        return None

    threads = [threading.Thread(target=thread_user) for _ in range(2)]
    for t in threads:
        t.start()

    async def main():
        for _ in range(10):
            record(await limiter.acquire_async())
        await batch_execute(range(5), op, rate_limiter=limiter)

    asyncio.run(main())
    for t in threads:
        t.join()
    grants.sort()
    window = 200_000_000
    for i, t in enumerate(grants):
        assert sum(1 for g in grants[i:] if g < t + window) <= 10
