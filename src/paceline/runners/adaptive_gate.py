"""The adaptive controller's gates for one event loop's workers.

Before an attempt a worker awaits :meth:`AdaptiveGate.enter` (the pause, rate and concurrency
gates of :class:`~paceline.policy.adaptive.AdaptiveController`); after it, it reports the
outcome with :meth:`AdaptiveGate.exit`. Outcomes are classified by ``classify``: the default
reads a raised :class:`~paceline.Throttled` (and its ``retry_after``), an exception carrying
an HTTP ``status_code`` (or a ``response.status_code``), timeouts and connection errors.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from paceline.errors import Throttled
from paceline.policy.adaptive import AdaptiveController, Outcome, Ticket
from paceline.policy.answers import Verdict, verdict_of
from paceline.policy.rate import NS_PER_S
from paceline.policy.retry import retry_after_of

PRECISE_NS = 1_500_000
"""A strictly paced start (a leaky bucket refuses one that comes early) sleeps until this long
before its slot, then yields to the event loop until the slot: epoll's whole milliseconds cost
0-1 ms per wake-up, and the rest of the loop's work ~0.5 ms more on this machine (measured
against nginx ``limit_req`` 50r/s: wake-ups 0.8 / 1.6 / 2.3 ms late at p10 / p50 / p90)."""

Classifier = Callable[[Any, BaseException | None], Outcome]
"""``classify(value, error)``: how an attempt ended (``error`` is ``None`` on success)."""


def status_of(error: BaseException) -> int | None:
    """An HTTP status carried by an exception (``status_code`` or ``response.status_code``)."""
    for holder in (error, getattr(error, "response", None)):
        status = getattr(holder, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def default_classify(value: Any, error: BaseException | None) -> Outcome:
    """429 and ``Throttled`` throttle; 503 overloads; timeouts, connection errors, 502 and
    504 (and other 5xx but 500) say the server is at capacity; anything else — a 500 too, the
    application's own error, which a server also answers when idle — says nothing about the
    server's limits (a steady 10 % of 500s used to shrink the concurrency to 1).

    An error that carries a verdict (the HTTP face's classified answers, docs/design.md,
    'Answers told apart') is read by it: a throttled 403 or 400 throttles (a throttled 503 or
    529 overloads), an exhausted quota or a permanent error says nothing about the pace."""
    if error is None:
        return Outcome.SUCCESS
    if isinstance(error, Throttled):
        return Outcome.THROTTLE
    status = status_of(error)
    verdict = verdict_of(error)
    if verdict is Verdict.THROTTLED:
        return Outcome.OVERLOAD if status in (503, 529) else Outcome.THROTTLE
    if verdict is not None and verdict is not Verdict.TRANSIENT:
        return Outcome.IGNORE
    if status == 429 and verdict is None:
        return Outcome.THROTTLE
    if status == 503 and verdict is None:
        return Outcome.OVERLOAD
    if status is not None and status > 500:
        return Outcome.CAPACITY
    if isinstance(error, (TimeoutError, ConnectionError)):
        return Outcome.CAPACITY
    return Outcome.IGNORE


class AdaptiveGate:
    """Pause, rate and concurrency gates for the workers of one event loop.

    >>> async def main() -> int:
    ...     gate = AdaptiveGate(AdaptiveController())
    ...     ticket = await gate.enter()
    ...     gate.exit(ticket, 42, None)
    ...     return gate.in_flight
    >>> asyncio.run(main())
    0
    """

    __slots__ = ("_now", "_rate_turn", "_slot_waiters", "classify", "controller", "in_flight")

    def __init__(
        self,
        controller: AdaptiveController,
        classify: Classifier | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.controller = controller
        self.classify = classify or default_classify
        self.in_flight = 0
        self._now = clock_ns
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        # One worker at a time waits for the pacer's next slot (the rest queue here, in
        # order): all of them sleeping until the same instant woke together, and the one that
        # went was whichever the event loop ran first, after the others' wake-ups.
        self._rate_turn = asyncio.Lock()

    async def enter(self) -> Ticket:
        """Wait until the controller lets an attempt start; the attempt starts now."""
        waited_for_rate = False
        controller = self.controller
        turn = self._rate_turn
        holding = False
        try:
            while True:
                now = self._now()
                decision = controller.decide(now, self.in_flight)
                if decision.go:
                    ticket = controller.started(now, self.in_flight, waited_for_rate)
                    self.in_flight += 1
                    return ticket
                if decision.slot:
                    if holding:
                        holding = False
                        turn.release()
                    waiter = asyncio.get_running_loop().create_future()
                    self._slot_waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if not waiter.done():
                            waiter.cancel()
                    continue
                waited_for_rate = decision.rate
                if decision.rate and not holding:
                    await turn.acquire()
                    holding = True
                    continue  # the slot moved on while this worker queued
                wait_ns = decision.wait_ns
                if decision.rate and controller.paces_precisely:
                    # The last stretch in steps of the event loop (epoll sleeps whole
                    # milliseconds, rounded up: 0-1 ms late, more when the loop is busy).
                    wait_ns = wait_ns - PRECISE_NS if wait_ns > PRECISE_NS else 0
                await asyncio.sleep(wait_ns / NS_PER_S)
        finally:
            if holding:
                turn.release()

    def sent(self, ticket: Ticket) -> None:
        """The attempt really starts now (after any strict limiter's token): its RTT counts
        from here, so time spent waiting for a token is not taken for server latency."""
        ticket.sent_ns = self._now()

    def exit(self, ticket: Ticket, value: Any, error: BaseException | None) -> Outcome:
        """The attempt ended: tell the controller, free its slot; returns the outcome."""
        self.in_flight -= 1
        outcome = self.classify(value, error)
        retry_after = retry_after_of(error) if error is not None else None
        self.controller.finished(self._now(), ticket, outcome, retry_after)
        self._wake()
        return outcome

    def abandon(self, ticket: Ticket) -> None:
        """An attempt that entered was cancelled before it ended: free its slot; the
        controller learns nothing from it (but stops waiting for it if it was a probe)."""
        self.in_flight -= 1
        self.controller.finished(self._now(), ticket, Outcome.IGNORE)
        self._wake()

    def _wake(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
