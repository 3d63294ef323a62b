"""What a server's token headers say is left of a unit, kept up to date between answers.

An LLM API states its token limit in every answer: OpenAI's ``x-ratelimit-limit-tokens`` (per
minute), ``-remaining-tokens`` and ``-reset-tokens``, Anthropic's ``anthropic-ratelimit-tokens-*``.
Both enforce it as a token bucket that refills continuously at the limit per minute. A
:class:`ServerBucket` mirrors that bucket on the client (sans-I/O, integer nanoseconds):

- **Learn.** An answer says ``remaining`` at its time. Requests still in flight may not be
  counted in it yet (sent before, admitted after the answer was written), so their estimates
  are taken off: ``level = remaining - in_flight``. Some were counted already; taking them off
  twice only keeps that much in the server's bucket as a cushion, once — the long-run rate is
  the refill rate either way.
- **Refill.** The level grows at ``limit / window`` (60 s when the headers state no window, as
  OpenAI's and Anthropic's never do: their limits are per minute), up to the most ``remaining``
  ever seen (a bucket's capacity; the limit itself may be larger than the bucket holds).
- **Take.** A request is sent when the level covers its estimate (or, for an estimate larger
  than the capacity, when the level is full: it could never fit better), and takes it.

The rate comes from the limit, not from ``(limit - remaining) / reset``: that reading is
right only when the bucket holds exactly one minute's worth, and wrong by the ratio when it
holds less. The reset is not needed: between answers the refill rate says when room comes.

>>> bucket = ServerBucket(window_ns=60 * NS_PER_S)
>>> bucket.learn(0, limit=6000, remaining=500, in_flight=200)  # 100 tokens/s, level 300
>>> bucket.wait_ns(0, 300), bucket.wait_ns(0, 400)              # 100 more take 1 s
(0, 1000000000)
>>> bucket.take(0, 300); bucket.level(0), bucket.level(2 * NS_PER_S)
(0, 200)
"""

from __future__ import annotations

from paceline.policy.rate import NS_PER_S

__all__ = ["DEFAULT_WINDOW_NS", "ServerBucket"]

# OpenAI's and Anthropic's token limits are "per minute" (TPM; their headers state no window).
DEFAULT_WINDOW_NS = 60 * NS_PER_S


class ServerBucket:
    """The client's mirror of a server's token bucket for one unit (see the module doc).

    Until :meth:`learn` runs nothing is known and :meth:`wait_ns` is 0. Levels are whole units;
    internally they are scaled by ``window_ns`` so the refill (``limit`` per ``window_ns``) is
    exact integer arithmetic.
    """

    __slots__ = ("_at_ns", "_capacity", "_limit", "_scaled", "_window_ns")

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS) -> None:
        self._window_ns = window_ns
        self._limit = 0  # units per window: the refill rate; 0 until learned
        self._capacity = 0  # the most ``remaining`` seen
        self._scaled = 0  # the level at ``_at_ns``, times ``window_ns``
        self._at_ns = 0

    @property
    def known(self) -> bool:
        """Whether an answer has stated this unit's limit."""
        return self._limit > 0

    @property
    def limit(self) -> int:
        """The units per window the server refills (0: not learned)."""
        return self._limit

    def learn(self, now_ns: int, *, limit: int, remaining: int, in_flight: int) -> None:
        """An answer said ``limit`` per window and ``remaining`` now; ``in_flight`` units were
        reserved by requests sent and not yet answered (not counting the one that brought it)."""
        if limit < 1:
            return
        self._limit = limit
        self._capacity = max(self._capacity, remaining)
        self._scaled = (remaining - in_flight) * self._window_ns
        self._at_ns = now_ns

    def _scaled_at(self, now_ns: int) -> int:
        full = self._capacity * self._window_ns
        if self._scaled >= full:
            return self._scaled
        return min(full, self._scaled + self._limit * max(0, now_ns - self._at_ns))

    def level(self, now_ns: int) -> int:
        """Whole units the server holds for us at ``now_ns`` (negative: owed)."""
        return self._scaled_at(now_ns) // self._window_ns

    def wait_ns(self, now_ns: int, amount: int) -> int:
        """Nanoseconds until ``amount`` fits (0: now); an amount above the capacity waits for a
        full bucket."""
        if not self.known or amount <= 0:
            return 0
        need = min(amount, self._capacity) * self._window_ns
        short = need - self._scaled_at(now_ns)
        return 0 if short <= 0 else -(-short // self._limit)

    def take(self, now_ns: int, amount: int) -> None:
        """Charge ``amount`` at ``now_ns`` (a request is sent)."""
        if not self.known:
            return
        self._scaled = self._scaled_at(now_ns) - amount * self._window_ns
        self._at_ns = now_ns

    def give_back(self, now_ns: int, amount: int) -> None:
        """Return ``amount`` taken for a request that was never sent."""
        if self.known:
            self._scaled = self._scaled_at(now_ns) + amount * self._window_ns
            self._at_ns = now_ns
