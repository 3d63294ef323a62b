"""``paceline report``: the numbers build_report finds in a journal, and the text summary."""

import json
import math

import pytest

from paceline.cli.report import build_report, normalise_error, render_text
from paceline.stores import Journal
from paceline.stores.view import JournalView

T0 = 1_700_000_000.0
UUIDS = ["123e4567-e89b-12d3-a456-426614174000", "00000000-0000-4000-8000-00000000abcd"]
HEX_IDS = ["9f86d081884c7d65a1", "e3b0c44298fc1c149a"]


def snapshot(elapsed, **counters):
    """A Snapshot's fields (paceline.cli.metrics.Snapshot), with varied chart values."""
    k = elapsed
    values = {
        "elapsed_s": float(elapsed),
        "total": 30,
        "settled": 0,
        "succeeded": 0,
        "failed": 0,
        "restored": 0,
        "in_flight": 2 + int(k) % 3,
        "attempts": 0,
        "retries": 0,
        "throttled": 0,
        "errors": 0,
        "concurrency_limit": 8 + int(k) // 2,
        "rate_limit_per_s": 20.0 + 5 * math.sin(k / 2),
        "rate_per_s": 10.0 + 3 * math.sin(k / 3),
        "attempt_rate_per_s": 12.0 + 3 * math.cos(k / 2),
        "eta_s": None,
        "latency_p50_s": 0.1 + 0.02 * math.sin(k),
        "latency_p90_s": 0.25 + 0.01 * k,
        "latency_p99_s": 0.5 + 0.1 * math.cos(k / 2),
    }
    values.update(counters)
    return values


def make_http_journal(path, *, label="users", samples=True):
    """30 items of an ``http`` batch over two runs (the first killed): known numbers below."""
    with Journal.open(path, fingerprint="f00d", label=label) as journal:
        journal.set_meta("cli.command", "http")
        for k in range(1, 21):  # 20 successes, durations 0.1 .. 2.0; 3 of them retried once
            result = {
                "status_code": 201 if k > 18 else 200,
                "headers": {"content-type": "application/json"},
                "body": {"id": k},
                "elapsed_s": k / 10,
            }
            attempts = 2 if k in (3, 6, 9) else 1
            journal.record(
                f"ok{k}", success=True, result=result, duration_s=k / 10, attempts=attempts
            )
        for ident in UUIDS + HEX_IDS:  # 4 x 503, 3 attempts each
            error = RuntimeError(f"HTTP 503: upstream busy (request {ident})")
            journal.record(f"busy-{ident}", success=False, error=error, attempts=3)
        for user in (1234, 98, 7):  # 3 x 404
            error = LookupError(f"HTTP 404: user {user} not found")
            journal.record(f"user{user}", success=False, error=error)
        for n in range(2):  # 2 timeouts, no status
            error = TimeoutError("read timed out after 30.0 s")
            journal.record(f"slow{n}", success=False, error=error, attempts=2)
        error = RuntimeError("HTTP 429: slow down")
        journal.record("throttled", success=False, error=error, attempts=5)
        if not samples:
            return
        start = {"kind": "start", "command": "http", "rates": ["50/s"], "adaptive": True}
        # Run 1: 10 ticks, then killed (no end). Its last tick counts: 12 settled, 3 throttled.
        journal.add_sample({**start, "run": 1, "t": T0, "concurrency": "auto"})
        for k in range(1, 11):
            counters = {"settled": k + 2 if k == 10 else k, "throttled": 3 if k == 10 else 1}
            counters.update(attempts=25, retries=5, errors=4) if k == 10 else None
            journal.add_sample({"kind": "tick", "run": 1, "t": T0 + k, **snapshot(k, **counters)})
        # Run 2, 500 s later: 5 ticks and an end; the end's snapshot counts.
        journal.add_sample({**start, "run": 2, "t": T0 + 500, "concurrency": "8"})
        for k in range(1, 6):
            tick = snapshot(k, settled=12 + k, restored=12, throttled=1)
            journal.add_sample({"kind": "tick", "run": 2, "t": T0 + 500 + k, **tick})
        final = snapshot(
            5.5, settled=30, restored=12, throttled=2, succeeded=20, failed=10, run_succeeded=8
        )
        final.update(attempts=30, retries=12, errors=10)
        journal.add_sample(
            {
                "kind": "end",
                "run": 2,
                "t": T0 + 505.5,
                "exit_code": 1,
                "reason": "failed",
                "snapshot": final,
            }
        )


