"""A limit on when requests *reach* the server, which counts them somewhere in their round trip.

A server enforcing "N per W" counts each request when it arrives: some time after we sent it
and before its answer comes back, a delay we cannot see and that varies with load (a request
queued in our event loop, in the network or in the server's accept queue arrives late). A
limiter that spaces *sends* W apart lets two arrivals fall less than W apart whenever the
earlier request was the slower one, and the server answers 429.

This limit needs no guess of that delay. A request holds its place in the window from its grant
(it may arrive at any moment) until its answer, and then for W after the answer: the latest
moment the server could have counted it. For any set of requests the server saw arrive within
one window, the last of them to be granted was granted while every other one was either in
flight or answered less than W before, so all of them were counted then, and the grant was only
given if they fit in N. The cost is the round trip: each place in the window turns over every
W + latency instead of every W (0.5 % of the rate at 5 ms per 1 s window; 0.03 % on a 60 s one).
"""

from __future__ import annotations

from collections.abc import Iterable

from paceline.errors import InvalidArgument
from paceline.policy.limits import Limit
from paceline.policy.rate import Rate
from paceline.policy.window import WindowLog


class ArrivalLimit:
    """Never more than ``max_requests`` arrivals at the server in any window of ``window_ns``,
    whenever between its send and its answer the server counts each request (sans-I/O).

    The caller counts the requests in flight and tells the limit when each is answered.

    >>> limit = ArrivalLimit(2, 1_000_000_000)
    >>> limit.wait_ns(0, 1, in_flight=0), limit.wait_ns(0, 1, in_flight=2)
    (0, None)
    >>> limit.answered(10_000_000, 1)  # one of the two answered at 10 ms: free at 1.011 s
    >>> limit.wait_ns(20_000_000, 1, in_flight=1)
    991000000
    """

    __slots__ = ("_log", "max_requests", "window_ns")

    def __init__(self, max_requests: int, window_ns: int, margin_ns: int | None = None) -> None:
        limit = Limit(Rate(max_requests, window_ns), margin_ns=margin_ns)
        self.max_requests = max_requests
        self.window_ns = limit.window_ns  # W plus the default margin (clock resolution)
        self._log = WindowLog(max_requests, self.window_ns)

    def wait_ns(self, now_ns: int, weight: int, in_flight: int) -> int | None:
        """Nanoseconds until ``weight`` more requests may be sent (0: now), with ``in_flight``
        sent and not yet answered; ``None`` when only an answer can make room (too many are in
        flight for any amount of waiting alone to free enough)."""
        if weight < 1:
            raise InvalidArgument(f"weight {weight!r}: must be at least 1")
        if weight > self.max_requests:
            raise InvalidArgument(
                f"weight {weight} exceeds the limit of {self.max_requests} per window: it "
                "could never be granted; lower the weight or raise the limit"
            )
        if in_flight + weight > self.max_requests:
            return None
        return self._log.wait_ns(now_ns, in_flight + weight)

    def answered(self, now_ns: int, weight: int) -> None:
        """``weight`` requests in flight were answered (or failed) at ``now_ns``: from now on
        they hold their places for one window more."""
        self._log.record(now_ns, weight)

    def note_answered(self, answered_ns: Iterable[int]) -> None:
        """Answers that came before this limit existed (monotonic ns, oldest first)."""
        for stamp in answered_ns:
            self._log.record(stamp, 1)

    def held(self, now_ns: int) -> int:
        """Answered requests still holding a place in the window ending at ``now_ns``."""
        return self._log.held(now_ns)
