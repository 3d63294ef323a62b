"""Limits learned by one process, shared with every process on a ``--rate-store`` key (issue 15
item 3): old tree vs new tree, side by side, in the same run.

``k`` ``paceline http`` commands share one ``--rate-store`` key and a generous ``--rate``
(``--rate`` is required with a store); the test API is the referee, a strict sliding log of
``quota`` per ``window_s`` that answers 429 beyond it:

- ``headers``: it announces its quota (``RateLimit-Policy``, ``--headers ietf``): each process
  learns N per W from its first answer; not shared, k processes keep k x N;
- ``hidden``: it announces nothing: each process's adaptive controller finds the quota.

Per tree and scenario: 429s, the most accepted in any window (the quota is the ceiling), the
steady share of the quota (W / median(t[i+N] - t[i]) over the accepted arrivals) and the time
until the first window that is full (the quota reached) — and the wall time of the batch.

    .venv/bin/python benchmarks/learned_share.py [--old /work/main/src] [--runs 3] [--k 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NEW = str(HERE.parent / "src")


def _window_share(times: list[float], quota: int, window_s: float) -> float:
    gaps = [times[i + quota] - times[i] for i in range(len(times) - quota)]
    return window_s / statistics.median(gaps) if gaps else 0.0


def _first_full_s(times: list[float], quota: int, window_s: float) -> float | None:
    """When the first window holding ``quota`` accepted arrivals (at least 0.9 of it) ends."""
    need = max(1, int(quota * 0.9))
    for i in range(len(times) - need + 1):
        if times[i + need - 1] - times[i] < window_s:
            return times[i + need - 1] - times[0]
    return None


def run(
    tree: str, scenario: str, k: int, items: int, quota: int, window_s: float
) -> dict[str, Any]:
    from paceline.testing.api_server import ApiConfig, ApiServer
    from paceline.testing.redis import RedisServer

    headers = "ietf" if scenario == "headers" else "none"
    # --rate (required with a store): far above an announced quota; twice a hidden one (a
    # controller holds the user's rate while it can, so a --rate 10x over the quota measures
    # that rule, not the learning)
    user = 10 if scenario == "headers" else 2
    config = ApiConfig(quota=quota, window_s=window_s, base_latency_s=0.002, headers=headers)
    env = dict(os.environ, PYTHONPATH=tree)
    with RedisServer() as redis, ApiServer.spawn(config) as api, tempfile.TemporaryDirectory() as d:
        time.sleep(2.3)  # past the fence of a Redis that just started
        rows = Path(d, "in.jsonl")
        rows.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(items)))
        key = uuid.uuid4().hex[:8]
        t0 = time.monotonic()
        procs = [
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "paceline", "http", str(rows)),
                    *("--url", f"{api.url}/items/p{n}-{{id}}", "--rate", f"{quota * user}/s"),
                    *("--rate-store", redis.url, "--rate-key", key, "-q"),
                    *("--journal", str(Path(d, f"{n}.db"))),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(k)
        ]
        codes = [p.wait(timeout=600) for p in procs]
        wall = time.monotonic() - t0
        stats = api.stats(times=True)
    times = stats["accepted_times_s"]
    return {
        "codes": codes,
        "accepted": stats["accepted"],
        "429": stats["throttled_429"],
        "most": stats["max_accepted_in_any_window"],
        "share": _window_share(times, quota, window_s),
        "first_full_s": _first_full_s(times, quota, window_s),
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", default="/work/main/src")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--items", type=int, default=150, help="per process")
    parser.add_argument("--quota", type=int, default=50)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--scenarios", default="headers,hidden")
    parser.add_argument("--trees", default="old,new")
    args = parser.parse_args()
    sys.path.insert(0, NEW)
    for scenario in args.scenarios.split(","):
        for r in range(args.runs):
            trees = {"old": args.old, "new": NEW}
            for name in args.trees.split(","):
                tree = trees[name]
                row = run(tree, scenario, args.k, args.items, args.quota, args.window)
                print(json.dumps({"scenario": scenario, "run": r, "tree": name, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
