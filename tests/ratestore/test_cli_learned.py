"""Limits learned by one ``paceline http`` command, kept by every command on its ``--rate-store``
key, with the test API as the referee (docs/design.md, 'Learned limits shared')."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from paceline.testing.api_server import ApiConfig, ApiServer
from paceline.testing.redis import RedisServer
from tests.cli._command import PACELINE, TIMEOUT_S


def test_commands_keep_a_quota_one_of_them_read_in_the_headers_together(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    # The server announces 30 per second (RateLimit-Policy); --rate allows three times that.
    # Each command alone would keep 30/s: three of them, 90/s, collect 429s (97-133 in runs of
    # the old tree at 50/s, benchmarks/learned_share.py). Shared, they keep 30 in every window
    # together, on starts. --rate-margin 0.2: the first window fills in a third of a second
    # with each command's first requests, whose new connections reach the server up to ~0.1 s
    # after their starts; the 31st start, 1.05 s after the first, then arrived 0.76-0.99 s after
    # the first arrival: one 429 in 8 of 12 hand runs at the default 50 ms, 0 in 8 at 0.2.
    # Since each process's first grants book 0.15 s more (cli/run.py, FIRST_GRANTS_MARGIN_S):
    # 2 runs in 20 at the default drew a 429 (both at a load average of 6-9): 0.2 stays.
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(30)))
    time.sleep(2.3)  # past the fence of a server that just started
    config = ApiConfig(quota=30, window_s=1.0, base_latency_s=0.002, headers="ietf")
    with ApiServer.spawn(config) as api:
        runs = [
            subprocess.Popen(
                [
                    *(PACELINE, "http", "in.jsonl", "--url", f"{api.url}/items/{n}-{{id}}"),
                    *("--rate", "90/s", "--rate-store", fresh_redis.url, "--rate-key", "hdr"),
                    *("--rate-margin", "0.2"),
                    *("--journal", f"{n}.db", "-q"),
                ],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(3)
        ]
        errors = [run.communicate(timeout=TIMEOUT_S)[1] for run in runs]
        stats = api.stats()
    assert [run.returncode for run in runs] == [0, 0, 0], errors
    assert stats["accepted"] == 90
    assert stats["throttled_429"] == 0
    assert stats["max_accepted_in_any_window"] <= 30
