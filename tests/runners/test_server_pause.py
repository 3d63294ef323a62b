"""Issue 10: a server's Retry-After pauses every dispatch also at a fixed concurrency (no
adaptive control), in both runners, with real event loops and threads; and an absurd one is
no pause at all (the item that got it fails, the others go on)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from paceline import BatchExecutor, Throttled, batch_execute

pytestmark = pytest.mark.timeout(60)

PAUSE_S = 0.6


class Recorder:
    """An operation whose first call (item 0) answers "throttled, retry after PAUSE_S"; it
    records when each call started."""

    def __init__(self, retry_after_s: float = PAUSE_S) -> None:
        self.retry_after_s = retry_after_s
        self.starts: list[tuple[float, int]] = []
        self.throttled_at: float | None = None
        self.lock = threading.Lock()

    def call(self, item: int) -> int:
        with self.lock:
            now = time.monotonic()
            self.starts.append((now, item))
            if item == 0 and self.throttled_at is None:
                self.throttled_at = now
                raise Throttled(retry_after=self.retry_after_s)
        time.sleep(0.02)
        return item

    async def acall(self, item: int) -> int:
        with self.lock:
            now = time.monotonic()
            self.starts.append((now, item))
            if item == 0 and self.throttled_at is None:
                self.throttled_at = now
                raise Throttled(retry_after=self.retry_after_s)
        await asyncio.sleep(0.02)
        return item

    def started_during_the_pause(self) -> list[int]:
        assert self.throttled_at is not None
        # A call that started before the 429 came back is in flight already; the answer
        # takes no time here, so a few ms of slack cover the bookkeeping.
        begin, end = self.throttled_at + 0.005, self.throttled_at + PAUSE_S * 0.9
        return [item for at, item in self.starts if begin < at < end]


def test_async_fixed_concurrency_pauses_every_dispatch():
    rec = Recorder()
    results = asyncio.run(
        batch_execute(range(40), rec.acall, max_concurrent=4, retry=3, adaptive=False)
    )
    assert all(r.is_success for r in results)
    assert rec.started_during_the_pause() == []
    assert len(rec.starts) == 41


def test_threads_fixed_concurrency_pause_every_dispatch():
    rec = Recorder()
    executor = BatchExecutor(stop_on_error=False, max_workers=4, retry=3)
    result = executor.execute_batch([lambda i=i: rec.call(i) for i in range(40)])
    assert result.all_successful
    assert rec.started_during_the_pause() == []
    assert len(rec.starts) == 41


def test_an_absurd_retry_after_fails_its_item_and_pauses_nobody():
    rec = Recorder(retry_after_s=1_000_000)
    started = time.monotonic()
    results = asyncio.run(
        batch_execute(range(20), rec.acall, max_concurrent=4, retry=3, adaptive=False)
    )
    assert time.monotonic() - started < 30
    assert [r.is_success for r in results] == [False] + [True] * 19
    assert "beyond max_retry_after_s" in str(results[0].error)
    assert len(rec.starts) == 20
