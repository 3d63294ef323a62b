"""paceline's CLI against real rate limiters on loopback (issue 11), judged from the server's own
records: Debian's nginx (``limit_req`` without burst, with ``burst=N nodelay``, with ``burst=N``
delaying, ``limit_conn``) from its access log, and the test API's token bucket from its counts.

usage: python benchmarks/nginx.py [--only KIND ...] [--requests N]

KIND is one of: req, nodelay, delay, conn, bucket. Each kind runs in default mode and with the
server's rate given as ``--rate``; ``conn`` also with ``-j 8``, the reference.

Prints a table: server x mode x fraction of the rate (accepted requests per second over the
span the server saw them, divided by its rate; ``conn``: by 8 / 50 ms, the most it can serve)
x % rejected (429, or 503 for ``conn``) x elapsed against the ideal (requests / rate).
Targets: 50r/s without burst: default >= 0.85, --rate 50/s >= 0.95, both <= 2 % 429;
burst=20 nodelay and 10r/s burst=5: >= 0.9 in default mode; limit_conn 8: >= 0.95 of what
``-j 8`` achieves, <= 1 % 503.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from paceline.testing._api.config import ApiConfig
from paceline.testing._api.server import ApiServer
from paceline.testing.nginx import NginxLimits, NginxServer

# limit_conn's upstream holds each request this long, so 8 at once serve at most 160 per second.
CONN_LATENCY_S = 0.05
CONNECTIONS = 8


@dataclass(frozen=True)
class Outcome:
    """What the server recorded: accepted arrival (or log) times, and rejections."""

    accepted_s: list[float]
    rejected: int
    total: int


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    rate_per_s: float  # the server's rate: what --rate gives and the fraction divides by
    requests: int
    serve: Callable[[Callable[[str], None]], Outcome]  # runs the batch against its server
    extra_modes: tuple[tuple[str, ...], ...] = ()


def nginx_case(limits: NginxLimits, rejected_status: int) -> Callable[..., Outcome]:
    def serve(batch: Callable[[str], None]) -> Outcome:
        with NginxServer(limits) as server:
            batch(server.url)
            time.sleep(0.2)  # the last lines reach the log
            log = server.log()
        return Outcome(
            [t for t, status, _ in log if status == 200],
            sum(1 for _, status, _ in log if status == rejected_status),
            len(log),
        )

    return serve


def bucket_case(config: ApiConfig) -> Callable[..., Outcome]:
    def serve(batch: Callable[[str], None]) -> Outcome:
        with ApiServer.spawn(config) as server:
            batch(server.url)
            stats = server.stats(times=True)
        return Outcome(stats["accepted_times_s"], stats["throttled_429"], stats["requests"])

    return serve


CASES = [
    Case("req", "limit_req 50r/s, no burst", 50, 1500, nginx_case(NginxLimits(rate_per_s=50), 429)),
    Case(
        "nodelay",
        "limit_req 50r/s burst=20 nodelay",
        50,
        1500,
        nginx_case(NginxLimits(rate_per_s=50, burst=20, nodelay=True), 429),
    ),
    Case(
        "delay",
        "limit_req 10r/s burst=5 (delay)",
        10,
        300,
        nginx_case(NginxLimits(rate_per_s=10, burst=5), 429),
    ),
    Case(
        "conn",
        f"limit_conn {CONNECTIONS}, {CONN_LATENCY_S * 1000:.0f} ms upstream",
        CONNECTIONS / CONN_LATENCY_S,
        3000,
        nginx_case(NginxLimits(connections=CONNECTIONS, upstream_latency_s=CONN_LATENCY_S), 503),
        extra_modes=(("-j", str(CONNECTIONS)),),
    ),
    Case(
        "bucket",
        "test API token bucket 50/s burst=10",
        50,
        1500,
        bucket_case(ApiConfig(quota=50, limiter="bucket", burst=10)),
    ),
]


def run(case: Case, requests: int, mode: tuple[str, ...]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        timing: dict[str, float] = {}
        codes: list[int] = []

        def batch(url: str) -> None:
            source.write_text(
                "".join(json.dumps({"url": f"{url}/items/{i}"}) + "\n" for i in range(requests))
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
                    str(out),
                    *mode,
                ],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            timing["elapsed_s"] = time.monotonic() - started
            codes.append(done.returncode)

        outcome = case.serve(batch)
        failed = sum(1 for line in out.read_text().splitlines() if not json.loads(line)["ok"])
    ok = sorted(outcome.accepted_s)
    span = ok[-1] - ok[0] if len(ok) > 1 else 1.0
    fraction = (len(ok) - 1) / span / case.rate_per_s
    return (
        f"{fraction:5.2f} | {outcome.rejected / max(1, outcome.total):6.1%} | "
        f"{timing['elapsed_s'] / (requests / case.rate_per_s):5.2f}x | "
        f"rc {codes[0]}, {failed} failed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    kinds = [case.kind for case in CASES]
    parser.add_argument("--only", choices=kinds, action="append", help="run only this kind")
    parser.add_argument("--requests", type=int, help="requests per case (default: per case)")
    args = parser.parse_args()
    print("| server | mode | fraction of rate | rejected | time vs ideal | |")
    print("|---|---|---|---|---|---|")
    for case in CASES:
        if args.only and case.kind not in args.only:
            continue
        rate = f"{case.rate_per_s:g}/s"
        for mode in ((), ("--rate", rate), *case.extra_modes):
            shown = " ".join(mode) or "default"
            row = run(case, args.requests or case.requests, mode)
            print(f"| {case.name} | {shown} | {row} |", flush=True)


if __name__ == "__main__":
    main()
