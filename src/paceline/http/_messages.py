"""What goes in (requests) and comes out (responses, errors) of the HTTP face."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from paceline.redact import redact_data, redact_text


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request: ``method``, ``url`` (absolute, or relative to a base URL), ``headers``,
    a ``json`` body or a raw ``body``, and an optional ``id`` that names it in results and in
    the journal."""

    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    body: str | bytes | None = None
    id: str | None = None


def as_request(item: str | Mapping[str, Any] | HttpRequest) -> HttpRequest:
    """A URL string, a mapping with ``url`` (and ``method``, ``headers``, ``json``, ``body``,
    ``id``), or an :class:`HttpRequest`."""
    if isinstance(item, HttpRequest):
        return item
    if isinstance(item, str):
        return HttpRequest(url=item)
    if isinstance(item, Mapping):
        unknown = set(item) - {"url", "method", "headers", "json", "body", "id"}
        if "url" not in item or unknown:
            raise ValueError(
                f"request {redact_data(dict(item))!r}: needs 'url' and may have method, "
                f"headers, json, body, id" + (f" (unknown: {sorted(unknown)})" if unknown else "")
            )
        return HttpRequest(
            url=str(item["url"]),
            method=str(item.get("method", "GET")).upper(),
            headers=dict(item.get("headers") or {}),
            json=item.get("json"),
            body=item.get("body"),
            id=None if item.get("id") is None else str(item["id"]),
        )
    raise TypeError(f"request {item!r}: give a URL, a mapping with 'url', or an HttpRequest")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response as kept in results and journals: status, headers (credentials redacted),
    the body (decoded JSON when it is JSON, else text) and the time it took."""

    status_code: int
    headers: dict[str, str]
    body: Any
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (what the journal stores)."""
        return {
            "status_code": self.status_code,
            "headers": self.headers,
            "body": self.body,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HttpResponse:
        """Back from :meth:`to_dict`."""
        return cls(
            int(data["status_code"]),
            dict(data["headers"]),
            data["body"],
            float(data["elapsed_s"]),
        )


class HttpResponseCodec:
    """Lets a journal store :class:`HttpResponse` results (as JSON, never pickle)."""

    def encode(self, value: Any) -> Any:
        return value.to_dict() if isinstance(value, HttpResponse) else value

    def decode(self, data: Any) -> Any:
        if isinstance(data, dict) and {"status_code", "headers", "body"} <= set(data):
            return HttpResponse.from_dict(data)
        return data


class HttpStatusError(Exception):
    """The server answered with an error status. ``retry_after`` carries its Retry-After (in
    seconds) for the retry policy and the adaptive controller; 4xx other than 408 and 429
    are not retryable (they would fail the same way again)."""

    def __init__(self, status_code: int, body: str, retry_after: float | None = None) -> None:
        snippet = redact_text(body[:200])
        super().__init__(f"HTTP {status_code}" + (f": {snippet}" if snippet else ""))
        self.status_code = status_code
        self.retry_after = retry_after
        self.retryable = status_code in (408, 429) or status_code >= 500


class ServerUnreachable(ConnectionError):
    """No connection to the server (refused, unknown host, unreachable): the message names
    the URL and what to check; the httpx error is the ``__cause__``."""

    error_code = "connection"

    def __init__(self, url: str, cause: BaseException) -> None:
        super().__init__(
            f"cannot connect to {redact_text(url)}: is the server up and the URL right? "
            f"({cause or type(cause).__name__})"
        )
        self.url = url


def decode_body(content: bytes, content_type: str) -> Any:
    """JSON when the response says so (and parses), else text."""
    text = content.decode("utf-8", errors="replace")
    if "json" in content_type.lower():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
