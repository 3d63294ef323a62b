"""Two rows with one id in one input: an input error (``--on-bad-input stop``, exit 2 naming
both lines) or a failed item (``skip``), never a silent success — at any concurrency. The
real ``paceline`` command against the test API on loopback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from paceline.testing.api_server import ApiConfig, ApiServer
from tests.cli._command import PACELINE, TIMEOUT_S, paceline
from tests.cli.test_e2e import counts

# name,n: line 4 repeats line 2's name with another n (another URL): a distinct request that
# --id '{name}' gives the same id.
ROWS = "name,n\nalice,1\nbob,2\nalice,3\ncarol,4\n"


def run_http(tmp_path: Path, server: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    return paceline(
        "http", "in.csv", "--url", server.url + "/items/{n}", "--id", "{name}", "-q", *args,
        cwd=tmp_path,
    )  # fmt: skip


def out_rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def served(row: dict[str, object]) -> tuple[str, int]:
    """The item the server answered for and how many times it had served it then."""
    result = row["result"]
    assert isinstance(result, dict)
    return result["body"]["id"], result["body"]["n"]


@pytest.mark.parametrize("workers", ["1", "8"])
def test_a_repeated_id_stops_with_exit_2_naming_both_lines(tmp_path: Path, workers: str) -> None:
    (tmp_path / "in.csv").write_text(ROWS)
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        done = run_http(tmp_path, server, "-j", workers, "--journal", "j.journal", "-o", "o.jsonl")
        stats = server.stats()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "in.csv:4" in lines[0]
    assert "duplicate id of line 2" in lines[0]
    assert "--on-bad-input skip" in lines[0]
    # what was read before the repeated row ran and is kept; nothing after it was sent
    assert stats["accepted"] == 2
    assert counts(tmp_path / "j.journal") == {"succeeded": 2, "failed": 0}
    assert sorted(served(r) for r in out_rows(tmp_path / "o.jsonl")) == [("1", 1), ("2", 1)]


@pytest.mark.parametrize("workers", ["1", "8"])
def test_a_repeated_id_under_skip_is_a_failed_item_and_never_sent(
    tmp_path: Path, workers: str
) -> None:
    (tmp_path / "in.csv").write_text(ROWS)
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        done = run_http(
            tmp_path, server, "-j", workers, "--journal", "j.journal", "-o", "o.jsonl", "-k",
            "--on-bad-input", "skip",
        )  # fmt: skip
        stats = server.stats()
    assert done.returncode == 1, done.stderr
    assert "1 of 4 items failed" in done.stderr
    rows = out_rows(tmp_path / "o.jsonl")
    assert [(r["id"], r["ok"]) for r in rows] == [
        ("alice", True),
        ("bob", True),
        ("bad-input:line-4", False),
        ("carol", True),
    ]
    assert "in.csv:4: duplicate id of line 2" in str(rows[2]["error"])
    assert sorted(served(r) for r in rows if r["ok"]) == [("1", 1), ("2", 1), ("4", 1)]
    assert stats["accepted"] == 3  # /items/3 (the repeated id) was never sent
    assert stats["items_served_more_than_once"] == 0
    assert counts(tmp_path / "j.journal") == {"succeeded": 3, "failed": 1}


@pytest.mark.parametrize("workers", ["1", "8"])
def test_without_a_journal_a_repeated_id_runs_both_rows(tmp_path: Path, workers: str) -> None:
    # Documented: without a journal an id only labels the output (nothing is skipped by it),
    # so both rows are sent and no memory grows with the input.
    (tmp_path / "in.csv").write_text(ROWS)
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        done = run_http(tmp_path, server, "-j", workers, "--journal", "none", "-o", "o.jsonl")
        stats = server.stats()
    assert done.returncode == 0, done.stderr
    rows = out_rows(tmp_path / "o.jsonl")
    assert sorted(str(r["id"]) for r in rows) == ["alice", "alice", "bob", "carol"]
    assert sorted(served(r) for r in rows) == [("1", 1), ("2", 1), ("3", 1), ("4", 1)]
    assert stats["accepted"] == 4


def test_ids_settled_by_an_earlier_run_are_still_skipped(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("name,n\nalice,1\nbob,2\n")
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        first = run_http(tmp_path, server, "--journal", "j.journal")
        assert first.returncode == 0, first.stderr
        # the input grows: a new row, then a repeat of line 2
        with (tmp_path / "in.csv").open("a") as handle:
            handle.write("carol,4\nalice,3\n")
        again = run_http(tmp_path, server, "-j", "8", "--journal", "j.journal", "-o", "o.jsonl")
        stats = server.stats()
    assert again.returncode == 2, again.stderr
    assert "in.csv:5: duplicate id of line 2" in again.stderr
    rows = out_rows(tmp_path / "o.jsonl")
    assert [(r["id"], bool(r.get("restored"))) for r in rows] == [
        ("alice", True),
        ("bob", True),
        ("carol", False),
    ]
    assert stats["accepted"] == 3  # 1 and 2 once in the first run, 4 in the second; never 3
    assert stats["items_served_more_than_once"] == 0


def test_identical_rows_are_duplicates_and_the_first_one_runs(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        rows = json.dumps({"url": server.url + "/items/7"}) + "\n"
        (tmp_path / "in.jsonl").write_text(rows * 50)
        done = paceline(
            "http", "in.jsonl", "-j", "8", "--on-bad-input", "skip", "-o", "-", "-k", "-q",
            cwd=tmp_path,
        )  # fmt: skip
        stats = server.stats()
    assert done.returncode == 1, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 50
    assert [r["ok"] for r in results] == [True] + [False] * 49
    assert all("duplicate id of line 1" in r["error"] for r in results[1:])
    assert stats["accepted"] == 1


def test_endless_identical_stdin_rows_stop_at_the_first_repeat(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        row = json.dumps({"url": server.url + "/items/7"})
        yes = subprocess.Popen(["yes", row], stdout=subprocess.PIPE)
        assert yes.stdout is not None
        try:
            done = subprocess.run(
                [PACELINE, "http", "-", "--out", "-", "-q"],
                cwd=tmp_path,
                stdin=yes.stdout,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,  # before the fix: restored lines written forever
                check=False,
            )
        finally:
            yes.kill()
            yes.wait()
        stats = server.stats()
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert "<stdin>:2: duplicate id of line 1" in lines[0]
    assert len(done.stdout.splitlines()) == 1
    assert stats["accepted"] == 1


def test_dry_run_shows_a_repeated_id(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text(ROWS)
    done = paceline(
        "http", "in.csv", "--url", "http://127.0.0.1:9/items/{n}", "--id", "{name}", "--dry-run",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "line 4: BAD INPUT — in.csv:4: duplicate id of line 2" in done.stdout + done.stderr
