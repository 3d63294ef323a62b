"""The CLI against real rate limiters on loopback (issue 11): Debian's nginx ``limit_req``
without burst, with ``burst=N nodelay``, with ``burst=N`` (delaying), ``limit_conn`` (503), and
the test API's token bucket; each in default mode and with the server's rate as ``--rate``.

Every item ok; the server's own record (nginx's access log, the test API's counts) shows the
batch ran at no less than half the server's rate and was not refused often. The bounds are loose
for a busy 2-core machine; the strict targets live in benchmarks/nginx.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paceline.testing._api.config import ApiConfig
from paceline.testing._api.server import ApiServer
from paceline.testing.nginx import NginxLimits, NginxServer, nginx_program

pytestmark = [
    pytest.mark.skipif(
        nginx_program() is None and "CI" not in os.environ,
        reason="nginx is not installed (with CI set, this fails instead)",
    ),
    pytest.mark.serial,  # rates and times in real time: alone (./dev test)
]

REQUESTS = 200
RATE = 50


def run_batch(
    tmp_path: Path, url: str, *options: str, requests: int = REQUESTS
) -> tuple[float, list[dict]]:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"url": f"{url}/items/{i}"}) + "\n" for i in range(requests))
    )
    out = tmp_path / "out.jsonl"
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
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    return elapsed, [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("options", [(), ("--rate", f"{RATE}/s")], ids=["default", "rate"])
def test_nginx_limit_req_without_burst_is_run_near_its_rate(tmp_path, options):
    # Was 10-12x the ideal time: 8 at once, 7 refused, and the controller took 1/s for the rate.
    with NginxServer(NginxLimits(rate_per_s=RATE)) as server:
        elapsed, results = run_batch(tmp_path, server.url, *options)
        time.sleep(0.2)
        log = server.log()
    assert len(results) == REQUESTS
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]
    statuses = [status for _, status, _ in log]
    assert statuses.count(200) == REQUESTS
    # the first burst (the initial concurrency, 8, goes out at once: 7 refused) and <= 5 %
    assert statuses.count(429) <= 8 + 0.05 * REQUESTS
    ideal_s = REQUESTS / RATE
    assert elapsed <= 2.5 * ideal_s + 2  # the process's start-up, on a busy machine


def accepted_per_s(times_s: list[float]) -> float:
    """Accepted requests per second over the span the server saw them."""
    times_s = sorted(times_s)
    return (len(times_s) - 1) / max(times_s[-1] - times_s[0], 1e-3)


def assert_all_ok(results: list[dict], requests: int) -> None:
    assert len(results) == requests
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]


# Below half the server's rate, paceline crawls: fail. A busy 2-core machine costs well under
# that (benchmarks/nginx.py measures 0.8-1.0 of the rate on a quiet one).
CRAWL = 0.5


def rejected_at_most(mode: str, requests: int) -> float:
    """Refusals a batch may meet without flooding: the first burst (8 at once, the starting
    concurrency) and 5 % with the rate given; 10 % without, for an adaptive client that must
    find the rate by being refused (3-6 % measured at these sizes on a quiet machine)."""
    return 8 + (0.05 if mode == "rate" else 0.10) * requests


@pytest.mark.parametrize(
    ("limits", "requests"),
    [
        # 21 at once, then 50/s.
        (NginxLimits(rate_per_s=RATE, burst=20, nodelay=True), 200),
        # nginx holds up to 5 beyond the rate and answers them late: a slow server, not a
        # refusal; 8 at once at the start are 1 + 5 held + 2 refused.
        (NginxLimits(rate_per_s=10, burst=5), 40),
    ],
    ids=["burst-nodelay", "burst-delay"],
)
@pytest.mark.parametrize("mode", ["default", "rate"])
def test_nginx_limit_req_with_burst_is_run_near_its_rate(tmp_path, limits, requests, mode):
    rate = limits.rate_per_s
    assert rate is not None
    options = ("--rate", f"{rate}/s") if mode == "rate" else ()
    with NginxServer(limits) as server:
        elapsed, results = run_batch(tmp_path, server.url, *options, requests=requests)
        time.sleep(0.2)
        log = server.log()
    assert_all_ok(results, requests)
    statuses = [status for _, status, _ in log]
    assert statuses.count(200) == requests
    assert statuses.count(429) <= rejected_at_most(mode, requests), statuses.count(429)
    assert accepted_per_s([t for t, status, _ in log if status == 200]) >= CRAWL * rate
    assert elapsed <= 2.5 * requests / rate + 2  # the process's start-up, on a busy machine


CONNECTIONS = 8
UPSTREAM_LATENCY_S = 0.05  # each request holds one of the 8 for 50 ms: at most 160/s


@pytest.mark.parametrize(
    "mode",
    [
        "default",
        # "rate" collapsed to ~18/s after a few early 503s (0.17-0.83 of 160/s in 3 runs) while
        # three early refusals latched the controller below the user's rate; since the floor
        # counts the last 100 answers it passed 16 runs of 16 (docs/benchmarks.md).
        "rate",
    ],
)
def test_nginx_limit_conn_is_run_near_its_capacity_with_few_503s(tmp_path, mode):
    capacity_per_s = CONNECTIONS / UPSTREAM_LATENCY_S
    requests = 400
    options = ("--rate", f"{capacity_per_s:g}/s") if mode == "rate" else ()
    limits = NginxLimits(connections=CONNECTIONS, upstream_latency_s=UPSTREAM_LATENCY_S)
    with NginxServer(limits) as server:
        elapsed, results = run_batch(tmp_path, server.url, *options, requests=requests)
        time.sleep(0.2)
        log = server.log()
        upstream = server.upstream_stats()
    assert_all_ok(results, requests)
    statuses = [status for _, status, _ in log]
    assert statuses.count(200) == requests
    assert upstream["max_in_flight"] <= CONNECTIONS  # nginx did limit
    # The concurrency is found by refusals: a few at the start and while it probes upward.
    assert statuses.count(503) <= rejected_at_most(mode, requests), statuses.count(503)
    # The proxy's own cost keeps even -j 8 below 160/s (0.85-0.9 of it, benchmarks/nginx.py).
    assert accepted_per_s([t for t, status, _ in log if status == 200]) >= 0.4 * capacity_per_s
    assert elapsed <= 2.5 * requests / capacity_per_s + 2


@pytest.mark.parametrize("mode", ["default", "rate"])
def test_test_api_token_bucket_is_run_near_its_rate(tmp_path, mode):
    rate, burst, requests = 50, 10, 200
    config = ApiConfig(quota=rate, limiter="bucket", burst=burst)
    options = ("--rate", f"{rate}/s") if mode == "rate" else ()
    with ApiServer.spawn(config) as server:
        elapsed, results = run_batch(tmp_path, server.url, *options, requests=requests)
        stats = server.stats(times=True)
    assert_all_ok(results, requests)
    assert stats["accepted"] == requests
    assert stats["items_served_more_than_once"] == 0
    assert stats["throttled_429"] <= rejected_at_most(mode, requests), stats["throttled_429"]
    assert accepted_per_s(stats["accepted_times_s"]) >= CRAWL * rate
    assert elapsed <= 2.5 * requests / rate + 2
