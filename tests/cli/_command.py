"""The installed ``paceline`` command, run as a subprocess by the CLI tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACELINE = str(Path(sys.executable).with_name("paceline"))
TIMEOUT_S = 120  # a hung command fails its test instead of holding the suite


def paceline(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``paceline ARGS`` in ``cwd`` to its end; output captured as text."""
    return subprocess.run(
        [PACELINE, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env=env,
    )
