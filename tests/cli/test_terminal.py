"""The real ``paceline http`` in a real terminal (tmux): the live bar redraws in place while the
batch runs and finishes cleanly, with the shell's next output on a fresh line."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paceline.testing.api_server import ApiConfig, ApiServer
from tests.cli.test_progress import Tmux

PACELINE = str(Path(sys.executable).with_name("paceline"))
ITEMS = 80
COUNT = re.compile(rf"\b(\d+)/{ITEMS}\b")


def counts_on_screen(screen: list[str]) -> list[tuple[int, int]]:
    """(row, count) of every row showing 'n/80'."""
    found = []
    for row, text in enumerate(screen):
        match = COUNT.search(text)
        if match:
            found.append((row, int(match.group(1))))
    return found


@pytest.mark.skipif(
    shutil.which("tmux") is None and "CI" not in os.environ, reason="needs tmux (CI installs it)"
)
def test_live_progress_in_a_terminal(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.01)) as server:
        with (tmp_path / "in.jsonl").open("w") as handle:
            for n in range(ITEMS):
                handle.write(json.dumps({"id": f"i{n}", "url": f"{server.url}/items/{n}"}) + "\n")
        command = " ".join(
            shlex.quote(word)
            for word in (
                *(PACELINE, "http", "in.jsonl", "--rate", "20/s", "-j", "2"),
                *("--journal", "none", "--no-report"),
            )
        )
        tmux = Tmux(tmp_path / "tmux.sock")
        tmux(
            "new-session", "-d", "-x", "120", "-y", "30", "-s", "pv", "-c", str(tmp_path),
            f"{command}; echo FINISHED-$?; sleep 30",
        )  # fmt: skip
        try:
            early = tmux.wait_for(
                lambda s: any(0 < n < ITEMS // 2 for _, n in counts_on_screen(s)), "a first count"
            )
            [(row, first)] = counts_on_screen(early)  # one progress row, not a growing log
            later = tmux.wait_for(
                lambda s: any(n > first for _, n in counts_on_screen(s)), "a higher count"
            )
            assert [r for r, _ in counts_on_screen(later)] == [row]  # redrawn in place
            final = tmux.wait_for(lambda s: any("FINISHED-" in line for line in s), "the end")
        finally:
            subprocess.run(
                ["tmux", "-S", str(tmux.socket), "kill-server"], capture_output=True, timeout=10
            )
    end = next(i for i, line in enumerate(final) if "FINISHED-" in line)
    assert final[end].strip() == "FINISHED-0"
    shown = counts_on_screen(final)
    assert shown[-1][1] == ITEMS  # the final state shows every item
    assert all(n == ITEMS for _, n in shown)  # no stale partial line left behind
    assert shown[-1][0] < end  # the shell's output comes after the display, on its own line


def test_plain_status_lines_when_not_a_terminal(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        (tmp_path / "in.jsonl").write_text(
            "".join(json.dumps({"url": f"{server.url}/items/{n}"}) + "\n" for n in range(20))
        )
        started = time.monotonic()
        done = subprocess.run(
            [PACELINE, "http", "in.jsonl", "--journal", "none", "--no-report"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    assert "\x1b" not in done.stderr
    assert "\r" not in done.stderr
    assert "20/20" in done.stderr.splitlines()[-2]  # the final status line, then the summary
