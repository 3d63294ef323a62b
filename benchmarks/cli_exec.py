"""``paceline exec`` against GNU parallel: the cost per job of running many tiny commands.

Three rows, each run in a fresh process, repetitions interleaved (rep 1 of every row, then
rep 2, ...) so drift on a shared machine hits every row alike; the median is reported:

1. ``parallel -j 8 -a ARGS true``             -- GNU parallel (``ARGS``: 1..N, one a line)
2. ``paceline exec -j 8 ... INPUT -- true``   -- the CLI (``INPUT``: N lines of JSONL)
3. ``paceline.stream(rows, op, max_concurrent=8)`` with ``op`` calling ``run_command`` --
   the runner the CLI drives, without the CLI (input parsing, progress, output)
4. ``run_command(["true"])`` in a bare asyncio pool of 8 worker coroutines -- the floor

Per-job overhead = wall time / N (start-up included, for every row alike); "CPU ms/job" is the
user+system time of the whole process tree (the ``true`` children included) per job, which
noise on a shared machine disturbs less than wall time. The target: paceline / parallel
<= 0.5 (per-job wall time).

    .venv/bin/python benchmarks/cli_exec.py [--n 2000] [--jobs 8] [--reps 3]

Prints a markdown table to stdout. Skips (exit 0, with a message) if ``parallel`` is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"

# The command lines measured; {jobs} and {input} are filled in. Adjust here.
PARALLEL_CMD = ["parallel", "--will-cite", "-j", "{jobs}", "-a", "{input}", "true"]
PACELINE_CMD = [
    str(REPO / ".venv" / "bin" / "paceline"),
    "exec",
    "-j",
    "{jobs}",
    "--journal",
    "none",
    "--quiet",
    "{input}",
    "--",
    "true",
]
# The same with what a user gets by default: a journal (started afresh each run) and the report.
PACELINE_JOURNAL_CMD = [
    *PACELINE_CMD[:4],
    "--journal",
    "{journal}",
    "--fresh",
    "--no-report",
    "--quiet",
    "{input}",
    "--",
    "true",
]
_SELF = [str(PYTHON), str(Path(__file__).resolve())]
STREAM_CMD = [*_SELF, "--mode", "stream", "--jobs", "{jobs}", "{input}"]
FLOOR_CMD = [*_SELF, "--mode", "floor", "--jobs", "{jobs}", "{input}"]

RUN_TIMEOUT_S = 300.0
TARGET_RATIO = 0.5


@dataclass
class Row:
    """One tool's measurements."""

    name: str
    argv: list[str]
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    error: str | None = None


def _fill(argv: list[str], **values: object) -> list[str]:
    return [word.format(**values) for word in argv]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(row: Row) -> None:
    """Run ``row`` once in a fresh process; record wall and CPU time, or the error."""
    cpu0 = _children_cpu()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            row.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        row.error = f"timed out after {RUN_TIMEOUT_S:g} s"
        return
    except OSError as exc:
        row.error = str(exc)
        return
    wall = time.perf_counter() - start
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines() or ["(no stderr)"]
        row.error = f"exit {done.returncode}: {lines[-1][:150]}"
        return
    row.walls.append(wall)
    row.cpus.append(_children_cpu() - cpu0)


def in_process(mode: str, input_path: str, jobs: int) -> None:
    """Modes ``floor`` and ``stream``: ``run_command(["true"])`` once per input row."""
    from paceline.runners.commands import run_command

    with open(input_path, encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]

    async def floor() -> None:
        todo = iter(rows)

        async def worker() -> None:
            for _ in todo:
                await run_command(["true"])

        await asyncio.gather(*(worker() for _ in range(jobs)))

    async def stream() -> None:
        import paceline

        async def operation(row: object) -> object:
            return await run_command(["true"])

        failed = 0
        async for result in paceline.stream(rows, operation, max_concurrent=jobs):
            failed += not result.success
        if failed:
            raise SystemExit(f"{failed} commands failed")

    asyncio.run(floor() if mode == "floor" else stream())


def render(rows: list[Row], n: int, jobs: int, reps: int) -> str:
    """The markdown table (and the verdict on the target)."""
    base = next((r for r in rows if r.name == "GNU parallel" and r.walls), None)
    base_ms = statistics.median(base.walls) / n * 1e3 if base else None
    lines = [
        f"`exec` overhead: {n} x `true`, -j {jobs}, median of {reps} fresh runs (interleaved)",
        "",
        "| tool | wall s | per-job ms | CPU ms/job | vs parallel |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if not row.walls:
            lines.append(f"| {row.name} | - | - | - | failed: {row.error} |")
            continue
        wall = statistics.median(row.walls)
        per_job = wall / n * 1e3
        cpu = statistics.median(row.cpus) / n * 1e3
        versus = f"{per_job / base_ms:.2f}x" if base_ms else "-"
        lines.append(f"| {row.name} | {wall:.2f} | {per_job:.3f} | {cpu:.3f} | {versus} |")
    cli = next((r for r in rows if r.name == "paceline exec" and r.walls), None)
    lines.append("")
    if cli and base_ms:
        ratio = statistics.median(cli.walls) / n * 1e3 / base_ms
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        lines.append(f"Target paceline/parallel <= {TARGET_RATIO}: {ratio:.2f} -> {verdict}.")
    else:
        lines.append("Target not evaluated: the `paceline exec` or the parallel row failed.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="commands per run (default 2000)")
    parser.add_argument("--jobs", "-j", type=int, default=8, help="in flight (default 8)")
    parser.add_argument("--reps", type=int, default=3, help="fresh runs per row (default 3)")
    parser.add_argument("--mode", choices=["floor", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("input", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:
        in_process(args.mode, args.input, args.jobs)
        return 0

    if shutil.which("parallel") is None:
        print("SKIP: GNU parallel is not on PATH (apt-get install parallel); nothing to compare.")
        return 0
    version = subprocess.run(
        ["parallel", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    with tempfile.TemporaryDirectory(prefix="paceline-cli-exec-") as tmp:
        plain = Path(tmp) / "args.txt"
        plain.write_text("".join(f"{i}\n" for i in range(1, args.n + 1)))
        jsonl = Path(tmp) / "input.jsonl"
        jsonl.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(1, args.n + 1)))
        rows = [
            Row("GNU parallel", _fill(PARALLEL_CMD, jobs=args.jobs, input=plain)),
            Row("paceline exec", _fill(PACELINE_CMD, jobs=args.jobs, input=jsonl)),
            Row(
                "paceline exec, journal on",
                _fill(PACELINE_JOURNAL_CMD, jobs=args.jobs, input=jsonl, journal=Path(tmp) / "j"),
            ),
            Row("paceline.stream + run_command", _fill(STREAM_CMD, jobs=args.jobs, input=jsonl)),
            Row("run_command (floor)", _fill(FLOOR_CMD, jobs=args.jobs, input=jsonl)),
        ]
        for rep in range(args.reps):
            for row in rows:
                if row.error is None:
                    run_once(row)
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    print(render(rows, args.n, args.jobs, args.reps))
    print()
    tool = version[0] if version else "GNU parallel"
    print(f"{tool}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
