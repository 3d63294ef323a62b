"""paceline's benchmark suite: every workload (W1-W7) for every tool, one table.

Run through ``benchmarks/run.sh`` (which builds ``benchmarks/.venv`` with the pinned peers),
or directly with that venv's interpreter::

    benchmarks/.venv/bin/python benchmarks/run.py [--reps 3] [--quick] [--only W1,W4:paceline]

Each repetition of each measurement runs in a fresh process; repetitions are interleaved
(rep 1 of every row, then rep 2, ...) so drift on a shared machine hits every row alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HERE, Row, compute_ratios, render, render_targets, run_once, to_json
from workloads import all_workloads

PINNED = {
    "aiometer": "1.0.0",
    "aiolimiter": "1.3.0",
    "pyrate-limiter": "4.5.1",
    "anyio": "4.16.0",
}


def _versions() -> dict[str, str]:
    found = {}
    for name in ["paceline", *PINNED]:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def _revision() -> str:
    """The paceline checkout measured: commit, and whether src/ has uncommitted changes."""
    repo = HERE.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {commit}" + (" + uncommitted changes in src/" if dirty else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _select(only: str | None) -> list[Row]:
    """Rows to measure: all, or those named (``W1``, ``W4:paceline``), plus what their ratios
    are computed against."""
    rows = [Row(w, t) for w in all_workloads() for t in w.tools]
    if not only:
        return rows
    wanted = {part.strip() for part in only.split(",") if part.strip()}

    def named(row: Row) -> bool:
        return row.workload.key in wanted or f"{row.workload.key}:{row.tool.key}" in wanted

    keep = {(r.workload.key, r.tool.key) for r in rows if named(r)}
    refs = {r.tool.ratio_to for r in rows if (r.workload.key, r.tool.key) in keep}
    keep |= {ref for ref in refs if ref is not None}
    return [r for r in rows if (r.workload.key, r.tool.key) in keep]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run paceline's benchmark suite.")
    parser.add_argument(
        "--reps",
        type=int,
        default=int(os.environ.get("BENCH_REPS", "3")),
        help="repetitions per measurement; the table shows medians (default 3, or $BENCH_REPS)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, for a smoke test (figures not comparable)",
    )
    parser.add_argument("--only", help="comma-separated workloads or WORKLOAD:tool, e.g. W1,W4")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds before one measurement is abandoned (an error row)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results" / "latest.json",
        help="where to write every repetition's raw figures",
    )
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")

    rows = _select(args.only)
    if not rows:
        parser.error(f"--only {args.only!r} names no workload or tool")
    versions = _versions()
    started = dt.datetime.now()
    header = [
        f"paceline benchmarks — {started:%Y-%m-%d %H:%M}, {args.reps} rep(s) per row in fresh "
        f"processes, {'QUICK sizes (smoke test)' if args.quick else 'full sizes'}",
        f"machine: {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f" ({_revision()})",
    ]
    off_pin = [f"{k} {versions[k]} (pinned {v})" for k, v in PINNED.items() if versions[k] != v]
    if off_pin:
        header.append("NOT THE PINNED VERSIONS: " + ", ".join(off_pin))
    print("\n".join(header), flush=True)

    for rep in range(1, args.reps + 1):
        for row in rows:
            w, t = row.workload.key, row.tool.key
            outcome = run_once(w, t, quick=args.quick, timeout_s=args.timeout)
            row.outcomes.append(outcome)
            shown = outcome.error or row.workload.describe(outcome.figures or {})
            print(
                f"  [rep {rep}/{args.reps}] {w} {t}: {shown} ({outcome.wall_s:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    compute_ratios({(r.workload.key, r.tool.key): r for r in rows})
    elapsed = (dt.datetime.now() - started).total_seconds()
    print()
    print(render(rows, versions))
    print()
    print(
        "Medians over the repetitions; max/1s, max/0.1s and read-ahead: the worst repetition.\n"
        "ratio: main figure / the baseline row's from this run (W6, W7: with / without the "
        "limiter or journal, paired in each process; the row shows the repetition with the "
        "median ratio).\n"
        "±: (max-min)/median of the main figure (W6, W7: of the ratio) over the repetitions."
    )
    targets = render_targets(rows)
    if targets:
        print("paceline targets (docs/benchmarks.md):")
        print(targets)
    print(f"total time {elapsed:.0f} s")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "header": header,
                "reps": args.reps,
                "quick": args.quick,
                "rows": to_json(rows),
            },
            indent=1,
        )
    )
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
