"""Lanes in the async runner: one server's pause holds up only its own items (issue 11, item 4).

The operations are instant and the pause is a second: every assertion is about order (what
ran before A's pause ended), never about how fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterator

import pytest

from paceline import RetryPolicy, Throttled, batch_execute, stream
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings
from paceline.runners.lanes import LaneGates

pytestmark = pytest.mark.timeout(60)

PAUSE_S = 1.0


class ByServer:
    """Items are "a3", "b7": the first letter is the server."""

    def __init__(self, adaptive: bool) -> None:
        self.adaptive = adaptive
        self.opened: list[Hashable] = []

    def key_of(self, item: str) -> str:
        return item[0]

    def open(self, key: Hashable) -> LaneGates:
        self.opened.append(key)
        controller = AdaptiveController(AdaptiveSettings()) if self.adaptive else None
        return LaneGates(controller=controller)


class Server:
    """Records each attempt; A's first answer is a throttle asking for a pause."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.throttled = False

    async def call(self, item: str) -> str:
        self.log.append(item)
        if item == "a0" and not self.throttled:
            self.throttled = True
            raise Throttled(retry_after=PAUSE_S)
        return item.upper()


def interleaved(count: int, a_count: int = 3) -> list[str]:
    """a0 b0 a1 b1 a2 b2 b3 b4 ...: A's few items (an adaptive controller paces A slowly
    after its throttle) among B's."""
    return [f"{server}{n}" for n in range(count) for server in "ab" if server == "b" or n < a_count]


def b_done_before_a_resumed(log: list[str]) -> bool:
    """Every B attempt came before A's second attempt of anything (its pause's end)."""
    resumed = log.index("a0", log.index("a0") + 1)
    return all(entry.startswith("a") for entry in log[resumed:])


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
def test_a_pause_from_one_server_holds_up_only_its_own_items(adaptive: bool) -> None:
    server, lanes = Server(), ByServer(adaptive)
    items = interleaved(20)
    results = asyncio.run(
        batch_execute(
            items, server.call, max_concurrent=4, retry=RetryPolicy(attempts=3), lanes=lanes
        )
    )
    assert [r.value for r in results] == [item.upper() for item in items]
    assert b_done_before_a_resumed(server.log)
    assert server.log.count("a0") == 2
    assert lanes.opened == ["a", "b"]  # one lane per server, opened once


def test_without_lanes_the_same_pause_holds_every_item() -> None:
    server = Server()
    items = interleaved(20)
    results = asyncio.run(
        batch_execute(items, server.call, max_concurrent=4, retry=RetryPolicy(attempts=3))
    )
    assert all(r.is_success for r in results)
    assert not b_done_before_a_resumed(server.log)


def test_results_keep_input_order_when_streamed_through_lanes() -> None:
    server = Server()
    items = interleaved(15)

    async def main() -> list[str]:
        return [
            r.result
            async for r in stream(
                items, server.call, 4, retry=RetryPolicy(attempts=3), lanes=ByServer(True)
            )
        ]

    assert asyncio.run(main()) == [item.upper() for item in items]
    assert b_done_before_a_resumed(server.log)


def test_the_read_ahead_bounds_a_paused_servers_queue() -> None:
    """A paused for a second: its items queue, B's run, until the read-ahead is full of A's —
    then nothing more is read until results go out."""
    read_ahead = 8
    pulled = 0
    delivered = 0
    most_ahead = 0

    def endless() -> Iterator[str]:
        nonlocal pulled, most_ahead
        n = 0
        while True:
            for server in "ab":
                pulled += 1
                most_ahead = max(most_ahead, pulled - delivered)
                yield f"{server}{n}"
            n += 1

    server = Server()

    async def main() -> None:
        nonlocal delivered
        async for result in stream(
            endless(),
            server.call,
            4,
            ordered=False,
            read_ahead=read_ahead,
            retry=RetryPolicy(attempts=3),
            lanes=ByServer(False),
        ):
            assert result.success
            delivered += 1
            if delivered == 40:
                break

    asyncio.run(main())
    assert most_ahead <= read_ahead + 1  # the item being read counts before it is handed out
    assert server.log.count("a0") == 2  # the queue waited for A's pause, then went on


def test_a_failure_stops_a_batch_whose_items_queue_behind_a_pause() -> None:
    """fail_fast on B's failure while A's items queue behind A's pause: the batch raises at
    once, and A's queued items and parked retry never start."""
    log: list[str] = []

    async def call(item: str) -> str:
        log.append(item)
        if item == "a0":
            raise Throttled(retry_after=PAUSE_S)
        if item == "b3":
            raise ValueError("b3 is broken")
        return item

    with pytest.raises(ValueError, match="b3 is broken"):
        asyncio.run(
            batch_execute(
                interleaved(10, a_count=10),
                call,
                max_concurrent=2,
                fail_fast=True,
                retry=RetryPolicy(attempts=3, retry_on=(Throttled,)),
                lanes=ByServer(False),
            )
        )
    assert log.count("a0") == 1
    assert "b3" in log
