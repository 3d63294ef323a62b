"""Line charts as inline SVG, for the HTML report: no JavaScript, nothing fetched.

>>> svg = line_chart(
...     "chart-demo", "demo", [Series("items/s", "rate", "#1f77b4", [[(0, 1.0), (10, 3.0)]])]
... )
>>> svg.count('<polyline class="series rate"'), "no data" in svg
(1, False)
>>> "no data" in line_chart("chart-empty", "empty", [Series("items/s", "rate", "#1f77b4", [])])
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "line_chart", "nice_step", "time_label"]

WIDTH = 900
HEIGHT = 270
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 40, 36
_MAX_POINTS = 1500  # per series; longer timelines are thinned evenly
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Series:
    """One line: ``segments`` are runs of points drawn joined (a gap between them: a value
    was unknown, or another run began)."""

    name: str  # in the legend
    css: str  # its class, after "series"
    colour: str  # stroke colour, "#rrggbb"
    segments: Sequence[Sequence[Point]]


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about ``ticks`` ticks.

    >>> nice_step(10), nice_step(0.9), nice_step(230)
    (2.0, 0.2, 50.0)
    """
    if span <= 0:
        return 1.0
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if multiple * magnitude >= raw * 0.999:
            return float(multiple * magnitude)
    return float(10 * magnitude)  # pragma: no cover - the loop always returns


def time_label(value: float, step: float) -> str:
    """An x tick label: ``30s``, ``2m``, ``1.5h`` (the unit follows the step).

    >>> time_label(90, 30), time_label(300, 120), time_label(5400, 3600)
    ('90s', '5m', '1.5h')
    """
    if step < 60:
        return f"{value:g}s"
    if step < 3600:
        return f"{value / 60:g}m"
    return f"{value / 3600:g}h"


def _time_step(span: float) -> float:
    for step in _TIME_STEPS:
        if span / step <= 8:
            return float(step)
    return nice_step(span / 3600, 6) * 3600


def _thin(segment: Sequence[Point], stride: int) -> list[Point]:
    if stride <= 1 or len(segment) <= 2:
        return list(segment)
    kept = list(segment[::stride])
    if kept[-1] != segment[-1]:
        kept.append(segment[-1])
    return kept


def _text(x: float, y: float, text: str, css: str, anchor: str = "start") -> str:
    return (
        f'<text class="{css}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'
    )


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    *,
    y_format: Callable[[float], str] = lambda value: f"{value:g}",
    x_max: float | None = None,
    boundaries: Sequence[tuple[float, str]] = (),
    whole: bool = False,
) -> str:
    """An ``<svg class="chart" id=chart_id>`` with one ``<polyline class="series CSS">`` per
    segment of each series, axes with tick labels, a legend and dashed ``boundaries``
    (``(x, label)``: where a run starts), y ticks at whole numbers only if ``whole``. Says
    "no data" if no series has a point."""
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    points = [point for line in series for segment in line.segments for point in segment]
    head = (
        f'<svg class="chart" id="{escape(chart_id)}" role="img" aria-label="{escape(title)}" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
        f'<rect class="plot" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}"/>'
    )
    if not points:
        middle = _text(_LEFT + plot_w / 2, _TOP + plot_h / 2, "no data", "no-data", "middle")
        return head + middle + "</svg>"
    x_top = max(x_max or 0.0, max(x for x, _ in points)) or 1.0
    y_step = nice_step(max(y for _, y in points) * 1.05)
    if whole:
        y_step = float(max(1, math.ceil(y_step)))
    y_top = max(1, math.ceil(max(y for _, y in points) * 1.05 / y_step)) * y_step

    def px(x: float) -> float:
        return _LEFT + x / x_top * plot_w

    def py(y: float) -> float:
        return _TOP + plot_h - min(max(y, 0.0), y_top) / y_top * plot_h

    parts = [head]
    for index in range(round(y_top / y_step) + 1):  # y grid and labels
        value = index * y_step
        y = py(value)
        parts.append(f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - _RIGHT}" ')
        parts.append(f'y2="{y:.1f}"/>')
        parts.append(_text(_LEFT - 6, y + 4, y_format(value), "tick", "end"))
    x_step = _time_step(x_top)
    for index in range(math.floor(x_top / x_step + 1e-9) + 1):  # x ticks and labels
        x = px(index * x_step)
        parts.append(f'<line class="axis" x1="{x:.1f}" y1="{_TOP + plot_h}" x2="{x:.1f}" ')
        parts.append(f'y2="{_TOP + plot_h + 5}"/>')
        label = time_label(index * x_step, x_step)
        parts.append(_text(x, _TOP + plot_h + 18, label, "tick", "middle"))
    parts.append(
        _text(WIDTH - _RIGHT, HEIGHT - 4, "time since the first run started", "axis-title", "end")
    )
    for at, label in boundaries:
        x = px(at)
        parts.append(f'<line class="run-boundary" x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" ')
        parts.append(f'y2="{_TOP + plot_h}"/>')
        parts.append(_text(x + 4, _TOP + 12, label, "run-label"))
    parts.append(
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{WIDTH - _RIGHT}" '
        f'y2="{_TOP + plot_h}"/><line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" '
        f'y2="{_TOP + plot_h}"/>'
    )
    stride = math.ceil(max(sum(len(s) for s in line.segments) for line in series) / _MAX_POINTS)
    for line in series:
        for segment in line.segments:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in _thin(segment, stride))
            if len(segment) == 1:  # a lone point: a zero-length line, drawn as a dot
                coords = f"{coords} {coords}"
            parts.append(
                f'<polyline class="series {escape(line.css)}" points="{coords}" '
                f'stroke="{escape(line.colour)}"/>'
            )
    x = float(_LEFT)
    parts.append('<g class="legend">')
    for line in series:
        name = line.name if line.segments else f"{line.name} (no data)"
        parts.append(
            f'<rect class="swatch" x="{x:.1f}" y="12" width="16" height="4" '
            f'fill="{escape(line.colour)}"/>'
        )
        parts.append(_text(x + 22, 19, name, "legend-label"))
        x += 40 + 7 * len(name)
    parts.append("</g></svg>")
    return "".join(parts)
