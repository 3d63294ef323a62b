"""What goes in (requests) and comes out (responses, errors) of the HTTP face."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import httpx

from paceline.errors import ErrorCode, InvalidArgument, InvalidArgumentType, PacelineError
from paceline.policy.answers import Verdict, classify_answer
from paceline.policy.cost import Cost, usage_tokens
from paceline.redact import redact_data, redact_text


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request: ``method``, ``url`` (absolute, or relative to a base URL), ``headers``,
    a ``json`` body or a raw ``body``, an optional ``id`` that names it in results and in
    the journal, and an optional ``cost`` (an estimate per unit, e.g. ``{"tokens": 1200}``,
    reserved before it is sent when the rate limiter counts more than requests)."""

    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    body: str | bytes | None = None
    id: str | None = None
    cost: Mapping[str, int] | None = None

    def __repr__(self) -> str:
        """Credentials masked: a request's repr ends up in tracebacks, logs and a Dask
        worker's record of a failed task, where an ``Authorization`` must not.

        >>> HttpRequest("https://api.example/x", headers={"Authorization": "Bearer t0k"})
        HttpRequest(url='https://api.example/x', method='GET', headers={'Authorization': \
'[REDACTED]'}, json=None, body=None, id=None, cost=None)
        """
        body = redact_text(self.body) if isinstance(self.body, str) else self.body
        return (
            f"HttpRequest(url={redact_text(self.url)!r}, method={self.method!r}, "
            f"headers={redact_data(dict(self.headers))!r}, json={redact_data(self.json)!r}, "
            f"body={body!r}, id={self.id!r}, cost={self.cost!r})"
        )


def as_request(item: str | Mapping[str, Any] | HttpRequest) -> HttpRequest:
    """A URL string, a mapping with ``url`` (and ``method``, ``headers``, ``json``, ``body``,
    ``id``, ``cost``), or an :class:`HttpRequest`."""
    if isinstance(item, HttpRequest):
        return item
    if isinstance(item, str):
        return HttpRequest(url=item)
    if isinstance(item, Mapping):
        unknown = set(item) - {"url", "method", "headers", "json", "body", "id", "cost"}
        if "url" not in item or unknown:
            raise InvalidArgument(
                f"request {redact_data(dict(item))!r}: needs 'url' and may have method, "
                f"headers, json, body, id, cost"
                + (f" (unknown: {sorted(unknown)})" if unknown else "")
            )
        return HttpRequest(
            url=str(item["url"]),
            method=str(item.get("method", "GET")).upper(),
            headers=dict(item.get("headers") or {}),
            json=item.get("json"),
            body=item.get("body"),
            id=None if item.get("id") is None else str(item["id"]),
            cost=item.get("cost"),
        )
    raise InvalidArgumentType(
        f"request {item!r}: give a URL, a mapping with 'url', or an HttpRequest"
    )


def request_cost(item: str | Mapping[str, Any] | HttpRequest) -> Cost:
    """The cost a request carries (``"cost": {"tokens": 1200}``): the face's default
    ``cost=`` when the rate limiter counts more than requests.

    >>> request_cost({"url": "/v1/chat/completions", "cost": {"tokens": 1200}})
    {'tokens': 1200}
    """
    cost = item.cost if isinstance(item, HttpRequest) else None
    if isinstance(item, Mapping):
        cost = item.get("cost")
    if cost is None:
        shown = (
            item
            if isinstance(item, str)
            else redact_data(dict(item) if isinstance(item, Mapping) else {"url": item.url})
        )
        raise InvalidArgument(
            f"request {shown!r} has no cost, and the rate limiter counts more than requests: "
            'give each request a "cost" (e.g. {"tokens": 1200}) or pass cost= '
            "(a mapping, or a function of the request)"
        )
    return cost


def usage_cost(response: Any) -> Cost | None:
    """The tokens an answer says it used: ``usage.total_tokens`` (OpenAI), else
    ``usage.input_tokens + usage.output_tokens`` (Anthropic); ``None`` when it says neither
    (the estimate then stands). The face's default ``actual_cost=``.

    >>> usage_cost(HttpResponse(200, {}, {"usage": {"input_tokens": 7, "output_tokens": 5}}, 0.1))
    {'tokens': 12}
    """
    tokens = usage_tokens(getattr(response, "body", None))
    return None if tokens is None else {"tokens": tokens}


