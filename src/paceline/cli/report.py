"""``paceline report``: what a batch did, from its journal: outcomes, runs, HTTP statuses or
exit codes, latency, throughput, retries, throttles and the most common errors.

:func:`build_report` reads a :class:`~paceline.stores.view.JournalView` into a
:class:`Report`; :func:`render_text` prints it, :func:`paceline.cli.report_html.render_html`
makes a self-contained HTML page with charts of the run timeline.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from paceline.cli._timeline import RunSummary, TimelinePoint, read_runs
from paceline.cli.metrics import percentile
from paceline.figures import format_latency
from paceline.policy.cost import usage_tokens
from paceline.stores.view import JournalView

__all__ = [
    "ErrorGroup",
    "Report",
    "RunSummary",
    "TimelinePoint",
    "build_report",
    "render_text",
]

TOP_ERRORS = 10
_HTTP_STATUS = re.compile(r"HTTP (\d{3})\b")
_EXIT_CODE = re.compile(r"exit code (-?\d+)\b")
_KEEP_PREFIX = re.compile(r"^(?:HTTP \d{3}|exit code -?\d+)\b")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b")
_HEX_ID = re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{12,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Failures whose messages match once numbers and ids are blanked out."""

    message: str  # normalised: numbers as <n>, ids as <id> (an HTTP status / exit code kept)
    count: int
    error_type: str | None  # of the first failure in the group
    example: str  # the first failure's message as stored


@dataclass(frozen=True, slots=True)
class Report:
    """What :func:`build_report` found in a journal. ``to_dict()`` is JSON-ready."""

    path: str
    label: str | None
    fingerprint: str
    command: str | None  # http, call, exec, or None if the journal does not say
    created_at: str | None
    items: int  # items in the journal
    succeeded: int
    failed: int
    input_total: int | None  # items in the last run's input, if known
    runs: list[RunSummary]
    status_kind: str | None  # "http" (status codes), "exec" (exit codes) or None
    status_codes: dict[str, int]  # code -> items, in numeric order
    no_status: int  # items of an http/exec batch without a status (timeouts, ...)
    latency_count: int  # items with a duration
    latency_p50_s: float | None
    latency_p90_s: float | None
    latency_p99_s: float | None
    latency_max_s: float | None
    # Attempts are counted as the runs counted them while they sent (their last samples,
    # summed), so that they agree with the progress lines and with the server; a journal
    # without a timeline (the library's) has only each item's last count.
    attempts: int  # attempts started (requests sent) over all runs
    retries: int  # attempts beyond each item's first in a run
    throttled: int | None  # throttled attempts over all runs; None without a timeline
    elapsed_s: float | None  # the runs' time together; None without a timeline
    throughput_per_s: float | None  # items settled (not restored) per second of elapsed_s
    errors: int | None  # failed attempts other than throttles; None without a timeline
    succeeded_per_s: float | None  # items succeeded per second of elapsed_s
    top_errors: list[ErrorGroup]
    error_groups: int  # distinct normalised messages, shown or not
    timeline: list[TimelinePoint] = field(repr=False)
    # Tokens the answers of the items that succeeded say they used (usage), over all runs
    tokens_used: int = 0

    def to_dict(self, *, timeline: bool = False) -> dict[str, Any]:
        """The report as JSON-ready data; the timeline's points only if ``timeline``."""
        if timeline:
            return asdict(self)
        data = asdict(replace(self, timeline=[]))
        del data["timeline"]
        return data


