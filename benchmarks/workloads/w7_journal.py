"""W7 journal cost: W1 with the durable journal on (a fresh SQLite journal file per batch).

Paired like W6: each process alternates batches with and without ``journal=`` and reports the
ratio of the medians.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from workloads import Tool, Workload, ratio_at_most
from workloads import impls as I
from workloads.common import W1_CONCURRENCY, Figures, Sizes, WrongAnswer, noop
from workloads.w1_async import Impl, measure_paired


def _plain() -> Impl:
    return lambda keys: I.paceline_batch(keys, noop, W1_CONCURRENCY)


def _journaled() -> Impl:
    import paceline

    async def run(keys: list[int]) -> list[Any]:
        with tempfile.TemporaryDirectory(prefix="paceline-bench-") as tmp:
            path = Path(tmp) / "journal.sqlite"
            results = await paceline.batch_execute(
                keys, noop, max_concurrent=W1_CONCURRENCY, journal=path
            )
        values = []
        for i, r in enumerate(results):
            if not r.is_success:
                raise WrongAnswer(f"item {i} failed: {r!r}")
            values.append(r.value)
        return values

    return run


def _run(sizes: Sizes) -> Figures:
    return measure_paired(_plain, _journaled, sizes.w1_items)


def describe(f: Figures) -> str:
    return f"{f['us_per_item']:.2f} µs/item (without: {f['us_per_item_plain']:.2f})"


WORKLOAD = Workload(
    key="W7",
    title="journal cost",
    main="us_per_item",
    describe=describe,
    ratio_figure="paired_ratio",
    tools=[
        Tool(
            "paceline",
            "paceline + journal=file / paceline",
            _run,
            "paceline",
            target=ratio_at_most(2.0),
        ),
    ],
)
