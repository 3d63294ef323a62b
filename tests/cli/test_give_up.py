"""Issue 10: a server that answers nothing but 429 without Retry-After no longer holds a batch
forever: after ``--give-up-after`` with no success it stops, exit 3, resumable, saying why."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paceline.stores.view import JournalView
from paceline.testing.api_server import ApiConfig, ApiServer

PACELINE = str(Path(sys.executable).with_name("paceline"))

pytestmark = pytest.mark.timeout(120)


def write_requests(path: Path, base: str, count: int) -> None:
    with path.open("w") as handle:
        for n in range(count):
            handle.write(json.dumps({"id": f"item-{n}", "url": f"{base}/items/{n}"}) + "\n")


@pytest.mark.parametrize("concurrency", ["auto", "4"])
def test_only_429s_give_up_with_exit_3_and_a_resumable_journal(tmp_path, concurrency):
    # One request per 1000 s, no Retry-After: after the first, every answer is 429.
    with ApiServer(ApiConfig(quota=1, window_s=1000.0)) as server:
        write_requests(tmp_path / "in.jsonl", server.url, 2000)
        started = time.monotonic()
        done = subprocess.run(
            [
                *(PACELINE, "http", "in.jsonl", "-j", concurrency, "--give-up-after", "3s"),
                *("--journal", "j.journal", "--no-report"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=100,
            check=False,
        )
        elapsed_s = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert "giving up: no attempt succeeded for" in done.stderr
    assert "paceline resume" in done.stderr
    assert elapsed_s < 60
    with JournalView.open(tmp_path / "j.journal") as view:
        counts = view.counts()
    assert counts["succeeded"] == 1
    assert counts["succeeded"] + counts["failed"] < 2000  # the rest is left for a resume


@pytest.mark.parametrize("value", ["-3", "soon", "10x"])
def test_a_bad_duration_is_one_line_and_exit_2(tmp_path, value):
    (tmp_path / "in.jsonl").write_text('{"url": "http://127.0.0.1:9/"}\n')
    done = subprocess.run(
        [PACELINE, "http", "in.jsonl", "--give-up-after", value, "--journal", "none"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"--give-up-after {value!r}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