def build_report(view: JournalView) -> Report:
    """Read everything the report shows from ``view``.

    >>> import tempfile, os
    >>> from paceline.stores import Journal
    >>> from paceline.stores.view import JournalView
    >>> path = os.path.join(tempfile.mkdtemp(), "batch.journal")
    >>> with Journal.open(path, fingerprint="f00d") as journal:
    ...     journal.record("a", success=True, result={"status_code": 200}, duration_s=0.1)
    ...     journal.record("b", success=False, error=OSError("HTTP 503: busy"), attempts=3)
    >>> with JournalView.open(path) as view:
    ...     report = build_report(view)
    >>> report.succeeded, report.failed, report.status_codes, report.retries
    (1, 1, {'200': 1, '503': 1}, 2)
    >>> [(group.message, group.count) for group in report.top_errors]
    [('HTTP 503: busy', 1)]
    """
    meta = view.meta
    samples = view.samples()
    command = _command_of(meta, samples)
    durations: list[float] = []
    attempts = retries = succeeded = failed = tokens_used = 0
    http: Counter[int] = Counter()
    exits: Counter[int] = Counter()
    http_none = exit_none = 0
    errors: dict[str, list[Any]] = {}  # normalised -> [count, error_type, example]
    for outcome in view.outcomes():
        attempts += outcome.attempts
        retries += max(0, outcome.attempts - 1)
        if outcome.duration_s is not None:
            durations.append(outcome.duration_s)
        if outcome.success:
            succeeded += 1
            tokens_used += _usage_tokens(outcome.result)
            status = _result_code(outcome.result, "status_code")
            code = _result_code(outcome.result, "exit_code")
        else:
            failed += 1
            message = outcome.error or outcome.error_type or "unknown error"
            status = _message_code(_HTTP_STATUS, message)
            code = _message_code(_EXIT_CODE, message)
            group = errors.setdefault(normalise_error(message), [0, outcome.error_type, message])
            group[0] += 1
        if status is None:
            http_none += 1
        else:
            http[status] += 1
        if code is None:
            exit_none += 1
        else:
            exits[code] += 1
    status_kind = {"http": "http", "exec": "exec", "call": None}.get(command or "")
    if command is None:  # an older or foreign journal: go by what the results look like
        status_kind = "http" if http else "exec" if exits else None
    tally, no_status = (http, http_none) if status_kind == "http" else (exits, exit_none)
    if status_kind is None:
        tally, no_status = Counter(), 0
    runs, timeline = read_runs(samples)
    finals = [run for run in runs if run.settled is not None]
    elapsed = sum(run.elapsed_s or 0.0 for run in finals) if finals else None
    fresh = sum((run.settled or 0) - (run.restored or 0) for run in finals)
    counted = bool(runs) and all(run.attempts is not None for run in runs)
    if counted:
        attempts = sum(run.attempts or 0 for run in runs)
        retries = sum(run.retries or 0 for run in runs)
    ordered = sorted(durations)
    ranked = sorted(errors.items(), key=lambda entry: -entry[1][0])
    last_total = next((run.total for run in reversed(runs) if run.total is not None), None)
    return Report(
        path=str(view.path),
        label=view.label,
        fingerprint=view.fingerprint,
        command=command,
        created_at=meta.get("journal.created_at"),
        items=succeeded + failed,
        succeeded=succeeded,
        failed=failed,
        input_total=last_total,
        runs=runs,
        status_kind=status_kind,
        status_codes={str(code): tally[code] for code in sorted(tally)},
        no_status=no_status,
        latency_count=len(ordered),
        latency_p50_s=percentile(ordered, 0.5),
        latency_p90_s=percentile(ordered, 0.9),
        latency_p99_s=percentile(ordered, 0.99),
        latency_max_s=ordered[-1] if ordered else None,
        attempts=attempts,
        retries=retries,
        throttled=sum(run.throttled or 0 for run in finals) if finals else None,
        elapsed_s=elapsed,
        throughput_per_s=fresh / elapsed if elapsed else None,
        errors=sum(run.errors or 0 for run in runs) if counted else None,
        succeeded_per_s=succeeded / elapsed if elapsed else None,
        top_errors=[
            ErrorGroup(message, count, error_type, example)
            for message, (count, error_type, example) in ranked[:TOP_ERRORS]
        ],
        error_groups=len(errors),
        timeline=timeline,
        tokens_used=tokens_used,
    )


def normalise_error(message: str) -> str:
    """``message`` with numbers and ids blanked out, so that failures differing only in those
    group together; a leading ``HTTP <status>`` or ``exit code <n>`` is kept.

    >>> normalise_error("HTTP 404: user 12345 not found (request 9f86d081884c7d65)")
    'HTTP 404: user <n> not found (request <id>)'
    """
    message = _SPACE.sub(" ", message).strip()
    kept = _KEEP_PREFIX.match(message)
    head = kept.group(0) if kept else ""
    rest = _UUID.sub("<id>", message[len(head) :])
    rest = _NUMBER.sub("<n>", _HEX_ID.sub("<id>", rest))
    text = head + rest
    return text if len(text) <= 200 else text[:199] + "…"


def _command_of(meta: Mapping[str, str], samples: list[dict[str, Any]]) -> str | None:
    """The batch's command: from the meta (``cli.command``, or the ``command`` of the spec
    the CLI stores as ``cli.spec``), else from the last run's start sample."""
    if meta.get("cli.command"):
        return meta["cli.command"]
    try:
        spec = json.loads(meta.get("cli.spec") or "null")
    except ValueError:
        spec = None
    if isinstance(spec, dict) and isinstance(spec.get("command"), str):
        return str(spec["command"])
    starts = [s for s in samples if s.get("kind") == "start" and s.get("command")]
    return str(starts[-1]["command"]) if starts else None


def _usage_tokens(result: Any) -> int:
    """The tokens a journaled HTTP answer says it used (0 when it says none).

    >>> _usage_tokens({"body": {"usage": {"input_tokens": 7, "output_tokens": 5}}})
    12
    """
    body = result.get("body") if isinstance(result, Mapping) else None
    return usage_tokens(body) or 0


