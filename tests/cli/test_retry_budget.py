"""Issue 11, item 3: retries and their budget are visible, and throttles do not spend it.

Against nginx ``limit_req`` at 50 r/s with 8 fixed workers, throttles used to eat the batch's
retry budget in two seconds and then fail item after item with a bare "HTTP 429" (221 of 300,
80 of 100).
Now a throttle spends no budget (the item backs off and tries again); an item the spent budget
does refuse fails naming it, and the progress line and the summary count those items."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paceline.cli.metrics import Metrics, Snapshot
from paceline.cli.progress import plain_final_line, plain_status_line
from paceline.testing.api_server import ApiConfig, ApiServer
from paceline.testing.nginx import NginxLimits, NginxServer, nginx_program

PACELINE = str(Path(sys.executable).with_name("paceline"))

pytestmark = pytest.mark.timeout(300)


def write_requests(path: Path, base: str, count: int) -> None:
    with path.open("w") as handle:
        for n in range(count):
            handle.write(json.dumps({"id": f"item-{n}", "url": f"{base}/items/{n}"}) + "\n")


def run_http(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PACELINE, "http", "in.jsonl", "--out", "out.jsonl", "--journal", "none", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def read_out(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


# 100 items: before throttles stopped spending the budget (f2a4870), 80 of them failed here in
# under 2 s; now they all succeed in ~9 s (300 items took ~35 s and proved no more).
NGINX_ITEMS = 100


@pytest.mark.skipif(
    nginx_program() is None and "CI" not in os.environ,
    reason="nginx is not installed (with CI set, this fails instead)",
)
@pytest.mark.serial  # nginx's limit_req in real time: alone (./dev test)
def test_nginx_throttles_at_fixed_concurrency_slow_the_batch_instead_of_failing_items(tmp_path):
    with NginxServer(NginxLimits(rate_per_s=50)) as server:
        write_requests(tmp_path / "in.jsonl", server.url, NGINX_ITEMS)
        done = run_http(tmp_path, "-j", "8")
        log = server.log()
    records = read_out(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(records) == NGINX_ITEMS
    assert all(r["ok"] for r in records)
    assert f"every item succeeded ({NGINX_ITEMS})" in done.stderr
    assert "retry budget" not in done.stderr
    assert sum(1 for _, status, _ in log if status == 200) == NGINX_ITEMS
    # the throttles were retried, not given up on: more attempts than items
    assert sum(int(str(r["attempts"])) for r in records) > NGINX_ITEMS


def test_items_the_spent_budget_refuses_fail_naming_it_and_the_summary_counts_them(tmp_path):
    # Every answer a 500 (retryable): 40 first attempts earn 10 + 20 % of 40 = 18 retries.
    with ApiServer(ApiConfig(error_rate=1.0)) as server:
        write_requests(tmp_path / "in.jsonl", server.url, 40)
        done = run_http(tmp_path, "-j", "4")
    records = read_out(tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    refused = [r for r in records if str(r["error"]).startswith("retry budget exhausted after")]
    assert refused, done.stderr[-2000:]
    for record in refused:
        assert f"after {record['attempts']} attempt" in str(record["error"])
        assert str(record["error"]).split("): ", 1)[1].startswith("HTTP 500")
        assert record["status"] == 500  # the last error's, still there
    assert f"retry budget spent: {len(refused)} failed for it" in done.stderr
    assert f"the retry budget ran out: {len(refused)} items failed with retries left" in (
        done.stderr
    )


def test_the_progress_and_final_lines_count_the_items_the_budget_failed():
    metrics = Metrics(total=3, clock=lambda: 1.0)
    metrics.settled(failed=True, budget_exhausted=True)
    metrics.settled(failed=True)
    metrics.settled(failed=False, budget_exhausted=True)  # only failures count
    snapshot = metrics.snapshot()
    assert (snapshot.failed, snapshot.budget_exhausted) == (2, 1)
    assert "failed 2 · retry budget spent: 1 failed for it" in plain_status_line(snapshot)
    final = plain_final_line(snapshot, outcome="failed")
    assert final.endswith("failed 2 · retry budget spent: 1 failed for it")
    quiet = dataclasses.replace(snapshot, budget_exhausted=0)
    assert "retry budget" not in plain_status_line(quiet)
    assert isinstance(snapshot, Snapshot)
