"""The report as ONE self-contained HTML page: inline CSS, inline SVG charts drawn here, no
JavaScript, nothing fetched (a Content-Security-Policy forbids the page any request).

>>> import tempfile, os
>>> from paceline.stores import Journal
>>> from paceline.stores.view import JournalView
>>> from paceline.cli.report import build_report
>>> path = os.path.join(tempfile.mkdtemp(), "batch.journal")
>>> with Journal.open(path, fingerprint="f00d") as journal:
...     journal.record("a", success=False, error=ValueError("<b>bad</b>"))
>>> with JournalView.open(path) as view:
...     page = render_html(build_report(view))
>>> page.startswith("<!DOCTYPE html>"), "&lt;b&gt;bad&lt;/b&gt;" in page, "<b>" in page
(True, True, False)
>>> page.count('class="chart"')  # four charts, each saying "no data" without a timeline
4
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from paceline.cli._charts import Point, Series, line_chart
from paceline.cli.report import (
    Report,
    TimelinePoint,
    clock_time,
    run_outcome,
    seconds,
    status_label,
)

__all__ = ["CHARTS", "render_html"]

# chart id -> (title, [(series field, legend name, css class, colour)]); colours are distinct
# over the whole page, so a screenshot shows which series were drawn.
CHARTS: dict[str, tuple[str, list[tuple[str, str, str, str]]]] = {
    "chart-throughput": (
        "Throughput (last 5 s)",
        [
            ("rate_per_s", "items settled/s", "rate", "#1f77b4"),
            ("attempt_rate_per_s", "attempts started/s", "attempt-rate", "#ff7f0e"),
        ],
    ),
    "chart-latency": (
        "Latency of attempts (last 5 s)",
        [
            ("latency_p50_s", "p50", "p50", "#2ca02c"),
            ("latency_p90_s", "p90", "p90", "#9467bd"),
            ("latency_p99_s", "p99", "p99", "#d62728"),
        ],
    ),
    "chart-concurrency": (
        "Concurrency: limit and attempts in flight",
        [
            ("in_flight", "in flight", "in-flight", "#17becf"),
            ("concurrency_limit", "concurrency limit", "concurrency-limit", "#8c564b"),
        ],
    ),
    "chart-rate": (
        "Rate limit and attempts started (starts/s)",
        [
            ("attempt_rate_per_s", "attempts started/s", "attempt-rate", "#bcbd22"),
            ("rate_limit_per_s", "rate limit", "rate-limit", "#e377c2"),
        ],
    ),
}

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
  margin: 0 auto; padding: 16px 24px 48px; max-width: 960px; background: #fff; }
h1 { font-size: 22px; margin: 8px 0 2px; }
h2 { font-size: 16px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #666; margin: 0 0 12px; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 10px; }
.card .value { font-size: 20px; font-weight: 600; }
.card .name { color: #666; font-size: 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { color: #555; font-weight: 600; background: #f6f6f6; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.msg { word-break: break-word; }
.bar { background: #9a9a9a; height: 10px; display: inline-block; }
.muted { color: #777; }
svg.chart { display: block; max-width: 100%; height: auto; }
svg.chart text { font: 12px system-ui, sans-serif; fill: #555; }
svg.chart .plot { fill: #fff; stroke: none; }
svg.chart .grid { stroke: #ececec; stroke-width: 1; }
svg.chart .axis { stroke: #888; stroke-width: 1; }
svg.chart .run-boundary { stroke: #aaa; stroke-width: 1; stroke-dasharray: 4 3; }
svg.chart .series { fill: none; stroke-width: 2.5; stroke-linejoin: round; stroke-linecap: round; }
svg.chart .no-data { font-size: 16px; fill: #999; }
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def render_html(report: Report) -> str:
    """The whole page, as a string (write it with ``encoding="utf-8"``)."""
    title = f"paceline report: {report.label or report.path}"
    about = [f"journal {report.path}"]
    if report.command:
        about.append(f"command {report.command}")
    about.append(f"fingerprint {report.fingerprint}")
    if report.created_at:
        about.append(f"created {report.created_at}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(" · ".join(about))}</p>',
        _cards(report),
        "<h2>Runs</h2>",
        _runs(report),
        "<h2>Over time</h2>",
    ]
    boundaries = [(run.offset_s, f"run {run.run}") for run in report.runs[1:]]
    x_max = max((run.offset_s + (run.elapsed_s or 0.0) for run in report.runs), default=None)
    for chart_id, (chart_title, fields) in CHARTS.items():
        series = [
            Series(name, css, colour, _segments(report.timeline, field))
            for field, name, css, colour in fields
        ]
        y_format = seconds if chart_id == "chart-latency" else _number
        chart = line_chart(
            chart_id,
            chart_title,
            series,
            y_format=y_format,
            x_max=x_max,
            boundaries=boundaries,
            whole=chart_id == "chart-concurrency",
        )
        parts.append(f'<h3>{escape(chart_title)}</h3><div class="figure">{chart}</div>')
    parts.append(_statuses(report))
    parts.append(_errors(report))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _number(value: float) -> str:
    return f"{value:,.4g}"


def _segments(timeline: Sequence[TimelinePoint], field: str) -> list[list[Point]]:
    segments: list[list[Point]] = []
    current: list[Point] = []
    run = None
    for point in timeline:
        value = point.values.get(field)
        if value is None or point.run != run:
            if current:
                segments.append(current)
            current = []
        run = point.run
        if value is not None:
            current.append((point.x_s, value))
    if current:
        segments.append(current)
    return segments


def _table(head: Sequence[tuple[str, str]], rows: Iterable[Sequence[tuple[str, str]]]) -> str:
    """A table; cells are (css class, already escaped HTML)."""
    cells = "".join(f'<th class="{css}">{text}</th>' for css, text in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="{css}">{html}</td>' for css, html in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _cards(report: Report) -> str:
    of_input = "" if report.input_total is None else f" of {report.input_total:,}"
    cards = [
        ("items in journal", f"{report.items:,}{of_input}"),
        ("succeeded", f"{report.succeeded:,}"),
        ("failed", f"{report.failed:,}"),
        (
            "throughput",
            "-" if report.throughput_per_s is None else f"{report.throughput_per_s:,.2f} items/s",
        ),
        (
            "succeeded per second",
            "-" if report.succeeded_per_s is None else f"{report.succeeded_per_s:,.2f}/s",
        ),
        *([("tokens used", f"{report.tokens_used:,}")] if report.tokens_used else []),
        ("latency p50", seconds(report.latency_p50_s)),
        ("latency p90", seconds(report.latency_p90_s)),
        ("latency p99", seconds(report.latency_p99_s)),
        (
            "attempts sent / retries / throttled / errors",
            f"{report.attempts:,} / {report.retries:,} / "
            + " / ".join("-" if n is None else f"{n:,}" for n in (report.throttled, report.errors)),
        ),
    ]
    body = "".join(
        f'<div class="card"><div class="value">{escape(value)}</div>'
        f'<div class="name">{escape(name)}</div></div>'
        for name, value in cards
    )
    return f'<div class="cards" id="summary">{body}</div>'


def _runs(report: Report) -> str:
    if not report.runs:
        return '<p class="muted">No run timeline in this journal.</p>'
    head = [("num", "run"), ("", "command"), ("", "limits"), ("", "started"), ("", "ended")]
    head += [("num", "elapsed"), ("", "outcome"), ("num", "settled"), ("num", "resumed")]
    rows = []
    for run in report.runs:
        limits = [f"concurrency {run.concurrency or 'unlimited'}", *run.rates]
        if run.adaptive:
            limits.append("adaptive")
        ended = run.ended_at if run.ended_at is not None else run.last_seen_at
        values = [
            ("num", str(run.run)),
            ("", run.command or "-"),
            ("", ", ".join(limits)),
            ("", clock_time(run.started_at)),
            ("", clock_time(ended)),
            ("num", seconds(run.elapsed_s)),
            ("", run_outcome(run)),
            ("num", "-" if run.settled is None else f"{run.settled - (run.restored or 0):,}"),
            ("num", "-" if run.restored is None else f"{run.restored:,}"),
        ]
        rows.append([(css, escape(text)) for css, text in values])
    return _table(head, rows)


def _statuses(report: Report) -> str:
    if report.status_kind is None:
        return ""
    label = status_label(report)
    heading = "HTTP status codes" if report.status_kind == "http" else "Exit codes"
    tallies = list(report.status_codes.items())
    if report.no_status:
        tallies.append(("none", report.no_status))
    if not tallies:
        return f'<h2>{heading}</h2><p class="muted">no items</p>'
    top = max(count for _, count in tallies)
    rows = [
        [
            ("", escape(code)),
            ("num", f"{count:,}"),
            ("", f'<span class="bar" style="width:{max(1, round(300 * count / top))}px"></span>'),
        ]
        for code, count in tallies
    ]
    table = _table([("", escape(label)), ("num", "items"), ("", "")], rows)
    return f'<h2>{heading}</h2><div id="status-codes">{table}</div>'


def _errors(report: Report) -> str:
    if not report.top_errors:
        return '<h2>Top errors</h2><p class="muted">no failures</p>'
    rows = [
        [
            ("num", f"{group.count:,}"),
            ("msg", escape(group.message)),
            ("", escape(group.error_type or "-")),
            ("msg", escape(group.example)),
        ]
        for group in report.top_errors
    ]
    head = [("num", "items"), ("", "error (numbers and ids as &lt;n&gt;, &lt;id&gt;)")]
    table = _table([*head, ("", "type"), ("", "first message")], rows)
    more = report.error_groups - len(report.top_errors)
    note = f'<p class="muted">{more:,} more kinds of error not shown.</p>' if more else ""
    return f'<h2>Top errors</h2><div id="top-errors">{table}</div>{note}'
