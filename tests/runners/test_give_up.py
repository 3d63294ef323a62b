"""Issue 10: a batch whose every attempt is throttled (429 without Retry-After) or fails must
end: after ``give_up_after_s`` with no success it stops like a "soon" halt rule, saying why."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from paceline import Throttled, batch_execute, stream
from paceline._results import ErrorCode

pytestmark = pytest.mark.timeout(60)


async def always_throttled(item: int) -> int:
    await asyncio.sleep(0.01)
    raise Throttled()  # no retry_after: nothing says when it would end


def test_stream_gives_up_and_says_why():
    reasons: list[str] = []

    async def main() -> list[Any]:
        results = stream(
            iter(range(10**9)),  # endless: without giving up, this never ends
            always_throttled,
            max_concurrent=4,
            retry=5,
            give_up_after_s=0.5,
            on_halt=reasons.append,
        )
        return [r async for r in results]

    started = time.monotonic()
    results = asyncio.run(asyncio.wait_for(main(), 30))
    assert time.monotonic() - started < 20
    assert len(reasons) == 1
    assert reasons[0].startswith("giving up: no attempt succeeded for")
    assert results
    assert not any(r.success for r in results)


def test_batch_execute_gives_up_and_the_rest_is_not_attempted():
    started = time.monotonic()
    results = asyncio.run(
        batch_execute(range(5000), always_throttled, max_concurrent=4, give_up_after_s=0.5)
    )
    assert time.monotonic() - started < 30
    assert len(results) == 5000
    cancelled = [r for r in results if r.is_failure and r.error_code is ErrorCode.CANCELLED]
    assert cancelled
    assert "giving up: no attempt succeeded" in cancelled[-1].message


def test_one_success_starts_the_clock_again():
    calls = 0

    async def fails_but_every_tenth(item: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        if item % 10 == 0:
            return item
        raise ConnectionError("refused")

    results = asyncio.run(
        batch_execute(range(200), fails_but_every_tenth, max_concurrent=2, give_up_after_s=0.5)
    )
    assert sum(r.is_success for r in results) == 20
    assert not any(r.is_failure and r.error_code is ErrorCode.CANCELLED for r in results)


def test_none_never_gives_up():
    results = asyncio.run(
        batch_execute(range(30), always_throttled, max_concurrent=3, give_up_after_s=None)
    )
    assert not any(r.is_failure and r.error_code is ErrorCode.CANCELLED for r in results)
