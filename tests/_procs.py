"""Processes seen from /proc, for tests that check what a kill leaves running (Linux)."""

from __future__ import annotations

import time
from pathlib import Path


def state(pid: int) -> str | None:
    """A process's state letter (R, S, Z, ...), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def wait_dead(pid: int, within_s: float = 5.0) -> str | None:
    """Wait until ``pid`` is gone (or a zombie not ours to reap); return its last state."""
    deadline = time.monotonic() + within_s
    while True:
        st = state(pid)
        if st in (None, "Z") or time.monotonic() > deadline:
            return st
        time.sleep(0.01)


def read_pid(path: Path, within_s: float = 5.0) -> int:
    """The pid a child wrote to ``path`` (a line ending in a newline), waiting for it."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.005)
    raise AssertionError(f"{path} was never written")