def report_of(path):
    with JournalView.open(path) as view:
        return build_report(view)


@pytest.fixture
def http_report(tmp_path):
    path = tmp_path / "http.journal"
    make_http_journal(path)
    return report_of(path)


def test_outcomes_and_runs(http_report):
    report = http_report
    assert (report.items, report.succeeded, report.failed) == (30, 20, 10)
    assert report.command == "http"
    assert report.label == "users"
    assert report.fingerprint == "f00d"
    assert report.input_total == 30
    first, second = report.runs
    assert (first.run, first.reason, first.exit_code, first.ended_at) == (1, None, None, None)
    assert first.started_at == T0
    assert first.last_seen_at == T0 + 10
    assert (first.elapsed_s, first.settled, first.throttled) == (10.0, 12, 3)
    assert (first.concurrency, first.rates, first.adaptive) == ("auto", ["50/s"], True)
    assert (second.run, second.reason, second.exit_code) == (2, "failed", 1)
    assert (second.started_at, second.ended_at) == (T0 + 500, T0 + 505.5)
    assert (second.elapsed_s, second.settled, second.restored) == (5.5, 30, 12)
    # Runs back to back on the timeline: run 2 starts where run 1 ended, not 500 s later.
    assert (first.offset_s, second.offset_s) == (0.0, 10.0)
    xs = [point.x_s for point in report.timeline]
    assert xs == [*range(1, 11), 11.0, 12.0, 13.0, 14.0, 15.0, 15.5]
    assert [point.run for point in report.timeline] == [1] * 10 + [2] * 6


def test_status_codes(http_report):
    assert http_report.status_kind == "http"
    assert http_report.status_codes == {"200": 18, "201": 2, "404": 3, "429": 1, "503": 4}
    assert list(http_report.status_codes) == ["200", "201", "404", "429", "503"]
    assert http_report.no_status == 2  # the timeouts


def test_latency_retries_throttles_throughput(http_report):
    report = http_report
    # Nearest rank over the 20 durations 0.1 .. 2.0 (failures have none: skipped).
    assert report.latency_count == 20
    assert report.latency_p50_s == pytest.approx(1.0)
    assert report.latency_p90_s == pytest.approx(1.8)
    assert report.latency_p99_s == pytest.approx(2.0)
    assert report.latency_max_s == pytest.approx(2.0)
    # What the runs sent (run 1's last tick + run 2's end), not the items' last counts: the
    # attempts in flight when run 1 was killed count too (the per-item sum would say 47).
    assert report.attempts == 25 + 30
    assert report.retries == 5 + 12
    assert report.throttled == 3 + 2
    assert report.errors == 4 + 10
    assert report.elapsed_s == pytest.approx(15.5)
    assert report.throughput_per_s == pytest.approx((12 + 30 - 12) / 15.5)
    assert report.succeeded_per_s == pytest.approx(20 / 15.5)


def test_top_errors_group_messages_by_their_shape(http_report):
    groups = [(group.message, group.count) for group in http_report.top_errors]
    assert groups == [
        ("HTTP 503: upstream busy (request <id>)", 4),
        ("HTTP 404: user <n> not found", 3),
        ("read timed out after <n> s", 2),
        ("HTTP 429: slow down", 1),
    ]
    first = http_report.top_errors[0]
    assert first.error_type == "RuntimeError"
    assert first.example == f"HTTP 503: upstream busy (request {UUIDS[0]})"
    assert http_report.error_groups == 4


def test_text_summary(http_report):
    text = render_text(http_report)
    lines = text.splitlines()
    assert 8 <= len(lines) <= 25
    assert "\x1b" not in text
    assert lines[0] == f"paceline report: {http_report.path}"
    assert "30 of 30 input: 20 succeeded, 10 failed" in text
    assert "p50 1.00s, p90 1.80s, p99 2.00s" in text
    assert "attempts     55 sent: 17 retries, 5 throttled, 14 errors" in text
    assert "1.94 items/s (1.29/s succeeded) over 15.5s" in text
    assert "200: 18, 201: 2, 404: 3, 429: 1, 503: 4, none: 2" in text
    run_lines = [line for line in lines if line.startswith("run ")]
    assert len(run_lines) == 2
    assert "10.0s" in run_lines[0]
    assert "no end recorded" in run_lines[0]
    assert "failed (exit 1)" in run_lines[1]
    assert "18 settled, 12 resumed" in run_lines[1]
    errors = lines[lines.index("top errors") + 1 :]
    assert errors == [
        "  4  HTTP 503: upstream busy (request <id>)",
        "  3  HTTP 404: user <n> not found",
        "  2  read timed out after <n> s",
        "  1  HTTP 429: slow down",
    ]
    # The label column is aligned: every value starts in the same column.
    rows = [line for line in lines[2:] if not line.startswith(" ") and line != "top errors"]
    starts = {len(line) - len(line[line.index("  ") :].lstrip()) for line in rows}
    assert len(starts) == 1


