"""Run measurements in fresh processes, aggregate repetitions, and render the table."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workloads import Tool, Workload
from workloads.common import Figures

HERE = Path(__file__).resolve().parent
MEASURE = HERE / "measure.py"


@dataclass
class Outcome:
    """One repetition: figures, or the error that makes the row an error row."""

    figures: Figures | None = None
    error: str | None = None
    wall_s: float = 0.0


def run_once(workload: str, tool: str, *, quick: bool, timeout_s: float) -> Outcome:
    """Run ``measure.py WORKLOAD TOOL`` in a fresh interpreter and read its JSON line."""
    cmd = [sys.executable, str(MEASURE), workload, tool] + (["--quick"] if quick else [])
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=HERE)
    except subprocess.TimeoutExpired:
        return Outcome(error=f"timed out after {timeout_s:g} s", wall_s=timeout_s)
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Outcome(error=f"exit {proc.returncode}: {tail}", wall_s=wall)
    if not reply.get("ok"):
        return Outcome(error=str(reply.get("error")), wall_s=wall)
    return Outcome(figures=reply["figures"], wall_s=wall)


@dataclass
class Row:
    """One table row: a tool on a workload, aggregated over its repetitions."""

    workload: Workload
    tool: Tool
    outcomes: list[Outcome] = field(default_factory=list)
    ratio: float | None = None

    @property
    def error(self) -> str | None:
        errors = [o.error for o in self.outcomes if o.error is not None]
        if errors:
            return f"ERROR ({len(errors)}/{len(self.outcomes)} reps): {errors[0]}"
        if not self.outcomes:
            return "ERROR: not measured"
        return None

    @property
    def figures(self) -> Figures:
        """Median of each number over the repetitions (the worst case for ``workload.worst``
        and ``workload.lowest``). A paired row (``workload.ratio_figure``) shows the whole
        repetition whose ratio is the median, so its figures and its ratio agree."""
        reps = [o.figures for o in self.outcomes if o.figures is not None]
        paired = self.workload.ratio_figure
        if paired is not None:
            ranked = sorted(reps, key=lambda r: float(r[paired]))
            return ranked[(len(ranked) - 1) // 2]
        merged: Figures = {}
        for name, first in reps[0].items():
            values = [r[name] for r in reps]
            if all(v == first for v in values) or not isinstance(first, (int, float)):
                merged[name] = first
            elif name in self.workload.worst:
                merged[name] = max(values)
            elif name in self.workload.lowest:
                merged[name] = min(values)
            else:
                merged[name] = statistics.median(values)
        return merged

    @property
    def main(self) -> float | None:
        return None if self.error else float(self.figures[self.workload.main])

    @property
    def spread(self) -> float | None:
        """(max - min) / median over the repetitions of the main figure (of the ratio, for a
        paired row)."""
        if self.error or len(self.outcomes) < 2:
            return None
        name = self.workload.ratio_figure or self.workload.main
        values = [float(o.figures[name]) for o in self.outcomes if o.figures]
        mid = statistics.median(values)
        return (max(values) - min(values)) / mid if mid else None

    def verdict(self) -> tuple[bool, str] | None:
        target = self.tool.target
        if target is None:
            return None
        if self.error:
            return False, "not measured (error)"
        return target.check(self.figures, self.ratio)


def compute_ratios(rows: dict[tuple[str, str], Row]) -> None:
    """Divide each row's main figure by its reference row's, measured in the same run (or take
    the ratio the row measured itself, paired in one process)."""
    for row in rows.values():
        paired = row.workload.ratio_figure
        if paired is not None:
            row.ratio = None if row.error else float(row.figures[paired])
            continue
        ref_key = row.tool.ratio_to
        if ref_key is None or ref_key not in rows:
            continue
        mine, ref = row.main, rows[ref_key].main
        if mine is not None and ref:
            row.ratio = mine / ref


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render(rows: list[Row], versions: dict[str, str]) -> str:
    """The table: one line per row, errors in place of numbers."""
    head = ("key", "tool", "version", "result", "ratio", "±", "target", "met")
    widths = (3, 42, 8, 54, 6, 4, 30, 6)
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        version = versions.get(row.tool.package, "") if row.tool.package else "stdlib"
        if row.error:
            result, ratio, spread = row.error, "", ""
        else:
            result = row.workload.describe(row.figures)
            notes = row.figures.get("notes")
            if notes and notes != "lazy":
                result += f"; {notes}"
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "—"
            spread = f"{row.spread:.0%}" if row.spread is not None else ""
        target = row.tool.target.text if row.tool.target else ""
        verdict = row.verdict()
        met = "" if verdict is None else ("yes" if verdict[0] else "NO")
        cells = (row.workload.key, row.tool.label, version, result, ratio, spread, target, met)
        line = "  ".join(
            (_cut(c, w) if i != 3 else c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        lines.append(line.rstrip())
    return "\n".join(lines)


def render_targets(rows: list[Row]) -> str:
    """One line per paceline target: met or missed, and by how much."""
    lines = []
    for row in rows:
        verdict = row.verdict()
        if verdict is None:
            continue
        ok, detail = verdict
        status = "met" if ok else "MISSED"
        lines.append(f"  {row.workload.key} {row.tool.label}: {status} — {detail}")
    return "\n".join(lines)


def to_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {
            "workload": r.workload.key,
            "tool": r.tool.key,
            "label": r.tool.label,
            "error": r.error,
            "figures": None if r.error else r.figures,
            "ratio": r.ratio,
            "reps": [
                {"figures": o.figures, "error": o.error, "wall_s": o.wall_s} for o in r.outcomes
            ],
            "target": r.tool.target.text if r.tool.target else None,
            "met": (r.verdict() or (None,))[0],
        }
        for r in rows
    ]
