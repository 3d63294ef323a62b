"""``paceline http`` (the command, a fresh process) against the library's own ``fetch_all``,
both against the unlimited test API in its own process, at the same concurrency.

Target (issue 5): the command reaches >= 0.9x the library's throughput. The command's time is
the whole process — start-up, reading the input, the journal (on, its default), progress —
so the comparison includes everything a user pays for.

    .venv/bin/python benchmarks/cli_http.py [--items 4000] [--concurrency 32] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paceline.http import fetch_all
from paceline.testing.api_server import ApiConfig, ApiServer

PACELINE = str(Path(sys.executable).with_name("paceline"))


def library(url: str, items: int, concurrency: int) -> float:
    """Seconds for fetch_all over ``items`` URLs (a fresh process's cost is not included)."""
    urls = [f"{url}/items/{n}" for n in range(items)]
    started = time.perf_counter()
    results = asyncio.run(fetch_all(urls, max_concurrent=concurrency))
    elapsed = time.perf_counter() - started
    assert all(r.is_success for r in results), "library run had failures"
    return elapsed


def command(url: str, items: int, concurrency: int, journal: bool, folder: Path) -> float:
    """Seconds for the whole ``paceline http`` process over the same requests."""
    source = folder / "in.jsonl"
    with source.open("w") as handle:
        for n in range(items):
            handle.write(json.dumps({"id": f"i{n}", "url": f"{url}/items/{n}"}) + "\n")
    target = folder / f"bench-{time.monotonic_ns()}.journal"
    argv = [PACELINE, "http", str(source), "-j", str(concurrency), "--no-report", "-q"]
    argv += ["--journal", str(target) if journal else "none"]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"library": [], "cli, journal": [], "cli, no journal": []}
    with (
        ApiServer.spawn(ApiConfig(base_latency_s=0.002)) as server,
        tempfile.TemporaryDirectory(prefix="paceline-bench-") as tmp,
    ):
        folder = Path(tmp)
        library(server.url, 200, args.concurrency)  # warm the server
        for _ in range(args.reps):  # interleaved, so drift hits every contender alike
            times["library"].append(library(server.url, args.items, args.concurrency))
            times["cli, journal"].append(
                command(server.url, args.items, args.concurrency, True, folder)
            )
            times["cli, no journal"].append(
                command(server.url, args.items, args.concurrency, False, folder)
            )
    base = statistics.median(times["library"])
    print(
        f"paceline http vs fetch_all: {args.items} GETs, concurrency {args.concurrency}, "
        f"median of {args.reps}"
    )
    print("| contender | seconds (median) | requests/s | throughput vs library |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {args.items / median:.0f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
