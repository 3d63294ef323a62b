"""A server's "send nothing until then" (``Retry-After``): one pause for every dispatch, bounded.

A throttled answer's ``Retry-After`` speaks for the server, not for one item: every attempt
waits until it passes — also without adaptive control, at a fixed concurrency (otherwise the
other workers go on sending into a server that asked for quiet, and collect more 429s).

A pause longer than ``max_pause_s`` is not obeyed: one absurd ``Retry-After: 1000000`` (or a
far HTTP-date) would stop the whole batch for days. The item that got it fails instead (the
retry policy's ``max_retry_after_s``, same default), and the refusal is counted so a display
can say so.

>>> pause = ServerPause(max_pause_s=60)
>>> pause.ask(0, 2.5), pause.wait_ns(1_000_000_000)
(True, 1500000000)
>>> pause.ask(0, 1_000_000), pause.refused, pause.wait_ns(0)
(False, 1, 2500000000)
"""

from __future__ import annotations

import math

from paceline.errors import InvalidArgument
from paceline.policy.rate import NS_PER_S

DEFAULT_MAX_PAUSE_S = 300.0
"""The longest server-wide pause obeyed (5 min). Real APIs ask for seconds to a minute, daily
quotas for hours: beyond a few minutes, stopping everything silently helps nobody — the item
that asked fails with the server's words and the batch goes on (or a halt rule stops it)."""


class ServerPause:
    """The pause every dispatch honours: until ``until_ns`` (monotonic ns), nothing starts."""

    __slots__ = ("last_refused_s", "max_pause_ns", "refused", "until_ns")

    def __init__(self, max_pause_s: float = DEFAULT_MAX_PAUSE_S) -> None:
        if not (isinstance(max_pause_s, (int, float)) and math.isfinite(max_pause_s)) or (
            max_pause_s < 0
        ):
            raise InvalidArgument(f"max_pause_s={max_pause_s!r}: a finite number of seconds >= 0")
        self.max_pause_ns = round(max_pause_s * NS_PER_S)
        self.until_ns = 0
        self.refused = 0  # pauses asked for beyond the cap, not obeyed
        self.last_refused_s: float | None = None

    def obeys(self, retry_after_s: float) -> bool:
        """Whether a pause of ``retry_after_s`` is within the cap (a refusal is counted)."""
        if math.isfinite(retry_after_s) and retry_after_s * NS_PER_S <= self.max_pause_ns:
            return True
        self.refused += 1
        self.last_refused_s = retry_after_s
        return False

    def ask(self, now_ns: int, retry_after_s: float) -> bool:
        """The server asked for ``retry_after_s`` of quiet at ``now_ns``: ``True`` when that
        extends the pause, ``False`` when it is within the current one, zero, or refused."""
        if not retry_after_s > 0 or not self.obeys(retry_after_s):
            return False
        until = now_ns + round(retry_after_s * NS_PER_S)
        if until <= self.until_ns:
            return False
        self.until_ns = until
        return True

    def wait_ns(self, now_ns: int) -> int:
        """How long a dispatch at ``now_ns`` must still wait (0: go)."""
        return max(0, self.until_ns - now_ns)
