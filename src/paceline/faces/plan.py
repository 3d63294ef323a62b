"""Dry run: what a batch would do, without calling the operation."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from paceline._limiter import RateLimiter
from paceline.figures import format_latency
from paceline.policy.rate import NS_PER_S
from paceline.policy.schedule import min_duration_ns
from paceline.stores import Journal, fingerprint_of, item_key


@dataclass(frozen=True, slots=True)
class DryRun:
    """What a batch would do: how many items, how many a journal already settled, the limits,
    and the least time the rate limits allow for the rest."""

    items: int
    settled_succeeded: int
    settled_failed: int
    to_run: int
    limits: tuple[str, ...]
    concurrency: int | str | None
    min_duration_s: float | None
    exact: bool = True

    def __str__(self) -> str:
        lines = [f"{self.items} items in the input"]
        if self.settled_succeeded or self.settled_failed:
            lines.append(
                f"{self.settled_succeeded} already succeeded and {self.settled_failed} failed "
                "in the journal (skipped)"
            )
        lines.append(f"{self.to_run} would run")
        lines.append("limits: " + (", ".join(self.limits) if self.limits else "none"))
        lines.append(f"concurrency: {self.concurrency if self.concurrency else 'one at a time'}")
        if self.min_duration_s is not None:
            lines.append(least_time_text(self.min_duration_s, self.exact))
        return "\n".join(lines)


def least_time_text(seconds: float, exact: bool = True) -> str:
    """The least time the rate limits allow, as both dry runs say it.

    >>> least_time_text(4.004), least_time_text(90, exact=False)
    ('the rate limits alone need at least 4.00s', 'the rate limits alone need at least about 1m30s')
    """
    return (
        f"the rate limits alone need at least {'' if exact else 'about '}{format_latency(seconds)}"
    )


def dry_run(
    items: Iterable[Any],
    *,
    rate_limiter: object | None = None,
    max_concurrent: int | str | None = None,
    journal: str | os.PathLike[str] | Journal | None = None,
    operation: Callable[..., Any] | str | None = None,
    journal_label: str | None = None,
    retry_failed: bool = False,
    key: Callable[[Any], Any] | None = None,
    item_ids: Sequence[str] | None = None,
) -> DryRun:
    """Report what a batch over ``items`` would do, calling nothing.

    The input is read once (in bounded memory). With a ``journal`` — the same path,
    ``operation`` (for :class:`~paceline.BatchExecutor`: leave it out) and ``journal_label``
    the real run would use — items it already settled are counted apart; a journal file that
    does not exist yet is not created.

    >>> report = dry_run(range(10), rate_limiter=RateLimiter(2, 1.0))
    >>> report.to_run, report.min_duration_s  # 4 windows of 1 s + the 1 ms margin
    (10, 4.004)
    """
    store: Journal | None = None
    owned = False
    if isinstance(journal, Journal):
        store = journal
    elif journal is not None and os.path.exists(journal):
        identity = operation if operation is not None else "paceline.BatchExecutor"
        store = Journal.open(journal, fingerprint=fingerprint_of(identity, journal_label))
        owned = True
    count = succeeded = failed = 0
    try:
        for index, item in enumerate(items):
            count += 1
            if store is None:
                continue
            if item_ids is not None:
                item_key_ = item_key(None, item_id=item_ids[index])
            else:
                item_key_ = item_key(item, key=key)
            stored = store.lookup(item_key_)
            if stored is None:
                continue
            if stored.success:
                succeeded += 1
            elif not retry_failed:
                failed += 1
    finally:
        if owned and store is not None:
            store.close()
    to_run = count - succeeded - failed
    limits: tuple[str, ...] = ()
    duration: float | None = None
    exact = True
    if isinstance(rate_limiter, RateLimiter):
        limits = tuple(
            str(lim.rate) + (f" burst={lim.burst}" if lim.burst is not None else "")
            for lim in rate_limiter.limits
        )
        ns, exact = min_duration_ns(rate_limiter.limits, to_run)
        duration = ns / NS_PER_S
    elif rate_limiter is not None:
        limits = (repr(rate_limiter),)
    return DryRun(
        items=count,
        settled_succeeded=succeeded,
        settled_failed=failed,
        to_run=to_run,
        limits=limits,
        concurrency=max_concurrent,
        min_duration_s=duration,
        exact=exact,
    )
