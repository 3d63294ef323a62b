"""Clocks: where the runners and limiters read time and wait. Policy never touches these."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time in integer nanoseconds, and the two ways to wait for it."""

    def monotonic_ns(self) -> int:
        """Now, in nanoseconds on a monotonic clock."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def sleep_async(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic_ns``, ``time.sleep`` and ``asyncio.sleep``."""

    __slots__ = ()
    monotonic_ns = staticmethod(time.monotonic_ns)
    sleep = staticmethod(time.sleep)

    async def sleep_async(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
