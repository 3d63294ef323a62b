"""How long a set of limits takes, at the least, to grant ``n`` permits (for dry runs)."""

from __future__ import annotations

from collections.abc import Sequence

from paceline.policy.cost import Cost, as_cost
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


def min_duration_for_costs_ns(limits: Sequence[Limit], costs: Sequence[Cost]) -> tuple[int, bool]:
    """The earliest time (ns after the first grant) the last of ``costs`` can be granted,
    each charged its estimate and never settled (the time an estimate-only batch needs;
    settling to a smaller actual cost can only be faster), and whether it is exact.

    >>> from paceline.policy.rate import Rate
    >>> tokens = Limit(Rate(1000, 1_000_000_000, unit="tokens"), margin_ns=0)
    >>> min_duration_for_costs_ns([tokens], [{"tokens": 400}] * 5)   # 1,000 a second
    (2000000000, True)
    """
    if len(costs) <= 1 or not limits:
        return 0, True
    policy = LimitPolicy(limits)
    now = 0
    simulated = costs[:EXACT_UP_TO]
    for cost in simulated:
        result = policy.try_reserve(now, cost)
        while isinstance(result, int):
            now += result
            result = policy.try_reserve(now, cost, True)
    if len(simulated) == len(costs):
        return now, True
    # The rest at each limit's long-run rate: its unit's total over N per W, the slowest.
    rest: dict[str, int] = {}
    for cost in costs[EXACT_UP_TO:]:
        for unit, amount in as_cost(cost).items():
            rest[unit] = rest.get(unit, 0) + amount
    slowest = max(
        (rest.get(lim.rate.unit, 0) * lim.window_ns / lim.rate.max_requests for lim in limits),
        default=0.0,
    )
    return now + round(slowest), False