def usage_at(path: str, unit: str = "tokens") -> Callable[[Any], Cost | None]:
    """``actual_cost=`` from a dotted path into the answer's JSON, e.g.
    ``"usage.total_tokens"``: that many ``unit`` (``None`` when the answer lacks it).

    >>> usage_at("meta.billed")(HttpResponse(200, {}, {"meta": {"billed": 30}}, 0.1))
    {'tokens': 30}
    """
    keys = path.split(".")

    def actual(response: Any) -> Cost | None:
        value = getattr(response, "body", None)
        for key in keys:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return {unit: value} if _whole(value) else None

    return actual


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response as kept in results and journals: status, headers (credentials redacted),
    the body (decoded JSON when it is JSON, else text) and the time it took. ``truncated``:
    the body was longer than the face keeps (``max_body_bytes``) and ``body`` is its start, as
    text (a cut JSON document does not parse)."""

    status_code: int
    headers: dict[str, str]
    body: Any
    elapsed_s: float
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (what the journal stores); ``truncated`` only when it is true, so
        whole answers are stored as before.

        >>> HttpResponse(200, {}, "abc", 0.5, truncated=True).to_dict()["truncated"]
        True
        """
        data = {
            "status_code": self.status_code,
            "headers": self.headers,
            "body": self.body,
            "elapsed_s": self.elapsed_s,
        }
        if self.truncated:
            data["truncated"] = True
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HttpResponse:
        """Back from :meth:`to_dict`."""
        return cls(
            int(data["status_code"]),
            dict(data["headers"]),
            data["body"],
            float(data["elapsed_s"]),
            bool(data.get("truncated", False)),
        )


class HttpResponseCodec:
    """Lets a journal store :class:`HttpResponse` results (as JSON, never pickle)."""

    def encode(self, value: Any) -> Any:
        return value.to_dict() if isinstance(value, HttpResponse) else value

    def decode(self, data: Any) -> Any:
        if isinstance(data, dict) and {"status_code", "headers", "body"} <= set(data):
            return HttpResponse.from_dict(data)
        return data


class HttpStatusError(PacelineError):
    """The server answered with an error status (or a success that says it is not one, such as
    a GraphQL ``RATE_LIMITED``). ``verdict`` is what the answer means
    (:func:`paceline.http.classify_answer`, or your ``classify=``): a throttle and a transient
    error are retryable, an exhausted quota and a permanent error are not. ``retry_after``
    carries its Retry-After (in seconds) for the retry policy and the adaptive controller.
    ``error_code`` says which: ``rate_limited``, ``quota_exhausted``, ``not_found``,
    ``permission_denied``, ``http_4xx``, ``http_5xx``.

    >>> error = HttpStatusError(403, "secondary rate limit", 60.0, verdict=Verdict.THROTTLED)
    >>> error.retryable, error.error_code
    (True, 'rate_limited')
    >>> HttpStatusError(404, "").error_code, HttpStatusError(502, "").retryable
    ('not_found', True)
    """

    def __init__(
        self,
        status_code: int,
        body: str,
        retry_after: float | None = None,
        *,
        verdict: Verdict | None = None,
    ) -> None:
        snippet = redact_text(body[:200])
        if verdict is None:
            verdict = classify_answer(status_code, {}, body)
        prefix = _PREFIXES.get(verdict, "")
        super().__init__(f"{prefix}HTTP {status_code}" + (f": {snippet}" if snippet else ""))
        self.status_code = status_code
        self.retry_after = retry_after
        self.verdict = verdict
        self.retryable = verdict in (Verdict.THROTTLED, Verdict.TRANSIENT)

    @property
    def error_code(self) -> str:
        """What kind of failure, never ``unknown`` (see the class docstring)."""
        code: ErrorCode
        if self.verdict is Verdict.THROTTLED:
            code = ErrorCode.THROTTLED
        elif self.verdict is Verdict.EXHAUSTED:
            code = ErrorCode.QUOTA_EXHAUSTED
        elif self.status_code == 404:
            code = ErrorCode.NOT_FOUND
        elif self.status_code in (401, 403):
            code = ErrorCode.PERMISSION_DENIED
        elif self.status_code == 408:
            code = ErrorCode.TIMEOUT
        else:
            code = ErrorCode.HTTP_5XX if self.status_code >= 500 else ErrorCode.HTTP_4XX
        return str(code.value)


# What the message says first, so a failure's text names its cause.
_PREFIXES = {
    Verdict.EXHAUSTED: "quota exhausted (resume when the quota is back): ",
}


class ServerUnreachable(PacelineError, ConnectionError):
    """No connection to the server (refused, unknown host, unreachable): the message names
    the URL and what to check; the httpx error is the ``__cause__``."""

    error_code = "connection"

    def __init__(self, url: str, cause: BaseException, elapsed_s: float | None = None) -> None:
        after = "" if elapsed_s is None else f" (after {_seconds(elapsed_s)} s)"
        super().__init__(
            f"cannot connect to {redact_text(url)}{after}: is the server up and the URL right? "
            f"({cause or type(cause).__name__})"
        )
        self.url = url


