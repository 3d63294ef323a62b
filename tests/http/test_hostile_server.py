"""The HTTP face against a hostile server on loopback: a trickle, a huge body, a far reset, a
connection closed mid-body, requests that cannot be sent. Each batch must end, and say why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from paceline.http import HttpResponse, _face, fetch_all, stream_requests

BIG_BODY_BYTES = 10 * 1024 * 1024


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


class _Handler(socketserver.BaseRequestHandler):
    """One request per connection; the path picks the misbehaviour."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        path = data.split(b" ", 2)[1].decode()
        self.server.paths.append(path)  # type: ignore[attr-defined]
        route = path.split("?")[0].rsplit("/", 1)[-1]
        with contextlib.suppress(OSError):  # the client hung up: what some tests want
            getattr(self, f"_{route}")(sock)

    def _ok(self, sock: socket.socket, extra: dict[str, str] | None = None) -> None:
        body = b'{"ok": true}'
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        sock.sendall(_head("200 OK", {**headers, **(extra or {}), "Connection": "close"}) + body)

    def _trickle(self, sock: socket.socket) -> None:
        sock.sendall(_head("200 OK", {"Content-Length": "1000"}))
        for _ in range(150):  # a byte every 0.2 s: 30 s, each read well within httpx's 30 s
            sock.sendall(b"x")
            time.sleep(0.2)

    def _big(self, sock: socket.socket) -> None:
        headers = {"Content-Type": "application/json", "Content-Length": str(BIG_BODY_BYTES)}
        sock.sendall(_head("200 OK", headers))
        piece = b"[" + b"1," * 32767 + b"1]"  # 65,536 bytes
        for _ in range(BIG_BODY_BYTES // len(piece)):
            sock.sendall(piece)

    def _cut(self, sock: socket.socket) -> None:
        sock.sendall(_head("200 OK", {"Content-Length": "1000"}) + b"only ten b")
        sock.shutdown(socket.SHUT_RDWR)

    def _farreset(self, sock: socket.socket) -> None:
        self._ok(sock, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "900000000"})

    def _farpolicy(self, sock: socket.socket) -> None:
        self._ok(sock, {"RateLimit-Policy": '"forever";q=1;w=900000000'})


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    paths: list[str]


@pytest.fixture
def hostile() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: _Server, route: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{route}"


def _run(coro: object, bound_s: float = 60.0) -> object:
    """Run ``coro`` and fail (instead of hanging) if it does not end within ``bound_s``."""
    return asyncio.run(asyncio.wait_for(coro, bound_s))  # type: ignore[arg-type]


# -- a far reset, an absurd window ---------------------------------------------------------


@pytest.mark.parametrize("route", ["farreset", "farpolicy"])
def test_a_far_reset_or_window_does_not_freeze_the_batch(hostile: _Server, route: str) -> None:
    urls = [_url(hostile, route) + f"?n={n}" for n in range(6)]
    results = _run(fetch_all(urls, max_concurrent=1), bound_s=60.0)
    assert [r.is_success for r in results] == [True] * 6  # type: ignore[attr-defined]
    assert len(hostile.paths) == 6


# -- one attempt is bounded as a whole -----------------------------------------------------


def test_a_trickling_server_is_cut_by_the_default_whole_attempt_timeout(
    hostile: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_face, "DEFAULT_ATTEMPT_TIMEOUT_S", 1.0)  # 120 s would be slow to test
    url = _url(hostile, "trickle")
    started = time.monotonic()
    (result,) = _run(fetch_all([url], retry=1), bound_s=25.0)  # type: ignore[misc]
    assert time.monotonic() - started < 25.0
    assert result.is_failure
    assert isinstance(result.error, TimeoutError)
    assert str(result.error).startswith("AttemptTimeout after 1 s reading the body of " + url)


def test_timeout_s_overrides_the_default_and_the_error_names_the_url(hostile: _Server) -> None:
    url = _url(hostile, "trickle") + "?api_key=s3cr3t"
    (result,) = _run(fetch_all([url], retry=1, timeout_s=0.5), bound_s=25.0)  # type: ignore[misc]
    message = str(result.error)
    assert message.startswith("AttemptTimeout after 0.5 s reading the body of http://127.0.0.1:")
    assert "s3cr3t" not in message
    assert "api_key=[REDACTED]" in message


