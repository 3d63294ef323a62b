"""The main job: a real batch against an embedded rate-limited API on loopback.

``python -m paceline demo`` starts a local HTTP API that answers 429 beyond a hidden quota of
50 requests per second, then fetches 400 items from it on 8 threads through a
:class:`~paceline.RateLimiter`, printing progress, and checks what the server saw.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

from paceline.faces.executor import BatchExecutor
from paceline.limiter import RateLimiter
from paceline.testing.api_server import ApiConfig, ApiServer


class _Progress:
    """One status line: redrawn in place on a terminal, printed every 2 s otherwise."""

    def __init__(self, out: TextIO, started: float) -> None:
        self.out = out
        self.started = started
        self.tty = out.isatty()
        self.last_print = 0.0

    def __call__(self, completed: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last_print < 2.0 and completed != total:
            return
        self.last_print = now
        elapsed = now - self.started
        rate = completed / elapsed if elapsed > 0 else 0.0
        line = f"{completed}/{total} done  {rate:5.1f}/s  {elapsed:5.1f}s"
        if self.tty:
            self.out.write("\r" + line + ("\n" if completed == total else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


def run_demo(items: int = 400, quota: int = 50, workers: int = 8, out: TextIO = sys.stdout) -> int:
    """Run the demo batch; return a process exit code (0: every item fetched, no 429)."""
    config = ApiConfig(quota=quota, window_s=1.0, retry_after=True, base_latency_s=0.02)
    with ApiServer(config) as server:
        # The server counts a request when it arrives, a little after the client grants it;
        # a window 10 % longer than the server's absorbs that spread (ALGORITHMS §1, W' = W + J).
        limiter = RateLimiter(quota, 1.1)
        base = server.url

        def fetch(number: int) -> Any:
            with urllib.request.urlopen(f"{base}/items/{number}", timeout=10) as response:
                return json.load(response)["id"]

        def task_for(number: int) -> Any:
            return lambda: fetch(number)

        out.write(
            f"paceline demo: {items} GETs to {base} (hidden quota {quota}/s), "
            f"{workers} threads, client limit {limiter}\n"
        )
        started = time.monotonic()
        executor = BatchExecutor(stop_on_error=False, rate_limiter=limiter, max_workers=workers)
        result = executor.execute_batch(
            (task_for(n) for n in range(items)),
            item_ids=[f"item-{n}" for n in range(items)],
            on_progress=_Progress(out, started),
        )
        elapsed = time.monotonic() - started
        stats = server.stats()
    wrong = [r.item_id for r in result if r.success and r.result != r.item_id[5:]]
    out.write(
        f"\n{result.successful} succeeded, {result.failed} failed in {elapsed:.1f} s "
        f"({result.successful / elapsed:.1f}/s against a quota of {quota}/s)\n"
        f"server saw: {stats['accepted']} accepted, {stats['throttled_429']} answered 429, "
        f"at most {stats['max_accepted_in_any_window']} in any 1 s window\n"
    )
    for failure in result.failed_items[:5]:
        out.write(f"  failed {failure.item_id}: {failure.error}\n")
    if wrong:
        out.write(f"  wrong answers for {wrong[:5]}\n")
    ok = (
        result.all_successful
        and not wrong
        and stats["throttled_429"] == 0
        and stats["items_served_more_than_once"] == 0
    )
    out.write("OK: every item done once, the limit held\n" if ok else "NOT OK\n")
    return 0 if ok else 1
