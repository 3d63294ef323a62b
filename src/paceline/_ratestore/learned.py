"""Limits learned by one process, shared with every process on a store's key.

A server's ``RateLimit-Policy`` (or ``X-RateLimit-Limit`` with a window) is the quota of the API
key, not of the process that read it. Published here, it becomes a limit of the *key*: the
script (:mod:`paceline._ratestore.script`, op ``"l"``) keeps it in the key's meta hash and every
later booking of any process on the key also keeps N per W, counted on the same log as the
user's requests limit. So k processes keep N per W together, not k x N, and a process that
joins later is held to it from its first grant, before it has read a header itself.

docs/design.md, 'Learned limits shared', says why it is a limit in the script rather than a
rate each process adopts.

>>> from paceline.policy.limits import Limit
>>> from paceline.policy.rate import Rate
>>> requests_limit_index([Limit(Rate.parse("tokens:9000/min")), Limit(Rate.parse("100/s"))])
1
>>> requests_limit_index([Limit(Rate.parse("tokens:9000/min"))]) is None
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from paceline._ratestore.redis_store import TICKS_PER_S, RedisLimitStore
from paceline.errors import InvalidArgument
from paceline.policy.limits import Limit
from paceline.policy.rate import REQUESTS


def requests_limit_index(limits: Sequence[Limit]) -> int | None:
    """The index of the first limit counted in requests (its log counts a learned limit);
    ``None`` when every limit is in another unit (a learned limit is then not shared)."""
    for i, lim in enumerate(limits):
        if lim.rate.unit == REQUESTS:
            return i
    return None


def share_server_limit(store: RedisLimitStore, quota: int, window_s: float) -> bool:
    """Publish a server's announced ``quota`` requests per ``window_s`` under ``store``'s key:
    from the next booking on, every process on the key keeps it, together. Returns whether it
    was published: not when the limiter has no requests limit, nor when the store cannot be
    reached at once (never waits: each process still keeps the limit alone, as without a
    store, and publishes it again when it next learns it).

    The newest announcement wins (a server that changes its policy is believed).
    """
    if not isinstance(quota, int) or quota < 1 or not window_s > 0:
        raise InvalidArgument(
            f"learned limit {quota!r} per {window_s!r} s: give a count >= 1 and a window > 0 s"
        )
    index = requests_limit_index(store.limits)
    if index is None:
        return False
    window_ticks = -(-round(window_s * 1e9) // (1_000_000_000 // TICKS_PER_S))  # rounded up
    args: list[Any] = [
        "l",
        "",
        TICKS_PER_S,
        0,
        *store._limit_args(store._margin_ns),
        quota,
        window_ticks,
        index + 1,
    ]
    with contextlib.suppress(*store._transient()):
        store.call(args, retry=False)
        return True
    return False


def shared_server_limit(store: RedisLimitStore) -> tuple[int, float] | None:
    """The limit a server announced to some process on ``store``'s key, as ``(quota,
    window_s)``, or ``None`` (none learned, or the key's state has expired)."""
    client = store._sync_script().registered_client
    quota, window = client.hmget(store._keys[0], "ln", "lw")
    if quota is None or window is None:
        return None
    return int(quota), int(window) / TICKS_PER_S
