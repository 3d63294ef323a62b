"""GCRA shaper: evenly paced grants in front of the window log (docs/design.md, 'Even pacing').

Emission interval ``T = W / N`` and tolerance ``tau = (B - 1) * T`` for a limit of ``N`` per
``W`` with burst ``B``: up to ``B`` at once, then one every ``T`` — the rate stays ``N / W``
whatever the burst (a token bucket of rate N/W and size B, as nginx's ``limit_req ... burst``
counts). State is the theoretical arrival time (TAT): a grant may happen once
``now >= TAT - tau``; on grant ``TAT = max(TAT, now) + T * weight``.

The shaper alone is *not* strict — with ``B = N`` it admits up to 2N-1 in one window — which is
why the log stays behind it: the log keeps N per W, the shaper only shapes. (An interval of
``W / (N - B + 1)`` would make the shaper strict alone, at the cost of the rate: ``B = N`` then
meant one grant per window after the first burst, 1/N of the limit.)

Late wake-ups: a waiter that slept until its slot and woke ``d`` ns late would, with the plain
formula, push the whole schedule back by ``d`` (aiometer loses 7 % of its rate this way). A
grant that followed a wait is therefore charged from the intended slot, forgiving up to
``T - 1`` ns of lateness. Forgiving less than one interval keeps any two grants at least a
fraction of T apart, so with ``B = 1`` a window of ``k * T`` never holds more than ``k + 1``.
"""

from __future__ import annotations

from paceline.errors import InvalidArgument


class Gcra:
    """Generic cell rate algorithm on integer nanoseconds (sans-I/O).

    >>> g = Gcra.for_limit(limit=4, window_ns=1000, burst=1)   # T = 250 ns
    >>> g.wait_ns(0, 1); g.record(0, 1, waited=False); g.wait_ns(0, 1)
    0
    250
    """

    __slots__ = ("_tat", "interval_ns", "tolerance_ns")

    def __init__(self, interval_ns: int, tolerance_ns: int) -> None:
        if interval_ns < 1:
            raise InvalidArgument(f"interval_ns {interval_ns!r}: must be at least 1")
        if tolerance_ns < 0:
            raise InvalidArgument(f"tolerance_ns {tolerance_ns!r}: must not be negative")
        self.interval_ns = interval_ns
        self.tolerance_ns = tolerance_ns
        self._tat: int | None = None

    @classmethod
    def for_limit(cls, limit: int, window_ns: int, burst: int) -> Gcra:
        """A shaper pacing ``limit`` per ``window_ns``, allowing ``burst`` at once. Alone it
        may grant more than ``limit`` in one window (up to ``limit + burst - 1``; and it
        forgives late wake-ups: with 4 per 1000 ns and ``burst=1``, grants at 499, 500, 750,
        1000, 1250); :class:`~paceline.policy.limits.LimitPolicy` keeps the window log behind
        it, which is what makes the whole strict.

        >>> g = Gcra.for_limit(limit=200, window_ns=1000, burst=200)  # 200 at once, then 1 per 5
        >>> (g.interval_ns, g.tolerance_ns)
        (5, 995)
        """
        if not 1 <= burst <= limit:
            raise InvalidArgument(
                f"burst {burst!r}: must be between 1 (even pacing) and the limit {limit} "
                "(all at once)"
            )
        interval = -(-window_ns // limit)  # round up: never shorter than W / N
        return cls(interval, (burst - 1) * interval)

    def wait_ns(self, now_ns: int, weight: int) -> int:
        """Nanoseconds until a grant is allowed (0: now)."""
        if self._tat is None:
            return 0
        wait = self._tat - self.tolerance_ns - now_ns
        return wait if wait > 0 else 0

    def record(self, now_ns: int, weight: int, waited: bool) -> None:
        """Charge a grant of ``weight`` at ``now_ns``; ``waited``: the caller slept for its slot."""
        tat = self._tat
        if tat is None:
            base = now_ns
        else:
            floor = now_ns - (self.interval_ns - 1) if waited else now_ns
            base = tat if tat > floor else floor
        self._tat = base + self.interval_ns * weight
