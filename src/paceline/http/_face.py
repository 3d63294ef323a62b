"""``fetch_all`` and ``stream_requests``: the HTTP face over the async runner."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import httpx

from paceline._signals.headers import NO_SIGNALS, PACING_HEADERS
from paceline.faces.batch import (
    Adaptive,
    Concurrency,
    batch_execute,
    concurrency_plan,
    run_sync,
    stream,
)
from paceline.http._limits import DEFAULT_MAX_HOLD_S, ServerLimits
from paceline.http._messages import (
    HttpRequest,
    HttpResponse,
    HttpResponseCodec,
    HttpStatusError,
    ServerUnreachable,
    as_request,
    decode_body,
)
from paceline.http._pool import ShardedTransport
from paceline.limiter import RateLimiter
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings
from paceline.policy.retry import RetryPolicy
from paceline.redact import redact_headers
from paceline.results import BatchItemResult, Result
from paceline.runners._common import sized_length
from paceline.signals import parse_signals

RequestLike = str | Mapping[str, Any] | HttpRequest

# Transient by default: throttles, server errors, timeouts and broken connections.
DEFAULT_RETRY = RetryPolicy(
    attempts=5,
    base_s=0.2,
    cap_s=30.0,
    retry_on=(HttpStatusError, httpx.TransportError, TimeoutError, ConnectionError),
)


def _headers_of(response: httpx.Response) -> dict[str, str]:
    """A response's headers as ``dict(response.headers)`` gives them (lower-cased names,
    repeated lines joined by ", "), in one pass: httpx looks each name up again."""
    merged: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


_PLAIN_GET = HttpRequest(url="")  # what a bare URL string means: GET, no headers, no body


def _sender(
    client: httpx.AsyncClient, limits: ServerLimits, base_url: str | None
) -> Callable[[RequestLike], Any]:
    base = None if base_url is None else httpx.URL(base_url)  # parsed once, not per request

    async def send(item: RequestLike) -> HttpResponse:
        try:
            request = _PLAIN_GET if isinstance(item, str) else as_request(item)
            target = item if isinstance(item, str) else request.url
            url = target if base is None else base.join(target)
            started = time.monotonic()
            response = await client.request(
                request.method,
                url,
                headers=dict(request.headers) if request.headers else None,
                json=request.json,
                content=request.body,
            )
        except httpx.ConnectError as exc:
            raise ServerUnreachable(str(url), exc) from exc
        except httpx.TimeoutException as exc:
            exc.error_code = "timeout"  # type: ignore[attr-defined]
            raise
        finally:
            # Answered, failed or cancelled: from now on the server has counted it, if ever.
            limits.answered()
        headers = _headers_of(response)
        signals = (
            NO_SIGNALS
            if PACING_HEADERS.isdisjoint(headers)  # most answers: nothing to read
            else parse_signals(response.headers.multi_items())
        )
        limits.observe(signals)
        if response.status_code >= 400:
            raise HttpStatusError(response.status_code, response.text, signals.retry_after_s)
        return HttpResponse(
            status_code=response.status_code,
            headers=redact_headers(headers),
            body=decode_body(response.content, response.headers.get("content-type", "")),
            elapsed_s=time.monotonic() - started,
        )

    return send


def _request_key(item: RequestLike) -> str:
    request = as_request(item)
    if request.id is not None:
        return request.id
    return f"{request.method} {request.url}"


def _client_for(client: httpx.AsyncClient | None, workers: int | None) -> httpx.AsyncClient:
    if client is not None:
        return client
    # The pool must hold at least as many connections as may be in flight, or requests queue
    # inside httpx after taking their token (and the server sees them later than we think);
    # split into small pools, whose cost per request does not grow with the concurrency.
    size = max(10, workers or 10)
    return httpx.AsyncClient(transport=ShardedTransport(size), timeout=httpx.Timeout(30.0))


class _Setup:
    """What both HTTP faces prepare: workers, adaptive control, header limits, the client."""

    def __init__(
        self,
        requests: object,
        client: httpx.AsyncClient | None,
        max_concurrent: Concurrency,
        rate_limiter: RateLimiter | None,
        adaptive: Adaptive,
        retry: RetryPolicy | int | None,
        options: dict[str, Any],
    ) -> None:
        self.workers, control = concurrency_plan(
            max_concurrent, None, sized_length(requests), adaptive
        )
        if isinstance(control, AdaptiveSettings):
            control = AdaptiveController(control)  # built here: the header limits talk to it
        self.control = control
        controller = control if isinstance(control, AdaptiveController) else None
        # The server's word holds everyone no longer than the retry policy obeys a Retry-After.
        hold_s = retry.max_retry_after_s if isinstance(retry, RetryPolicy) else DEFAULT_MAX_HOLD_S
        self.limits = ServerLimits(rate_limiter, controller=controller, max_hold_s=hold_s)
        self.own = client is None
        self.http = _client_for(client, self.workers)
        options.setdefault("key", _request_key)
        options.setdefault("codec", HttpResponseCodec())

    async def close(self) -> None:
        if self.own:
            await self.http.aclose()


async def fetch_all(
    requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
    *,
    client: httpx.AsyncClient | None = None,
    base_url: str | None = None,
    max_concurrent: Concurrency = "auto",
    rate_limiter: RateLimiter | None = None,
    adaptive: Adaptive = None,
    retry: RetryPolicy | int | None = DEFAULT_RETRY,
    **options: Any,
) -> list[Result[HttpResponse]]:
    """Send every request; a ``Result[HttpResponse]`` per request, in input order.

    Requests are URLs, mappings (``url``, ``method``, ``headers``, ``json``, ``body``, ``id``)
    or :class:`HttpRequest`. By default the concurrency and rate adapt to the server's answers
    (429 and 503, ``Retry-After``, latency); a ``RateLimit-Policy`` header turns into a strict
    limit as soon as it is seen. Transient failures are retried (5 attempts, jittered backoff).
    Other options are those of :func:`paceline.batch_execute` (``journal=``, ``halt=``,
    ``timeout_s=``...); with a journal, requests are keyed by their ``id`` or "METHOD URL".
    """
    setup = _Setup(requests, client, max_concurrent, rate_limiter, adaptive, retry, options)
    try:
        return await batch_execute(
            requests,
            _sender(setup.http, setup.limits, base_url),
            setup.workers,
            rate_limiter=setup.limits,
            adaptive=setup.control,
            retry=retry,
            **options,
        )
    finally:
        await setup.close()


async def stream_requests(
    requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
    *,
    client: httpx.AsyncClient | None = None,
    base_url: str | None = None,
    max_concurrent: Concurrency = "auto",
    rate_limiter: RateLimiter | None = None,
    adaptive: Adaptive = None,
    retry: RetryPolicy | int | None = DEFAULT_RETRY,
    **options: Any,
) -> AsyncIterator[BatchItemResult]:
    """:func:`fetch_all` for huge or endless inputs: yields each request's
    :class:`~paceline.BatchItemResult` as it settles (see :func:`paceline.stream`)."""
    options.setdefault("item_id", _request_key)
    setup = _Setup(requests, client, max_concurrent, rate_limiter, adaptive, retry, options)
    try:
        async for result in stream(
            requests,
            _sender(setup.http, setup.limits, base_url),
            setup.workers,
            rate_limiter=setup.limits,
            adaptive=setup.control,
            retry=retry,
            **options,
        ):
            yield result
    finally:
        await setup.close()


def fetch_all_sync(requests: Iterable[RequestLike], **options: Any) -> list[Result[HttpResponse]]:
    """:func:`fetch_all` from sync code (also inside a running event loop)."""
    return run_sync(fetch_all(requests, **options))
