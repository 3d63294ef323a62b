"""Debian's nginx on loopback with a generated config: the world's most common rate limiter.

paceline's tests and benchmarks run batches against nginx's ``limit_req`` (a leaky bucket with
millisecond accounting; its 429 carries no ``Retry-After``) and ``limit_conn`` (503), and read
what nginx itself logged to judge the client. Content is a static file (``return 200`` runs in
the rewrite phase, before ``limit_req``, so it would limit nothing); an ``upstream`` URL puts a
proxy in front of another server instead, and ``upstream_latency_s`` in front of the test API
answering after that long (Debian's ``nginx-light`` has no module that sleeps, and a
``limit_conn`` needs requests that last for it to limit anything).

Needs the ``nginx`` program (Debian: ``apt-get install nginx-light``). It runs in the
foreground as one process (``master_process off``) as the calling user, everything under a
temporary directory; nothing is left behind.

>>> limits = NginxLimits(rate_per_s=50, burst=20, nodelay=True)
>>> limits.zone_lines()[-1], limits.location_lines()
('limit_req_zone $server_name zone=req:1m rate=50r/s;', ['limit_req zone=req burst=20 nodelay;'])
>>> NginxLimits(connections=8, upstream_latency_s=0.05).location_lines()
['limit_conn conn 8;']

A server that holds each request 50 ms and serves 8 at once, answering 503 beyond::

    with NginxServer(NginxLimits(connections=8, upstream_latency_s=0.05)) as server:
        ...  # GET server.url + "/items/1"; server.log() afterwards
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from paceline.errors import InvalidArgument, InvalidState
from paceline.testing._api.config import ApiConfig
from paceline.testing._api.server import ApiServer, SpawnedServer

__all__ = ["NginxLimits", "NginxServer", "nginx_program"]


# A log that has not grown for this long has every line of the answers already given: nginx
# writes a line right after its answer (microseconds), so 50 ms is ample even on a loaded machine.
_LOG_QUIET_S = 0.05


def nginx_program() -> str | None:
    """The path of ``nginx``, or ``None`` when it is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@dataclass(frozen=True, slots=True)
