"""What one grant costs, per unit: ``{"requests": 1, "tokens": 1200}`` (sans-I/O).

Every limit counts one unit (:attr:`~paceline.policy.rate.Rate.unit`). A cost names how much
of each unit a grant takes; a plain integer weight is a cost in requests, so
``weight=3`` and ``{"requests": 3}`` are the same grant. Rules, chosen so the common call is
short and nothing is charged by accident:

- ``requests`` defaults to 1 when a mapping leaves it out: every attempt is a request, so
  ``{"tokens": 1200}`` is one request of 1200 tokens. Say ``{"requests": 0, ...}`` to charge
  none (a settlement that only corrects tokens).
- A unit no limit counts is ignored (a server that limits requests only does not care about
  your token estimate).
- Amounts are whole numbers, 0 or more. Unit names are matched case-insensitively, and the
  usual spellings of requests (``request``, ``req``) all mean ``requests``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeGuard

from paceline.errors import InvalidArgument, InvalidArgumentType
from paceline.policy.rate import REQUESTS, unit_name

Cost = Mapping[str, int]
"""How much of each unit one grant takes, e.g. ``{"requests": 1, "tokens": 1200}``."""

_EXAMPLE = "e.g. {'requests': 1, 'tokens': 1200}"


def as_cost(cost: int | Cost, *, fill_requests: bool = True) -> dict[str, int]:
    """A checked copy of ``cost`` with unit names normalised and (unless ``fill_requests`` is
    false) ``requests`` filled in.

    >>> as_cost(3)
    {'requests': 3}
    >>> as_cost({"Tokens": 1200})
    {'tokens': 1200, 'requests': 1}
    """
    if isinstance(cost, int) and not isinstance(cost, bool):
        if cost < 1:
            raise InvalidArgument(
                f"weight {cost!r}: must be at least 1 (a cost such as {{'requests': 0, "
                "'tokens': 5}} charges no request)"
            )
        return {REQUESTS: cost}
    if not isinstance(cost, Mapping):
        raise InvalidArgumentType(
            f"cost {cost!r}: must be a whole number of requests or a mapping, {_EXAMPLE}"
        )
    checked: dict[str, int] = {}
    for key, amount in cost.items():
        if not isinstance(key, str):
            raise InvalidArgumentType(
                f"cost {dict(cost)!r}: unit {key!r} must be a name, {_EXAMPLE}"
            )
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise InvalidArgument(
                f"cost {dict(cost)!r}: {key} {amount!r} must be a whole number of 0 or more, "
                f"{_EXAMPLE}"
            )
        unit = unit_name(key)
        checked[unit] = checked.get(unit, 0) + amount
    if fill_requests:
        checked.setdefault(REQUESTS, 1)
    return checked


def usage_tokens(body: object) -> int | None:
    """The tokens an answer's JSON body says it used: ``usage.total_tokens`` (OpenAI), else
    ``usage.input_tokens + usage.output_tokens`` (Anthropic); ``None`` when it says neither.

    >>> usage_tokens({"usage": {"input_tokens": 7, "output_tokens": 5}})
    12
    >>> usage_tokens({"usage": {"total_tokens": True}}) is None
    True
    """
    usage = body.get("usage") if isinstance(body, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    total = usage.get("total_tokens")
    if _count(total):
        return total
    parts = usage.get("input_tokens"), usage.get("output_tokens")
    if _count(parts[0]) and _count(parts[1]):
        return parts[0] + parts[1]
    return None


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
