"""A token bucket's rate read from its refusals: between two moments its bucket was empty,
every token it made was taken, so what it accepted in between, over that span, is its rate.

A bucket of rate r refuses an attempt when it holds less than a token: empty, give or take
one. From one such refusal to the next (sent at ``t0`` and ``t1``), the bucket made
``r (t1 - t0)`` tokens, and every one was taken by an attempt it accepted in between (it
ends empty again): ``accepted / (t1 - t0)`` is r, within one token over the span. When the
bucket was full for a while in between (a pause longer than its refill, or a pace below r),
tokens were lost to its cap and the count is a lower bound; from a moment it held at most
``b`` (the end of such a pause), ``(accepted - b) / (t1 - t_full)`` is another, and the
larger is kept. Neither the bucket's size nor the round trip enters
(both ends are send times, equally late at the server), unlike an estimate from one stage
(docs/design.md, 'A bucket's rate from its refusals').

Counted by send time: attempts still in flight at the refusal's answer, sent before it, were
accepted by a bucket that had not run dry yet; attempts sent after it and answered before
are the next span's.

>>> from dataclasses import dataclass
>>> @dataclass(eq=False)
... class Attempt:
...     sent_ns: int
>>> MS = 1_000_000
>>> count = RefillCount(mark_ns=0)
>>> attempts = [Attempt(t * MS) for t in range(10, 1_000, 10)]  # 99, one every 10 ms
>>> for attempt in attempts:
...     count.started(attempt)
>>> for attempt in attempts[:-1]:                              # 98 answered, accepted
...     count.finished(attempt, accepted=True)
>>> count.refused(1_000 * MS)   # refused 1 s after the last refusal; the one in flight counts
99.0
>>> count.refused(1_400 * MS) is None   # 0.4 s after this one: too short to tell
True
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

NS_PER_S = 1_000_000_000

# A span shorter than this gives no rate: a token more or less is 1 / span of it (at 80/s,
# over 0.5 s, 2.5 %); the caller keeps its own estimate then.
MIN_SPAN_NS = NS_PER_S // 2


class Attempt(Protocol):
    """An attempt as counted: its send time, which may be stamped again after it started (the
    runner stamps the moment it really goes out, after any limiter's token)."""

    sent_ns: int


class RefillCount:
    """Accepted attempts sent since the bucket's last refusal (``mark_ns``), and those in
    flight; ``refused`` reads the rate and moves the mark."""

    __slots__ = ("_accepted", "_full", "_in_flight", "_recent", "mark_ns")

    def __init__(self, mark_ns: int) -> None:
        self.mark_ns = mark_ns
        self._accepted = 0  # answered and accepted, sent after the mark
        # their send times over the last few answers (those sent after a refusal answered
        # before it move to the next span)
        self._recent: deque[int] = deque(maxlen=256)
        # attempts in flight, by identity: their send time is read when it counts (by then
        # the runner has stamped the real one; keyed by value, a stamp that moved left the
        # attempt in flight for good and every span counted it again: 161/s read from 80/s)
        self._in_flight: dict[int, Attempt] = {}
        self._full: tuple[int, float] | None = None  # when the bucket held at most (ns, burst)

    def full(self, at_ns: int, burst: float) -> None:
        """The bucket held no more than ``burst`` at ``at_ns`` (a pause after the mark long
        enough to refill it): its tokens lost to the cap before then do not count."""
        self._full = (at_ns, burst)

    def started(self, attempt: Attempt) -> None:
        """An attempt started (after the mark)."""
        self._in_flight[id(attempt)] = attempt

    def finished(self, attempt: Attempt, *, accepted: bool) -> None:
        """``attempt`` was answered (``accepted``: the bucket counted it)."""
        self._in_flight.pop(id(attempt), None)
        sent_ns = attempt.sent_ns
        if sent_ns <= self.mark_ns:
            return  # the last span's, or sent before counting began
        if accepted:
            # (one started before counting began but sent after the mark: this span's too)
            self._accepted += 1
            self._recent.append(sent_ns)

    def refused(self, sent_ns: int) -> float | None:
        """The bucket refused the attempt sent at ``sent_ns``: empty again. Return its rate
        since the last mark (accepted per second; None over less than ``MIN_SPAN_NS``) and
        start the next span there."""
        later = sum(1 for s in self._recent if s > sent_ns)
        before = [key for key, a in self._in_flight.items() if a.sent_ns < sent_ns]
        span_ns = sent_ns - self.mark_ns
        taken = self._accepted - later + len(before)
        rates = [taken * NS_PER_S / span_ns] if span_ns >= MIN_SPAN_NS else []
        if self._full is not None:
            # from a moment it held at most ``burst``: at least ``taken - burst`` was made since
            full_ns, burst = self._full
            if sent_ns - full_ns >= MIN_SPAN_NS:
                rates.append((taken - burst) * NS_PER_S / (sent_ns - full_ns))
        rate = max(rates) if rates else None
        self._full = None
        self.mark_ns = sent_ns
        self._accepted = later
        self._recent = deque((s for s in self._recent if s > sent_ns), maxlen=256)
        for key in before:  # counted in this span already: their answers are ignored
            del self._in_flight[key]
        return rate
