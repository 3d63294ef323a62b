"""``paceline demo``: the main job on an embedded default.

Starts the test API on 127.0.0.1 with a hidden quota (429 + ``Retry-After`` beyond it) and
1 % injected server errors, writes an input of requests, and runs ``paceline http`` over it
with adaptive limits, the live progress, a journal, a results file and a report (text and
HTML) — then checks what the server saw: every item served, none twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from paceline.cli.run import EXIT_OK, Display, display_path, run_spec
from paceline.cli.spec import RunSpec
from paceline.testing.api_server import ApiConfig, ApiServer


def run_demo(
    items: int = 400,
    quota: int = 50,
    directory: str = ".paceline/demo",
    quiet: bool = False,
    err: TextIO | None = None,
) -> int:
    """Run the demo batch; its exit code (0: every item done exactly once)."""
    err = err or sys.stderr
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = ApiConfig(
        quota=quota, window_s=1.0, retry_after=True, base_latency_s=0.02, error_rate=0.01, seed=7
    )
    with ApiServer(config) as server:
        source = folder / "input.jsonl"
        with source.open("w", encoding="utf-8") as handle:
            for n in range(items):
                handle.write(json.dumps({"id": f"item-{n}", "url": f"{server.url}/items/{n}"}))
                handle.write("\n")
        if not quiet:
            err.write(
                f"paceline demo: the test API at {server.url} accepts {quota} requests/s (it "
                f"does not say so) and fails 1 % with 500; fetching {items} items, concurrency "
                "and rate found from its answers\n"
            )
        spec = RunSpec(
            command="http",
            input=str(source),
            concurrency="auto",
            journal=str(folder / "demo.journal"),
            out=str(folder / "results.jsonl"),
        )
        html = str(folder / "report.html")
        code = run_spec(spec, Display(err=err, quiet=quiet, html=html), fresh=True)
        stats = server.stats()
    twice = stats["items_served_more_than_once"]
    if not quiet:
        err.write(
            f"server saw: {stats['accepted']} accepted, {stats['throttled_429']} answered 429, "
            f"at most {stats['max_accepted_in_any_window']} in any 1 s window, "
            f"{twice} items served more than once\n"
            f"results: {display_path(folder / 'results.jsonl')}, report: {display_path(Path(html))}"
            f", journal: {display_path(folder / 'demo.journal')}\n"
        )
    ok = code == EXIT_OK and twice == 0
    if not quiet:
        err.write("OK: every item done once\n" if ok else "NOT OK\n")
    return code if code != EXIT_OK else (0 if ok else 1)