class NginxLimits:
    """What nginx limits: ``limit_req`` at ``rate_per_s`` (with ``burst``; without ``nodelay``
    nginx delays requests beyond the rate, up to ``burst`` of them, to keep the rate) and/or
    ``limit_conn`` at ``connections`` (requests being served at once).

    Content: ``upstream`` (a base URL such as ``http://127.0.0.1:8080``) proxies to another
    server; ``upstream_latency_s`` proxies to the test API (``paceline.testing``) started for
    it in its own process, answering every request after that many seconds.
    """

    rate_per_s: int | None = None
    burst: int = 0
    nodelay: bool = False
    connections: int | None = None
    upstream: str | None = None
    upstream_latency_s: float | None = None

    def __post_init__(self) -> None:
        if self.upstream is not None and self.upstream_latency_s is not None:
            raise InvalidArgument(
                "give upstream (another server) or upstream_latency_s (the test API), not both"
            )

    def zone_lines(self) -> list[str]:
        """The ``http``-level zone definitions."""
        lines = ["limit_req_status 429;", "limit_conn_status 503;"]
        if self.rate_per_s is not None:
            lines.append(f"limit_req_zone $server_name zone=req:1m rate={self.rate_per_s}r/s;")
        if self.connections is not None:
            lines.append("limit_conn_zone $server_name zone=conn:1m;")
        return lines

    def location_lines(self) -> list[str]:
        """The ``location``-level limits."""
        lines = []
        if self.rate_per_s is not None:
            burst = f" burst={self.burst}" if self.burst else ""
            lines.append(f"limit_req zone=req{burst}{' nodelay' if self.nodelay else ''};")
        if self.connections is not None:
            lines.append(f"limit_conn conn {self.connections};")
        return lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NginxServer:
    """nginx serving ``GET /items/<anything>`` (a small JSON file) within ``limits``.

    ``url`` is its base URL once started; :meth:`log` returns what it answered, from its own
    access log: ``(time_s, status, uri)`` per request.
    """

    def __init__(self, limits: NginxLimits, *, start_timeout_s: float = 10.0) -> None:
        program = nginx_program()
        if program is None:
            raise InvalidState("nginx is not installed: apt-get install nginx-light")
        self.program = program
        self.limits = limits
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._upstream: SpawnedServer | None = None
        self._upstream_url = limits.upstream

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self, root: Path) -> str:
        limits = self.limits
        upstream_lines = []
        if self._upstream_url is not None:
            address = urllib.parse.urlsplit(self._upstream_url).netloc
            # Kept-alive connections to the upstream: without them each proxied request opens
            # one, and a busy loopback runs out of ports in TIME_WAIT within a benchmark.
            upstream_lines = [f"  upstream backend {{ server {address}; keepalive {_KEEPALIVE}; }}"]
            content = "proxy_pass http://backend; proxy_http_version 1.1;"
            content += ' proxy_set_header Connection "";'
        else:
            content = "try_files /item.json =404; default_type application/json;"
        location = " ".join([*limits.location_lines(), content])
        return "\n".join(
            [
                "daemon off;",
                "master_process off;",
                "worker_processes 1;",
                f"pid {root}/nginx.pid;",
                f"error_log {root}/error.log warn;",
                "events { worker_connections 4096; }",
                "http {",
                *(f"  {name}_temp_path {root}/tmp-{name};" for name in _TEMP_PATHS),
                "  log_format paced '$msec $status $request_uri';",
                f"  access_log {root}/access.log paced;",
                "  keepalive_requests 1000000;",
                *(f"  {line}" for line in limits.zone_lines()),
                *upstream_lines,
                "  server {",
                f"    listen 127.0.0.1:{self.port};",
                "    server_name paceline-test;",
                f"    root {root}/www;",
                f"    location / {{ {location} }}",
                "  }",
                "}",
                "",
            ]
        )

    def start(self) -> NginxServer:
        """Write the config, start nginx, and wait until it answers (or raise)."""
        if self.limits.upstream_latency_s is not None:
            config = ApiConfig(base_latency_s=self.limits.upstream_latency_s)
            self._upstream = ApiServer.spawn(config).start()
            self._upstream_url = self._upstream.url
        root = Path(tempfile.mkdtemp(prefix="paceline-nginx-"))
        self._dir = root
        (root / "www").mkdir()
        (root / "www" / "item.json").write_text('{"ok": true}\n')
        last_error = ""
        for _ in range(5):  # a free port can be taken between the check and nginx's bind
            self.port = _free_port()
            (root / "nginx.conf").write_text(self._config(root))
            process = subprocess.Popen(
                [self.program, "-p", str(root), "-c", str(root / "nginx.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_ready(process):
                self._process = process
                return self
            process.kill()
            _, err = process.communicate(timeout=5)
            last_error = err.decode(errors="replace").strip()
        self.stop()
        raise InvalidState(f"nginx did not start: {last_error}")

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return True
            time.sleep(0.05)
        return False

    def log(self, at_least: int = 0, within_s: float = 5.0) -> list[tuple[float, int, str]]:
        """What nginx answered so far: ``(unix time s, status, uri)`` per request, in order.

        nginx writes a request's line in its log phase, *after* the answer went out, so a
        client can hold its answer before the line exists (the limit_conn fixture test read 11
        lines of 12 once). So this reads until the log has ``at_least`` lines and has not grown
        for ``_LOG_QUIET_S``, or ``within_s`` passed.
        """
        assert self._dir is not None
        path = self._dir / "access.log"
        deadline = time.monotonic() + within_s
        text = path.read_text() if path.exists() else ""
        while time.monotonic() < deadline:
            time.sleep(_LOG_QUIET_S)
            newer = path.read_text() if path.exists() else ""
            if newer == text and text.count("\n") >= at_least:
                break
            text = newer
        rows = []
        for line in text.splitlines():
            at, status, uri = line.split(" ", 2)
            rows.append((float(at), int(status), uri))
        return rows

    def get(self, path: str) -> int:
        """One request from here (urllib): its status."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def upstream_stats(self) -> dict[str, Any]:
        """What the test API behind nginx saw (``GET /stats``), with ``upstream_latency_s``."""
        if self._upstream is None:
            raise InvalidState("no test API behind this nginx: give upstream_latency_s")
        return self._upstream.stats()

    def stop(self) -> None:
        """Stop nginx (and the test API behind it) and remove its directory."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            if process.stderr is not None:
                process.stderr.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.close()

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# Idle connections nginx keeps to the upstream: more than any client's concurrency in our tests
# and benchmarks (8-64), so none is opened per request.
_KEEPALIVE = 128