def test_a_connection_closed_mid_body_names_the_phase_the_time_and_the_url(
    hostile: _Server,
) -> None:
    url = _url(hostile, "cut")
    (result,) = _run(fetch_all([url], retry=1))  # type: ignore[misc]
    assert isinstance(result.error, ConnectionError)
    message = str(result.error)
    assert message.startswith("RemoteProtocolError after ")
    assert f" s reading the body of {url}" in message


# -- bodies are kept up to a bound ---------------------------------------------------------


def test_a_huge_body_is_kept_truncated_with_a_flag(hostile: _Server) -> None:
    (result,) = _run(fetch_all([_url(hostile, "big")]))  # type: ignore[misc]
    response = result.value
    assert isinstance(response, HttpResponse)
    assert response.truncated
    assert isinstance(response.body, str)
    assert len(response.body) == _face.DEFAULT_MAX_BODY_BYTES
    assert response.to_dict()["truncated"] is True


def test_the_body_bound_is_a_parameter_and_small_bodies_are_whole(hostile: _Server) -> None:
    big, ok = _url(hostile, "big"), _url(hostile, "ok")
    results = _run(fetch_all([big, ok], max_body_bytes=1000))
    big_result, ok_result = results  # type: ignore[misc]
    assert len(big_result.value.body) == 1000
    assert big_result.value.truncated
    assert ok_result.value.body == {"ok": True}
    assert not ok_result.value.truncated
    assert "truncated" not in ok_result.value.to_dict()


def test_a_journal_of_huge_answers_stays_small(hostile: _Server, tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    urls = [_url(hostile, "big") + f"?n={n}" for n in range(4)]
    results = _run(fetch_all(urls, journal=str(journal), max_body_bytes=64 * 1024))
    assert all(r.is_success for r in results)  # type: ignore[attr-defined]
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert size < 4 * 1024 * 1024  # 40 MB of answers, 256 KiB kept


# -- requests that cannot be sent fail at once ---------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ("ftp://files.example/a", "scheme 'ftp' is not supported"),
        ("http:///nohost", "no host"),
        ("/relative/only", "not absolute"),
        ({"url": "{base}/ok", "method": "GE T"}, "method 'GE T': not an HTTP method"),
        ({"url": "{base}/ok", "headers": {"X-A": "a\nb"}}, "header 'X-A': its value must be"),
        ({"url": "{base}/ok", "headers": {"Bad Name": "x"}}, "header name 'Bad Name'"),
        ({"url": "{base}/ok", "headers": {"X-A": "\u00e9"}}, "header 'X-A': its value must be"),
    ],
)
def test_a_request_that_cannot_be_sent_fails_once_and_is_not_retried(
    hostile: _Server, request_: object, expected: str
) -> None:
    base = f"http://127.0.0.1:{hostile.server_address[1]}"
    if isinstance(request_, dict):
        request_ = {**request_, "url": request_["url"].format(base=base)}

    async def main() -> list[object]:
        return [r async for r in stream_requests([request_], retry=5)]

    (result,) = _run(main())  # type: ignore[misc]
    assert not result.success  # type: ignore[attr-defined]
    assert result.attempts == 1  # type: ignore[attr-defined]
    assert expected in result.error  # type: ignore[attr-defined]
    assert hostile.paths == []


# -- the command line ----------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paceline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


def test_cli_a_request_that_cannot_be_sent_is_a_usage_error(tmp_path: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"url": "ftp://files.example/a"}) + "\n")
    done = _cli("http", str(rows), "--journal", "none", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "scheme 'ftp' is not supported: use http:// or https://" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_timeout_bounds_a_trickle_and_the_error_names_the_url(
    hostile: _Server, tmp_path: Path
) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"url": _url(hostile, "trickle")}) + "\n")
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    done = _cli(
        "http", str(rows), "--timeout", "1", "--retries", "0", "--out", str(out),
        "--journal", "none", cwd=tmp_path,
    )  # fmt: skip
    assert time.monotonic() - started < 60
    assert done.returncode != 0
    (line,) = out.read_text().splitlines()
    error = json.loads(line)["error"]
    assert error.startswith(
        f"AttemptTimeout after 1 s reading the body of {_url(hostile, 'trickle')}"
    )
