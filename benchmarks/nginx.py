"""paceline's CLI against Debian's nginx ``limit_req`` (issue 11), judged from nginx's own log.

usage: python benchmarks/nginx.py [--requests N]

Prints a table: server kind x mode x fraction of the rate (accepted requests per second over
the span nginx saw, divided by the rate) x % refused (429) x elapsed against the ideal.
Targets: 50r/s without burst: default >= 0.85, --rate 50/s >= 0.95, both <= 2 % 429;
burst=20 nodelay and 10r/s burst=5: >= 0.9 in default mode.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paceline.testing.nginx import NginxLimits, NginxServer

CASES = [
    ("limit_req 50r/s, no burst", NginxLimits(rate_per_s=50), 1500),
    ("limit_req 50r/s burst=20 nodelay", NginxLimits(rate_per_s=50, burst=20, nodelay=True), 1500),
    ("limit_req 10r/s burst=5", NginxLimits(rate_per_s=10, burst=5), 300),
]


def run(limits: NginxLimits, requests: int, mode: list[str]) -> str:
    rate = limits.rate_per_s or 1
    with tempfile.TemporaryDirectory() as tmp, NginxServer(limits) as server:
        source = Path(tmp) / "in.jsonl"
        source.write_text(
            "".join(json.dumps({"url": f"{server.url}/items/{i}"}) + "\n" for i in range(requests))
        )
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "paceline",
                "http",
                str(source),
                "--journal",
                "none",
                "-q",
                "-o",
                str(Path(tmp) / "out.jsonl"),
                *mode,
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        elapsed = time.monotonic() - started
        time.sleep(0.2)
        log = server.log()
        failed = sum(
            1
            for line in (Path(tmp) / "out.jsonl").read_text().splitlines()
            if not json.loads(line)["ok"]
        )
    ok = [t for t, status, _ in log if status == 200]
    refused = sum(1 for _, status, _ in log if status == 429)
    span = max(ok) - min(ok) if len(ok) > 1 else 1.0
    fraction = (len(ok) - 1) / span / rate
    return (
        f"{fraction:5.2f} | {refused / max(1, len(log)):6.1%} | "
        f"{elapsed / (requests / rate):5.2f}x | rc {done.returncode}, {failed} failed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, help="requests per case (default: per case)")
    args = parser.parse_args()
    print("| nginx | mode | fraction of rate | 429 | time vs ideal | |")
    print("|---|---|---|---|---|---|")
    for name, limits, requests in CASES:
        n = args.requests or requests
        for mode in ([], ["--rate", f"{limits.rate_per_s}/s"]):
            shown = " ".join(mode) or "default"
            print(f"| {name} | {shown} | {run(limits, n, mode)} |", flush=True)


if __name__ == "__main__":
    main()
