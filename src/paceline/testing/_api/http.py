"""A minimal HTTP/1.1 reader and writer over asyncio streams, enough for the test API.

It reads a request line, header fields and a ``Content-Length`` body, and knows when a
connection stays open (HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with
``Connection: keep-alive``). No chunked bodies, no ``Expect: 100-continue``: the test clients
do not send them, and a request that does is answered 501 or 400 instead of misread.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass

from paceline.errors import PacelineError

# Header block limit: h11 and nginx default to 8-16 KiB per line; a whole block of 64 KiB is
# far beyond what any test client sends and small enough that a bad client cannot hurt.
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024

REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class HttpError(PacelineError):
    """The bytes on the wire are not a request we can read; answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Request:
    """One parsed request. ``headers`` has lower-case names."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; ``None`` when the client closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "the connection closed in the middle of a request") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(400, f"request head longer than {MAX_HEADER_BYTES} bytes") from None
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "request head is not latin-1") from None
    lines = text.split("\r\n")
    # RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line.
    while lines and not lines[0]:
        lines.pop(0)
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1] or not parts[2]:
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}" if lines else "empty")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, f"unsupported HTTP version {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(501, "chunked request bodies are not supported; send Content-Length")
    body = b""
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise HttpError(400, f"bad Content-Length {length_text[:20]!r}")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"body of {length} bytes is over {MAX_BODY_BYTES}")
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise HttpError(400, "the connection closed before the whole body arrived") from None
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 keeps the connection open unless told otherwise; HTTP/1.0 closes it unless asked.
    keep_alive = (
        ("close" not in connection) if version == "HTTP/1.1" else ("keep-alive" in connection)
    )
    return Request(method.upper(), target, headers, body, keep_alive)


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The current time as an RFC 9110 IMF-fixdate, computed at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def encode_response(
    status: int, body: bytes, headers: list[tuple[str, str]], *, keep_alive: bool
) -> bytes:
    """Serialise a response with ``Date``, ``Content-Length`` and ``Connection`` set."""
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        f"Date: {http_date()}",
        "Server: paceline-test-api",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
