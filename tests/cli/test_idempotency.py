"""``paceline http --method POST`` against a server that processes a POST and then drops the
answer (the test API's ``POST /objects`` with ``post_drop_rate``): with the defaults nothing is
created twice; without keys the unanswered ones fail unretried; ``--retry-unsafe`` duplicates
them; a batch killed mid-run resumes with the same keys (issue 14, item 3)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from paceline.testing.api_server import ApiConfig, ApiServer
from tests.cli._command import PACELINE, TIMEOUT_S, paceline

N = 100
DROPS = ApiConfig(post_drop_rate=0.1, base_latency_s=0.001, seed=3)
JSON = '{"name": "{name}"}'


def rows(path: Path, n: int = N) -> Path:
    path.write_text("".join(json.dumps({"name": f"t{i}"}) + "\n" for i in range(n)))
    return path


def post_args(server: ApiServer, tmp_path: Path, n: int = N) -> list[str]:
    source = rows(tmp_path / "tenants.jsonl", n)
    return ["http", str(source), "--url", f"{server.url}/objects", "--method", "POST"]


def test_with_defaults_every_post_succeeds_and_nothing_is_created_twice(tmp_path: Path) -> None:
    with ApiServer(DROPS) as server:
        done = paceline(*post_args(server, tmp_path), "--json", JSON, "-j", "8", "-q", cwd=tmp_path)
        stats = server.stats()["objects"]
    assert done.returncode == 0, done.stderr
    assert stats["dropped_after_processing"] > 0
    assert stats["created"] == N
    assert stats["duplicates"] == 0
    assert stats["replays"] == stats["dropped_after_processing"]


def test_without_keys_the_unanswered_posts_fail_with_a_clear_message(tmp_path: Path) -> None:
    with ApiServer(DROPS) as server:
        args = post_args(server, tmp_path)
        args += ["--json", JSON, "-j", "8", "--no-idempotency-key", "--out", "out.jsonl"]
        done = paceline(*args, cwd=tmp_path)
        stats = server.stats()["objects"]
    assert done.returncode == 1, done.stderr
    dropped = stats["dropped_after_processing"]
    assert dropped > 0
    assert f"{dropped} of {N} items failed" in done.stderr
    outcomes = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    failed = [o for o in outcomes if not o["ok"]]
    assert len(failed) == dropped
    assert {(o["error_code"], o["attempts"]) for o in failed} == {("maybe_processed", 1)}
    assert all(
        "may have been processed; not retried without an idempotency key" in o["error"]
        for o in failed
    )
    assert stats["requests"] == N  # not one sent twice
    assert stats["duplicates"] == 0


def test_retry_unsafe_sends_them_again_and_the_server_creates_duplicates(tmp_path: Path) -> None:
    with ApiServer(DROPS) as server:
        args = post_args(server, tmp_path)
        unsafe = ("--idempotency-header", "", "--retry-unsafe", "-q")
        done = paceline(*args, "--json", JSON, "-j", "8", *unsafe, cwd=tmp_path)
        stats = server.stats()["objects"]
    assert done.returncode == 0, done.stderr
    assert stats["duplicates"] == stats["dropped_after_processing"] > 0
    assert stats["created"] == N + stats["duplicates"]


def test_a_killed_batch_resumes_with_the_same_keys(tmp_path: Path) -> None:
    n = 200
    slow = ApiConfig(base_latency_s=0.05)  # 4 in flight: ~80 a second, killed after ~40
    with ApiServer(slow) as server:
        args = [*post_args(server, tmp_path, n), "--json", JSON, "-j", "4"]
        args += ["--journal", "posts.journal", "-q"]
        child = subprocess.Popen([PACELINE, *args], cwd=tmp_path)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while server.stats().get("objects", {}).get("requests", 0) < 40:
                assert child.poll() is None, "the batch ended before it could be killed"
                assert time.monotonic() < deadline
                time.sleep(0.01)
            child.send_signal(signal.SIGKILL)  # a crash: in flight and uncommitted run again
        finally:
            child.wait(TIMEOUT_S)
        time.sleep(0.1)  # the requests in flight at the kill reach the server's counts
        killed_at = server.stats()["objects"]["created"]
        resumed = paceline("resume", "posts.journal", "-q", cwd=tmp_path)
        stats = server.stats()["objects"]
        requests = server.objects()["requests"]
    assert resumed.returncode == 0, resumed.stderr
    assert 40 <= killed_at < n
    keys: dict[str, set[str | None]] = defaultdict(set)
    for request in requests:
        keys[request["body"]["name"]].add(request["key"])
    assert len(keys) == n
    # Sent twice (in flight at the kill, or settled but not yet committed): with one key.
    assert stats["replays"] >= 1
    assert all(len(seen) == 1 and None not in seen for seen in keys.values())
    assert stats["created"] == n
    assert stats["duplicates"] == 0


# -- call and exec get the item's key -------------------------------------------------------


def _log_keys(log: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = defaultdict(list)
    for line in log.read_text().splitlines():
        name, key = line.split()
        keys[name].append(key)
    return keys


def test_exec_gets_the_same_key_in_its_argv_and_environment_after_a_resume(
    tmp_path: Path,
) -> None:
    (tmp_path / "in.csv").write_text("name\na\nb\n")
    # Logs {name} {_key} and $PACELINE_ITEM_KEY; b fails until the file "ok" exists.
    script = 'echo "$0 $1" >> keys.log; echo "$0 $PACELINE_ITEM_KEY" >> env.log; '
    script += '[ "$0" != b ] || [ -e ok ]'
    command = ["--", "sh", "-c", script, "{name}", "{_key}"]
    first = paceline("exec", "in.csv", "--journal", "j.journal", "-q", *command, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    (tmp_path / "ok").touch()
    resumed = paceline("resume", "j.journal", "--retry-failed", "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    keys = _log_keys(tmp_path / "keys.log")
    assert keys == _log_keys(tmp_path / "env.log")
    assert len(keys["a"]) == 1
    assert len(keys["b"]) == 2
    assert keys["b"][0] == keys["b"][1] != keys["a"][0]
    assert len(keys["a"][0]) == 36  # a UUID


def test_call_reads_the_same_key_from_current_item_key_after_a_resume(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("name\na\nb\n")
    (tmp_path / "keyed.py").write_text(
        "import os, paceline\n"
        "def create(row):\n"
        "    with open('keys.log', 'a') as log:\n"
        "        log.write(f\"{row['name']} {paceline.current_item_key()}\\n\")\n"
        "    if row['name'] == 'b' and not os.path.exists('ok'):\n"
        "        raise ValueError('not yet')\n"
        "    return row['name']\n"
    )
    args = ("call", "keyed:create", "in.csv", "--journal", "j.journal", "--retries", "0", "-q")
    first = paceline(*args, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    (tmp_path / "ok").touch()
    resumed = paceline("resume", "j.journal", "--retry-failed", "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    keys = _log_keys(tmp_path / "keys.log")
    assert len(keys["b"]) == 2
    assert keys["b"][0] == keys["b"][1] != keys["a"][0]
