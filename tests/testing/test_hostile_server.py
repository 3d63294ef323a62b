"""The hostile server itself, against raw sockets and http.client: each mode misbehaves as it
says, and the counters say what was served."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest

from paceline.testing.hostile import (
    BAD_HEADERS,
    FAR_RESET,
    FAR_RETRY_AFTER_S,
    HUGE_HEADER_BYTES,
    MODES,
    HostileServer,
)

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 5.0


def get(url: str, path: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def raw(url: str, timeout_s: float) -> tuple[bytes, bool]:
    """Send one GET on a fresh socket; what came back within ``timeout_s``, and whether the
    server closed the connection by then."""
    parts = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        sock.sendall(b"GET /items/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        chunks: list[bytes] = []
        while (left_s := deadline - time.monotonic()) > 0:
            sock.settimeout(left_s)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
    return b"".join(chunks), False


def test_error_answers_500_every_time_and_counts_refusals() -> None:
    with HostileServer("error") as server:
        statuses = [get(server.url, "/items/7")[0] for _ in range(3)]
        counts = server.counts()
    assert statuses == [500, 500, 500]
    assert counts.requests["/items/7"] == 3
    assert counts.refused["/items/7"] == 3
    assert counts.served["/items/7"] == 0


def test_flaky_fails_about_half_and_the_same_way_for_the_same_seed() -> None:
    runs = []
    for _ in range(2):
        with HostileServer("flaky", seed=3) as server:
            runs.append([get(server.url, f"/items/{n}")[0] for n in range(40)])
    assert runs[0] == runs[1]
    assert 8 <= runs[0].count(500) <= 32, runs[0]
    assert set(runs[0]) == {200, 500}


def test_far_retry_after_throttles_only_the_first_request() -> None:
    with HostileServer("far-retry-after") as server:
        first = get(server.url, "/items/1")
        rest = [get(server.url, f"/items/{n}")[0] for n in (1, 2, 3)]
        counts = server.counts()
    assert first[0] == 429
    assert first[1]["Retry-After"] == str(FAR_RETRY_AFTER_S)
    assert rest == [200, 200, 200]
    assert counts.refused == {"/items/1": 1}
    assert counts.served == {"/items/1": 1, "/items/2": 1, "/items/3": 1}


def test_far_reset_serves_with_no_budget_left_until_decades_later() -> None:
    with HostileServer("far-reset") as server:
        status, headers, body = get(server.url, "/items/4")
    assert status == 200
    assert json.loads(body) == {"id": "4", "n": 1}
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Reset"] == str(FAR_RESET)


def test_throttle_answers_429_without_retry_after() -> None:
    with HostileServer("throttle") as server:
        status, headers, _ = get(server.url, "/items/1")
    assert status == 429
    assert "Retry-After" not in headers


def test_silent_reads_the_request_and_never_answers() -> None:
    with HostileServer("silent") as server:
        data, closed = raw(server.url, timeout_s=0.5)
        counts = server.counts()
    assert (data, closed) == (b"", False)
    assert counts.requests["/items/1"] == 1


def test_trickle_writes_a_byte_at_a_time() -> None:
    with HostileServer("trickle", trickle_interval_s=0.2) as server:
        data, closed = raw(server.url, timeout_s=1.0)
        counts = server.counts()
    assert not closed
    assert 1 <= len(data) <= 10, data  # about one byte per 0.2 s, never the whole answer
    assert b"HTTP/1.1 200 OK".startswith(data[:15])
    assert counts.served["/items/1"] == 0


def test_huge_body_is_body_bytes_of_valid_json() -> None:
    with HostileServer("huge-body", body_bytes=100_000) as server:
        status, _, body = get(server.url, "/items/5")
    assert status == 200
    assert len(body) == 100_000
    assert json.loads(body)["id"] == "5"


def test_cut_body_closes_half_way_through_the_body() -> None:
    with HostileServer("cut-body") as server:
        data, closed = raw(server.url, timeout_s=TIMEOUT_S)
        counts = server.counts()
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.startswith(b"Content-Length:"))[15:])
    assert closed
    assert 0 < len(body) < length
    assert counts.served["/items/1"] == 0


def test_huge_header_sends_a_72_kib_pacing_header() -> None:
    with HostileServer("huge-header") as server:
        data, _ = raw(server.url, timeout_s=TIMEOUT_S / 5)
    head = data.partition(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 200 OK\r\n")
    policy = next(line for line in head.split("\r\n") if line.startswith("RateLimit-Policy: "))
    value = policy.removeprefix("RateLimit-Policy: ")
    assert HUGE_HEADER_BYTES - 64 <= len(value) <= HUGE_HEADER_BYTES
    assert value.startswith('"p0";q=1000000;w=1, "p1";')


def test_bad_header_sends_each_malformed_pacing_header() -> None:
    with HostileServer("bad-header") as server:
        status, headers, _ = get(server.url, "/items/1")
    assert status == 200
    for name, value in BAD_HEADERS:
        assert headers[name] == value


def test_every_mode_starts_and_stops_and_an_unknown_one_is_refused() -> None:
    for mode in MODES:
        with HostileServer(mode) as server:
            assert server.url.startswith("http://127.0.0.1:")
    with pytest.raises(ValueError, match="hostile mode 'rude': choose one of error, flaky"):
        HostileServer("rude")


def test_serve_test_hostile_runs_a_mode_from_the_command_line() -> None:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "paceline.testing.api_server", "--hostile", "huge-body"),
            *("--body-bytes", "5000", "--port", "0"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:"), line
        status, _, body = get(line.removeprefix("listening on "), "/items/1")
        assert (status, len(body)) == (200, 5000)
    finally:
        process.terminate()
        process.wait(TIMEOUT_S)
    assert process.returncode == 0


def test_a_served_answer_counts_once_it_is_written_whole() -> None:
    with HostileServer("far-reset") as server:
        for _ in range(2):
            get(server.url, "/items/9")
        deadline = time.monotonic() + TIMEOUT_S
        while server.counts().served["/items/9"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        counts = server.counts()
    assert counts.served_twice() == ["/items/9"]
