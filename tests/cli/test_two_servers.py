"""``paceline http`` over one input mixing two servers: a paused one holds up only itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paceline.testing.api_server import ApiConfig, ApiServer
from tests.cli._command import paceline

# serial: B's share of its quota in real time, alone (./dev test)
pytestmark = [pytest.mark.timeout(120), pytest.mark.serial]


def test_a_paused_server_does_not_hold_up_another_and_order_is_kept(tmp_path: Path) -> None:
    """A (20 per 5 s, 429 with Retry-After) and B (50/s) interleaved, ``-k``: B's requests
    reach B at >= 0.6 of its quota (measured by B itself: 0.77-0.85; one pause for the whole
    batch gave 0.30), and the results come out in input order, each ok or with A's 429."""
    b_items, a_items = 250, 60
    a_config = ApiConfig(quota=20, window_s=5.0, retry_after=True, base_latency_s=0.005)
    b_config = ApiConfig(quota=50, window_s=1.0, retry_after=True, base_latency_s=0.005)
    with ApiServer.spawn(a_config) as a, ApiServer.spawn(b_config) as b:
        ids: list[str] = []
        with (tmp_path / "in.jsonl").open("w") as handle:
            for n in range(b_items):
                for server, name in ((a, "a"), (b, "b")):
                    if name == "a" and n >= a_items:
                        continue
                    ids.append(f"{name}{n}")
                    row = {"id": ids[-1], "url": f"{server.url}/items/{name}{n}"}
                    handle.write(json.dumps(row) + "\n")
        done = paceline(
            *("http", "in.jsonl", "-k", "--out", "out.jsonl", "-q", "--no-report"),
            *("--journal", "none"),
            cwd=tmp_path,
        )
        b_times = b.stats(times=True)["accepted_times_s"]
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ids
    assert all(line["ok"] for line in lines if line["id"].startswith("b"))
    assert all(line["ok"] or line["status"] == 429 for line in lines)
    assert done.returncode in (0, 1), done.stderr  # 1: some of A's requests ran out of retries
    assert len(b_times) == b_items
    b_fraction = b_items / (b_times[-1] - b_times[0] + 1 / 50) / 50
    assert b_fraction >= 0.6, f"B ran at {b_fraction:.2f} of its quota"
