"""The run timeline in a journal, read for the report: one :class:`RunSummary` per CLI run
and the runs' snapshots as one series of :class:`TimelinePoint` (see ``Journal.add_sample``).

>>> runs, points = read_runs([
...     {"kind": "start", "run": 1, "t": 100.0, "command": "http", "concurrency": "8",
...      "rates": ["5/s"], "adaptive": False},
...     {"kind": "tick", "run": 1, "t": 101.0, "elapsed_s": 1.0, "settled": 5, "rate_per_s": 5.0},
...     {"kind": "start", "run": 2, "t": 900.0, "command": "http"},
...     {"kind": "tick", "run": 2, "t": 902.0, "elapsed_s": 2.0, "settled": 9, "rate_per_s": 4.5},
... ])
>>> [(run.run, run.offset_s, run.elapsed_s, run.settled, run.reason) for run in runs]
[(1, 0.0, 1.0, 5, None), (2, 1.0, 2.0, 9, None)]
>>> [(point.x_s, point.values["rate_per_s"]) for point in points]
[(1.0, 5.0), (3.0, 4.5)]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SERIES_FIELDS", "RunSummary", "TimelinePoint", "read_runs"]

# The Snapshot fields a chart draws.
SERIES_FIELDS = (
    "rate_per_s",
    "attempt_rate_per_s",
    "latency_p50_s",
    "latency_p90_s",
    "latency_p99_s",
    "concurrency_limit",
    "in_flight",
    "rate_limit_per_s",
)


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One CLI invocation on the journal, from its timeline samples. The counters are those of
    the run's last sample (its end, or its last tick if it was killed); ``reason`` is ``None``
    when the run recorded no end (killed, or still running)."""

    run: int
    command: str | None
    concurrency: str | None
    rates: list[str]
    adaptive: bool | None
    started_at: float | None  # epoch seconds
    ended_at: float | None  # the end sample's time; None without one
    last_seen_at: float | None  # the run's last sample
    offset_s: float  # where the run starts on the timeline (runs back to back)
    elapsed_s: float | None
    exit_code: int | None
    reason: str | None
    total: int | None
    settled: int | None
    restored: int | None
    succeeded: int | None
    failed: int | None
    attempts: int | None
    retries: int | None
    throttled: int | None
    errors: int | None = None  # failed attempts other than throttles


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """One sample on the timeline: ``x_s`` is seconds since the first run started, runs put
    back to back (the time between runs left out)."""

    x_s: float
    run: int
    values: dict[str, float | None]  # SERIES_FIELDS -> value (None: unknown / unlimited)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_runs(samples: list[dict[str, Any]]) -> tuple[list[RunSummary], list[TimelinePoint]]:
    """The runs in a journal's ``samples`` (in run order), and their snapshots as one
    timeline, runs back to back."""
    by_run: dict[int, list[dict[str, Any]]] = {}
    for sample in samples:
        run = _count(sample.get("run"))
        if run is not None and _number(sample.get("t")) is not None:
            by_run.setdefault(run, []).append(sample)
    runs: list[RunSummary] = []
    timeline: list[TimelinePoint] = []
    offset = 0.0
    for number in sorted(by_run):
        group = by_run[number]
        start = next((s for s in group if s.get("kind") == "start"), None)
        end = next((s for s in group if s.get("kind") == "end"), None)
        snaps = [(sample, snap) for sample in group if (snap := _snapshot_of(sample)) is not None]
        started = _number(start["t"]) if start else None
        if started is None and snaps:
            sample, snap = snaps[0]
            started = float(sample["t"]) - (_number(snap.get("elapsed_s")) or 0.0)
        points = []
        for sample, snap in snaps:
            at = _number(snap.get("elapsed_s"))
            if at is None:
                at = float(sample["t"]) - (started or float(sample["t"]))
            values = {name: _number(snap.get(name)) for name in SERIES_FIELDS}
            points.append(TimelinePoint(offset + max(0.0, at), number, values))
        points.sort(key=lambda point: point.x_s)
        timeline.extend(points)
        final = snaps[-1][1] if snaps else {}
        elapsed = _number(final.get("elapsed_s"))
        last_seen = float(group[-1]["t"])
        if elapsed is None and started is not None and snaps:
            elapsed = max(0.0, last_seen - started)
        runs.append(
            RunSummary(
                run=number,
                command=str(start["command"]) if start and start.get("command") else None,
                concurrency=None
                if not start or start.get("concurrency") is None
                else str(start["concurrency"]),
                rates=[str(rate) for rate in (start or {}).get("rates") or []],
                adaptive=bool(start["adaptive"]) if start and "adaptive" in start else None,
                started_at=started,
                ended_at=_number(end["t"]) if end else None,
                last_seen_at=last_seen,
                offset_s=offset,
                elapsed_s=elapsed,
                exit_code=_count(end.get("exit_code")) if end else None,
                reason=str(end["reason"]) if end and end.get("reason") else None,
                total=_count(final.get("total")),
                settled=_count(final.get("settled")),
                restored=_count(final.get("restored")),
                succeeded=_count(final.get("succeeded")),
                failed=_count(final.get("failed")),
                attempts=_count(final.get("attempts")),
                retries=_count(final.get("retries")),
                throttled=_count(final.get("throttled")),
                errors=_count(final.get("errors")),
            )
        )
        offset += max(elapsed or 0.0, points[-1].x_s - offset if points else 0.0)
    return runs, timeline


def _snapshot_of(sample: Mapping[str, Any]) -> Mapping[str, Any] | None:
    kind = sample.get("kind")
    if kind == "tick":
        return sample
    snapshot = sample.get("snapshot") if kind == "end" else None
    return snapshot if isinstance(snapshot, Mapping) else None
