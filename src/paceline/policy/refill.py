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

>>> MS = 1_000_000
>>> count = RefillCount(mark_ns=0)
>>> for sent in range(10 * MS, 1_000 * MS, 10 * MS):   # 99 attempts, one every 10 ms
...     count.started(sent)
>>> for sent in range(10 * MS, 990 * MS, 10 * MS):     # 98 answered, accepted
...     count.finished(sent, accepted=True)
>>> count.refused(1_000 * MS)   # refused 1 s after the last refusal; the one in flight counts
99.0
>>> count.refused(1_400 * MS) is None   # 0.4 s after this one: too short to tell
True
"""

from __future__ import annotations

from collections import deque
from contextlib import suppress

NS_PER_S = 1_000_000_000

# A span shorter than this gives no rate: a token more or less is 1 / span of it (at 80/s,
# over 0.5 s, 2.5 %); the caller keeps its own estimate then.
MIN_SPAN_NS = NS_PER_S // 2


class RefillCount:
    """Accepted attempts sent since the bucket's last refusal (``mark_ns``), and those in
    flight; ``refused`` reads the rate and moves the mark."""

    __slots__ = ("_accepted", "_full", "_in_flight", "_recent", "mark_ns")

    def __init__(self, mark_ns: int) -> None:
        self.mark_ns = mark_ns
        self._accepted = 0  # answered and accepted, sent after the mark
        # their send times over the last few answers (those sent after a refusal answered
        # before it move to the next span); attempts in flight, sent after the mark
        self._recent: deque[int] = deque(maxlen=256)
        self._in_flight: deque[int] = deque()
        self._full: tuple[int, float] | None = None  # when the bucket held at most (ns, burst)

    def full(self, at_ns: int, burst: float) -> None:
        """The bucket held no more than ``burst`` at ``at_ns`` (a pause after the mark long
        enough to refill it): its tokens lost to the cap before then do not count."""
        self._full = (at_ns, burst)

    def started(self, sent_ns: int) -> None:
        """An attempt went out at ``sent_ns`` (never before the mark)."""
        self._in_flight.append(sent_ns)

    def finished(self, sent_ns: int, *, accepted: bool) -> None:
        """The attempt sent at ``sent_ns`` was answered (``accepted``: the bucket counted it)."""
        if sent_ns <= self.mark_ns:
            return  # the last span's, or sent before counting began
        # (not found: sent after the mark, before counting began: this span's all the same)
        with suppress(ValueError):
            self._in_flight.remove(sent_ns)
        if accepted:
            self._accepted += 1
            self._recent.append(sent_ns)

    def refused(self, sent_ns: int) -> float | None:
        """The bucket refused the attempt sent at ``sent_ns``: empty again. Return its rate
        since the last mark (accepted per second; None over less than ``MIN_SPAN_NS``) and
        start the next span there."""
        later = sum(1 for s in self._recent if s > sent_ns)
        pending = sum(1 for s in self._in_flight if s < sent_ns)
        span_ns = sent_ns - self.mark_ns
        taken = self._accepted - later + pending
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
        self._in_flight = deque(s for s in self._in_flight if s > sent_ns)
        return rate
