"""Answers told apart (issue 14): a GitHub-style 403 secondary limit against a 429 limit.

usage: PYTHONPATH=src python benchmarks/answers.py [--runs 3] [--items 600] [--posts]

The test API (its own process) keeps a hidden quota and refuses beyond it either with 429 +
Retry-After or, GitHub's way, with 403 + Retry-After and "You have exceeded a secondary rate
limit". paceline.http fetches N items with its defaults (adaptive concurrency and rate); the
script reports, per run, whether every item succeeded and the *ratio of the quota used*: items
per second over the run, divided by the quota's rate. The two limits are run side by side, so
the 403's ratio can be read against the 429's (the same pacing machinery, fed by the verdict).

``--posts`` runs issue 14's case found by hand instead: ``paceline http`` (the CLI, its own
process, defaults) sends 300 POST rows to ``/objects`` of a test API with a 20/s quota (429
without ``Retry-After``), once with 10 % of the answers dropped after processing and once
without; it reports items per second over the whole run (the process's start included) as a
ratio of the quota, and the drops' ratio against the no-drop one.
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

QUOTA, WINDOW_S = 100, 1.0  # the hidden quota of issue 4's scenarios (docs/benchmarks.md)


STEADY_FROM_S = 5.0  # after slow start and the first refusals: the rate the batch settles at


def run_once(secondary: bool, items: int) -> tuple[bool, float, float, int, float]:
    config = ApiConfig(
        quota=QUOTA,
        window_s=WINDOW_S,
        retry_after=True,
        secondary_limit=secondary,
        base_latency_s=0.005,
    )
    with ApiServer.spawn(config) as server:
        urls = [f"{server.url}/items/{i}" for i in range(items)]
        started = time.monotonic()
        results = asyncio.run(fetch_all(urls))
        elapsed_s = time.monotonic() - started
        stats = server.stats(times=True)
    all_ok = all(r.is_success for r in results)
    rate = QUOTA / WINDOW_S
    # Whole batch: the first window's burst is free, the quota's rate bounds the rest.
    ratio = (items - QUOTA) / elapsed_s / rate
    # Steady: what the server accepted from STEADY_FROM_S to its last acceptance.
    times = stats["accepted_times_s"]
    later = [t for t in times if t >= STEADY_FROM_S]
    steady = len(later) / max(times[-1] - STEADY_FROM_S, 1e-9) / rate if later else 0.0
    refused = int(stats["throttled_429"])  # 429s, or 403s with secondary_limit
    return all_ok, ratio, steady, refused, refused / max(1, int(stats["requests"]))


POST_QUOTA = 20  # the quota issue 14's by-hand run used (serve-test --quota 20/1s)


def posts_once(drop_rate: float, rows: int) -> tuple[float, float, int]:
    """One CLI batch of POSTs: (items/s as a ratio of the quota, 429 share, exit code)."""
    config = ApiConfig(quota=POST_QUOTA, window_s=1.0, post_drop_rate=drop_rate)
    with ApiServer.spawn(config) as server, tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.jsonl"
        source.write_text(
            "".join(
                json.dumps({"url": f"{server.url}/objects", "method": "POST", "json": {"n": i}})
                + "\n"
                for i in range(rows)
            )
        )
        argv = [sys.executable, "-m", "paceline", "http", str(source), "--journal", "none"]
        started = time.monotonic()
        done = subprocess.run(
            [*argv, "-q", "-o", str(Path(tmp) / "out.jsonl")], capture_output=True, timeout=900
        )
        elapsed_s = time.monotonic() - started
        stats = server.stats()
    refused = int(stats["throttled_429"]) / max(1, int(stats["requests"]))
    return rows / elapsed_s / POST_QUOTA, refused, done.returncode


def posts(runs: int, rows: int = 300) -> None:
    print(f"{rows} POSTs to /objects, quota {POST_QUOTA}/s, {runs} runs each (median)")
    medians = {}
    for drop_rate in (0.1, 0.0):
        results = [posts_once(drop_rate, rows) for _ in range(runs)]
        medians[drop_rate] = statistics.median(r[0] for r in results)
        shown = " ".join(f"{r[0]:.3f}" for r in results)
        print(
            f"drops {drop_rate:.0%}: ratio of the quota {medians[drop_rate]:.3f} ({shown}) | "
            f"429 {statistics.median(r[1] for r in results):.1%} | "
            f"exit {' '.join(str(r[2]) for r in results)}"
        )
    print(f"drops / no drops: {medians[0.1] / medians[0.0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--posts", action="store_true", help="POSTs with dropped answers")
    args = parser.parse_args()
    if args.posts:
        posts(args.runs)
        return
    print(f"quota {QUOTA}/{WINDOW_S:g}s, {args.items} items, {args.runs} runs each")
    print("ratio of the quota used, median (runs): whole batch | from 5 s on")
    for name, secondary in (("429 + Retry-After", False), ("403 secondary + Retry-After", True)):
        runs = [run_once(secondary, args.items) for _ in range(args.runs)]
        ok = all(r[0] for r in runs)
        whole = " ".join(f"{r[1]:.3f}" for r in runs)
        steady = " ".join(f"{r[2]:.3f}" for r in runs)
        print(
            f"{name:<28} all ok: {ok!s:<5} whole {statistics.median(r[1] for r in runs):.3f} "
            f"({whole}) | steady {statistics.median(r[2] for r in runs):.3f} ({steady}) | "
            f"refused {statistics.median(r[3] for r in runs):g} "
            f"({statistics.median(r[4] for r in runs):.2%} of requests)"
        )


if __name__ == "__main__":
    main()
