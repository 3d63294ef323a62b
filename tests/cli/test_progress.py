"""The progress display: plain lines off a terminal, in-place redraws on one, and a real pty."""

from __future__ import annotations

import io
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from paceline.cli.metrics import Metrics, Snapshot
from paceline.cli.progress import ProgressView, plain_final_line, plain_status_line
from paceline.figures import (
    format_count,
    format_duration,
    format_latency,
    format_percent,
    format_rate,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"

BASE = Snapshot(
    elapsed_s=0.0,
    total=5000,
    settled=0,
    succeeded=0,
    failed=0,
    restored=0,
    in_flight=8,
    attempts=0,
    retries=3,
    throttled=1,
    errors=0,
    concurrency_limit=16,
    rate_limit_per_s=50.0,
    rate_per_s=48.9,
    attempt_rate_per_s=50.0,
    eta_s=78.0,
    latency_p50_s=0.12,
    latency_p90_s=0.5,
    latency_p99_s=1.2,
)


def snap(elapsed_s: float, settled: int, **changes: object) -> Snapshot:
    restored = changes.get("restored", 0)
    assert isinstance(restored, int)
    changes.setdefault("run_succeeded", settled - restored)
    return replace(BASE, elapsed_s=elapsed_s, settled=settled, succeeded=settled, **changes)


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_env(monkeypatch):
    """A wide, colour-capable terminal as far as rich's environment checks go."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("LINES", "40")
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def screen_text(raw: str) -> str:
    return ANSI.sub("", raw)


def last_frame(raw: str) -> list[str]:
    """The lines of the last thing drawn: what follows the last cursor-up/erase sequence."""
    tail = re.split(r"(?:\x1b\[2K|\x1b\[1A|\r)+", raw)[-1]
    return screen_text(tail).rstrip("\n").split("\n")


# --- not a terminal -------------------------------------------------------------------------


def test_plain_lines_every_five_seconds_then_a_final_line():
    out = io.StringIO()
    view = ProgressView(out, title="paceline")
    assert not view.live
    view.start()
    for second in range(13):
        view.update(snap(second, 100 * second))
    view.finish(snap(12.5, 5000, in_flight=0, eta_s=0.0), outcome="done")

    text = out.getvalue()
    assert "\x1b" not in text
    assert "\r" not in text
    tallies = "retries 3 · throttled 1 · errors 0 · failed 0"
    rates = "items 48.9/s · attempts 50.0/s (limit 50/s)"
    assert text.splitlines() == [
        f"paceline: 0/5,000 (0%) · {rates} · in flight 8/16 · {tallies}"
        " · p50 120ms p99 1.20s · eta 1m18s",
        f"paceline: 500/5,000 (10%) · {rates} · in flight 8/16 · {tallies}"
        " · p50 120ms p99 1.20s · eta 1m18s",
        f"paceline: 1,000/5,000 (20%) · {rates} · in flight 8/16 · {tallies}"
        " · p50 120ms p99 1.20s · eta 1m18s",
        f"paceline: done · 5,000/5,000 (100%) in 12s · avg 400.0 items/s · {tallies}",
    ]
    assert text.endswith("\n")


def test_plain_schedule_follows_the_batch_clock_not_the_update_count():
    """A line at the first update, then one at the first update at or past each multiple of
    interval_s; a gap of several intervals gives one line, not a burst."""
    out = io.StringIO()
    view = ProgressView(out, title="t", interval_s=5)
    for elapsed in (0.3, 0.4, 4.9, 5.2, 9.99, 14.0, 14.5, 15.1, 40.0, 41.0):
        view.update(snap(elapsed, round(elapsed * 10)))
    assert [line.split(" ·")[0] for line in out.getvalue().splitlines()] == [
        "t: 3/5,000 (0%)",
        "t: 52/5,000 (1%)",
        "t: 140/5,000 (2%)",
        "t: 151/5,000 (3%)",
        "t: 400/5,000 (8%)",
    ]


def test_plain_unknown_total_has_no_percentage_and_no_eta():
    out = io.StringIO()
    view = ProgressView(out, title="paceline", interval_s=1)
    unknown = {"total": None, "eta_s": None, "concurrency_limit": None, "rate_limit_per_s": None}
    view.update(snap(0, 0, **unknown))
    view.update(snap(1, 1234, restored=1000, **unknown))
    view.finish(
        snap(2, 2000, failed=2, restored=1000, run_succeeded=998, **unknown), outcome="interrupted"
    )
    lines = out.getvalue().splitlines()
    assert lines[1] == (
        "paceline: 1,234 done · items 48.9/s · attempts 50.0/s · in flight 8 · retries 3"
        " · throttled 1 · errors 0 · failed 0 · resumed 1,000 · p50 120ms p99 1.20s"
    )
    assert lines[2] == (
        "paceline: interrupted · 2,000 done in 2s · avg 500.0 items/s (499.0/s succeeded)"
        " · retries 3 · throttled 1 · errors 0 · failed 2 · resumed 1,000"
    )
    assert "%" not in out.getvalue()
    assert "eta" not in out.getvalue()


def test_plain_log_lines_are_printed_as_they_come_without_control_characters():
    out = io.StringIO()
    view = ProgressView(out, title="p")
    view.update(snap(0, 0))
    view.log("line 17: bad JSON, skipped")
    view.log("evil\r\x1b[2Jline")
    lines = out.getvalue().splitlines()
    assert lines[1:] == ["line 17: bad JSON, skipped", "evil\\r\\x1b[2Jline"]
    assert "\x1b" not in out.getvalue()
    assert "\r" not in out.getvalue()


def test_plain_lines_on_an_ascii_stream_stay_ascii():
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    view = ProgressView(out, title="p")
    view.update(snap(0, 10))
    view.log("caf\u00e9")
    view.finish(snap(1, 20), outcome="done")
    assert raw.getvalue().decode("ascii").splitlines() == [
        "p: 10/5,000 (0%) - items 48.9/s - attempts 50.0/s (limit 50/s) - in flight 8/16"
        " - retries 3 - throttled 1 - errors 0 - failed 0 - p50 120ms p99 1.20s - eta 1m18s",
        "caf\\xe9",
        "p: done - 20/5,000 (0%) in 1s - avg 20.0 items/s - retries 3 - throttled 1 - errors 0"
        " - failed 0",
    ]


def test_quiet_draws_nothing_at_all(terminal_env):
    for live in (None, True, False):
        out = FakeTty()
        with ProgressView(out, title="p", live=live, quiet=True) as view:
            view.update(snap(0, 1))
            view.update(snap(10, 2))
            view.log("hello")
            view.finish(snap(11, 3), outcome="done")
        assert out.getvalue() == ""


def test_live_is_decided_by_isatty_and_term(monkeypatch, terminal_env):
    assert not ProgressView(io.StringIO(), title="p").live
    assert ProgressView(FakeTty(), title="p").live
    assert not ProgressView(FakeTty(), title="p", live=False).live
    monkeypatch.setenv("TERM", "dumb")
    assert not ProgressView(FakeTty(), title="p").live
    assert ProgressView(io.StringIO(), title="p", live=True).live  # asked for explicitly


def test_without_rich_a_terminal_gets_the_plain_lines(monkeypatch, terminal_env):
    monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails
    out = FakeTty()
    view = ProgressView(out, title="p", live=True)
    assert not view.live
    view.update(snap(0, 10))
    view.finish(snap(1, 20), outcome="done")
    assert out.getvalue().startswith("p: 10/5,000 (0%) · ")
    assert "\x1b" not in out.getvalue()


class BrokenPipe(FakeTty):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.writes_left = after

    def write(self, text: str) -> int:
        if self.writes_left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.writes_left -= 1
        return super().write(text)


@pytest.mark.parametrize("live", [False, True])
def test_a_display_that_cannot_be_written_goes_quiet_instead_of_failing(terminal_env, live):
    out = BrokenPipe(after=1)
    view = ProgressView(out, title="p", live=live, interval_s=1)
    view.update(snap(0, 1))
    for second in range(1, 4):
        view.update(snap(second, second))  # the pipe broke: no exception
    view.log("hello")
    view.finish(snap(5, 5), outcome="done")
    assert view.quiet
    assert out.getvalue().count("\n") <= 3


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval_s"):
        ProgressView(io.StringIO(), title="p", interval_s=0)


def test_the_rates_say_what_they_count_and_the_limit_is_compared_with_attempts():
    # Seen: "232.8/s of 34.4/s" — items settled per second against a limit on starts.
    s = snap(10.0, 2000, rate_per_s=232.8, attempt_rate_per_s=34.1, rate_limit_per_s=34.4)
    line = plain_status_line(s, title="t")
    assert "items 232.8/s" in line
    assert "attempts 34.1/s (limit 34.4/s)" in line
    assert " of " not in line
    unlimited = plain_status_line(replace(s, rate_limit_per_s=None), title="t")
    assert "items 232.8/s · attempts 34.1/s · in flight" in unlimited


def test_the_final_average_says_what_it_counts():
    # Seen: "avg 41.3/s" counting the failed items as if they were throughput.
    s = snap(10.0, 500, failed=100, restored=100, run_succeeded=300)
    line = plain_final_line(s, outcome="failed", title="t")
    assert "avg 40.0 items/s (30.0/s succeeded)" in line
    everything_ok = plain_final_line(snap(10.0, 400, run_succeeded=400), outcome="done")
    assert "avg 40.0 items/s ·" in everything_ok
    assert "succeeded" not in everything_ok


HOLD = {"hold_reason": "the server asked to wait (Retry-After)", "hold_left_s": 28.2}


def test_plain_shows_a_hold_with_its_reason_and_time_left_as_soon_as_it_is_known():
    out = io.StringIO()
    view = ProgressView(out, title="t")
    view.update(snap(1.0, 10))
    view.update(snap(1.4, 10, **HOLD, held_s=0.0))  # not 5 s later: now
    view.update(snap(1.6, 10, **{**HOLD, "hold_left_s": 28.0}, held_s=0.2))  # same hold: no line
    view.update(snap(3.0, 10, hold_reason="waiting to retry 8 items", held_s=2.1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "on hold" not in lines[0]
    assert "on hold: the server asked to wait (Retry-After), 28s left" in lines[1]
    assert "on hold: waiting to retry 8 items, for 2s" in lines[2]
    assert lines[1].startswith("t: 10/5,000 (0%) · on hold: ")


def test_live_shows_a_hold_on_its_own_line(terminal_env):
    out = io.StringIO()
    view = ProgressView(out, title="p", live=True)
    view.update(snap(5.0, 10, **HOLD, held_s=3.0))
    frame = last_frame(out.getvalue())
    assert frame[2] == "on hold: the server asked to wait (Retry-After), 28s left"
    view.update(snap(6.0, 11))
    assert all("on hold" not in line for line in last_frame(out.getvalue()))


# --- what Metrics calls a hold ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_hold_is_shown_once_it_lasts_or_will_last_over_two_seconds():
    clock = Clock()
    metrics = Metrics(total=10, clock=clock)
    metrics.hold("pause", "short", until_s=1.5)
    assert metrics.snapshot().hold_reason is None  # 1.5 s: the pacer's ordinary waits
    metrics.hold("pause", "long", until_s=30.0)
    s = metrics.snapshot()
    assert (s.hold_reason, s.hold_left_s, s.held_s) == ("long", 30.0, 0.0)
    clock.now = 10.0
    metrics.hold("pause", "long", until_s=30.0)  # told again: still held since 0
    s = metrics.snapshot()
    assert (s.hold_left_s, s.held_s) == (20.0, 10.0)
    clock.now = 30.0
    assert metrics.snapshot().hold_reason is None  # ended by itself
    metrics.hold("stop", "stopping")  # no end known: shown after 2 s
    assert metrics.snapshot().hold_reason is None
    clock.now = 32.5
    s = metrics.snapshot()
    assert (s.hold_reason, s.hold_left_s, s.held_s) == ("stopping", None, 2.5)
    metrics.hold("stop", None)
    assert metrics.snapshot().hold_reason is None


def test_items_waiting_for_their_retries_with_nothing_running_are_a_hold():
    clock = Clock()
    metrics = Metrics(total=10, clock=clock)
    for _ in range(3):
        metrics.attempt_started(first=True)
    metrics.settled(failed=True, attempted=False)  # a bad input row: no attempt, not open
    metrics.settled(failed=False, restored=True)
    for _ in range(3):
        metrics.attempt_ended(0.1, throttled=False, failed=True)
    clock.now = 1.0
    assert metrics.snapshot().hold_reason is None
    clock.now = 4.0
    s = metrics.snapshot()
    assert (s.hold_reason, s.held_s) == ("waiting to retry 3 items", 4.0)
    metrics.attempt_started(first=False)  # a retry starts: not held any more
    assert metrics.snapshot().hold_reason is None
    metrics.attempt_ended(0.1, throttled=False, failed=False)
    metrics.settled(failed=False)
    clock.now = 9.0
    assert metrics.snapshot().hold_reason == "waiting to retry 2 items"


def test_a_hold_that_was_said_is_shown_before_the_retry_wait_it_causes():
    clock = Clock()
    metrics = Metrics(total=10, clock=clock)
    metrics.attempt_started()
    metrics.attempt_ended(0.1, throttled=True, failed=True)
    metrics.hold("pause", "the server asked to wait (Retry-After)", until_s=6.0)
    clock.now = 4.0  # the item has waited 4 s to retry: because of the pause
    assert metrics.snapshot().hold_reason == "the server asked to wait (Retry-After)"
    clock.now = 6.5
    assert metrics.snapshot().hold_reason == "waiting to retry 1 item"


def test_rates_in_the_first_second_are_not_extrapolated_from_a_burst():
    clock = Clock()
    metrics = Metrics(total=10, clock=clock)
    for _ in range(7):
        metrics.attempt_started()
    clock.now = 0.2
    assert metrics.snapshot().attempt_rate_per_s == 7.0  # not 35/s
    clock.now = 2.0
    assert metrics.snapshot().attempt_rate_per_s == 3.5


def test_pacing_holds_come_from_the_controller_and_the_server_budget():
    from paceline.cli.metrics import hold_from_pacing
    from paceline.http._limits import ServerLimits
    from paceline.policy.adaptive import AdaptiveController

    clock = Clock()
    metrics = Metrics(total=None, clock=clock)
    controller = AdaptiveController()
    limits = ServerLimits()
    second = 1_000_000_000
    hold_from_pacing(metrics, controller, limits, now_ns=5 * second)
    assert metrics.snapshot().hold_reason is None
    limits.budget, limits.budget_until_ns = 0, 65 * second  # "remaining 0", reset in 60 s
    hold_from_pacing(metrics, controller, limits, now_ns=5 * second)
    s = metrics.snapshot()
    assert (s.hold_reason, s.hold_left_s) == (
        "the server said no requests remain until its reset",
        60.0,
    )
    controller.pause_until_ns = 500 * second
    controller.events.append((5 * second, "pause", 495.0))
    hold_from_pacing(metrics, controller, limits, now_ns=5 * second)
    s = metrics.snapshot()
    assert (s.hold_reason, s.hold_left_s) == ("the server asked to wait (Retry-After)", 495.0)
    controller.pause_until_ns = 0
    limits.budget_until_ns = 0
    hold_from_pacing(metrics, controller, limits, now_ns=6 * second)
    assert metrics.snapshot().hold_reason is None


# --- live, rendered into a string -------------------------------------------------------------


def test_live_shows_the_numbers_and_finish_restores_the_terminal(terminal_env):
    out = io.StringIO()
    view = ProgressView(out, title="paceline http", live=True)
    view.start()
    assert out.getvalue().startswith(HIDE_CURSOR)
    view.update(snap(65.0, 1200, restored=1200))
    frame = last_frame(out.getvalue())
    assert len(frame) == 3
    assert "paceline http" in frame[0]
    assert "1,200/5,000 24%" in frame[0]
    assert "1m05s" in frame[0]
    assert "eta 1m18s" in frame[0]
    assert "━" in frame[0]
    assert frame[1] == (
        "items 48.9/s · attempts 50.0/s (limit 50/s) · in flight 8/16 · retries 3 · throttled 1"
        " · errors 0 · failed 0 · p50 120ms p99 1.20s"
    )
    assert frame[2] == "resumed: 1,200 from the journal"

    view.finish(snap(100.0, 5000, restored=1200, in_flight=0, eta_s=0.0), outcome="done")
    raw = out.getvalue()
    assert raw.endswith("\n" + SHOW_CURSOR)
    assert screen_text(raw).endswith("\n")
    final = last_frame(raw)
    assert "5,000/5,000 100%" in final[0]
    assert "done" in final[0]
    assert "eta" not in final[0]
    assert final[1].startswith("avg 38.0 items/s · retries 3")
    assert "in flight" not in final[1]

    # Finished means finished: nothing more is drawn.
    view.update(snap(101.0, 5001))
    view.finish(snap(101.0, 5001), outcome="done")
    assert out.getvalue() == raw


def test_live_redraws_at_most_ten_times_a_second_of_the_batch(terminal_env):
    out = io.StringIO()
    view = ProgressView(out, title="p", live=True)
    for settled, elapsed in enumerate((0.0, 0.05, 0.1, 0.12, 0.19, 0.25, 0.3), start=1):
        view.update(snap(elapsed, settled))
    drawn = re.findall(r" (\d+)/5,000", screen_text(out.getvalue()))
    assert drawn == ["1", "3", "6"]  # at 0.0, 0.1 and 0.25 s: each 0.1 s or more after the last


class CountingWrites(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_live_redraw_is_one_write_that_erases_and_redraws(terminal_env):
    """No flicker: the terminal never sees a frame half drawn or erased-but-not-redrawn."""
    out = CountingWrites()
    view = ProgressView(out, title="p", live=True)
    view.update(snap(1.0, 10))
    before = len(out.writes)
    view.update(snap(2.0, 20))
    (redraw,) = out.writes[before:]
    assert redraw.startswith("\r\x1b[2K\x1b[1A\x1b[2K")  # back over the two lines...
    assert "20/5,000" in screen_text(redraw)  # ...and the new frame, in the same write
    view.log("hello")
    (logged,) = out.writes[before + 1 :]
    assert "hello" in logged
    assert "20/5,000" in screen_text(logged)


def test_live_unknown_total_is_a_spinner_and_a_count(terminal_env):
    out = io.StringIO()
    view = ProgressView(out, title="p", live=True)
    view.update(snap(3.0, 1234, total=None, eta_s=None, concurrency_limit=None))
    frame = last_frame(out.getvalue())
    assert frame[0][0] in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
    assert "1,234 done" in frame[0]
    assert "━" not in frame[0]
    assert "%" not in frame[0]
    assert "eta" not in frame[0]
    assert frame[1].startswith("items 48.9/s · attempts 50.0/s (limit 50/s) · in flight 8 · ")
    view.finish(snap(4.0, 1300, total=None, eta_s=None), outcome="interrupted")
    assert "✗ p 1,300 done · 4s · interrupted" in last_frame(out.getvalue())[0]


def test_live_log_goes_above_the_display_literally(terminal_env):
    out = io.StringIO()
    view = ProgressView(out, title="p", live=True)
    view.update(snap(1.0, 10))
    view.log("line 17: bad JSON [bold]skipped[/bold]")
    frame = last_frame(out.getvalue())
    assert frame[0] == "line 17: bad JSON [bold]skipped[/bold]"
    assert "10/5,000" in frame[1]  # the display, redrawn under it
    view.finish(snap(2.0, 20), outcome="done")
    text = screen_text(out.getvalue())
    assert text.count("line 17: bad JSON") == 1


def test_live_lines_fit_a_narrow_terminal(monkeypatch, terminal_env):
    monkeypatch.setenv("COLUMNS", "50")
    out = io.StringIO()
    view = ProgressView(out, title="a rather long title for a batch", live=True)
    view.update(snap(5.0, 2500, restored=100))
    frame = last_frame(out.getvalue())
    assert len(frame) == 3
    assert all(len(line) <= 50 for line in frame), frame


@pytest.mark.parametrize(
    ("exc", "outcome"), [(KeyboardInterrupt, "interrupted"), (RuntimeError, "failed")]
)
def test_leaving_the_context_on_an_exception_restores_the_terminal(terminal_env, exc, outcome):
    out = io.StringIO()

    def run() -> None:
        with ProgressView(out, title="p", live=True) as view:
            view.update(snap(1.0, 10))
            raise exc

    with pytest.raises(exc):
        run()
    raw = out.getvalue()
    assert raw.endswith("\n" + SHOW_CURSOR)
    assert outcome in last_frame(raw)[0]


def test_leaving_the_context_before_any_update_restores_the_terminal(terminal_env):
    out = io.StringIO()
    with ProgressView(out, title="p", live=True):
        pass
    assert out.getvalue().startswith(HIDE_CURSOR)
    assert out.getvalue().endswith("\n" + SHOW_CURSOR)


# --- a real terminal ------------------------------------------------------------------------

DRIVER = """
import pathlib, sys, time

from paceline.cli.metrics import Metrics
from paceline.cli.progress import ProgressView

gates = pathlib.Path(sys.argv[1])
metrics = Metrics(total=200)
metrics.concurrency_limit = lambda: 16
metrics.rate_limit_per_s = lambda: 50.0
view = ProgressView(sys.stderr, title="demo")
assert view.live, "stderr is a terminal here"
view.start()


def run_to(n):
    while metrics.settled_count < n:
        metrics.attempt_started()
        metrics.attempt_ended(0.01, throttled=False, failed=False)
        metrics.settled(failed=False)
        view.update(metrics.snapshot())
        time.sleep(0.004)


def hold(name):
    # Keep updating (as the CLI's ticker does) until the test has looked at the screen.
    (gates / f"{name}.ready").touch()
    deadline = time.monotonic() + 30
    while not (gates / f"{name}.go").exists():
        assert time.monotonic() < deadline, f"nobody released {name}"
        view.update(metrics.snapshot())
        time.sleep(0.02)


run_to(50)
hold("one")
run_to(120)
hold("two")
view.log("line 17: bad JSON, skipped")
run_to(200)
view.finish(metrics.snapshot(), outcome="done")
"""


class Tmux:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", os.devnull, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    def screen(self) -> list[str]:
        return self("capture-pane", "-p", "-t", "pv").rstrip("\n").split("\n")

    def cursor_visible(self) -> bool:
        return self("display-message", "-p", "-t", "pv", "#{cursor_flag}").strip() == "1"

    def wait_for(self, predicate, what: str, timeout_s: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; screen:\n" + "\n".join(screen))
            time.sleep(0.05)


def wait_for_file(path: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {path.name}")
        time.sleep(0.02)


def rows_with(screen: list[str], needle: str) -> list[int]:
    return [i for i, row in enumerate(screen) if needle in row]


@pytest.mark.skipif(
    shutil.which("tmux") is None and "CI" not in os.environ, reason="needs tmux (CI installs it)"
)
@pytest.mark.timeout(90)
def test_a_real_terminal_updates_in_place_and_ends_on_a_fresh_line(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    gates = tmp_path / "gates"
    gates.mkdir()
    src = Path(__file__).resolve().parents[2] / "src"
    command = " ".join(
        [
            "env -u COLUMNS -u LINES -u NO_COLOR TERM=screen",
            f"PYTHONPATH={shlex.quote(str(src))}",
            shlex.quote(sys.executable),
            shlex.quote(str(script)),
            shlex.quote(str(gates)),
            "; printf '$ next-prompt\\n'; sleep 60",
        ]
    )
    tmux = Tmux(tmp_path / "tmux.sock")
    tmux("new-session", "-d", "-x", "120", "-y", "30", "-s", "pv", command)
    try:
        wait_for_file(gates / "one.ready")
        first = tmux.wait_for(lambda s: rows_with(s, " 50/200 "), "50/200")
        assert not tmux.cursor_visible()  # hidden while the display runs
        (gates / "one.go").touch()

        wait_for_file(gates / "two.ready")
        second = tmux.wait_for(lambda s: rows_with(s, " 120/200 "), "120/200")
        (gates / "two.go").touch()

        # In place: the count moved on, on the same screen row, and nothing piled up.
        assert rows_with(second, " 120/200 ") == rows_with(first, " 50/200 ")
        assert rows_with(second, " 50/200 ") == []
        assert len(rows_with(first, "/200 ")) == len(rows_with(second, "/200 ")) == 1
        count_row = rows_with(first, " 50/200 ")[0]
        assert "in flight" in first[count_row + 1]
        assert "(limit 50/s)" in first[count_row + 1]

        final = tmux.wait_for(lambda s: rows_with(s, "$ next-prompt"), "the next prompt")
        assert len(rows_with(final, "/200 ")) == 1
        (count_row,) = rows_with(final, "/200 ")
        assert "200/200 100%" in final[count_row]
        assert "done" in final[count_row]
        assert final[count_row + 1].startswith("avg ")
        assert " items/s" in final[count_row + 1]
        # The next output starts at the beginning of the line right after the display.
        assert final[count_row + 2] == "$ next-prompt"
        # The log line sits above the display, once.
        assert rows_with(final, "line 17: bad JSON, skipped") == [count_row - 1]
        assert tmux.cursor_visible()
    finally:
        subprocess.run(
            ["tmux", "-S", str(tmux.socket), "kill-server"], capture_output=True, timeout=10
        )


# --- holds, shown by the real command ----------------------------------------------------------

PACELINE = str(Path(sys.executable).with_name("paceline"))


def write_requests(path: Path, base: str, count: int) -> None:
    path.write_text("".join(f'{{"id": "i{n}", "url": "{base}/items/{n}"}}\n' for n in range(count)))


def paused_server():  # 2 requests per 4 s, then 429 with Retry-After (whole seconds)
    from paceline.testing.api_server import ApiConfig, ApiServer

    return ApiServer(ApiConfig(quota=2, window_s=4.0, retry_after=True, base_latency_s=0.001))


@pytest.mark.timeout(90)
def test_a_pipe_is_told_of_a_server_pause_with_its_reason(tmp_path):
    with paused_server() as server:
        write_requests(tmp_path / "in.jsonl", server.url, 4)
        done = subprocess.run(
            [PACELINE, "http", "in.jsonl", "--journal", "none", "--no-report"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    held = [line for line in done.stderr.splitlines() if "on hold: " in line]
    assert held, done.stderr
    assert re.search(r"on hold: the server asked to wait \(Retry-After\), \ds left", held[0])
    assert "\x1b" not in done.stderr


@pytest.mark.timeout(90)
def test_a_graceful_stop_shows_what_it_waits_for(tmp_path):
    from paceline.testing.api_server import ApiConfig, ApiServer

    with ApiServer(ApiConfig(base_latency_s=5.0)) as server:
        write_requests(tmp_path / "in.jsonl", server.url, 4)
        child = subprocess.Popen(
            [PACELINE, "http", "in.jsonl", "-j", "2", "--journal", "none", "--no-report"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stderr is not None
            first = child.stderr.readline()  # the first status line: attempts are running
            assert "in flight" in first
            child.send_signal(signal.SIGINT)
            rest = child.stderr.read()
            assert child.wait(timeout=60) == 130
        finally:
            child.kill()
            child.wait()
    assert "on hold: stopping: waiting for the running attempts, for 2s" in rest, rest


@pytest.mark.skipif(
    shutil.which("tmux") is None and "CI" not in os.environ, reason="needs tmux (CI installs it)"
)
@pytest.mark.timeout(90)
def test_a_real_terminal_shows_a_server_pause_on_its_own_line(tmp_path):
    with paused_server() as server:
        write_requests(tmp_path / "in.jsonl", server.url, 4)
        src = Path(__file__).resolve().parents[2] / "src"
        command = " ".join(
            [
                f"cd {shlex.quote(str(tmp_path))};",
                "env -u COLUMNS -u LINES -u NO_COLOR TERM=screen",
                f"PYTHONPATH={shlex.quote(str(src))}",
                shlex.quote(PACELINE),
                "http in.jsonl --journal none --no-report",
                "; printf '$ next-prompt\\n'; sleep 60",
            ]
        )
        tmux = Tmux(tmp_path / "tmux.sock")
        tmux("new-session", "-d", "-x", "150", "-y", "30", "-s", "pv", command)
        try:
            held = tmux.wait_for(lambda s: rows_with(s, "on hold: "), "a hold", timeout_s=40)
            (row,) = rows_with(held, "on hold: ")
            assert re.fullmatch(
                r"on hold: the server asked to wait \(Retry-After\), \ds left", held[row].strip()
            )
            assert "in flight" in held[row - 1]  # under the rates and tallies
            final = tmux.wait_for(lambda s: rows_with(s, "$ next-prompt"), "the end", timeout_s=40)
            assert rows_with(final, "on hold: ") == []  # the final frame has no hold
        finally:
            subprocess.run(
                ["tmux", "-S", str(tmux.socket), "kill-server"], capture_output=True, timeout=10
            )


# --- formatting helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0"), (7, "7"), (1234, "1,234"), (1_000_000, "1,000,000")]
)
def test_format_count(n, text):
    assert format_count(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (59.4, "59s"),
        (59.5, "1m00s"),
        (78, "1m18s"),
        (3600, "1h00m"),
        (2 * 3600 + 3 * 60 + 29, "2h03m"),
        (86400 + 7200, "1d02h"),
        (-1, "0s"),
        (math.inf, "?"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (0.0, "0.0/s"),
        (0.5, "0.5/s"),
        (43.1, "43.1/s"),
        (1234.0, "1.2k/s"),
        (999_999.0, "1.0M/s"),
        (0.01, "0.6/min"),
    ],
)
def test_format_rate(rate, text):
    assert format_rate(rate) == text


def test_format_rate_trims_round_limits_only_when_asked():
    assert format_rate(50.0) == "50.0/s"
    assert format_rate(50.0, trim=True) == "50/s"
    assert format_rate(2000.0, trim=True) == "2k/s"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.005, "5.0ms"), (0.12, "120ms"), (1.2, "1.20s"), (30.0, "30.0s")]
)
def test_format_latency(seconds, text):
    assert format_latency(seconds) == text


def test_format_percent_rounds_down_and_reaches_100_only_at_the_end():
    assert [format_percent(d, 1000) for d in (0, 9, 10, 999, 1000)] == [
        "0%",
        "0%",
        "1%",
        "99%",
        "100%",
    ]


@pytest.mark.parametrize(
    ("reason", "shown"),
    [("output_closed", "output closed"), ("gave_up", "gave up"), ("empty", "nothing to do")],
)
def test_the_final_line_says_the_reason_in_words(reason, shown):
    out = io.StringIO()
    view = ProgressView(out, title="paceline", live=False)
    view.start()
    view.finish(Metrics(3).snapshot(), outcome=reason)
    last = out.getvalue().strip().splitlines()[-1]
    assert shown in last
    assert reason not in last


def test_tokens_per_second_are_shown_beside_requests_when_a_token_limit_is_in_force():
    line = plain_status_line(
        snap(
            10.0,
            500,
            units_per_s={"tokens": 1234.0},
            unit_limits_per_s={"tokens": 1500.0},
            units_used={"tokens": 12340},
        )
    )
    assert "attempts 50.0/s (limit 50/s) · tokens 1.2k/s (limit 1.5k/s) · in flight" in line
    assert "tokens" not in plain_status_line(snap(10.0, 500))


def test_metrics_count_the_units_used_over_the_recent_window():
    now = [0.0]
    metrics = Metrics(10, clock=lambda: now[0])
    metrics.used({"requests": 1, "tokens": 300})
    now[0] = 2.0
    metrics.used({"tokens": 100})
    metrics.unit_limits_per_s = lambda: {"tokens": 500.0}
    shot = metrics.snapshot()
    assert shot.units_used == {"tokens": 400}
    assert shot.units_per_s == {"tokens": 200.0}  # 400 over 2 s
    assert shot.unit_limits_per_s == {"tokens": 500.0}