def test_to_dict_is_json_ready(http_report):
    data = json.loads(json.dumps(http_report.to_dict()))
    assert data["status_codes"]["503"] == 4
    assert data["top_errors"][0]["count"] == 4
    assert data["runs"][1]["reason"] == "failed"
    assert "timeline" not in data
    full = json.loads(json.dumps(http_report.to_dict(timeline=True)))
    assert len(full["timeline"]) == 16
    assert full["timeline"][0]["values"]["concurrency_limit"] == 8


def test_exec_batches_count_exit_codes(tmp_path):
    path = tmp_path / "exec.journal"
    with Journal.open(path, fingerprint="e") as journal:
        journal.set_meta("cli.command", "exec")
        for n in range(3):
            result = {"exit_code": 0, "stdout": f"line {n}\n", "stderr": ""}
            journal.record(f"ok{n}", success=True, result=result, duration_s=0.5)
        journal.record("a", success=False, error=RuntimeError("exit code 3: oops"))
        journal.record("b", success=False, error=RuntimeError("exit code 3: oops again"))
        killed = RuntimeError("exit code -9 (killed by SIGKILL)")
        journal.record("c", success=False, error=killed)
        journal.record("d", success=False, error=FileNotFoundError("no such command"))
    report = report_of(path)
    assert report.status_kind == "exec"
    assert report.status_codes == {"-9": 1, "0": 3, "3": 2}
    assert report.no_status == 1
    text = render_text(report)
    (line,) = [line for line in text.splitlines() if line.startswith("exit code ")]
    assert line.split(None, 2)[2] == "-9: 1, 0: 3, 3: 2, none: 1"
    assert "HTTP" not in text
    assert [g.message for g in report.top_errors][:2] == [
        "exit code 3: oops",
        "exit code 3: oops again",
    ]


def test_call_batches_have_no_status_table(tmp_path):
    path = tmp_path / "call.journal"
    with Journal.open(path, fingerprint="c") as journal:
        journal.set_meta("cli.command", "call")
        journal.record("a", success=True, result={"status_code": 200})  # a user's dict
        journal.record("b", success=False, error=ValueError("HTTP 500 is what they said"))
    report = report_of(path)
    assert report.status_kind is None
    assert report.status_codes == {}
    assert "HTTP status" not in render_text(report)
    assert "exit code" not in render_text(report)


def test_the_command_is_taken_from_the_samples_or_the_results(tmp_path):
    from_samples = tmp_path / "a.journal"
    with Journal.open(from_samples, fingerprint="a") as journal:
        journal.record("x", success=True, result={"exit_code": 0})
        journal.add_sample({"kind": "start", "run": 1, "t": T0, "command": "exec"})
    report = report_of(from_samples)
    assert (report.command, report.status_kind, report.status_codes) == ("exec", "exec", {"0": 1})

    guessed = tmp_path / "b.journal"
    with Journal.open(guessed, fingerprint="b") as journal:  # no meta, no samples
        journal.record("x", success=True, result={"status_code": 204, "body": ""})
        journal.record("y", success=False, error=RuntimeError("HTTP 502: bad gateway"))
    report = report_of(guessed)
    assert (report.command, report.status_kind) == (None, "http")
    assert report.status_codes == {"204": 1, "502": 1}

    from_spec = tmp_path / "s.journal"  # the CLI's stored spec (paceline.cli.spec.RunSpec)
    with Journal.open(from_spec, fingerprint="s") as journal:
        journal.set_meta("cli.spec", json.dumps({"command": "exec", "argv": ["true"]}))
        journal.record("x", success=True, result={"exit_code": 0, "status_code": 200})
    report = report_of(from_spec)
    assert (report.command, report.status_kind, report.status_codes) == ("exec", "exec", {"0": 1})

    plain = tmp_path / "c.journal"
    with Journal.open(plain, fingerprint="c") as journal:
        journal.record("x", success=True, result=7)
    assert report_of(plain).status_kind is None


