"""``--dry-run``: what the command line shows before running anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from paceline.testing.api_server import ApiConfig, ApiServer

PACELINE = str(Path(sys.executable).with_name("paceline"))


def dry_run(tmp_path: Path, *args: str, rows: int = 100) -> str:
    lines = (f'{{"id": "i{n}", "url": "http://127.0.0.1:9/items/{n}"}}\n' for n in range(rows))
    (tmp_path / "in.jsonl").write_text("".join(lines))
    done = subprocess.run(
        [PACELINE, "http", "in.jsonl", "--journal", "none", "--dry-run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def line(text: str, name: str) -> str:
    return next(row for row in text.splitlines() if row.strip().startswith(name))


def test_the_burst_and_the_least_time_the_rate_allows_are_shown(tmp_path):
    # Seen: --burst shown nowhere, and no time estimate (the library's dry_run has one).
    shown = dry_run(tmp_path, "--rate", "10/s", "--burst", "5")
    assert line(shown, "rate:").split(None, 1)[1] == "10/s, burst 5"
    # 5 at once, then 5 more 0.1 s apart, then the window (W' = 1.001 s) frees the first
    # five: 10 per 1.001 s, the 100th at 9 x 1.001 + 0.5 s (a burst keeps the rate: it was
    # 15.8 s, the burst paced at 6/s).
    assert line(shown, "time:").split(None, 1)[1] == (
        "the rate limits alone need at least 9.51s for 100 items"
    )


def test_without_a_burst_the_rate_paces_evenly(tmp_path):
    # Issue 11: --rate paces evenly by default (a leaky bucket refuses back-to-back starts).
    shown = dry_run(tmp_path, "--rate", "10/s")
    assert (
        line(shown, "rate:").split(None, 1)[1]
        == "10/s, burst 1 (evenly paced; --burst N allows bursts)"
    )
    assert "at least 9.91s for 100 items" in line(shown, "time:")


def test_without_a_rate_of_ours_the_time_is_the_servers(tmp_path):
    shown = dry_run(tmp_path)
    assert "time:" in shown
    assert "no rate limit of ours" in line(shown, "time:")


def test_with_a_tokens_rate_the_least_time_is_for_the_rows_estimated_costs(tmp_path):
    rows = (
        f'{{"id": "i{n}", "url": "http://127.0.0.1:9/v1", "cost": {{"tokens": 400}}}}\n'
        for n in range(5)
    )
    (tmp_path / "in.jsonl").write_text("".join(rows))
    done = subprocess.run(
        [PACELINE, "http", "in.jsonl", "--journal", "none", "--dry-run",
         "--rate", "tokens:1000/s"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Any window of 1 s (+1 ms margin) holds at most two grants of 400: the 1st and 2nd at
    # 0 and 0.4 s, the 3rd when the 1st leaves (1.001 s), the 4th at 1.401, the 5th at 2.002.
    assert line(done.stdout, "time:").split(None, 1)[1] == (
        "the rate limits alone need at least 2.00s for 5 items at their estimated costs"
    )


def test_the_default_answers_are_not_introduced_as_coming_after_rules_that_are_not_there(
    tmp_path,
):
    shown = dry_run(tmp_path, "--rate", "10/s")
    assert line(shown, "answers:").split(None, 1)[1].startswith("429, 503, 529")
    ruled = dry_run(tmp_path, "--rate", "10/s", "--throttle-on", "status=403")
    answers = [row.split(None, 1)[1] for row in ruled.splitlines() if "answers:" in row]
    assert answers[0] == "'status=403' -> throttled"
    assert answers[1].startswith("then the defaults: 429, 503, 529")


def test_nothing_left_to_run_has_no_least_time(tmp_path):
    # A real run journals all three; the dry run of the same batch then has none to run.
    with ApiServer(ApiConfig()) as server:
        rows = (f'{{"id": "i{n}", "url": "{server.url}/items/{n}"}}\n' for n in range(3))
        (tmp_path / "in.jsonl").write_text("".join(rows))
        run = subprocess.run(
            [PACELINE, "http", "in.jsonl", "--journal", "j.journal", "--no-report"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
    done = subprocess.run(
        [PACELINE, "http", "in.jsonl", "--journal", "j.journal", "--rate", "1/s", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert line(done.stdout, "time:").split(None, 1)[1] == "none: no item is left to run"
