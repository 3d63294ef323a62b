"""A small HTTP API on loopback with a hidden strict quota, for demos and tests.

``GET /items/<id>`` answers ``{"id": ..., "square": ...}`` unless more than ``quota`` requests
arrived within the last ``window_s`` seconds, in which case it answers 429 with
``Retry-After``. ``GET /stats`` reports what the server saw. Standard library only.

>>> with QuotaServer(quota=5, window_s=1.0) as server:
...     import urllib.request, json
...     body = urllib.request.urlopen(server.url + "/items/3").read()
...     json.loads(body)["square"], server.stats()["accepted"]
(9, 1)
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the demo prints its own progress

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path == "/stats":
            self._send(200, owner.stats(), {})
            return
        if not self.path.startswith("/items/"):
            self._send(404, {"error": f"no route {self.path}"}, {})
            return
        item = self.path.removeprefix("/items/")
        retry_after_s = owner.admit()
        if retry_after_s is not None:
            self._send(429, {"error": "rate limited"}, {"Retry-After": f"{retry_after_s:.0f}"})
            return
        if owner.latency_s:
            time.sleep(owner.latency_s)
        try:
            number = int(item)
        except ValueError:
            self._send(400, {"error": f"item id {item!r} is not a number"}, {})
            return
        self._send(200, {"id": number, "square": number * number}, {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 overflows under a burst of connects; the kernel then
    # drops SYNs and the client retries after 1 s, which looks like a 1 s network delay.
    request_queue_size = 1024
    owner: QuotaServer


class QuotaServer:
    """Serve the quota API on ``127.0.0.1`` on a free port, in a background thread."""

    def __init__(self, quota: int = 50, window_s: float = 1.0, latency_s: float = 0.0) -> None:
        self.quota = quota
        self.window_ns = round(window_s * 1e9)
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self._recent: deque[int] = deque()
        self._accepted_ns: list[int] = []
        self._throttled = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="paceline-quota-server", daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def admit(self) -> float | None:
        """Count one request: ``None`` if accepted, else the seconds until it would be."""
        now = time.monotonic_ns()
        with self._lock:
            recent = self._recent
            while recent and recent[0] <= now - self.window_ns:
                recent.popleft()
            if len(recent) >= self.quota:
                self._throttled += 1
                return max(1.0, (recent[0] + self.window_ns - now) / 1e9)
            recent.append(now)
            self._accepted_ns.append(now)
            return None

    def stats(self) -> dict[str, Any]:
        """Accepted and throttled counts, and the most accepted in any window."""
        with self._lock:
            accepted = list(self._accepted_ns)
            throttled = self._throttled
        most = 0
        for i, t in enumerate(accepted):
            most = max(most, bisect.bisect_left(accepted, t + self.window_ns) - i)
        return {
            "accepted": len(accepted),
            "throttled": throttled,
            "quota": self.quota,
            "window_s": self.window_ns / 1e9,
            "max_accepted_in_any_window": most,
        }

    def start(self) -> QuotaServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> QuotaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
