"""W6 limiter cost: W1 with a rate limit so high it never binds (10**9 per second).

Each process times the tool *with* and *without* the limiter, alternating batches (ABBA), and
reports the ratio of the two medians: a paired comparison in one process, because the spread
between processes on this machine (±30 % for a 0.2 s batch) is larger than the 10 % target.
Without the limiter: paceline's and aiometer's own W1 configuration; aiolimiter and
pyrate-limiter wrap each call of the W1 gather baseline, so they are compared with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workloads import Tool, Workload, ratio_at_most
from workloads import impls as I
from workloads.common import NEVER_BINDS, W1_CONCURRENCY, Figures, Sizes, noop
from workloads.w1_async import Impl, MakeImpl, measure_paired


def _paceline_plain() -> Impl:
    return lambda keys: I.paceline_batch(keys, noop, W1_CONCURRENCY)


def _paceline() -> Impl:
    import paceline

    limiter = paceline.RateLimiter(NEVER_BINDS, 1.0)
    return lambda keys: I.paceline_batch(keys, noop, W1_CONCURRENCY, limiter)


def _aiometer_plain() -> Impl:
    return lambda keys: I.aiometer_run_all(keys, noop, W1_CONCURRENCY)


def _aiometer() -> Impl:
    return lambda keys: I.aiometer_run_all(keys, noop, W1_CONCURRENCY, float(NEVER_BINDS))


def _gather_plain() -> Impl:
    return lambda keys: I.gather_semaphore(keys, noop, W1_CONCURRENCY)


def _aiolimiter() -> Impl:
    limited = I.aiolimiter_wrap(noop, NEVER_BINDS, 1.0)
    return lambda keys: I.gather_semaphore(keys, limited, W1_CONCURRENCY)


def _pyrate() -> Impl:
    limited, close = I.pyrate_wrap(noop, NEVER_BINDS, 1.0)

    async def run(keys: list[int]) -> list[Any]:
        try:
            return await I.gather_semaphore(keys, limited, W1_CONCURRENCY)
        finally:
            close()

    return run


def _run(plain: MakeImpl, with_limiter: MakeImpl) -> Callable[[Sizes], Figures]:
    return lambda sizes: measure_paired(plain, with_limiter, sizes.w1_items)


def describe(f: Figures) -> str:
    return f"{f['us_per_item']:.2f} µs/item (without: {f['us_per_item_plain']:.2f})"


WORKLOAD = Workload(
    key="W6",
    title="limiter cost",
    main="us_per_item",
    describe=describe,
    ratio_figure="paired_ratio",
    tools=[
        Tool(
            "paceline",
            "paceline + RateLimiter(1e9/s) / paceline",
            _run(_paceline_plain, _paceline),
            "paceline",
            target=ratio_at_most(1.10),
        ),
        Tool(
            "aiometer",
            "aiometer max_per_second=1e9 / aiometer",
            _run(_aiometer_plain, _aiometer),
            "aiometer",
        ),
        Tool(
            "aiolimiter",
            "aiolimiter(1e9/s)+gather / gather",
            _run(_gather_plain, _aiolimiter),
            "aiolimiter",
        ),
        Tool(
            "pyrate",
            "pyrate-limiter(1e9/s)+gather / gather",
            _run(_gather_plain, _pyrate),
            "pyrate-limiter",
        ),
    ],
)
