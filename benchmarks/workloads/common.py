"""Helpers every workload shares: sizes, timing, checking answers, memory, windows."""

from __future__ import annotations

import gc
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

Figures = dict[str, Any]
"""What one measurement reports: named numbers (and a few notes), JSON-serialisable."""


class WrongAnswer(Exception):
    """A tool returned a missing, extra or out-of-order result: the row is an error."""


@dataclass(frozen=True)
class Sizes:
    """Input sizes of every workload; ``quick`` shrinks them for a smoke test."""

    quick: bool = False

    @property
    def w1_items(self) -> int:
        return 5_000 if self.quick else 100_000

    @property
    def w2_items(self) -> int:
        return 2_000 if self.quick else 20_000

    @property
    def w3_items(self) -> int:
        return 500 if self.quick else 2_000

    @property
    def w4_items(self) -> int:
        # whole windows of 200: with B = 200 the steady rate is (n - 200) / (k - 1) s
        return 400 if self.quick else 800

    @property
    def w5_items(self) -> int:
        return 20_000 if self.quick else 1_000_000


W1_CONCURRENCY = 100
W2_THREADS = 8
W3_CONCURRENCY = 50
W3_SLEEP_S = 0.01
W4_LIMIT = 200
W4_WINDOW_S = 1.0
W5_CONCURRENCY = 100
NEVER_BINDS = 10**9
"""W6: a limit so high that it never makes anyone wait."""


async def noop(x: T) -> T:
    """The async no-op of W1/W5/W6: return the input."""
    return x


def identity(x: T) -> T:
    """The sync no-op of W2."""
    return x


def settle() -> None:
    """Collect garbage left by warm-up so it is not charged to the measurement."""
    gc.collect()


async def timed(run: Callable[..., Awaitable[T]], *args: Any) -> tuple[float, T]:
    """Seconds taken by ``await run(*args)`` (perf_counter), and its result."""
    settle()
    start = time.perf_counter()
    result = await run(*args)
    return time.perf_counter() - start, result


INNER_BUDGET_S = 1.0
INNER_MAX_RUNS = 7


def more_runs(times: Sequence[float]) -> bool:
    """Whether to time another batch in this process: until about a second of batches has
    been timed, at most 7 and at least 1. A fast tool's single batch lasts ~0.1 s, where a
    noisy neighbour's time slice shows as +50 %; the median of several is steadier, and a
    median (unlike a minimum) is not biased by how many batches a tool got."""
    return not times or (len(times) < INNER_MAX_RUNS and sum(times) < INNER_BUDGET_S)


def per_item(times: Sequence[float], n: int) -> Figures:
    """The figures of an overhead workload: µs per item of the median batch."""
    mid = statistics.median(times)
    return {"us_per_item": mid / n * 1e6, "seconds": mid, "items": n, "batches": len(times)}


def check_in_order(results: Sequence[object], expected: Sequence[object]) -> None:
    """Raise :class:`WrongAnswer` unless ``results`` equals ``expected`` element by element."""
    if len(results) != len(expected):
        raise WrongAnswer(f"{len(results)} results for {len(expected)} inputs")
    for i, (got, want) in enumerate(zip(results, expected, strict=True)):
        if got != want:
            raise WrongAnswer(f"result {i} is {got!r}, expected {want!r} (missing or out of order)")


# -- memory --------------------------------------------------------------------------------

_KIB = 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark to the current RSS (``clear_refs`` 5) and return the
    current RSS in KiB: the baseline the peak is compared against."""
    settle()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:  # pragma: no cover - older kernels
        raise RuntimeError(f"cannot reset the peak RSS mark: {exc}") from exc
    return _status_kib("VmRSS")


def peak_rss_growth_mib(baseline_kib: int) -> float:
    """Peak RSS (VmHWM) since :func:`reset_peak_rss`, minus its baseline, in MiB."""
    return (_status_kib("VmHWM") - baseline_kib) / _KIB


# -- windows -------------------------------------------------------------------------------


def max_in_window(starts_ns: Sequence[int], window_ns: int) -> int:
    """The largest number of starts inside any half-open window ``[t, t + window)``.

    Exact: the busiest window can always be slid to begin at a start, so two pointers over
    the sorted starts see every candidate.
    """
    ordered = sorted(starts_ns)
    best = 0
    j = 0
    for i, t in enumerate(ordered):
        if j < i:
            j = i
        end = t + window_ns
        while j < len(ordered) and ordered[j] < end:
            j += 1
        best = max(best, j - i)
    return best


def tightest_span(starts_ns: Sequence[int], count: int) -> int | None:
    """The shortest time (ns) that holds ``count`` starts (``None``: fewer starts than that).
    With ``count = N + 1`` a strict limit of N per W keeps this at W or more."""
    ordered = sorted(starts_ns)
    if len(ordered) < count:
        return None
    return min(ordered[i + count - 1] - ordered[i] for i in range(len(ordered) - count + 1))