def test_without_a_timeline_throughput_and_throttles_are_omitted(tmp_path):
    path = tmp_path / "old.journal"
    make_http_journal(path, samples=False)
    report = report_of(path)
    assert report.runs == []
    assert report.timeline == []
    assert (report.throughput_per_s, report.throttled, report.elapsed_s) == (None, None, None)
    assert report.items == 30  # the outcomes are all there
    text = render_text(report)
    assert "throughput" not in text
    assert "throttled" not in text
    assert "attempts     47: 17 retries" in text  # the items' own counts: all there is


def test_an_empty_journal(tmp_path):
    path = tmp_path / "empty.journal"
    Journal.open(path, fingerprint="z").close()
    report = report_of(path)
    assert (report.items, report.succeeded, report.failed, report.attempts) == (0, 0, 0, 0)
    assert (report.latency_p50_s, report.latency_count, report.top_errors) == (None, 0, [])
    text = render_text(report)
    assert "0: 0 succeeded, 0 failed" in text
    assert "latency" not in text


def test_only_the_ten_most_common_errors_are_listed(tmp_path):
    path = tmp_path / "errors.journal"
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    with Journal.open(path, fingerprint="e") as journal:
        for rank, word in enumerate(words):
            for n in range(12 - rank):  # alpha 12 times, beta 11, ... mu once
                journal.record(f"{word}{n}", success=False, error=RuntimeError(f"no {word}"))
    report = report_of(path)
    assert [(g.message, g.count) for g in report.top_errors] == [
        (f"no {word}", 12 - rank) for rank, word in enumerate(words[:10])
    ]
    assert report.error_groups == 12
    assert "top errors (2 more kinds not shown)" in render_text(report)


def test_a_report_while_the_batch_runs(tmp_path):
    path = tmp_path / "live.journal"
    with Journal.open(path, fingerprint="l") as journal:
        journal.add_sample({"kind": "start", "run": 1, "t": T0, "command": "call"})
        journal.record("a", success=True, result=1, duration_s=0.25)
        journal.add_sample({"kind": "tick", "run": 1, "t": T0 + 2, **snapshot(2, settled=1)})
        journal.flush()
        report = report_of(path)
    assert (report.items, report.latency_p50_s) == (1, 0.25)
    assert report.runs[0].reason is None
    assert report.throughput_per_s == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("HTTP 404: user 12345 not found", "HTTP 404: user <n> not found"),
        ("exit code 2: line 17: bad", "exit code 2: line <n>: bad"),
        ("exit code -9 (killed by SIGKILL)", "exit code -9 (killed by SIGKILL)"),
        ("timed out after 2.5 s", "timed out after <n> s"),
        (f"no order {UUIDS[0]}", "no order <id>"),
        ("token deadbeefcafe01 expired", "token <id> expired"),
        ("  spread\n over\tlines ", "spread over lines"),
        ("Connection refused", "Connection refused"),
    ],
)
def test_normalise_error(message, expected):
    assert normalise_error(message) == expected


def test_normalise_error_caps_the_length():
    assert len(normalise_error("x" * 1000)) == 200


# --- the report agrees with what was sent and with the closing line --------------------------


def test_after_retry_failed_the_attempts_are_the_requests_sent(tmp_path):
    # Seen: "attempts 300" for 330 requests sent: each item kept only its last run's count.
    import subprocess
    import sys
    from pathlib import Path

    from paceline.testing.api_server import ApiConfig, ApiServer

    paceline = str(Path(sys.executable).with_name("paceline"))
    with ApiServer(ApiConfig(base_latency_s=0.001, error_rate=0.5, seed=3)) as server:
        rows = "".join(f'{{"id": "i{n}", "url": "{server.url}/items/{n}"}}\n' for n in range(40))
        (tmp_path / "in.jsonl").write_text(rows)
        journal = tmp_path / "j.journal"
        first = [
            paceline,
            "http",
            "in.jsonl",
            "-j",
            "4",
            "--retries",
            "0",
            "--journal",
            "j.journal",
        ]
        runs = [first, [paceline, "resume", "j.journal", "--retry-failed"]]
        for argv in runs:
            done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert done.returncode in (0, 1), done.stderr
        stats = server.stats()
    sent = stats["requests"]
    report = report_of(journal)
    assert sent > 40  # some failed and ran again
    assert report.attempts == sent
    assert report.errors == stats["errors_500"]
    assert f"attempts     {sent} sent: 0 retries, 0 throttled" in done.stderr
    second = report.runs[1]
    assert f"{second.settled - second.restored} settled, {second.restored} resumed" in done.stderr
