"""Hidden quotas the controller was not tuned on (issue 11), through the CLI as a user runs it.

usage: PYTHONPATH=src python benchmarks/hidden_quotas.py [--runs 3] [--seconds 25] [--only NAME]
       [--paceline PATH/TO/src]   (to compare another tree in the same run: --paceline ../old/src)

Each scenario starts the test API in its own process with a quota paceline is not told about,
writes ``quota x seconds`` GET rows, and runs ``paceline http rows.jsonl`` with its defaults
(adaptive concurrency and rate, no ``--rate``). It reads what the *server* saw:

- ``share``: accepted requests after the first burst, per second from the first to the last
  acceptance, over the quota's rate. The first burst is free (any client can take a whole
  window at once, or a bucket's capacity), so it is left out of the count: a window's quota, a
  token bucket's burst (until 2026-12-04 the bucket's quota too, 80 of 80/s with burst 10: 70
  requests a client could never have had at once counted against it, ~3.5 points of a 25 s
  batch; ``share_q`` shows that count beside it).
- ``steady``: the same from 5 s on (after slow start and the first refusals).
- ``refused``: the server's 429 answers over all requests it received.

Targets (issue 11): share >= 0.95 of the quota, refused <= 2 %, every item ok (exit 0).
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
from dataclasses import dataclass
from pathlib import Path

from paceline.testing.api_server import ApiConfig, ApiServer

STEADY_FROM_S = 5.0  # after slow start and the first refusals: the rate the batch settles at


@dataclass(frozen=True)
class Scenario:
    name: str
    config: ApiConfig

    @property
    def rate_per_s(self) -> float:
        assert self.config.quota is not None
        return self.config.quota / self.config.window_s

    @property
    def free(self) -> int:
        """The first burst any client can take at once: a window's quota, a bucket's burst."""
        return self.config.bucket_capacity or self.config.quota or 0


SCENARIOS = (
    # Rates and windows the controller's tests do not use; Retry-After in whole seconds (the
    # test API rounds up, as most servers do) or absent.
    Scenario("20/s window, Retry-After", ApiConfig(quota=20, window_s=1.0, retry_after=True)),
    Scenario("37/s window, no Retry-After", ApiConfig(quota=37, window_s=1.0)),
    Scenario("250/s window, Retry-After", ApiConfig(quota=250, window_s=1.0, retry_after=True)),
    Scenario("300 per 5 s, Retry-After", ApiConfig(quota=300, window_s=5.0, retry_after=True)),
    Scenario(
        "token bucket 80/s burst 10",
        ApiConfig(quota=80, window_s=1.0, limiter="bucket", burst=10, retry_after=True),
    ),
)


def run_once(
    scenario: Scenario, seconds: float, src: str
) -> tuple[int, float, float, float, float]:
    """(exit code, share, steady share, refused share, share with the quota left out) of one
    batch."""
    items = int(scenario.rate_per_s * seconds)
    with tempfile.TemporaryDirectory() as tmp, ApiServer.spawn(scenario.config) as server:
        rows = Path(tmp, "rows.jsonl")
        rows.write_text(
            "".join(json.dumps({"url": f"{server.url}/items/{i}"}) + "\n" for i in range(items))
        )
        env = dict(os.environ, PYTHONPATH=src, NO_COLOR="1")
        done = subprocess.run(
            [sys.executable, "-m", "paceline", "http", str(rows), "--out", str(Path(tmp, "o"))],
            env=env,
            cwd=tmp,  # the default journal goes under ./.paceline: a fresh one per run
            capture_output=True,
            timeout=seconds * 6 + 60,
            check=False,
        )
        stats = server.stats(times=True)
    times = stats["accepted_times_s"]
    span_s = max(times[-1] - times[0], 1e-9)
    later = times[scenario.free :]
    share = len(later) / span_s / scenario.rate_per_s if later else 0.0
    later_q = times[scenario.config.quota or 0 :]
    share_q = len(later_q) / span_s / scenario.rate_per_s if later_q else 0.0
    steady_times = [t for t in times if t >= times[0] + STEADY_FROM_S]
    steady = (
        len(steady_times) / max(times[-1] - times[0] - STEADY_FROM_S, 1e-9) / scenario.rate_per_s
        if steady_times
        else 0.0
    )
    refused = stats["throttled_429"] / max(stats["requests"], 1)
    return done.returncode, share, steady, refused, share_q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--only", help="run the scenarios whose name contains this")
    parser.add_argument(
        "--paceline",
        action="append",
        default=[],
        help="a src/ directory to run (repeat to compare trees side by side; default: ./src)",
    )
    args = parser.parse_args()
    trees = args.paceline or [str(Path(__file__).resolve().parent.parent / "src")]
    print(time.strftime("hidden quotas — %Y-%m-%d %H:%M"), f"load {os.getloadavg()[0]:.1f}")
    print(f"{args.seconds:g} s batches, {args.runs} runs each, medians (runs)")
    for scenario in SCENARIOS:
        if args.only and args.only not in scenario.name:
            continue
        # old and new interleaved run by run: the machine's load changes under a long run
        by_tree: dict[str, list[tuple[int, float, float, float, float]]] = {
            src: [] for src in trees
        }
        for _ in range(args.runs):
            for src in trees:
                by_tree[src].append(run_once(scenario, args.seconds, src))
        for src in trees:
            runs = by_tree[src]
            codes = sorted({r[0] for r in runs})
            share = statistics.median(r[1] for r in runs)
            steady = statistics.median(r[2] for r in runs)
            refused = statistics.median(r[3] for r in runs)
            label = f" [{src}]" if len(trees) > 1 else ""
            share_q = statistics.median(r[4] for r in runs)
            old_count = f" share_q {share_q:.3f}" if scenario.free != scenario.config.quota else ""
            print(
                f"{scenario.name:<30}{label} exit {codes} share {share:.3f} "
                f"({' '.join(f'{r[1]:.3f}' for r in runs)}){old_count} steady {steady:.3f} "
                f"refused {refused:.1%} ({' '.join(f'{r[3]:.1%}' for r in runs)}) "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
