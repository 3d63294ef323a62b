"""Handing the items of a blocking iterator from a thread to an event loop: the reading of a
pipe or standard input, row by row, without blocking the loop (the command line's input rows)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["ThreadPump"]

T = TypeVar("T")


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ThreadPump(Generic[T]):
    """Runs an iterator on a daemon thread; hands its items to the event loop in batches.

    The thread appends items to a buffer of at most ``limit`` (and waits while it is full);
    the loop takes everything buffered at once. The loop is woken only when it is waiting,
    so a lone item is delivered at once and a fast stream costs one wake-up per batch. For an
    iterator that blocks (lines from a pipe, a FIFO or standard input): the event loop never
    does, and memory holds at most ``limit`` items.

    >>> async def main() -> list[int]:
    ...     pump = ThreadPump(iter(range(5)), asyncio.get_running_loop(), limit=2, name="numbers")
    ...     pump.start()
    ...     taken: list[int] = []
    ...     while batch := await pump.take():
    ...         taken += batch
    ...     return taken
    >>> asyncio.run(main())
    [0, 1, 2, 3, 4]
    """

    def __init__(
        self, items: Iterator[T], loop: asyncio.AbstractEventLoop, limit: int, name: str
    ) -> None:
        self._items = items
        self._loop = loop
        self._limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._buffer: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._stopped = False
        self._error: BaseException | None = None
        self._then: Callable[[], None] | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"paceline input {name}", daemon=True
        )

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        self._thread.start()

    def stop(self, then: Callable[[], None] | None = None) -> None:
        """Make the thread stop at its next item; call ``then`` once it has (now, if it has).
        A thread blocked reading a pipe stops only when the next line (or the end) comes."""
        with self._cond:
            self._stopped = True
            self._buffer.clear()
            self._cond.notify_all()
            if then is not None and not self._done:
                self._then = then
                then = None
        if then is not None:
            then()

    def _run(self) -> None:
        cond = self._cond
        buffer = self._buffer
        limit = self._limit
        try:
            for item in self._items:
                with cond:
                    while len(buffer) >= limit and not self._stopped:
                        cond.wait()
                    if self._stopped:
                        return
                    buffer.append(item)
                    waiter, self._waiter = self._waiter, None
                if waiter is not None:
                    self._wake(waiter)
        except BaseException as exc:
            self._error = exc
        finally:
            with cond:
                self._done = True
                waiter, self._waiter = self._waiter, None
                then, self._then = self._then, None
            if waiter is not None:
                self._wake(waiter)
            if then is not None:
                with contextlib.suppress(Exception):
                    then()

    def _wake(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(_resolve, waiter)

    async def take(self) -> list[T]:
        """The items buffered now (waiting for at least one); [] at the end."""
        while True:
            with self._cond:
                if self._buffer:
                    batch = list(self._buffer)
                    self._buffer.clear()
                    self._cond.notify_all()
                    return batch
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return []
                waiter: asyncio.Future[None] = self._loop.create_future()
                self._waiter = waiter
            await waiter
