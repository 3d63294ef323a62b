"""``paceline.runners.pump``: a blocking iterator's items handed from a thread to the loop."""

import asyncio
import threading
import time

import pytest

from paceline.runners.pump import ThreadPump

pytestmark = pytest.mark.timeout(30)


def test_the_buffer_never_holds_more_than_the_limit_and_every_item_arrives_in_order():
    seen_buffered: list[int] = []

    async def main() -> list[int]:
        pump = ThreadPump(iter(range(200)), asyncio.get_running_loop(), limit=3, name="t")
        pump.start()
        taken: list[int] = []
        while batch := await pump.take():
            seen_buffered.append(pump.buffered)
            taken += batch
            await asyncio.sleep(0.001)  # a slow consumer: the thread fills the buffer and waits
            seen_buffered.append(pump.buffered)
        return taken

    assert asyncio.run(main()) == list(range(200))
    assert max(seen_buffered) == 3


def test_an_error_in_the_iterator_is_raised_by_take_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise OSError("the pipe broke")

    async def main() -> tuple[list[int], BaseException | None]:
        pump = ThreadPump(items(), asyncio.get_running_loop(), limit=10, name="t")
        pump.start()
        taken: list[int] = []
        try:
            while batch := await pump.take():
                taken += batch
        except OSError as exc:
            return taken, exc
        return taken, None

    taken, error = asyncio.run(main())
    assert taken == [1, 2]
    assert isinstance(error, OSError)
    assert str(error) == "the pipe broke"


def test_stop_calls_then_once_the_blocked_thread_has_stopped():
    release = threading.Event()
    done = threading.Event()

    def items():
        yield 1
        release.wait(10)  # a read that blocks until the next line comes
        yield 2

    async def main() -> None:
        pump = ThreadPump(items(), asyncio.get_running_loop(), limit=10, name="t")
        pump.start()
        assert await pump.take() == [1]
        pump.stop(then=done.set)
        assert not done.is_set()  # the thread is still blocked in the iterator
        release.set()
        started = time.monotonic()
        assert done.wait(5)
        assert time.monotonic() - started < 5

    asyncio.run(main())
