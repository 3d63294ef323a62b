"""The HTML report: one self-contained page whose charts really render (headless Chromium)."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from paceline.cli.report import build_report
from paceline.cli.report_html import CHARTS, render_html
from paceline.stores import Journal
from paceline.stores.view import JournalView
from tests.cli.test_report import T0, make_http_journal, snapshot

HOSTILE = '<img src="http://example.invalid/x.png"><script>alert(1)</script> & "quotes"'
# Every series on the page: (chart id, css class, stroke colour).
SERIES = [
    (chart, css, colour) for chart, (_, fields) in CHARTS.items() for *_, css, colour in fields
]


def render(path):
    with JournalView.open(path) as view:
        return render_html(build_report(view))


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    path = folder / "batch.journal"
    make_http_journal(path, label="<b>users</b>")
    with Journal.open(path, fingerprint="f00d") as journal:
        journal.record("hostile", success=False, error=RuntimeError(f"HTTP 500: {HOSTILE}"))
    target = folder / "report.html"
    target.write_text(render(path), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def empty_page_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html-empty")
    path = folder / "batch.journal"
    make_http_journal(path, samples=False)
    target = folder / "report.html"
    target.write_text(render(path), encoding="utf-8")
    return target


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of <style> elements."""

    def __init__(self):
        super().__init__()
        self.tags = []
        self.styles = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def elements(text):
    parser = Elements()
    parser.feed(text)
    parser.close()
    return parser


# -- the page itself --------------------------------------------------------------------------


def test_the_page_fetches_nothing(page_file):
    text = page_file.read_text(encoding="utf-8")
    parsed = elements(text)
    names = [tag for tag, _ in parsed.tags]
    assert "script" not in names
    assert not {"link", "img", "iframe", "object", "embed", "image", "use"} & set(names)
    for tag, attrs in parsed.tags:
        for name, value in attrs.items():
            if name in ("src", "href", "xlink:href", "srcset", "action", "poster", "data"):
                pytest.fail(f"<{tag} {name}={value!r}> would load something")
            assert not re.match(r"\s*(https?:)?//", value or ""), (tag, name, value)
            if name == "style":
                assert "url(" not in value
    css = "".join(parsed.styles)
    assert "url(" not in css
    assert "@import" not in css
    assert "@font-face" not in css
    # And if something slipped through, the browser would refuse to fetch it.
    (csp,) = [a for t, a in parsed.tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp["content"]


def test_text_from_servers_is_escaped(page_file):
    text = page_file.read_text(encoding="utf-8")
    assert "<script>" not in text
    assert '<img src="http' not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;users&lt;/b&gt;" in text  # the label
    assert "<b>users</b>" not in text


def test_every_chart_and_series_is_on_the_page(page_file):
    parsed = elements(page_file.read_text(encoding="utf-8"))
    charts = [a["id"] for t, a in parsed.tags if t == "svg" and a.get("class") == "chart"]
    assert charts == ["chart-throughput", "chart-latency", "chart-concurrency", "chart-rate"]
    assert len({colour for _, _, colour in SERIES}) == len(SERIES)  # distinct colours
    polylines = [a for t, a in parsed.tags if t == "polyline"]
    for _, css, colour in SERIES:
        mine = [a for a in polylines if a["class"] == f"series {css}" and a["stroke"] == colour]
        # Two runs: each series is drawn as two segments, each with all its points.
        assert [len(a["points"].split()) for a in mine] == [10, 6], css
    texts = page_file.read_text(encoding="utf-8")
    assert "no data" not in texts
    for chart_id in CHARTS:  # axes with tick labels, a legend
        svg = texts[texts.index(f'id="{chart_id}"') :]
        svg = svg[: svg.index("</svg>")]
        assert svg.count('class="tick"') >= 6
        assert '<g class="legend">' in svg
        assert 'class="run-boundary"' in svg


def test_concurrency_ticks_are_whole_numbers(page_file):
    text = page_file.read_text(encoding="utf-8")
    svg = text[text.index('id="chart-concurrency"') :]
    svg = svg[: svg.index("</svg>")]
    y_labels = re.findall(r'class="tick"[^>]*text-anchor="end">([^<]*)<', svg)
    assert len(y_labels) >= 4
    assert all(re.fullmatch(r"\d+", label) for label in y_labels), y_labels
    assert y_labels[0] == "0"


def test_the_summary_tables(page_file):
    text = page_file.read_text(encoding="utf-8")
    status = text[text.index('id="status-codes"') :]
    status = status[: status.index("</table>")]
    cells = re.findall(r'<td class="[^"]*">([^<]*)</td>', status)  # (the bars hold a <span>)
    assert cells == [
        "200",
        "18",
        "201",
        "2",
        "404",
        "3",
        "429",
        "1",
        "500",
        "1",
        "503",
        "4",
        "none",
        "2",
    ]
    assert status.count('<span class="bar"') == 7
    errors = text[text.index('id="top-errors"') :]
    assert "HTTP 503: upstream busy (request &lt;id&gt;)" in errors
    assert '<td class="num">4</td>' in errors
    assert "items settled/s" in text


def test_the_cards_and_runs_count_as_the_text_report_does(page_file):
    # The attempts the runs sent (55, not the items' 47) with their parts, and a run's settled
    # items apart from those it resumed.
    text = page_file.read_text(encoding="utf-8")
    assert "55 / 17 / 5 / 14" in text
    assert "attempts sent / retries / throttled / errors" in text
    runs = text[text.index("<th") : text.index("</table>")]
    cells = re.findall(r'<td class="num">([^<]*)</td>', runs)
    assert cells[-2:] == ["18", "12"]  # run 2: 18 settled, 12 resumed


def test_charts_without_data_say_so(empty_page_file):
    text = empty_page_file.read_text(encoding="utf-8")
    assert text.count('class="chart"') == 4
    assert text.count(">no data</text>") == 4
    assert "<polyline" not in text
    assert "No run timeline in this journal." in text


def test_a_series_without_values_is_marked_in_the_legend(tmp_path):
    path = tmp_path / "b.journal"
    with Journal.open(path, fingerprint="f") as journal:
        journal.add_sample({"kind": "start", "run": 1, "t": T0, "command": "http"})
        for k in range(1, 4):  # no rate limit in force, no latency measured yet
            tick = snapshot(k, rate_limit_per_s=None, latency_p50_s=None)
            tick.update(latency_p90_s=None, latency_p99_s=None)
            journal.add_sample({"kind": "tick", "run": 1, "t": T0 + k, **tick})
    text = render(path)
    assert "rate limit (no data)" in text
    assert 'class="series rate-limit"' not in text
    assert text.count('class="series attempt-rate"') == 2  # in the throughput and rate charts
    latency = text[text.index('id="chart-latency"') :]
    assert latency[: latency.index("</svg>")].count("no data") == 1


def test_long_timelines_are_thinned(tmp_path):
    path = tmp_path / "long.journal"
    with Journal.open(path, fingerprint="f") as journal:
        journal.add_sample({"kind": "start", "run": 1, "t": T0, "command": "http"})
        for k in range(1, 4001):  # over an hour of ticks
            journal.add_sample({"kind": "tick", "run": 1, "t": T0 + k, **snapshot(k)})
    text = render(path)
    points = re.findall(r'<polyline class="series rate" points="([^"]*)"', text)
    assert len(points) == 1
    coords = points[0].split()
    assert 1000 < len(coords) <= 1501
    assert coords[-1].startswith("880.0,")  # the last point is kept: the right edge
    assert len(text) < 400_000


# -- in a browser -----------------------------------------------------------------------------


def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if "CI" in os.environ:
        pytest.fail(
            "chromium is not installed, and CI is set: install it (apt-get install chromium)"
        )
    pytest.skip("chromium is not installed (with CI set, this fails instead)")


def run_chromium(page, tmp_path, *args):
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def colour_counts(png):
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1200, 2400)
        return rgb.getcolors(maxcolors=rgb.size[0] * rgb.size[1])