def _result_code(result: Any, name: str) -> int | None:
    if isinstance(result, Mapping):
        value = result.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    return None


def _message_code(pattern: re.Pattern[str], message: str) -> int | None:
    found = pattern.match(message)
    return int(found.group(1)) if found else None


# -- text ------------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    """A duration as the whole CLI writes it (:func:`paceline.figures.format_latency`), or
    ``-`` when there is none.

    >>> seconds(0.0123), seconds(2.5), seconds(75), seconds(None)
    ('12ms', '2.50s', '1m15s', '-')
    """
    return "-" if value is None else format_latency(value)


def clock_time(epoch: float | None, date: bool = True) -> str:
    """Local time of ``epoch`` seconds, ``YYYY-MM-DD HH:MM:SS`` (or ``-``)."""
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(epoch))


def run_outcome(run: RunSummary) -> str:
    """How a run ended, e.g. ``done (exit 0)`` or ``no end recorded``."""
    if run.reason is None:
        return "no end recorded (killed, or still running)"
    return run.reason if run.exit_code is None else f"{run.reason} (exit {run.exit_code})"


def status_label(report: Report) -> str:
    """What the status table counts: ``HTTP status`` or ``exit code``."""
    return "HTTP status" if report.status_kind == "http" else "exit code"


def render_text(report: Report) -> str:
    """The report as a compact plain-text summary (no colour codes)."""
    lines = [f"paceline report: {report.path}"]
    about = [f"command {report.command}" if report.command else "command unknown"]
    if report.label:
        about.append(f"label {report.label!r}")
    about.append(f"fingerprint {report.fingerprint}")
    lines.append("  " + ", ".join(about))
    of_input = f" of {report.input_total:,} input" if report.input_total is not None else ""
    rows = [
        (
            "items",
            f"{report.items:,}{of_input}: {report.succeeded:,} succeeded, {report.failed:,} failed",
        )
    ]
    for run in report.runs:
        ended = run.ended_at if run.ended_at is not None else run.last_seen_at
        same_day = clock_time(run.started_at)[:10] == clock_time(ended)[:10]
        settled = "" if run.settled is None else f", {run.settled - (run.restored or 0):,} settled"
        if run.restored:
            settled += f", {run.restored:,} resumed"
        rows.append(
            (
                f"run {run.run}",
                f"{clock_time(run.started_at)} -> {clock_time(ended, date=not same_day)}, "
                f"{seconds(run.elapsed_s)}, {run_outcome(run)}{settled}",
            )
        )
    if report.throughput_per_s is not None:
        succeeded = ""
        if report.failed and report.succeeded_per_s is not None:
            succeeded = f" ({report.succeeded_per_s:,.2f}/s succeeded)"
        rows.append(
            (
                "throughput",
                f"{report.throughput_per_s:,.2f} items/s{succeeded} over "
                f"{seconds(report.elapsed_s)}",
            )
        )
    if report.tokens_used:
        per_s = f", {report.tokens_used / report.elapsed_s:,.1f}/s" if report.elapsed_s else ""
        rows.append(("tokens", f"{report.tokens_used:,} used (answers' usage){per_s}"))
    if report.latency_count:
        rows.append(
            (
                "latency",
                f"p50 {seconds(report.latency_p50_s)}, p90 {seconds(report.latency_p90_s)}, "
                f"p99 {seconds(report.latency_p99_s)}, max {seconds(report.latency_max_s)} "
                f"({report.latency_count:,} items)",
            )
        )
    throttled = "" if report.throttled is None else f", {report.throttled:,} throttled"
    errors = "" if report.errors is None else f", {report.errors:,} errors"
    sent = "" if report.errors is None else " sent"
    rows.append(
        ("attempts", f"{report.attempts:,}{sent}: {report.retries:,} retries{throttled}{errors}")
    )
    if report.status_kind is not None:
        tallies = [f"{code}: {count:,}" for code, count in report.status_codes.items()]
        if report.no_status:
            tallies.append(f"none: {report.no_status:,}")
        rows.append((status_label(report), ", ".join(tallies) or "-"))
    width = max(len(name) for name, _ in rows)
    lines.extend(f"{name:<{width}}  {value}" for name, value in rows)
    if report.top_errors:
        more = report.error_groups - len(report.top_errors)
        lines.append("top errors" + (f" ({more} more kinds not shown)" if more else ""))
        count_width = len(f"{report.top_errors[0].count:,}")
        for group in report.top_errors:
            message = group.message if len(group.message) <= 90 else group.message[:89] + "…"
            lines.append(f"  {group.count:>{count_width},}  {message}")
    return "\n".join(lines)
