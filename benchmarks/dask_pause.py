"""A server's ``Retry-After`` on a Dask cluster vs in one process (issue 16): the 429s taken.

The test API keeps a hidden quota (``--quota``, 300) per 1 s (sliding window, ``Retry-After``
in whole seconds); ``paceline http`` sends 2,000 requests at ``--rate`` (400/s) ``-j 16``, once
locally and once with ``--dask local:2``, alternating, ``--runs`` times each. Each run reports
the 429s the server answered, every arrival's most in any 1 s window (accepted or not: what the
client sent, against its own rate), and the wall time; the medians close the output.

    PYTHONPATH=src .venv/bin/python benchmarks/dask_pause.py [--runs 3] [--items 2000]
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from paceline.testing._api.state import ServerState
from paceline.testing.api_server import ApiConfig, ApiServer

PACELINE = str(Path(sys.executable).with_name("paceline"))
NS_PER_S = 1_000_000_000

ARRIVALS_NS: list[int] = []
_admit = ServerState.admit


def _recording_admit(self: ServerState, now_ns: int) -> bool:
    ARRIVALS_NS.append(now_ns)  # every request, 429 or not
    return _admit(self, now_ns)


ServerState.admit = _recording_admit  # type: ignore[method-assign]


def most_in_any_window(times_ns: list[int], window_ns: int = NS_PER_S) -> int:
    times = sorted(times_ns)
    return max(
        (bisect.bisect_left(times, t + window_ns, lo=i) - i for i, t in enumerate(times)),
        default=0,
    )


def one_run(dask: bool, items: int, quota: int, rate: int, workdir: Path) -> dict[str, Any]:
    rows = workdir / "in.csv"
    rows.write_text("path\n" + "".join(f"items/{n}\n" for n in range(items)))
    config = ApiConfig(quota=quota, window_s=1.0, retry_after=True, base_latency_s=0.001)
    ARRIVALS_NS.clear()
    with ApiServer(config) as server:
        args = [PACELINE, "http", "in.csv", "--url", server.url + "/{path}", "--rate", f"{rate}/s"]
        args += ["-j", "16", "--journal", "none", "--out", "o.jsonl"]
        if dask:
            args += ["--dask", "local:2"]
        started = time.monotonic()
        done = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=300)
        wall_s = time.monotonic() - started
        stats = server.stats()
    if done.returncode != 0:
        raise SystemExit(f"paceline exited {done.returncode}: {done.stderr[-2000:]}")
    return {
        "throttled_429": stats["throttled_429"],
        "accepted": stats["accepted"],
        "most_arrivals_in_1s": most_in_any_window(ARRIVALS_NS),
        "most_accepted_in_1s": stats["max_accepted_in_any_window"],
        "wall_s": round(wall_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=2000)
    # The 300/400; a loaded 2-core machine may not send 400/s (then 150/200).
    parser.add_argument("--quota", type=int, default=300)
    parser.add_argument("--rate", type=int, default=400)
    options = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {"local": [], "dask": []}
    for run in range(options.runs):
        for name in ("local", "dask"):
            with tempfile.TemporaryDirectory() as tmp:
                result = one_run(
                    name == "dask", options.items, options.quota, options.rate, Path(tmp)
                )
            results[name].append(result)
            print(f"run {run + 1} {name:5} {result}  load {os.getloadavg()[0]:.1f}", flush=True)
    for name, runs in results.items():
        medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"median {name:5} {medians}")


if __name__ == "__main__":
    main()