def pixels_near(colours, hex_colour, tolerance=12):
    target = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return sum(
        count
        for count, rgb in colours
        if all(abs(a - b) <= tolerance for a, b in zip(rgb, target, strict=True))
    )


# A legend swatch is 16 x 4 = 64 pixels: a drawn line needs well more than that.
MIN_LINE_PIXELS = 300


def test_the_charts_render_in_chromium(page_file, empty_page_file, tmp_path):
    png = tmp_path / "report.png"
    run_chromium(page_file, tmp_path, f"--screenshot={png}", "--window-size=1200,2400")
    colours = colour_counts(png)
    drawn = {f"{chart}:{css}": pixels_near(colours, colour) for chart, css, colour in SERIES}
    missing = {name: n for name, n in drawn.items() if n < MIN_LINE_PIXELS}
    assert not missing, f"series not drawn (pixels of their colour): {missing}; all: {drawn}"
    # The same count on the page without a timeline: only the legend swatches.
    empty_png = tmp_path / "empty.png"
    run_chromium(empty_page_file, tmp_path, f"--screenshot={empty_png}", "--window-size=1200,2400")
    empty = colour_counts(empty_png)
    for _, css, colour in SERIES:
        assert pixels_near(empty, colour) < MIN_LINE_PIXELS, css


def test_chromium_parses_the_charts_as_svg(page_file, tmp_path):
    dom = run_chromium(page_file, tmp_path, "--dump-dom")
    assert re.findall(r'<svg class="chart" id="([a-z-]+)"', dom) == list(CHARTS)
    assert len(re.findall(r'<polyline class="series ', dom)) == 2 * len(SERIES)
    assert "<script" not in dom  # the hostile message stayed text
    assert "alert(1)" in dom
