"""Issue 14 on the command line: a 403 secondary limit is a throttle, an account out of credit
stops the batch within seconds (exit 3, resumable), and the user's rules win."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from paceline.stores.view import JournalView
from paceline.testing.api_server import ApiConfig, ApiServer
from tests.cli._command import paceline

pytestmark = pytest.mark.timeout(120)


def write_requests(path: Path, base: str, count: int) -> None:
    with path.open("w") as handle:
        for n in range(count):
            handle.write(json.dumps({"id": f"item-{n}", "url": f"{base}/items/{n}"}) + "\n")


def test_a_secondary_limit_403_is_retried_until_every_item_succeeds(tmp_path: Path) -> None:
    config = ApiConfig(quota=20, window_s=0.5, secondary_limit=True, base_latency_s=0.001)
    with ApiServer(config) as server:
        write_requests(tmp_path / "in.jsonl", server.url, 80)
        done = paceline("http", "in.jsonl", "--journal", "none", "--no-report", cwd=tmp_path)
        stats = server.stats()
    assert done.returncode == 0, done.stderr
    assert stats["throttled_429"] > 0  # refused with 403s, and retried
    assert stats["accepted"] == 80


def test_out_of_credit_exits_3_within_seconds_and_a_resume_finishes(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(credit=50, base_latency_s=0.001)) as server:
        port = server.port
        write_requests(tmp_path / "in.jsonl", server.url, 300)
        started = time.monotonic()
        done = paceline(
            *("http", "in.jsonl", "-j", "8", "--journal", "j.journal", "--no-report"),
            cwd=tmp_path,
        )
        elapsed_s = time.monotonic() - started
        stats = server.stats()
    assert done.returncode == 3, done.stderr
    assert "You exceeded your current quota" in done.stderr
    assert "resume when the quota is back" in done.stderr
    assert "paceline resume" in done.stderr
    assert elapsed_s < 20  # seconds, not the minutes a retried 429 used to take
    assert stats["accepted"] == 50
    # After the first refusal: at most what was in flight (8) and a few more.
    assert stats["credit_refused"] <= 8 + 2
    with JournalView.open(tmp_path / "j.journal") as view:
        assert view.counts() == {"succeeded": 50, "failed": 0}  # the rest left for resume
    # The credit is back (a server on the same port without the limit): resume finishes.
    with ApiServer(ApiConfig(base_latency_s=0.001), port=port) as server:
        resumed = paceline("resume", "j.journal", "--no-report", cwd=tmp_path)
        stats = server.stats()
    assert resumed.returncode == 0, resumed.stderr
    assert stats["accepted"] == 250  # only what the first run had not done
    with JournalView.open(tmp_path / "j.journal") as view:
        assert view.counts() == {"succeeded": 300, "failed": 0}


def test_the_users_rule_wins_over_the_default(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(credit=5, base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", server.url, 20)
        done = paceline(
            *("http", "in.jsonl", "-j", "2", "--journal", "none", "--no-report"),
            *("--fail-on", "body~insufficient_quota"),
            cwd=tmp_path,
        )
        stats = server.stats()
    assert done.returncode == 1, done.stderr  # failed items, not a stopped batch
    assert stats["requests"] == 20  # each tried once: neither retried nor stopped
    assert "15 of 20 items failed" in done.stderr


def test_a_bad_rule_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"url": "http://127.0.0.1:9/"}\n')
    done = paceline("http", "in.jsonl", "--throttle-on", "status=4x3", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "paceline: error: --throttle-on rule 'status=4x3': status '4x3' is not a status "
        "such as 403, 4xx or 403|429\n"
    )


def test_a_function_raising_quota_exhausted_stops_call_with_exit_3(tmp_path: Path) -> None:
    (tmp_path / "credit.py").write_text(
        "import paceline\n"
        "left = {'n': 5}\n"
        "def spend(row):\n"
        "    if left['n'] == 0:\n"
        "        raise paceline.QuotaExhausted('out of credit: top up at billing')\n"
        "    left['n'] -= 1\n"
        "    return row\n"
    )
    (tmp_path / "ids.csv").write_text("id\n" + "".join(f"{n}\n" for n in range(30)))
    done = paceline(
        *("call", "credit:spend", "ids.csv", "-j", "1", "--journal", "j.journal", "--no-report"),
        cwd=tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert "out of credit: top up at billing" in done.stderr
    assert "resume when the quota is back" in done.stderr
    with JournalView.open(tmp_path / "j.journal") as view:
        assert view.counts() == {"succeeded": 5, "failed": 0}


def test_call_retries_n_do_not_repeat_an_error_that_says_it_is_not_worth_retrying(
    tmp_path: Path,
) -> None:
    # --retries 2 is a count: an error whose own retryable is False fails at its first attempt,
    # one without that attribute gets its retries.
    (tmp_path / "flaky.py").write_text(
        "calls = {}\n"
        "class Final(Exception):\n"
        "    retryable = False\n"
        "def run(row):\n"
        "    calls[row['id']] = calls.get(row['id'], 0) + 1\n"
        "    with open('calls.txt', 'a') as f:\n"
        "        f.write(row['id'] + '\\n')\n"
        "    raise Final('no') if row['id'] == 'final' else OSError('again')\n"
    )
    (tmp_path / "ids.csv").write_text("id\nfinal\nflaky\n")
    done = paceline(
        *("call", "flaky:run", "ids.csv", "-j", "1", "--retries", "2", "--no-report"),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    calls = (tmp_path / "calls.txt").read_text().split()
    assert calls.count("final") == 1
    assert calls.count("flaky") == 3
