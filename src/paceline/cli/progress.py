"""The live progress display of a batch: a few redrawn lines on a terminal, plain lines elsewhere.

:class:`ProgressView` draws :class:`~paceline.cli.metrics.Snapshot` values to a text stream
(the CLI passes ``sys.stderr``; stdout may carry results):

* on a terminal, two to four lines that rich redraws in place (no background thread: every
  redraw happens inside :meth:`ProgressView.update`, at most ten times a second);
* anywhere else (a pipe, a CI log), one plain status line every ``interval_s`` seconds of the
  batch, one more as soon as a hold is shown (:meth:`paceline.cli.metrics.Metrics.hold`), and
  a final line, with no escape codes and no carriage returns;
* with ``quiet=True``, nothing.

rich is imported only for the terminal display, so the plain path works without it (a
terminal without rich gets the plain lines).

Its figures are written by :mod:`paceline.figures`, as everything else the CLI prints.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from paceline.errors import InvalidArgument
from paceline.figures import (
    format_count,
    format_duration,
    format_latency,
    format_percent,
    format_rate,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from paceline.cli.metrics import Snapshot

__all__ = ["ProgressView", "plain_final_line", "plain_status_line"]

# The terminal display redraws at most this often (seconds of the batch between redraws).
LIVE_MIN_REDRAW_S = 0.1

_SEP = " · "
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_SPINNER_ASCII = "-\\|/"
_OUTCOME_MARKS = {
    "done": ("✓", "+", "bold green"),
    "nothing to do": ("✓", "+", "bold green"),
    "halted": ("■", "#", "bold yellow"),
    "gave up": ("■", "#", "bold yellow"),
}
# The run's reason words (cli/run.py) as the final line says them.
_OUTCOME_WORDS = {
    "gave_up": "gave up",
    "bad_input": "bad input",
    "empty": "nothing to do",
    "output_closed": "output closed",
    "output_failed": "output failed",
}
_OUTCOME_FAILED = ("✗", "x", "bold red")


# Control characters a log message must not smuggle into the plain output (tab is fine).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _escape_control(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


# --- the pieces both displays share ---------------------------------------------------------


def _count(s: Snapshot) -> str:
    if s.total is None:
        return f"{format_count(s.settled)} done"
    return f"{format_count(s.settled)}/{format_count(s.total)}"


def _count_with_percent(s: Snapshot) -> str:
    if s.total is None:
        return _count(s)
    return f"{_count(s)} ({format_percent(s.settled, s.total)})"


def _rates(s: Snapshot) -> str:
    """Items settled per second, and attempts started per second against the limit (a limit
    counts starts, retries included, not items)."""
    rates = f"items {format_rate(s.rate_per_s)}{_SEP}attempts {format_rate(s.attempt_rate_per_s)}"
    if s.rate_limit_per_s is not None:
        rates += f" (limit {format_rate(s.rate_limit_per_s, trim=True)})"
    return rates + _units(s)


def _units(s: Snapshot) -> str:
    """Tokens (or another unit) used per second beside the requests, when a limit counts them:
    `` · tokens 1,480/s (limit 1,500/s)``."""
    text = ""
    for unit, limit in s.unit_limits_per_s.items():
        used = s.units_per_s.get(unit, 0.0)
        text += f"{_SEP}{unit} {format_rate(used)} (limit {format_rate(limit, trim=True)})"
    return text


def _hold(s: Snapshot) -> str | None:
    """What holds the batch back, with how long it has left (or has lasted, when its end is
    not known)."""
    if s.hold_reason is None:
        return None
    if s.hold_left_s is not None:
        return f"on hold: {s.hold_reason}, {format_duration(s.hold_left_s)} left"
    return f"on hold: {s.hold_reason}, for {format_duration(s.held_s or 0.0)}"


def _in_flight(s: Snapshot) -> str:
    if s.concurrency_limit is None:
        return f"in flight {format_count(s.in_flight)}"
    return f"in flight {format_count(s.in_flight)}/{format_count(s.concurrency_limit)}"


def _average(s: Snapshot) -> str:
    """Items settled per second over the run, and those that succeeded when some failed."""
    settled, succeeded = s.average_per_s()
    text = f"avg {format_rate(settled).replace('/', ' items/', 1)}"
    if s.run_succeeded < s.settled - s.restored:
        text += f" ({format_rate(succeeded)} succeeded)"
    return text


def _latency(s: Snapshot) -> str | None:
    parts = []
    if s.latency_p50_s is not None:
        parts.append(f"p50 {format_latency(s.latency_p50_s)}")
    if s.latency_p99_s is not None:
        parts.append(f"p99 {format_latency(s.latency_p99_s)}")
    return " ".join(parts) or None


def _tallies(s: Snapshot) -> list[tuple[str, str]]:
    """(text, rich style) of the counters worth watching, in a fixed order; once the retry
    budget refused an item its retries, how many it failed (they would fail silently else)."""
    tallies = [
        (f"retries {format_count(s.retries)}", ""),
        (f"throttled {format_count(s.throttled)}", "yellow" if s.throttled else ""),
        (f"errors {format_count(s.errors)}", "red" if s.errors else ""),
        (f"failed {format_count(s.failed)}", "bold red" if s.failed else ""),
    ]
    if s.budget_exhausted:
        count = format_count(s.budget_exhausted)
        tallies.append((f"retry budget spent: {count} failed for it", "bold red"))
    return tallies


def plain_status_line(s: Snapshot, *, title: str = "paceline") -> str:
    """The status line of the plain (not a terminal) display.

    A known total gets a percentage and (once there is a rate) an ETA; an unknown one neither.
    """
    parts = [_count_with_percent(s)]
    hold = _hold(s)
    if hold:
        parts.append(hold)
    parts += [_rates(s), _in_flight(s)]
    parts += [text for text, _ in _tallies(s)]
    if s.restored:
        parts.append(f"resumed {format_count(s.restored)}")
    latency = _latency(s)
    if latency:
        parts.append(latency)
    if s.total is not None and s.eta_s is not None:
        parts.append(f"eta {format_duration(s.eta_s)}")
    return f"{title}: " + _SEP.join(parts)


def plain_final_line(s: Snapshot, *, outcome: str, title: str = "paceline") -> str:
    """The last line of the plain display: the outcome, the count, the time and the totals."""
    parts = [outcome, f"{_count_with_percent(s)} in {format_duration(s.elapsed_s)}"]
    parts.append(_average(s))
    parts += [text for text, _ in _tallies(s)]
    if s.restored:
        parts.append(f"resumed {format_count(s.restored)}")
    return f"{title}: " + _SEP.join(parts)


# --- the view ---------------------------------------------------------------------------------


def _is_terminal(out: TextIO) -> bool:
    try:
        tty = out.isatty()
    except (AttributeError, ValueError, OSError):
        return False
    return bool(tty) and os.environ.get("TERM", "") != "dumb"


class ProgressView:
    """Shows a batch's progress on ``out`` while it runs.

    Args:
        out: where to draw (the CLI passes ``sys.stderr``).
        title: the batch's name: the prefix of the plain lines, the label of the live display.
        live: redraw lines in place (a terminal) or print plain lines; ``None`` decides by
            ``out.isatty()`` (and ``TERM`` not ``dumb``). Live needs rich; without it the plain
            lines are printed.
        interval_s: seconds of the batch (``Snapshot.elapsed_s``) between two plain lines.
        quiet: draw nothing at all, :meth:`log` included.

    Use :meth:`start`, then :meth:`update` as often as you like (it is cheap when there is
    nothing to draw), and :meth:`finish` once. Used as a context manager, the view starts, and
    finishes on the way out if nobody did (``"interrupted"`` on Ctrl-C, ``"failed"`` on an
    error), so the terminal is always restored. All calls must come from one thread.

    While the live display runs, nothing else may write to the same terminal (results to a
    terminal stdout included) except through :meth:`log`, or the redraws leave junk lines.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        title: str,
        live: bool | None = None,
        interval_s: float = 5.0,
        quiet: bool = False,
    ) -> None:
        if not interval_s > 0:
            raise InvalidArgument(f"interval_s must be > 0, not {interval_s!r}")
        self.out = out
        self.title = title
        self.interval_s = interval_s
        self.quiet = quiet
        self.live = (not quiet) and (_is_terminal(out) if live is None else live)
        self._console: Console | None = None
        self._live: Live | None = None
        if self.live:
            try:
                self._console = _make_console(out)
            except ImportError:  # no rich: plain lines
                self.live = False
        self._started = False
        self._finished = False
        self._last: Snapshot | None = None
        self._next_plain_s: float | None = None  # when the next plain line is due
        self._hold_shown: str | None = None  # the hold the last plain line showed
        self._last_draw_s = -math.inf  # when the live display was last redrawn

    # -- public API ------------------------------------------------------------------------

    def start(self) -> None:
        """Start showing (on a terminal: hide the cursor and draw a first line). Idempotent."""
        if self._started or self._finished or self.quiet:
            return
        self._started = True
        if self._console is not None:
            from rich.live import Live

            with self._guard():
                self._live = Live(
                    self._starting_renderable(),
                    console=self._console,
                    auto_refresh=False,  # no refresh thread: we draw, from the caller's thread
                    transient=False,
                    redirect_stdout=False,  # stdout carries results; leave it alone
                    redirect_stderr=False,
                    vertical_overflow="visible",
                )
                self._live.start(refresh=True)

    def update(self, snapshot: Snapshot) -> None:
        """Show ``snapshot`` if it is time to: a redraw at most every 0.1 s of the batch on a
        terminal, a plain line every ``interval_s`` (the first snapshot's one included)."""
        if self.quiet or self._finished:
            return
        self._last = snapshot
        if not self._started:
            self.start()
        with self._guard():
            if self._live is not None:
                if snapshot.elapsed_s - self._last_draw_s >= LIVE_MIN_REDRAW_S:
                    self._last_draw_s = snapshot.elapsed_s
                    self._live.update(self._renderable(snapshot, outcome=None), refresh=True)
                return
            due = self._next_plain_s
            new_hold = snapshot.hold_reason not in (None, self._hold_shown)
            if due is None or snapshot.elapsed_s >= due or new_hold:
                slot = math.floor(snapshot.elapsed_s / self.interval_s) + 1
                self._next_plain_s = slot * self.interval_s
                self._hold_shown = snapshot.hold_reason
                self._write_line(plain_status_line(snapshot, title=self.title))

    def finish(self, snapshot: Snapshot, *, outcome: str) -> None:
        """Draw the final state with ``outcome`` (``"done"``, ``"halted"``, ``"interrupted"``...),
        leave the cursor on a fresh line and the terminal as it was. Later calls do nothing."""
        if self._finished:
            return
        if not self._started:
            self.start()
        self._finished = True
        self._last = snapshot
        outcome = _OUTCOME_WORDS.get(outcome, outcome)
        if self.quiet:
            return
        with self._guard():
            if self._live is not None:
                live, self._live = self._live, None
                live.update(self._renderable(snapshot, outcome=outcome), refresh=False)
                live.stop()  # redraws, ends the line, shows the cursor
                self._flush()
            else:
                self._write_line(plain_final_line(snapshot, outcome=outcome, title=self.title))

    def log(self, message: str) -> None:
        """Print ``message`` on its own line, above the live display (taken literally: no
        markup; control characters escaped). With ``quiet=True`` it is dropped like everything
        else."""
        if self.quiet:
            return
        with self._guard():
            if self._live is not None and self._console is not None:
                from rich.text import Text

                self._console.print(Text(message), soft_wrap=True)  # rich strips control codes
                self._flush()
            else:
                self._write_line(_CONTROL.sub(_escape_control, message))

    def __enter__(self) -> ProgressView:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        if exc_type is None:
            outcome = "done"
        elif issubclass(exc_type, KeyboardInterrupt):
            outcome = "interrupted"
        else:
            outcome = "failed"
        if self._last is not None:
            self.finish(self._last, outcome=outcome)
            return
        # Nothing was shown but the first line: just restore the terminal.
        self._finished = True
        if self._live is not None and not self.quiet:
            live, self._live = self._live, None
            with self._guard():
                live.stop()
                self._flush()

    # -- plain -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """A display that cannot be written to (a closed pipe, a hung-up terminal) goes quiet
        instead of failing the batch."""
        try:
            yield
        except OSError:
            self.quiet = True
            self._live = None

    def _write_line(self, line: str) -> None:
        encoding = getattr(self.out, "encoding", None) or "utf-8"
        if not encoding.lower().replace("-", "").startswith("utf"):  # e.g. ascii in a bare CI
            line = line.replace(_SEP, " - ")
            line = line.encode(encoding, "backslashreplace").decode(encoding, "replace")
        self.out.write(line + "\n")
        self._flush()

    def _flush(self) -> None:
        with contextlib.suppress(AttributeError, ValueError):  # OSError: see _guard
            self.out.flush()

    # -- live --------------------------------------------------------------------------------

    def _unicode(self) -> bool:
        assert self._console is not None
        return self._console.encoding.lower().startswith("utf")

    def _starting_renderable(self) -> Text:
        from rich.text import Text

        spinner = _SPINNER[0] if self._unicode() else _SPINNER_ASCII[0]
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        line.append(spinner, style="cyan")
        line.append(f" {self.title} ", style="bold")
        line.append("starting…" if self._unicode() else "starting...", style="dim")
        return line

    def _renderable(self, s: Snapshot, *, outcome: str | None) -> Text:
        """Two to four lines: the count (bar, percentage, times), the rates and tallies, what
        holds the batch back (if anything does for a while), and what was resumed from the
        journal."""
        from rich.text import Text

        assert self._console is not None
        uni = self._unicode()
        width = self._console.width

        # Line 1: [spinner|mark] title [bar] 1,200/5,000 24% · 1m02s · eta 1m18s
        if outcome is None:
            frames = _SPINNER if uni else _SPINNER_ASCII
            mark, mark_style = frames[int(s.elapsed_s * 10) % len(frames)], "cyan"
        else:
            glyph, ascii_glyph, mark_style = _OUTCOME_MARKS.get(outcome, _OUTCOME_FAILED)
            mark = glyph if uni else ascii_glyph
        tail = Text(no_wrap=True, overflow="ellipsis", end="")
        tail.append(_count(s), style="bold")
        if s.total is not None:
            tail.append(f" {format_percent(s.settled, s.total)}")
        tail.append(_SEP + format_duration(s.elapsed_s), style="dim")
        if outcome is not None:
            tail.append(_SEP)
            tail.append(outcome, style=mark_style)
        elif s.total is not None and s.eta_s is not None:
            tail.append(f"{_SEP}eta {format_duration(s.eta_s)}")

        line1 = Text(no_wrap=True, overflow="ellipsis", end="")
        line1.append(mark, style=mark_style)
        line1.append(f" {self.title} ", style="bold")
        if s.total is not None:
            room = width - line1.cell_len - tail.cell_len - 1
            line1.append_text(_bar(s.settled, s.total, max(10, min(40, room)), uni=uni))
            line1.append(" ")
        line1.append_text(tail)

        # Line 2: items 43.1/s · attempts 45.0/s (limit 50/s) · in flight 8/16 · retries 3 · ...
        line2 = Text(no_wrap=True, overflow="ellipsis", end="")
        if outcome is None:
            line2.append(_rates(s), style="bold")
            line2.append(_SEP + _in_flight(s))
        else:
            line2.append(_average(s), style="bold")
        for text, style in _tallies(s):
            line2.append(_SEP)
            line2.append(text, style=style)
        latency = _latency(s)
        if latency:
            line2.append(_SEP + latency, style="dim")

        lines = [line1, line2]
        # Line 3: on hold: the server asked to wait (Retry-After), 28s left
        hold = _hold(s) if outcome is None else None
        if hold:
            lines.append(Text(hold, style="yellow", no_wrap=True, overflow="ellipsis", end=""))
        # Then: resumed: 1,200 from the journal
        if s.restored:
            lines.append(
                Text(
                    f"resumed: {format_count(s.restored)} from the journal",
                    style="dim",
                    no_wrap=True,
                    overflow="ellipsis",
                    end="",
                )
            )
        return Text("\n", no_wrap=True, overflow="ellipsis", end="").join(lines)


def _bar(done: int, total: int, width: int, *, uni: bool) -> Text:
    """A progress bar of ``width`` cells, in half cells on a Unicode terminal."""
    from rich.text import Text

    fraction = 1.0 if total <= 0 else min(1.0, max(0.0, done / total))
    bar = Text(end="")
    if uni:
        halves = int(fraction * width * 2)
        full, half = divmod(halves, 2)
        style = "green" if fraction >= 1 else "magenta"
        bar.append("━" * full + ("╸" if half else ""), style=style)
        bar.append("━" * (width - full - half), style="grey23")
    else:
        full = int(fraction * width)
        bar.append("#" * full)
        bar.append("-" * (width - full), style="dim")
    return bar


def _make_console(out: TextIO) -> Console:
    """A rich console drawing to ``out`` as to a terminal (raises ImportError without rich)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's default points the process's stdout at /dev/null and exits: not for us
            # (stdout carries results). Let ProgressView._guard silence the display instead.
            self.quiet = True
            raise BrokenPipeError("the progress display's stream is closed")

    return _Console(
        file=out,
        force_terminal=True,
        force_interactive=True,
        highlight=False,
        emoji=False,
        markup=False,
    )