def _seconds(value: float) -> str:
    """Seconds for a message: ``30``, ``1.5``, ``0.012``."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if value >= 0.01 else f"{value:.2g}"


def _describe(kind: str, elapsed_s: float, phase: str, url: str, detail: str = "") -> str:
    text = f"{kind} after {_seconds(elapsed_s)} s {phase} {redact_text(url)}"
    return f"{text}: {redact_text(detail)}" if detail and detail != kind else text


class HttpTimeout(PacelineError, TimeoutError):
    """An attempt ran out of time: httpx's per-operation timeouts (``ReadTimeout``...) or the
    face's whole-attempt timeout (``AttemptTimeout``). The message names the kind, the time,
    the phase and the URL (credentials redacted); the httpx error, if any, is the ``__cause__``.

    >>> str(HttpTimeout("ReadTimeout", 30.0, "reading the body of", "https://a.example/x?api_key=k"))
    'ReadTimeout after 30 s reading the body of https://a.example/x?api_key=[REDACTED]'
    """

    error_code = "timeout"

    def __init__(self, kind: str, elapsed_s: float, phase: str, url: str, hint: str = "") -> None:
        super().__init__(_describe(kind, elapsed_s, phase, url) + (f" ({hint})" if hint else ""))
        self.kind, self.elapsed_s, self.phase, self.url = kind, elapsed_s, phase, url


class HttpTransportError(PacelineError, ConnectionError):
    """The connection broke after it was made (reset, closed mid-body, a protocol error from
    the server): the message names the httpx error, the time, the phase and the URL; the httpx
    error is the ``__cause__``.

    >>> str(HttpTransportError("RemoteProtocolError", 0.25, "reading the body of", "http://h/x"))
    'RemoteProtocolError after 0.25 s reading the body of http://h/x'
    """

    error_code = "connection"

    def __init__(self, kind: str, elapsed_s: float, phase: str, url: str, detail: str = "") -> None:
        super().__init__(_describe(kind, elapsed_s, phase, url, detail))
        self.kind, self.elapsed_s, self.phase, self.url = kind, elapsed_s, phase, url


class InvalidRequest(PacelineError, ValueError):
    """A request that cannot be sent as given (unsupported scheme, no host, a bad method or
    header): it would fail the same way every time, so it is never retried. The message names
    the value (a header by its name only: its value may be a secret) and the fix."""

    retryable = False
    error_code = "invalid_input"


# RFC 9110 §5.6.2: a method and a header name are tokens.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What httpx sends as a str header value: ASCII, no control characters but tab (RFC 9110 §5.5).
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")


def request_url(url: str, base: httpx.URL | None = None) -> httpx.URL:
    """The absolute URL a request goes to; :class:`InvalidRequest` when it cannot be sent.

    >>> str(request_url("/items/1", httpx.URL("https://api.example/v1/")))
    'https://api.example/items/1'
    >>> try:
    ...     request_url("ftp://files.example/a")
    ... except InvalidRequest as exc:
    ...     print(exc)
    url 'ftp://files.example/a': scheme 'ftp' is not supported: use http:// or https://
    """
    try:
        target = httpx.URL(url) if base is None else base.join(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidRequest(f"url {redact_text(url)!r}: not a valid URL ({exc})") from None
    if target.scheme not in ("http", "https"):
        if not target.scheme:
            raise InvalidRequest(
                f"url {redact_text(url)!r}: not absolute: give https://host/path, "
                "or a base URL (--base-url, base_url=) for relative ones"
            )
        raise InvalidRequest(
            f"url {redact_text(url)!r}: scheme {target.scheme!r} is not supported: "
            "use http:// or https://"
        )
    if not target.host:
        raise InvalidRequest(f"url {redact_text(url)!r}: no host, e.g. https://api.example/path")
    return target


def check_method_and_headers(method: str, headers: Mapping[str, str]) -> None:
    """:class:`InvalidRequest` for a method or header that httpx would refuse to send."""
    if not _TOKEN.fullmatch(method):
        raise InvalidRequest(
            f"method {method!r}: not an HTTP method (letters, digits and !#$%&'*+-.^_`|~ only), "
            "e.g. GET or POST"
        )
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise InvalidRequest(
                f"header name {redact_text(str(name))!r}: not a valid name (letters, digits and "
                "!#$%&'*+-.^_`|~, no spaces or colons), e.g. X-Request-Id"
            )
        if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
            raise InvalidRequest(
                f"header {name!r}: its value must be ASCII text without line breaks or control "
                "characters (percent-encode anything else)"
            )


def validate_request(request: HttpRequest, base_url: str | None = None) -> None:
    """Check what is the same on every attempt before anything is sent: the URL (http or
    https, a host), the method and the header names and values. Raises
    :class:`InvalidRequest` (a ``ValueError``) whose message names the value and the fix.

    >>> validate_request(HttpRequest("https://api.example/items/1"))
    >>> try:
    ...     validate_request(HttpRequest("https://api.example/", method="GE T"))
    ... except InvalidRequest as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    method 'GE T': not an HTTP method (letters, digits and ...), e.g. GET or POST
    """
    base = None
    if base_url is not None:
        base = request_url(base_url)
    request_url(request.url, base)
    check_method_and_headers(request.method, request.headers)


def decode_body(content: bytes, content_type: str) -> Any:
    """JSON when the response says so (and parses), else text."""
    text = content.decode("utf-8", errors="replace")
    if "json" in content_type.lower():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
