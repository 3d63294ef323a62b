"""The installed ``paceline`` command, run as a subprocess against the test API on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paceline.stores.view import JournalView
from paceline.testing.api_server import ApiConfig, ApiServer
from tests.cli._command import PACELINE, paceline


def write_requests(path: Path, count: int, *, relative: bool = True, base: str = "") -> None:
    with path.open("w") as handle:
        for n in range(count):
            url = f"/items/{n}" if relative else f"{base}/items/{n}"
            handle.write(json.dumps({"id": f"item-{n}", "url": url}) + "\n")


def counts(journal: Path) -> dict[str, int]:
    with JournalView.open(journal) as view:
        return view.counts()


def test_http_batch_runs_every_row_once(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", 60, relative=False, base=server.url)
        done = paceline(
            "http", "in.jsonl", "--journal", "j.journal", "--out", "out.jsonl", "-q", cwd=tmp_path
        )
        stats = server.stats()
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(f"item-{n}" for n in range(60))
    assert all(r["ok"] and r["status"] == 200 for r in lines)
    assert stats["accepted"] == 60
    assert stats["items_served_more_than_once"] == 0
    assert counts(tmp_path / "j.journal") == {"succeeded": 60, "failed": 0}


def test_sigint_then_resume_does_every_item_exactly_once(tmp_path: Path) -> None:
    items = 150
    write_requests(tmp_path / "in.jsonl", items)
    journal = tmp_path / "j.journal"
    with ApiServer(ApiConfig(base_latency_s=0.05)) as server:
        process = subprocess.Popen(
            [
                *(PACELINE, "http", "in.jsonl", "--base-url", server.url, "--rate", "40/s"),
                *("-j", "4", "--journal", str(journal), "--no-report"),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while server.stats()["accepted"] < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "paceline resume" in err
        first = counts(journal)
        assert 30 <= first["succeeded"] < items
        assert first["failed"] == 0
        after_stop = server.stats()["accepted"]
        assert after_stop == first["succeeded"]  # what ran was recorded; nothing ran unrecorded

        resumed = paceline("resume", str(journal), "-q", cwd=tmp_path)
        stats = server.stats()
    assert resumed.returncode == 0, resumed.stderr
    assert counts(journal) == {"succeeded": items, "failed": 0}
    assert stats["accepted"] == items
    assert stats["items_served_more_than_once"] == 0


def test_retry_failed_reruns_only_the_failures(tmp_path: Path) -> None:
    write_requests(tmp_path / "in.jsonl", 80)
    journal = tmp_path / "j.journal"
    with ApiServer(ApiConfig(base_latency_s=0.001, error_rate=0.25, seed=3)) as flaky:
        first = paceline(
            "http", "in.jsonl", "--base-url", flaky.url, "--retries", "0", "-j", "8",
            "--journal", str(journal), "-q", cwd=tmp_path,
        )  # fmt: skip
    assert first.returncode == 1, first.stderr
    failed = counts(journal)["failed"]
    assert 5 <= failed <= 40
    assert f"{failed} of 80 items failed" in first.stderr

    with ApiServer(ApiConfig(base_latency_s=0.001)) as healthy:
        again = paceline(
            "http", "in.jsonl", "--base-url", healthy.url, "--retries", "0", "-j", "8",
            "--journal", str(journal), "--retry-failed", "-q", cwd=tmp_path,
        )  # fmt: skip
        stats = healthy.stats()
    assert again.returncode == 0, again.stderr
    assert stats["accepted"] == failed  # only the failures ran again
    assert counts(journal) == {"succeeded": 80, "failed": 0}


def test_malformed_jsonl_line_stops_with_exit_2_keeping_what_ran(tmp_path: Path) -> None:
    lines = [json.dumps({"id": f"item-{n}", "url": f"/items/{n}"}) for n in range(5)]
    lines.insert(3, '{"id": "item-x", "url": ')  # line 4 is cut short
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        done = paceline(
            "http", "in.jsonl", "--base-url", server.url, "-j", "1",
            "--journal", "j.journal", "-q", cwd=tmp_path,
        )  # fmt: skip
        after_stop = counts(tmp_path / "j.journal")
        skipped = paceline(
            "http", "in.jsonl", "--base-url", server.url, "-j", "1", "--on-bad-input", "skip",
            "--journal", "j.journal", "-q", cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()
    assert len(message) == 1, done.stderr
    assert "in.jsonl:4" in message[0]
    assert "JSON" in message[0]
    assert "--on-bad-input skip" in message[0]
    assert after_stop == {"succeeded": 3, "failed": 0}
    # skipping records the bad line as a failure and runs the rest
    assert skipped.returncode == 1, skipped.stderr
    assert counts(tmp_path / "j.journal") == {"succeeded": 5, "failed": 1}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["http", "in.csv", "--url", "http://127.0.0.1:9/items/{nmae}"], "nmae"),
        (["http", "in.csv", "--url", "http://127.0.0.1:9/{id}", "--rate", "ten/s"], "ten/s"),
        # accepted and never charged would be worse: a tokens limit needs --cost (CSV rows)
        (["http", "in.csv", "--url", "http://127.0.0.1:9/{id}", "--rate", "tokens:9/s"], "tokens"),
        (["http", "in.csv", "--url", "http://127.0.0.1:9/{id}", "--cost", "tokens={id}"], "--cost"),
        (["exec", "in.csv", "--rate", "tokens:9/s", "--", "true"], "tokens"),
        (["http", "in.csv", "--url", "http://127.0.0.1:9/{id}", "--halt", "sometime"], "sometime"),
        (["http", "missing.jsonl"], "missing.jsonl"),
        (["resume", "nope.journal"], "nope.journal"),
        (["report", "nope.journal"], "nope.journal"),
        (["exec", "in.csv", "--", "no-such-program-xyz", "{id}"], "no-such-program-xyz"),
        (["call", "nomodule_xyz:run", "in.csv"], "nomodule_xyz"),
    ],
)
def test_bad_usage_is_one_clear_line_and_exit_2(tmp_path: Path, args: list[str], needle: str):
    (tmp_path / "in.csv").write_text("id,name\n1,ann\n2,bob\n")
    done = paceline(*args, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert needle in lines[0]
    assert not (tmp_path / ".paceline").exists() or not any((tmp_path / ".paceline").iterdir())


def test_secrets_never_reach_the_journal_or_the_output(tmp_path: Path) -> None:
    token = "s3cr3t-t0ken-value"
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        write_requests(tmp_path / "in.jsonl", 5)
        done = paceline(
            "http", "in.jsonl", "--base-url", server.url, "-H", f"Authorization: Bearer {token}",
            "--journal", "j.journal", "--out", "out.jsonl", "--html", "r.html", cwd=tmp_path,
        )  # fmt: skip
        resume_without = paceline("resume", "j.journal", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("j.journal", "out.jsonl", "r.html"):
        assert token.encode() not in (tmp_path / name).read_bytes(), name
    for extra in tmp_path.glob("j.journal-*"):
        assert token.encode() not in extra.read_bytes()
    assert token not in done.stderr
    assert resume_without.returncode == 2
    assert "--header" in resume_without.stderr


def test_exec_runs_a_command_per_row_without_a_shell(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text('name,code\nann,0\n"b o $HOME",0\ncat,3\n')
    done = paceline(
        "exec", "in.csv", "-j", "2", "--out", "out.jsonl", "-k", "--journal", "none", "-q",
        "--", sys.executable, "-c", "import sys; print(sys.argv[1]); sys.exit(int(sys.argv[2]))",
        "{name}", "{code}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["ok"] for r in rows] == [True, True, False]
    assert rows[0]["result"]["stdout"] == "ann\n"
    assert rows[1]["result"]["stdout"] == "b o $HOME\n"  # one argument, nothing expanded
    assert rows[2]["status"] == 3
    assert rows[2]["error"].startswith("exit code 3")


def test_call_runs_sync_and_async_functions(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(
        "import asyncio\n"
        "def double(row):\n    return {'n': int(row['n']) * 2}\n"
        "async def triple(n):\n    await asyncio.sleep(0)\n    return int(n) * 3\n"
    )
    (tmp_path / "in.csv").write_text("n\n1\n2\n3\n")
    sync = paceline("call", "tasks:double", "in.csv", "-o", "a.jsonl", "-k", "-q", cwd=tmp_path)
    unpacked = paceline(
        "call", "tasks:triple", "in.csv", "--unpack", "-o", "b.jsonl", "-k", "-q", cwd=tmp_path
    )
    assert sync.returncode == 0, sync.stderr
    assert unpacked.returncode == 0, unpacked.stderr
    a = [json.loads(x)["result"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x)["result"] for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert a == [{"n": 2}, {"n": 4}, {"n": 6}]
    assert b == [3, 6, 9]


def test_dry_run_shows_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,name\n1,ann\n2,bob\n")
    with ApiServer(ApiConfig()) as server:
        done = paceline(
            "http", "in.csv", "--url", server.url + "/items/{id}", "--method", "POST",
            "--json", '{"name": "{name}"}', "--rate", "5/s", "--dry-run", cwd=tmp_path,
        )  # fmt: skip
        stats = server.stats()
        url = server.url
    assert done.returncode == 0, done.stderr
    assert stats["accepted"] == 0
    assert "items: 2" in done.stdout
    assert "5/s" in done.stdout
    assert '"name": "ann"' in done.stdout
    assert f"POST {url}/items/1" in done.stdout


def test_halt_rule_exits_3(tmp_path: Path) -> None:
    write_requests(tmp_path / "in.jsonl", 200)
    with ApiServer(ApiConfig(base_latency_s=0.001, error_rate=1.0)) as server:
        done = paceline(
            "http", "in.jsonl", "--base-url", server.url, "--retries", "0", "-j", "2",
            "--halt", "soon,fail=5", "--journal", "none", "-q", cwd=tmp_path,
        )  # fmt: skip
        stats = server.stats()
    assert done.returncode == 3, done.stderr
    assert stats["accepted"] < 20


def test_report_of_a_journal(tmp_path: Path) -> None:
    write_requests(tmp_path / "in.jsonl", 30)
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        paceline(
            "http", "in.jsonl", "--base-url", server.url, "--journal", "j.journal", "-q",
            cwd=tmp_path,
        )  # fmt: skip
    report = paceline("report", "j.journal", "--html", "r.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "30" in report.stdout
    assert "200" in report.stdout
    assert (tmp_path / "r.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_default_journal_resumes_the_same_command(tmp_path: Path) -> None:
    write_requests(tmp_path / "in.jsonl", 10)
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        args = ("http", "in.jsonl", "--base-url", server.url, "-q")
        first = paceline(*args, cwd=tmp_path)
        second = paceline(*args, cwd=tmp_path)
        stats = server.stats()
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert len(list((tmp_path / ".paceline").glob("*.journal"))) == 1
    assert stats["accepted"] == 10  # the second run found everything done


@pytest.mark.skipif(not hasattr(os, "setsid"), reason="POSIX only")
def test_stdin_input(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        body = "".join(json.dumps({"url": f"{server.url}/items/{n}"}) + "\n" for n in range(7))
        done = paceline("http", "-", "--journal", "none", "-o", "-", "-q", cwd=tmp_path, stdin=body)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 7


def test_call_throttled_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(
        "import paceline\n"
        "seen = set()\n"
        "def work(row):\n"
        "    if row['n'] not in seen:\n"
        "        seen.add(row['n'])\n"
        "        raise paceline.Throttled(retry_after=0.2)\n"
        "    return row['n']\n"
    )
    (tmp_path / "in.csv").write_text("n\n1\n2\n3\n")
    started = time.monotonic()
    done = paceline("call", "flaky:work", "in.csv", "-o", "out.jsonl", "-k", "-q", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["result"], r["attempts"]) for r in rows] == [("1", 2), ("2", 2), ("3", 2)]
    assert elapsed >= 0.2  # the retry waited for Retry-After


def test_endless_stdin_streams_results_as_rows_arrive(tmp_path: Path) -> None:
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        process = subprocess.Popen(
            [PACELINE, "http", "-", "--journal", "none", "-o", "-", "-q", "-j", "2"],
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            for n in range(3):  # the input stays open: each result comes back before the next row
                process.stdin.write(json.dumps({"url": f"{server.url}/items/{n}"}) + "\n")
                process.stdin.flush()
                line = process.stdout.readline()
                assert json.loads(line)["result"]["body"]["id"] == str(n)
            process.stdin.close()
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_a_dead_server_fails_each_item_with_the_url_and_what_to_check(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_requests(tmp_path / "in.jsonl", 3)
    done = paceline(
        "http", "in.jsonl", "--base-url", f"http://127.0.0.1:{port}", "--retries", "1",
        "--journal", "j.journal", "-o", "out.jsonl", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["error_code"] for r in rows] == ["connection"] * 3
    assert all(r["attempts"] == 2 for r in rows)
    assert f"cannot connect to http://127.0.0.1:{port}/items/" in rows[0]["error"]
    assert "is the server up" in done.stderr  # the report's top errors say it too
    assert counts(tmp_path / "j.journal") == {"succeeded": 0, "failed": 3}
