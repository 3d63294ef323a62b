"""Ctrl-C and SIGTERM during a sync batch, delivered where they lose nothing.

Python raises ``KeyboardInterrupt`` between any two bytecodes of the main thread — including
between taking a finished item off a queue and writing it to the journal. While a thread batch
runs in the main thread, paceline's handler therefore only *notes* the first signal and wakes
the dispatcher, which stops at a safe point (nothing new starts, running calls finish, their
outcomes are settled and journaled). Where waiting is all the dispatcher does (asleep in the
rate limiter), the interrupt is raised at once. A second signal raises immediately: it forces.

SIGTERM is handled like Ctrl-C only if nobody installed a handler for it; SIGINT only if its
handler is Python's default.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any


class InterruptGate:
    """The dispatcher's view of pending signals."""

    __slots__ = ("_wake", "interruptible", "received")

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self.received: str | None = None  # the first signal's name, once one arrived
        self.interruptible = False  # True while the dispatcher only waits (safe to raise)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None or self.interruptible:
            self.received = self.received or name
            raise KeyboardInterrupt(f"received {name}")
        self.received = name
        self._wake()

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` at a safe point if a signal arrived."""
        if self.received is not None:
            raise KeyboardInterrupt(f"received {self.received}")

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """A stretch where the dispatcher only waits: a signal may interrupt it directly."""
        self.check()
        self.interruptible = True
        try:
            yield
        finally:
            self.interruptible = False


@contextlib.contextmanager
def deferred_interrupts(wake: Callable[[], None]) -> Iterator[InterruptGate | None]:
    """Install the deferring handlers for the duration of a batch (main thread only); yields
    the gate, or ``None`` where signals cannot be handled here."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    gate = InterruptGate(wake)
    previous: dict[int, Any] = {}
    for signum, default in (
        (signal.SIGINT, signal.default_int_handler),
        (getattr(signal, "SIGTERM", None), signal.SIG_DFL),
    ):
        if signum is None:  # pragma: no cover - platforms without SIGTERM
            continue
        current = signal.getsignal(signum)
        if current is default:
            previous[signum] = current
            signal.signal(signum, gate.handle)
    try:
        yield gate
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
