"""How long a set of limits takes, at the least, to grant ``n`` permits (for dry runs)."""

from __future__ import annotations

from collections.abc import Sequence

from paceline.policy.limits import Limit, LimitPolicy
from paceline.policy.rate import REQUESTS

# Simulating the exact schedule costs about a microsecond per grant; past this many grants the
# rest is extrapolated at the simulated long-run rate (the answer is then marked approximate).
EXACT_UP_TO = 200_000


def min_duration_ns(limits: Sequence[Limit], n: int) -> tuple[int, bool]:
    """The earliest time (ns after the first grant) the ``n``-th grant of one request can
    happen, and whether that figure is exact (limits in other units are not charged).

    >>> from paceline.policy.rate import Rate
    >>> min_duration_ns([Limit(Rate(2, 1_000_000_000), margin_ns=0)], 5)
    (2000000000, True)
    """
    if n <= 1 or not limits:
        return 0, True
    policy = LimitPolicy(limits)
    now = 0
    simulated = min(n, EXACT_UP_TO)
    for _ in range(simulated):
        wait = policy.try_grant(now)
        while wait:
            now += wait
            wait = policy.try_grant(now, 1, True)
    if simulated == n:
        return now, True
    # Grants here are one request each: limits of other units (tokens) are never charged.
    slowest = max(
        (lim.window_ns / lim.rate.max_requests for lim in limits if lim.rate.unit == REQUESTS),
        default=0.0,
    )
    return now + round((n - simulated) * slowest), False
