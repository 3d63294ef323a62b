"""``--rate-store``/``--rate-key`` on the command line, against a real redis-server and the
test API as the referee."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from paceline.testing.api_server import ApiConfig, ApiServer
from paceline.testing.redis import RedisServer, free_port
from tests.cli._command import PACELINE, TIMEOUT_S, paceline


def _rows(tmp_path: Path, count: int) -> None:
    lines = (json.dumps({"id": i}) for i in range(count))
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")


def test_dry_run_shows_the_shared_key_and_hides_the_password(tmp_path: Path) -> None:
    _rows(tmp_path, 3)
    done = paceline(
        "http",
        "in.jsonl",
        "--url",
        "https://api.example.com/items/{id}",
        "--rate",
        "200/s",
        "--rate-store",
        "redis://:hunter2@127.0.0.1:6379/0",
        "--dry-run",
        "--journal",
        "none",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "key 'api.example.com:200/1s~1'" in done.stdout
    assert "hunter2" not in done.stdout


def test_a_bad_store_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    _rows(tmp_path, 3)
    env = {**os.environ, "PACELINE_RATE_STORE": "http://127.0.0.1:6379"}
    done = paceline(
        "http",
        "in.jsonl",
        "--url",
        "http://127.0.0.1:9/{id}",
        "--rate",
        "5/s",
        "--journal",
        "none",
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "expected a Redis URL" in done.stderr


def test_an_unreachable_store_at_the_start_is_exit_2(tmp_path: Path) -> None:
    _rows(tmp_path, 3)
    done = paceline(
        "http",
        "in.jsonl",
        "--url",
        "http://127.0.0.1:9/{id}",
        "--rate",
        "5/s",
        "--journal",
        "none",
        "--rate-store",
        f"redis://127.0.0.1:{free_port()}/0",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "unreachable" in done.stderr


@pytest.mark.serial  # the referee counts arrivals in real time
def test_two_commands_share_one_quota_and_an_outage_ends_one_resumably(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    _rows(tmp_path, 80)
    time.sleep(2.3)  # past the fence of a server that just started
    with ApiServer(ApiConfig(quota=100, window_s=1.0, base_latency_s=0)) as api:
        common = [
            "--rate",
            "100/s",
            "-j",
            "4",
            "--rate-store",
            fresh_redis.url,
            "--rate-key",
            "cli-test",
        ]
        patient = subprocess.Popen(
            [
                PACELINE,
                "http",
                "in.jsonl",
                "--url",
                api.url + "/items/a{id}",
                *common,
                "--journal",
                "a.db",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        strict = subprocess.Popen(
            [
                PACELINE,
                "http",
                "in.jsonl",
                "--url",
                api.url + "/items/b{id}",
                *common,
                "--journal",
                "b.db",
                "--rate-store-outage",
                "1",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while api.stats()["accepted"] < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        stopper = threading.Thread(target=fresh_redis.pause, args=(3.0,))
        stopper.start()
        stopper.join()
        _, strict_err = strict.communicate(timeout=TIMEOUT_S)
        _, patient_err = patient.communicate(timeout=TIMEOUT_S)
        stats = api.stats()
        assert patient.returncode == 0, patient_err[-2000:]
        assert strict.returncode == 3, strict_err[-2000:]
        assert "unreachable" in strict_err
        assert stats["throttled_429"] == 0
        assert stats["max_accepted_in_any_window"] <= 100
        # The stopped one resumes from its journal and runs only what it had not done.
        again = paceline(
            "http",
            "in.jsonl",
            "--url",
            api.url + "/items/b{id}",
            *common,
            "--journal",
            "b.db",
            cwd=tmp_path,
        )
        resumed = api.stats()["accepted"] - stats["accepted"]
    assert again.returncode == 0, again.stderr[-2000:]
    assert 0 < resumed < 80
