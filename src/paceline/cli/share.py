"""The adaptive rate shared by every command on a ``--rate-store`` key (docs/design.md,
'Adaptive rate shared'): a task of the run that exchanges each server's controller rate with
the store at most once a second (at once after a local cut), never per grant."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from paceline.policy.adaptive import AdaptiveController

# How often the task looks at the controllers (no round trip unless one is due): a local cut
# reaches the store within this.
_LOOK_EVERY_S = 0.1


def _controllers(plan: Any) -> Iterator[tuple[str, AdaptiveController]]:
    """Each server's controller (``""`` for a batch without lanes); a server whose quota was
    announced in its headers is left out: its limit is shared as a limit (learned.py)."""
    if plan.lanes is None:
        if plan.controller is not None:
            yield "", plan.controller
        return
    for key, limits, controller in plan.lanes.servers():
        if controller is not None and limits.policy is None:
            yield key, controller


async def share_adaptive(plan: Any) -> None:
    """Run until cancelled: keep each controller at its share of the rate found together."""
    store = None if plan.limiter is None else plan.limiter.store
    if store is None or plan.controller is None:
        return
    shares: dict[str, Any] = {}  # per server: the store's AdaptiveShare
    try:
        await _share(plan, store, shares)
    finally:
        for share in list(shares.values())[:1]:  # one process, one place in the live set
            # A round trip off the loop (up to the 2 s socket timeout if Redis hangs): the
            # loop's other tasks go on meanwhile.
            await asyncio.to_thread(share.leave)


async def _share(plan: Any, store: Any, shares: dict[str, Any]) -> None:
    while True:
        for key, controller in list(_controllers(plan)):
            share = shares.get(key)
            if share is None:
                share = shares[key] = store.adaptive_share(key)
            rate = before = controller.rate_per_s
            user = controller.settings.user_rate_per_s
            if rate is not None and user is not None and rate >= user:
                rate = None  # held at the user's rate, which the shared limiter keeps already
            if not share.due(time.monotonic_ns(), rate):
                continue
            kind, proposed = share.proposal(rate)
            try:
                reply = await asyncio.to_thread(share.exchange, kind, proposed)
            except Exception:  # an unreachable store: the booking path reports it; try later
                continue
            if controller.rate_per_s != before:
                continue  # changed meanwhile (a local cut): exchanged at the next look
            now = time.monotonic_ns()
            adopt = share.apply(now, rate, reply)
            if adopt is not None:
                controller.adopt_rate(now, adopt)
        await asyncio.sleep(_LOOK_EVERY_S)
