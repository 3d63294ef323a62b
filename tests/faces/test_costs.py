"""Costs per unit through the faces and runners: reserve an estimate before each attempt,
settle the actual usage after a success (docs/units.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from paceline import Failure, RateLimiter, Success, batch_execute, batch_execute_sync
from paceline.errors import InvalidArgument, InvalidArgumentType
from paceline.runners.settle import RunOptions
from paceline.runners.thread_runner import ThreadRunner
from paceline.testing import FakeClock, FakeRateLimiter

S = 1_000_000_000


def _tokens_limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter.from_rates("100/min", "tokens:1000/min", margin_s=0, clock=clock)


def test_a_tokens_limit_binds_when_each_item_costs_tokens() -> None:
    clock = FakeClock()
    limiter = _tokens_limiter(clock)
    starts: list[int] = []

    async def op(n: int) -> int:
        starts.append(clock.monotonic_ns())
        return n

    results = batch_execute_sync(
        range(5), op, 1, rate_limiter=limiter, cost=lambda n: {"tokens": 400}
    )
    assert [r.value for r in results] == [0, 1, 2, 3, 4]
    # 400 + 400 fit in 1000 a minute; the third waits for the first two to leave the window.
    assert starts == [0, 0, 60 * S, 60 * S, 120 * S]


def test_settling_gives_the_unused_estimate_back() -> None:
    clock = FakeClock()
    limiter = _tokens_limiter(clock)
    starts: list[int] = []

    async def op(n: int) -> dict[str, Any]:
        starts.append(clock.monotonic_ns())
        return {"n": n, "usage": {"total_tokens": 100}}

    results = batch_execute_sync(
        range(5),
        op,
        1,
        rate_limiter=limiter,
        cost={"tokens": 400},
        actual_cost=lambda answer: {"tokens": answer["usage"]["total_tokens"]},
    )
    assert all(isinstance(r, Success) for r in results)
    # Each estimate of 400 is settled to 100 at once: 4 x 100 + 400 still fit in the minute.
    assert starts == [0] * 5
    assert limiter.try_reserve({"tokens": 500}) is not None
    assert limiter.try_reserve({"tokens": 1}) is None  # 5 x 100 + 500: the minute is full


def test_actual_cost_none_keeps_the_estimate() -> None:
    clock = FakeClock()
    limiter = _tokens_limiter(clock)

    async def op(n: int) -> int:
        return n

    batch_execute_sync(
        range(2),
        op,
        1,
        rate_limiter=limiter,
        cost={"tokens": 400},
        actual_cost=lambda _value: None,
    )
    assert limiter.try_reserve({"tokens": 201}) is None
    assert limiter.try_reserve({"tokens": 200}) is not None


def test_a_failed_attempt_keeps_its_estimate() -> None:
    clock = FakeClock()
    limiter = _tokens_limiter(clock)

    async def op(n: int) -> int:
        raise RuntimeError(f"item {n} failed")

    results = batch_execute_sync(
        range(2),
        op,
        1,
        rate_limiter=limiter,
        cost={"tokens": 300},
        actual_cost=lambda _value: {"tokens": 0},
    )
    assert all(isinstance(r, Failure) for r in results)
    assert limiter.try_reserve({"tokens": 401}) is None
    assert limiter.try_reserve({"tokens": 400}) is not None


def test_a_tokens_limit_without_costs_is_still_refused() -> None:
    limiter = RateLimiter.from_rates("10/s", "tokens:900/min")

    async def op(n: int) -> int:
        return n

    with pytest.raises(InvalidArgument, match=r"limit in tokens .*give cost="):
        asyncio.run(batch_execute(range(3), op, rate_limiter=limiter))


def test_costs_need_paceline_s_own_limiter() -> None:
    async def op(n: int) -> int:
        return n

    with pytest.raises(InvalidArgumentType, match=r"cost= needs a paceline.RateLimiter"):
        asyncio.run(batch_execute(range(3), op, rate_limiter=FakeRateLimiter(), cost={"tokens": 1}))


def test_weight_and_cost_together_are_refused() -> None:
    async def op(n: int) -> int:
        return n

    with pytest.raises(InvalidArgument, match=r"weight= and cost= both given"):
        asyncio.run(
            batch_execute(
                range(3),
                op,
                rate_limiter=RateLimiter("10/s"),
                weight=lambda _n: 2,
                cost={"tokens": 1},
            )
        )


def test_actual_cost_without_cost_is_refused() -> None:
    async def op(n: int) -> int:
        return n

    with pytest.raises(InvalidArgument, match=r"actual_cost= without cost="):
        asyncio.run(
            batch_execute(
                range(3), op, rate_limiter=RateLimiter("10/s"), actual_cost=lambda _v: None
            )
        )


def test_a_cost_that_is_not_a_mapping_is_refused() -> None:
    async def op(n: int) -> int:
        return n

    with pytest.raises(InvalidArgumentType, match=r"cost=5: pass a mapping"):
        asyncio.run(batch_execute(range(3), op, rate_limiter=RateLimiter("10/s"), cost=5))  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [None, 2])
def test_the_thread_runner_reserves_and_settles_costs(workers: int | None) -> None:
    clock = FakeClock()
    limiter = _tokens_limiter(clock)
    starts: list[int] = []

    def op(n: int) -> int:
        starts.append(clock.monotonic_ns())
        return n

    runner: ThreadRunner[int, int, tuple[str, Any]] = ThreadRunner(
        op,
        workers=workers,
        options=RunOptions(
            ok=lambda _i, _item, value, _info: ("ok", value),
            err=lambda _i, _item, exc, _info: ("err", exc),
            limiter=limiter,
            cost=lambda _n: {"tokens": 400},
            actual_cost=lambda n: {"tokens": 400 if n < 2 else 100},
        ),
    )
    slots = runner.collect(range(4)).slots
    assert [s[0] for s in slots] == ["ok"] * 4
    # Items 0 and 1 fill 800 of the minute; 2 waits one minute for it (a worker thread may
    # start item 1 after that wait on the fake clock, so the grants are what is exact), and
    # 2 and 3 are then settled to 100 each.
    assert clock.sleeps == [60.0]
    assert len(starts) == 4
    assert limiter.try_reserve({"tokens": 800}) is not None
    assert limiter.try_reserve({"tokens": 1}) is None


def test_a_reservation_still_waiting_when_the_batch_stops_takes_nothing() -> None:
    # Real loop, real clock: the second item waits a minute for room; the deadline stops the
    # batch first, and only the first item's 60 tokens stay charged.
    limiter = RateLimiter.from_rates("tokens:100/min")

    async def op(n: int) -> int:
        return n

    results = batch_execute_sync(
        range(2), op, 2, rate_limiter=limiter, cost={"tokens": 60}, deadline_s=0.3
    )
    assert isinstance(results[0], Success)
    assert isinstance(results[1], Failure)
    assert limiter.try_reserve({"tokens": 41}) is None
    assert limiter.try_reserve({"tokens": 40}) is not None


def test_actual_costs_settle_on_a_real_loop_with_concurrency() -> None:
    limiter = RateLimiter.from_rates("tokens:1000/min")

    async def op(n: int) -> int:
        await asyncio.sleep(0.001)
        return n

    results = batch_execute_sync(
        range(40),
        op,
        8,
        rate_limiter=limiter,
        cost={"tokens": 100},
        actual_cost=lambda _n: {"tokens": 20},
    )
    # 40 x 100 would need four minutes; settled to 20 each, the 800 used leave room for 200.
    assert all(isinstance(r, Success) for r in results)
    assert limiter.try_reserve({"tokens": 200}) is not None
    assert limiter.try_reserve({"tokens": 1}) is None
