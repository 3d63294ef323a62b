"""Where the time goes against nginx ``limit_req``: paceline's sends next to nginx's log.

usage: python benchmarks/nginx_trace.py [--rate-mode] [--requests N] [--nginx-rate R]
       [--out trace.json]

Runs ``paceline http`` in this process (the CLI's own code path) against Debian's nginx at
``R r/s`` without burst, with hooks that record when each request left (``httpx`` send, wall
clock), how late each rate-gate wake-up was, and the controller's events. Prints a summary:
the fraction of the rate nginx accepted, the 429 share, the distribution of gaps between
consecutive accepted requests as nginx logged them (whole ms) and as paceline sent them, the
timer lateness, where refused requests sat (gap to the last accepted one), and the events.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from paceline.cli import main as cli_main
from paceline.policy.adaptive import AdaptiveController
from paceline.testing.nginx import NginxLimits, NginxServer

SENDS: list[tuple[float, str]] = []  # (wall time s, url) per request sent
WAKES: list[float] = []  # how late each start that waited for the pacer went, ms
CONTROLLERS: list[AdaptiveController] = []


def _hook() -> None:
    send = httpx.AsyncClient.send

    async def traced_send(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> Any:
        SENDS.append((time.time(), str(request.url.path)))
        return await send(self, request, **kw)

    httpx.AsyncClient.send = traced_send  # type: ignore[method-assign]

    started = AdaptiveController.started

    def traced_started(
        self: AdaptiveController, now_ns: int, in_flight: int, waited_for_rate: bool
    ) -> Any:
        if not CONTROLLERS or CONTROLLERS[-1] is not self:
            CONTROLLERS.append(self)
        tat = self._tat_ns
        if waited_for_rate and tat is not None:
            WAKES.append((now_ns - tat) / 1e6)
        return started(self, now_ns, in_flight, waited_for_rate)

    AdaptiveController.started = traced_started  # type: ignore[method-assign]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--nginx-rate", type=int, default=50)
    parser.add_argument("--rate-mode", action="store_true", help="pass --rate R/s")
    parser.add_argument("--out", help="write the raw trace here (JSON)")
    args = parser.parse_args()
    _hook()
    rate = args.nginx_rate
    with tempfile.TemporaryDirectory() as tmp, NginxServer(NginxLimits(rate_per_s=rate)) as server:
        source = Path(tmp) / "in.jsonl"
        source.write_text(
            "".join(
                json.dumps({"url": f"{server.url}/items/{i}"}) + "\n" for i in range(args.requests)
            )
        )
        mode = ["--rate", f"{rate}/s"] if args.rate_mode else []
        out = Path(tmp) / "out.jsonl"
        argv = ["http", str(source), "--journal", "none", "-q", "-o", str(out), *mode]
        code = cli_main(argv)
        time.sleep(0.2)
        log = server.log()
        failed = sum(1 for line in out.read_text().splitlines() if not json.loads(line)["ok"])
    ok = [t for t, status, _ in log if status == 200]
    refused = [t for t, status, _ in log if status == 429]
    span = max(ok) - min(ok)
    print(
        f"rc {code}, {failed} failed; fraction {(len(ok) - 1) / span / rate:.3f}, "
        f"429 {len(refused) / len(log):.2%} ({len(refused)} of {len(log)}), span {span:.1f}s"
    )
    interval_ms = 1000 / rate
    gaps_ms = [round((b - a) * 1000) for a, b in itertools.pairwise(ok)]
    lost = sum(g - interval_ms for g in gaps_ms)
    print(f"nginx accepted gaps: lost {lost / 1000:.1f}s over {span:.1f}s")
    for lo, hi in ((0, 20), (20, 21), (21, 22), (22, 25), (25, 40), (40, 1e9)):
        sel = [g for g in gaps_ms if lo <= g < hi]
        print(
            f"  [{lo},{hi}) ms: {len(sel):5d}  lost {sum(g - interval_ms for g in sel) / 1000:.2f}s"
        )
    # refusals: how far after the last accepted one they came (nginx ms)
    last_ok = None
    early = []
    for t, status, _ in log:
        if status == 200:
            last_ok = t
        elif last_ok is not None:
            early.append(round((t - last_ok) * 1000))
    print(f"refused at ms after last accepted: {sorted(early)[:60]}")
    send_times = [t for t, _ in SENDS]
    send_gaps = [(b - a) * 1000 for a, b in itertools.pairwise(send_times)]
    shown = " ".join(f"p{q:g} {_pct(send_gaps, q / 100):.2f}" for q in (1, 10, 50, 90, 99))
    print(f"client send gaps ms: {shown} mean {statistics.mean(send_gaps):.2f}")
    shown = " ".join(f"p{q:g} {_pct(WAKES, q / 100):.2f}" for q in (10, 50, 90, 99))
    mean = statistics.mean(WAKES) if WAKES else 0.0
    print(f"paced start lateness ms: n {len(WAKES)} {shown} mean {mean:.2f}")
    # arrival delay: nginx log time minus client send time, per request in order
    if len(log) == len(SENDS):
        delays = [(a - s) * 1000 for (a, _, _), (s, _) in zip(log, SENDS, strict=True)]
        shown = " ".join(f"p{q:g} {_pct(delays, q / 100):.2f}" for q in (1, 50, 99))
        print(f"nginx time - send time ms: {shown} max {max(delays):.2f}")
    for c in CONTROLLERS:
        t0 = c._first_start_ns or 0
        shown = [f"{(t - t0) / 1e9:.2f}s {what} {value:.2f}" for t, what, value in c.events]
        print(f"events ({len(shown)}): " + "; ".join(shown[:80]))
        print(f"final rate {c.rate_per_s}, strict {c._strict_pacing}, cuts {c.cuts}")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"sends": SENDS, "log": log, "wakes": WAKES}, separators=(",", ":"))
        )


if __name__ == "__main__":
    main()
