"""The workloads W1-W7 (docs/benchmarks.md): what each measures, with which tools, and its target.

Each workload module defines one :class:`Workload`. Peer packages are imported inside the
tool functions, so this registry can be read without any of them installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from workloads.common import Figures, Sizes


@dataclass(frozen=True)
class Target:
    """paceline's target on one row: ``check(figures, ratio)`` says whether it is met and how."""

    text: str
    check: Callable[[Figures, float | None], tuple[bool, str]]


@dataclass(frozen=True)
class Tool:
    """One row: a tool (or a tool configuration) running one workload."""

    key: str
    label: str
    run: Callable[[Sizes], Figures]
    package: str | None = None
    ratio_to: tuple[str, str] | None = None
    """``(workload, tool)`` whose main figure, from the same run, this row is divided by."""
    target: Target | None = None


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    main: str
    """The figure the ratio column is computed on."""
    describe: Callable[[Figures], str]
    """Render a row's aggregated figures."""
    tools: list[Tool] = field(default_factory=list)
    worst: tuple[str, ...] = ()
    """Figures aggregated as the worst (max) over repetitions instead of the median."""
    lowest: tuple[str, ...] = ()
    """Figures aggregated as the minimum over repetitions (where low is the worst case)."""
    ratio_figure: str | None = None
    """A figure that already is the row's ratio (measured paired, in one process)."""

    def tool(self, key: str) -> Tool:
        for tool in self.tools:
            if tool.key == key:
                return tool
        raise KeyError(f"{self.key} has no tool {key!r}")


def all_workloads() -> list[Workload]:
    """Every workload, in table order."""
    from workloads import (
        w1_async,
        w2_sync,
        w3_latency,
        w4_rate,
        w5_stream,
        w6_limiter,
        w7_journal,
    )

    return [
        w1_async.WORKLOAD,
        w2_sync.WORKLOAD,
        w3_latency.WORKLOAD,
        w4_rate.WORKLOAD,
        w5_stream.WORKLOAD,
        w6_limiter.WORKLOAD,
        w7_journal.WORKLOAD,
    ]


def find(workload: str, tool: str) -> tuple[Workload, Tool]:
    for w in all_workloads():
        if w.key == workload:
            return w, w.tool(tool)
    raise KeyError(f"no workload {workload!r}")


def ratio_at_most(limit: float) -> Target:
    """Target: the row's ratio to its reference is at most ``limit``."""

    def check(_f: Figures, ratio: float | None) -> tuple[bool, str]:
        if ratio is None:
            return False, "no ratio (reference row failed)"
        return ratio <= limit, f"{ratio:.2f}x (target ≤ {limit:.2f}x)"

    return Target(f"≤ {limit:.2f}x", check)
