"""How a CLI batch stops: a graceful stop (Ctrl-C, SIGTERM, SIGHUP) keeps and shows every item
it recorded and is bounded; a reader that goes away ends it quietly; a SIGKILL makes at most the
attempts in flight plus one commit batch run again, and never shows an item done that then runs
again (the installed ``paceline`` as a subprocess)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from paceline.cli.run import COMMIT_ROWS
from paceline.stores.view import JournalView
from paceline.testing.api_server import ApiConfig, ApiServer

PACELINE = str(Path(sys.executable).with_name("paceline"))
TIMEOUT_S = 120
CALL = [PACELINE, "call", "work:job", "in.csv", "--id", "{n}"]

# An async function that logs each execution (O_APPEND writes of a few bytes are atomic, so the
# log counts executions even when the process is killed) and sleeps: rows with slow=1 for long.
WORK = """
import asyncio, os
FD = os.open(os.environ["EXEC_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

async def job(row):
    os.write(FD, (row["n"] + "\\n").encode())
    await asyncio.sleep(float(row.get("sleep_s") or 0.002))
    return int(row["n"])
"""


def setup_call(tmp_path: Path, rows: list[tuple[int, float]]) -> dict[str, str]:
    (tmp_path / "work.py").write_text(WORK)
    lines = ["n,sleep_s", *(f"{n},{sleep_s}" for n, sleep_s in rows)]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    return {**os.environ, "EXEC_LOG": str(tmp_path / "exec.log")}


def executions(tmp_path: Path) -> list[str]:
    path = tmp_path / "exec.log"
    return path.read_text().split() if path.exists() else []


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def journal_keys(journal: Path) -> set[str]:
    with JournalView.open(journal) as view:
        return {outcome.key for outcome in view.outcomes()}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_graceful_stop_shows_every_item_it_recorded(tmp_path: Path, signum: int) -> None:
    env = setup_call(tmp_path, [(n, 0.3) for n in range(200)])
    process = subprocess.Popen(
        [*CALL, "-j", "4", "--journal", "j", "--out", "out.jsonl", "-q"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(executions(tmp_path)) >= 10, "10 executions")
    process.send_signal(signum)
    _, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 130, err
    recorded = journal_keys(tmp_path / "j")
    shown = {json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()}
    assert len(recorded) >= 10
    assert shown == recorded  # the last one recorded is shown too
    assert f"interrupted after {len(recorded)} items" in err
    assert set(executions(tmp_path)) == recorded  # every attempt started was let finish


def test_a_graceful_stop_is_bounded_and_says_a_second_ctrl_c_stops_at_once(
    tmp_path: Path,
) -> None:
    env = setup_call(tmp_path, [(0, 0.01), (1, 0.01), (2, 600), (3, 600), (4, 0.01)])
    env["PACELINE_STOP_GRACE_S"] = "1"
    process = subprocess.Popen(
        [*CALL, "-j", "2", "--journal", "j", "--no-report"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: {"2", "3"} <= set(executions(tmp_path)), "the two slow items to start")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)  # the slow items would take 600 s
    assert process.returncode == 130, err
    assert "Ctrl-C again to stop at once" in err
    assert "2 attempts still running after 1 s" in err
    assert "paceline resume j" in err
    assert journal_keys(tmp_path / "j") == {"0", "1"}  # the abandoned ones run again on resume


def test_a_reader_that_goes_away_ends_the_batch_quietly_and_it_resumes(tmp_path: Path) -> None:
    items = 300
    with ApiServer(ApiConfig(base_latency_s=0.002)) as server:
        rows = [
            json.dumps({"id": f"item-{n}", "url": f"{server.url}/items/{n}"}) for n in range(items)
        ]
        (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
        process = subprocess.Popen(
            [PACELINE, "http", "in.jsonl", "-j", "4", "--journal", "j", "--out", "-"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        for _ in range(3):  # | head -3
            assert json.loads(process.stdout.readline())["ok"]
        process.stdout.close()
        process.wait(timeout=TIMEOUT_S)
        err = process.stderr.read()
        process.stderr.close()
        kept = journal_keys(tmp_path / "j")
        resumed = subprocess.run(
            [PACELINE, "resume", "j", "-q"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        stats = server.stats()
    assert process.returncode == 141, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("paceline:")] == [
        f"paceline: the reader of the output went away after {len(kept)} items; "
        "continue with: paceline resume j"
    ]
    assert 3 <= len(kept) < items
    assert resumed.returncode == 0, resumed.stderr
    assert stats["accepted"] == items
    assert stats["items_served_more_than_once"] == 0


def test_out_shows_only_what_the_journal_committed_even_after_a_kill(tmp_path: Path) -> None:
    env = setup_call(tmp_path, [(n, 0.002) for n in range(20000)])
    process = subprocess.Popen(
        [*CALL, "-j", "16", "--journal", "j", "--out", "-", "-q"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    shown = [json.loads(process.stdout.readline())["id"] for _ in range(2000)]
    process.kill()
    shown += [json.loads(line)["id"] for line in process.stdout]  # what was already written
    process.stdout.close()
    process.wait(timeout=TIMEOUT_S)
    assert set(shown) <= journal_keys(tmp_path / "j")  # nothing shown done runs again


def test_a_kill_reruns_at_most_the_attempts_in_flight_and_one_commit_batch(
    tmp_path: Path,
) -> None:
    items, workers = 20000, 16
    env = setup_call(tmp_path, [(n, 0.002) for n in range(items)])
    command = [*CALL, "-j", str(workers), "--journal", "j", "-q", "--no-report"]
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(executions(tmp_path)) >= 4000, "4000 executions")
    first.kill()
    first.wait(timeout=TIMEOUT_S)
    again = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert again.returncode == 0, again.stderr
    ran = executions(tmp_path)
    assert set(ran) == {str(n) for n in range(items)}
    assert len(ran) - items <= workers + COMMIT_ROWS


def test_an_empty_input_says_so(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("")
    done = subprocess.run(
        [PACELINE, "http", "in.jsonl", "--journal", "none", "--no-report"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert "the input has no items" in done.stderr
    assert not re.search(r"every item succeeded", done.stderr)
