"""``fetch_all`` and ``stream_requests``: the HTTP face over the async runner.

Each server (scheme + host + port) is a lane of its own: its pause, adaptive controller and
header limits are kept apart from the others' (see ``http/_servers.py``)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import httpx

from paceline._limiter import RateLimiter, charged_per_attempt
from paceline._results import BatchItemResult, Result
from paceline._signals.headers import NO_SIGNALS, PACING_HEADERS
from paceline.errors import InvalidArgument, InvalidArgumentType
from paceline.faces.batch import (
    ActualCost,
    Adaptive,
    Concurrency,
    CostSpec,
    HaltSpec,
    JournalSpec,
    batch_execute,
    checked_options,
    concurrency_plan,
    run_sync,
    stream,
)
from paceline.http._idempotency import Idempotency
from paceline.http._limits import DEFAULT_MAX_HOLD_S, ServerLimits
from paceline.http._messages import (
    HttpRequest,
    HttpResponse,
    HttpResponseCodec,
    HttpStatusError,
    HttpTimeout,
    HttpTransportError,
    InvalidRequest,
    ServerUnreachable,
    as_request,
    check_method_and_headers,
    decode_body,
    request_cost,
    request_url,
    usage_at,
    usage_cost,
)
from paceline.http._pool import ShardedTransport
from paceline.http._servers import UNPLACED, ServerLanes, server_key
from paceline.policy.answers import (
    BODY_PREFIX_CHARS,
    AnswerRule,
    Verdict,
    classify_answer,
    classify_by_rules,
)
from paceline.policy.halt import HaltRule
from paceline.policy.retry import DefaultRetryOn, RetryBudget, RetryPolicy, remote_retry
from paceline.redact import key_without_secrets, redact_headers, redact_text
from paceline.runners import ProgressCallback, sized_length
from paceline.signals import parse_signals
from paceline.stores import Codec

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; only for mypy

RequestLike = str | Mapping[str, Any] | HttpRequest
T = TypeVar("T")

# Transient by default: throttles, server errors, timeouts and broken connections.
# An HttpStatusError's own ``retryable`` (from its verdict) decides which statuses.
HTTP_RETRY_ON = DefaultRetryOn(
    (HttpStatusError, httpx.TransportError, TimeoutError, ConnectionError)
)
DEFAULT_RETRY = remote_retry(retry_on=HTTP_RETRY_ON)
# POST and PATCH carry Idempotency-Key; one that may have been processed and has no key is not
# retried (the reasons are in http/_idempotency.py).
DEFAULT_IDEMPOTENCY = Idempotency()


def http_retry(retry: RetryPolicy | int | None) -> RetryPolicy | None:
    """``retry=N`` for requests: N attempts of :data:`DEFAULT_RETRY` (its backoff, and its
    retryable errors: 429, 5xx, timeouts, broken connections); a policy is used as is.

    >>> http_retry(3).attempts, http_retry(3).retry_on == DEFAULT_RETRY.retry_on
    (3, True)
    """
    if retry is None or isinstance(retry, RetryPolicy):
        return retry
    if isinstance(retry, bool) or not isinstance(retry, int):
        raise InvalidArgumentType(
            f"retry={retry!r}: pass a number of attempts (e.g. 3) or a paceline.RetryPolicy"
        )
    return remote_retry(attempts=retry, retry_on=HTTP_RETRY_ON)


def _headers_of(response: httpx.Response) -> dict[str, str]:
    """A response's headers as ``dict(response.headers)`` gives them (lower-cased names,
    repeated lines joined by ", "), in one pass: httpx looks each name up again."""
    merged: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


AnswerClassifier = Callable[[HttpResponse], "Verdict | str | None"]
"""``classify=`` of the HTTP faces: a function of the :class:`HttpResponse` (any status)
returning a :class:`~paceline.http.Verdict` (or its name: ``"throttled"``, ``"exhausted"``,
``"transient"``, ``"permanent"``, ``"success"``), or ``None`` for the default
(:func:`~paceline.http.classify_answer`)."""


def _as_verdict(said: object) -> Verdict | None:
    if said is None or isinstance(said, Verdict):
        return said
    try:
        return Verdict(said)
    except ValueError:
        raise InvalidArgument(
            f"classify= returned {said!r}: return a paceline.http.Verdict, one of "
            f"{[v.value for v in Verdict]}, or None for the default"
        ) from None


def rules_classifier(rules: list[AnswerRule]) -> AnswerClassifier:
    """``classify=`` from rules (the CLI's ``--throttle-on`` and kin): the first rule that
    matches the answer decides, else the default.

    >>> rules = [AnswerRule.parse("status=403,body~secondary rate limit", Verdict.THROTTLED)]
    >>> rules_classifier(rules)(HttpResponse(403, {}, "a secondary rate limit", 0.1))
    <Verdict.THROTTLED: 'throttled'>
    """

    def classify(response: HttpResponse) -> Verdict | None:
        body = response.body
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        return classify_by_rules(rules, response.status_code, response.headers, text)

    return classify


# A 200 whose body may be GraphQL's "rate limited" (checked on the bytes, before decoding).
_GRAPHQL_MARKS = (b"RATE_LIMITED", b"THROTTLED")

_PLAIN_GET = HttpRequest(url="")  # what a bare URL string means: GET, no headers, no body

DEFAULT_ATTEMPT_TIMEOUT_S = 120.0
"""Seconds one attempt may take as a whole: connect, send, the answer and its whole body.
httpx's timeouts (30 s here) bound each read, so a server that trickles a byte every few
seconds never trips them and holds the attempt (and a graceful stop) for as long as it likes.
120 s is past the common proxies' limits for a whole answer (Cloudflare gives up on an origin
after 100 s, AWS load balancers and nginx after 60 s idle), so an answer that takes longer
rarely arrives at all; slower APIs (long LLM generations) pass ``timeout_s`` / ``--timeout``."""

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Bytes of a response body kept (after content decoding); past it the body is cut, the
response marked ``truncated`` and the connection closed without reading the rest. API answers
are mostly well under 1 MiB (a page of 100 GitHub or Stripe objects is 100-500 KiB); 4 MiB keeps
those whole with room to spare, while 64 requests in flight hold at most 256 MiB and a journal of
10 MB answers grows by 4 MiB an item, not 10 (and 1.26 GB of memory at -j 64 becomes ~0.3)."""

_READING_BODY = "reading the body of"
# What an httpx error says about where the attempt was (else: where the sender was).
_PHASE_OF: dict[type[Exception], str] = {
    httpx.ConnectTimeout: "connecting to",
    httpx.PoolTimeout: "waiting for a free connection to",
    httpx.WriteTimeout: "sending the request to",
    httpx.WriteError: "sending the request to",
}


def _within(awaitable: Awaitable[T], timeout_s: float) -> Awaitable[T]:
    if sys.version_info >= (3, 11):

        async def timed() -> T:
            async with asyncio.timeout(timeout_s):
                return await awaitable

        return timed()
    return asyncio.wait_for(awaitable, timeout_s)  # pragma: no cover - 3.10


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """The body's first ``max_bytes`` and whether there was more (then the rest is not read)."""
    kept: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        if size + len(chunk) > max_bytes:
            kept.append(chunk[: max_bytes - size])
            return b"".join(kept), True
        kept.append(chunk)
        size += len(chunk)
    return b"".join(kept), False


class _Attempt:
    """Where one attempt is, for the error that ends it."""

    __slots__ = ("phase", "started")

    def __init__(self) -> None:
        self.phase = "waiting for the answer from"
        self.started = time.monotonic()

    def failure(self, exc: Exception, url: str) -> Exception:
        """The error to raise instead of an httpx one: it names the phase, time and URL."""
        elapsed = time.monotonic() - self.started
        if isinstance(exc, httpx.ConnectError):
            return ServerUnreachable(url, exc, elapsed)
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
            return InvalidRequest(f"{type(exc).__name__} for {redact_text(url)}: {exc}")
        phase = _PHASE_OF.get(type(exc), self.phase)
        if isinstance(exc, httpx.TimeoutException):
            return HttpTimeout(type(exc).__name__, elapsed, phase, url)
        return HttpTransportError(type(exc).__name__, elapsed, phase, url, str(exc))


def _one_request(_request: object) -> int:
    return 1


def _capped(halt: object) -> bool:
    """Whether ``halt=`` (a rule, its text, or a list of them) has a budget cap."""
    if isinstance(halt, (str, HaltRule)):
        specs: list[object] = [halt]
    else:
        specs = list(halt) if isinstance(halt, Iterable) else []
    return any(
        (HaltRule.parse(s) if isinstance(s, str) else s).budget
        for s in specs
        if isinstance(s, (str, HaltRule))
    )


def _costs(rate_limiter: RateLimiter | None, options: dict[str, Any]) -> None:
    """Fill in the cost options of an HTTP batch: when the rate limiter counts more than
    requests and no ``cost=`` is given, each request's own ``"cost"``; with costs, the answer's
    usage settles them unless ``actual_cost=`` says otherwise (a function, or a dotted path
    into the JSON such as ``"usage.total_tokens"``)."""
    other_units = isinstance(rate_limiter, RateLimiter) and any(
        lim.rate.unit != "requests" for lim in rate_limiter.limits
    )
    if options.get("cost") is None and other_units:
        options["cost"] = request_cost
    if options.get("cost") is None and _capped(options.get("halt")):
        options["cost"] = _one_request  # a budget cap counts the answers' usage (settled)
    actual = options.get("actual_cost")
    if isinstance(actual, str):
        options["actual_cost"] = usage_at(actual)
    # Costs without a rate_limiter are for the server's own token headers to limit
    # (ServerLimits.reserve_async): x-ratelimit-*-tokens, anthropic-ratelimit-*-tokens-*.
    costs = options.get("cost") is not None
    if costs and actual is None:
        options["actual_cost"] = usage_cost
    charged_per_attempt(rate_limiter, costs=costs)


def sender(
    client: httpx.AsyncClient,
    limits: ServerLimits | ServerLanes,
    base_url: str | None,
    *,
    attempt_timeout_s: float | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    idempotency: Idempotency = DEFAULT_IDEMPOTENCY,
    classify: AnswerClassifier | None = None,
) -> Callable[[RequestLike], Any]:
    """The operation that sends one request. ``attempt_timeout_s`` bounds the whole attempt
    (``None``: :data:`DEFAULT_ATTEMPT_TIMEOUT_S`); ``max_body_bytes`` what is kept of a body;
    ``classify`` what an answer means (see :data:`AnswerClassifier`).
    With :class:`ServerLanes`, an answer's headers teach the limits of the server it came from
    (the lane the runner took the request's token from: the same key). ``idempotency``: which
    requests carry the item's stable key, and whether one that may have been processed is
    sent again (see ``http/_idempotency.py``)."""
    base = None if base_url is None else request_url(base_url)  # parsed once, not per request
    timeout_s = DEFAULT_ATTEMPT_TIMEOUT_S if attempt_timeout_s is None else attempt_timeout_s
    single = limits if isinstance(limits, ServerLimits) else None
    lanes = limits if isinstance(limits, ServerLanes) else ServerLanes()

    def limits_of(server: str) -> ServerLimits:
        return single if single is not None else lanes.limits_for(server)

    async def exchange(
        request: HttpRequest, url: httpx.URL, attempt: _Attempt, limits: ServerLimits
    ) -> HttpResponse:
        outgoing = client.build_request(
            request.method,
            url,
            headers=dict(request.headers) if request.headers else None,
            json=request.json,
            content=request.body,
        )
        response = await client.send(outgoing, stream=True)
        try:
            attempt.phase = _READING_BODY
            content, truncated = await _read_capped(response, max_body_bytes)
        finally:
            await response.aclose()
        return _answer(response, content, truncated, limits, attempt.started, classify)

    async def send(item: RequestLike) -> HttpResponse:
        attempt = _Attempt()
        target = item if isinstance(item, str) else ""
        url: httpx.URL | str = target
        server = UNPLACED
        request: HttpRequest | None = None
        try:
            request = _PLAIN_GET if isinstance(item, str) else idempotency.keyed(as_request(item))
            target = item if isinstance(item, str) else request.url
            url = request_url(target, base)
            server = server_key(url)
            if request is not _PLAIN_GET:
                check_method_and_headers(request.method, request.headers)
            return await _within(exchange(request, url, attempt, limits_of(server)), timeout_s)
        except httpx.TransportError as exc:
            failure = attempt.failure(exc, str(url))
            failure.__cause__ = exc
            # A POST that may have been processed and has no key is not sent again.
            final = idempotency.checked(failure, request, str(url))
            raise final from final.__cause__
        except (TimeoutError, asyncio.TimeoutError) as exc:
            if isinstance(exc, HttpTimeout):
                raise
            final = idempotency.checked(
                HttpTimeout(
                    "AttemptTimeout",
                    timeout_s,
                    attempt.phase,
                    str(url),
                    hint="the whole-attempt limit: raise --timeout / timeout_s for a slower server",
                ),
                request,
                str(url),
            )
            raise final from final.__cause__
        except UnicodeEncodeError as exc:  # a header value httpx cannot encode
            raise InvalidRequest(f"request to {redact_text(str(target))}: {exc}") from None
        finally:
            # Answered, failed or cancelled: from now on the server has counted it, if ever.
            limits_of(server).answered()

    return send


def _answer(
    response: httpx.Response,
    content: bytes,
    truncated: bool,
    limits: ServerLimits,
    started: float,
    classify: AnswerClassifier | None = None,
) -> HttpResponse:
    """What the face keeps of an answer; the pacing headers go to ``limits`` first. An answer
    whose verdict is not success raises :class:`HttpStatusError` carrying it."""
    headers = _headers_of(response)
    signals = (
        NO_SIGNALS
        if PACING_HEADERS.isdisjoint(headers)  # most answers: nothing to read
        else parse_signals(response.headers.multi_items())
    )
    limits.observe(signals)
    content_type = response.headers.get("content-type", "")
    status = response.status_code
    verdict: Verdict | None = None
    answer: HttpResponse | None = None
    if classify is not None:
        answer = HttpResponse(
            status_code=status,
            headers=redact_headers(headers),
            body=decode_body(content, "" if truncated else content_type),
            elapsed_s=time.monotonic() - started,
            truncated=truncated,
        )
        verdict = _as_verdict(classify(answer))
    if verdict is None:
        if status < 400 and not (
            status == 200 and any(m in content[:BODY_PREFIX_CHARS] for m in _GRAPHQL_MARKS)
        ):
            verdict = Verdict.SUCCESS  # most answers: no need to decode the body here
        else:
            prefix = content[:BODY_PREFIX_CHARS].decode("utf-8", errors="replace")
            verdict = classify_answer(status, headers, prefix)
    if verdict is not Verdict.SUCCESS:
        text = content.decode("utf-8", errors="replace")
        raise HttpStatusError(status, text, signals.retry_after_s, verdict=verdict)
    if answer is not None:
        return answer
    return HttpResponse(
        status_code=status,
        headers=redact_headers(headers),
        body=decode_body(content, "" if truncated else content_type),
        elapsed_s=time.monotonic() - started,
        truncated=truncated,
    )


def _request_key(item: RequestLike) -> str:
    request = as_request(item)
    if request.id is not None:
        return request.id
    # The key is written down (journal, results): a credential in the URL is masked there.
    return key_without_secrets(f"{request.method} {request.url}")


def client_for(client: httpx.AsyncClient | None, workers: int | None) -> httpx.AsyncClient:
    if client is not None:
        return client
    # The pool must hold at least as many connections as may be in flight, or requests queue
    # inside httpx after taking their token (and the server sees them later than we think);
    # split into small pools, whose cost per request does not grow with the concurrency.
    size = max(10, workers or 10)
    return httpx.AsyncClient(transport=ShardedTransport(size), timeout=httpx.Timeout(30.0))


class _Setup:
    """What both HTTP faces prepare: workers, a lane per server (adaptive control, header
    limits), the client."""

    def __init__(
        self,
        requests: object,
        base_url: str | None,
        client: httpx.AsyncClient | None,
        max_concurrent: Concurrency,
        rate_limiter: RateLimiter | None,
        adaptive: Adaptive,
        retry: RetryPolicy | int | None,
        max_body_bytes: int,
        options: dict[str, Any],
        classify: AnswerClassifier | None = None,
    ) -> None:
        self.retry = http_retry(retry)
        self.classify = classify
        _costs(rate_limiter, options)
        # The controller is built here: the servers' header limits talk to it.
        self.workers, controller = concurrency_plan(
            max_concurrent, None, sized_length(requests), adaptive
        )
        # The server's word holds everyone no longer than the retry policy obeys a Retry-After.
        hold_s = self.retry.max_retry_after_s if self.retry is not None else DEFAULT_MAX_HOLD_S
        self.base_url = base_url
        self.lanes = ServerLanes(
            rate_limiter, controller=controller, max_hold_s=hold_s, base_url=base_url
        )
        self.own = client is None
        self.http = client_for(client, self.workers)
        # The face times each attempt as a whole itself (its error names the URL and phase),
        # so the runner is not given the same timeout to race it.
        timeout_s = options.pop("timeout_s", None)
        if timeout_s is not None and not timeout_s > 0:
            raise InvalidArgument(f"timeout_s={timeout_s!r}: must be a number of seconds above 0")
        self.timeout_s: float | None = timeout_s
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise InvalidArgument(f"max_body_bytes={max_body_bytes!r}: a whole number of bytes")
        if max_body_bytes < 0:
            raise InvalidArgument(f"max_body_bytes={max_body_bytes!r}: must be 0 or more")
        self.max_body_bytes = max_body_bytes
        self.idempotency = Idempotency.of(
            options.pop("idempotency_header", DEFAULT_IDEMPOTENCY.header),
            options.pop("idempotency_methods", None),
            options.pop("retry_unsafe", False),
        )
        options.setdefault("key", _request_key)
        options.setdefault("codec", HttpResponseCodec())

    def sender(self) -> Callable[[RequestLike], Any]:
        return sender(
            self.http,
            self.lanes,
            self.base_url,
            attempt_timeout_s=self.timeout_s,
            max_body_bytes=self.max_body_bytes,
            idempotency=self.idempotency,
            classify=self.classify,
        )

    async def close(self) -> None:
        if self.own:
            await self.http.aclose()


class FetchOptions(TypedDict, total=False):
    """The keyword options of :func:`fetch_all` beyond its own (``client`` ... ``classify``):
    :func:`~paceline.batch_execute`'s that the HTTP face does not decide itself, and the
    idempotency ones. Typed, so a misspelt option fails ``mypy --strict``, and at run time the
    error names the function that was called."""

    on_progress: ProgressCallback | None
    fail_fast: bool
    weight: Callable[[Any], int] | None
    cost: CostSpec[Any]
    actual_cost: ActualCost | str  # also a dotted path into the answer's JSON
    max_workers: Concurrency
    retry_budget: RetryBudget | None
    halt: HaltSpec
    timeout_s: float | None
    deadline_s: float | None
    journal: JournalSpec
    journal_label: str | None
    retry_failed: bool
    reuse_journal: bool
    codec: Codec | None
    key: Callable[[Any], Any] | None
    give_up_after_s: float | None
    idempotency_header: str | None
    idempotency_methods: Iterable[str] | None
    retry_unsafe: bool


class StreamRequestsOptions(FetchOptions, total=False):
    """:class:`FetchOptions` and the ones :func:`stream_requests` adds from
    :func:`~paceline.stream`."""

    ordered: bool
    item_id: Callable[[Any], str] | None
    read_ahead: int | None
    on_halt: Callable[[str], None] | None


class AllFetchOptions(FetchOptions, total=False):
    """:class:`FetchOptions` and :func:`fetch_all`'s own keyword options, for
    :func:`fetch_all_sync`, which passes them all on."""

    client: httpx.AsyncClient | None
    base_url: str | None
    max_concurrent: Concurrency
    rate_limiter: RateLimiter | None
    adaptive: Adaptive
    retry: RetryPolicy | int | None
    max_body_bytes: int
    classify: AnswerClassifier | None


async def fetch_all(
    requests: Iterable[RequestLike] | AsyncIterable[RequestLike],
    *,
    client: httpx.AsyncClient | None = None,
    base_url: str | None = None,
    max_concurrent: Concurrency = "auto",
    rate_limiter: RateLimiter | None = None,
    adaptive: Adaptive = None,
    retry: RetryPolicy | int | None = DEFAULT_RETRY,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    classify: AnswerClassifier | None = None,
    **options: Unpack[FetchOptions],
) -> list[Result[HttpResponse]]:
    """Send every request; a ``Result[HttpResponse]`` per request, in input order.

    Requests are URLs, mappings (``url``, ``method``, ``headers``, ``json``, ``body``, ``id``)
    or :class:`HttpRequest`. By default the concurrency and rate adapt to the server's answers
    (429 and 503, ``Retry-After``, latency); a ``RateLimit-Policy`` header turns into a strict
    limit as soon as it is seen. Each server (scheme, host and port) is paced on its own: a
    ``Retry-After`` from one pauses only the requests to it, and the others' go on meanwhile
    (queued per server within a read-ahead of 4,096 requests). ``rate_limiter`` is one limit
    for all of them. Transient failures are retried (5 attempts, jittered backoff).
    Other options are those of :func:`paceline.batch_execute` (``journal=``, ``halt=``...);
    with a journal, requests are keyed by their ``id`` or "METHOD URL".

    Costs in units (docs/units.md): with a ``rate_limiter`` that counts tokens
    (``RateLimiter.from_rates("500/min", "tokens:90000/min")``) each request reserves its
    estimate before it is sent — ``cost=`` (a mapping, or a function of the request), else the
    request's own ``"cost"`` field — and the answer settles it: by default from its JSON's
    ``usage.total_tokens`` (or ``usage.input_tokens + usage.output_tokens``), else
    ``actual_cost=`` (a function of the :class:`HttpResponse`, or a dotted path such as
    ``"meta.billed_tokens"``). A failed attempt keeps its estimate. Requests that carry a
    cost are also held by the token limits the server's headers state (OpenAI's
    ``x-ratelimit-*-tokens``, Anthropic's ``anthropic-ratelimit-*-tokens-*``), with or without
    a ``rate_limiter``: ``fetch_all(requests, cost=request_cost)`` lets the headers alone keep
    a batch within the server's tokens per minute. ``halt=["soon,tokens=2000000"]`` caps the
    total used (docs/units.md, 'Budget caps').

    Each attempt is bounded as a whole (connect, send, answer and body): ``timeout_s``,
    default :data:`DEFAULT_ATTEMPT_TIMEOUT_S` (120 s); a timeout or a broken connection fails
    with an error that names what timed out, after how long, in which phase and the URL
    (``ReadTimeout after 30 s reading the body of https://...``), and is retried. A request
    that cannot be sent (an ``ftp://`` URL, no host, a bad method or header) fails at once
    with :class:`~paceline.http.InvalidRequest` and is never retried. Bodies are kept up to
    ``max_body_bytes`` (default :data:`DEFAULT_MAX_BODY_BYTES`, 4 MiB); a longer one is cut
    there and its :class:`HttpResponse` says ``truncated=True``.

    Requests that create things: every POST and PATCH carries ``Idempotency-Key`` (the
    item's stable key, :func:`paceline.current_item_key`: the same on every retry and after
    a resume from the journal), unless it has that header itself; ``idempotency_header=``
    names another header, ``None`` sends none, ``idempotency_methods=`` lists the methods.
    Without a key, one that may have been processed (a timeout or a connection dropped after
    it was sent) is not retried: it fails with :class:`~paceline.http.MaybeProcessed`
    (``error_code`` ``maybe_processed``), unless ``retry_unsafe=True``. A connection never
    made is always retried.

    What an answer means (docs/design.md, 'Answers told apart'): besides 429 and 503, a 403
    or 400 that says "rate limit" (GitHub's secondary limit, Google's ``rateLimitExceeded``,
    AWS's ``ThrottlingException``) and a GraphQL 200 ``RATE_LIMITED`` are throttles: retried
    without spending the retry budget, and paced by. ``insufficient_quota``, a spent daily
    quota or credit is *exhausted*: nothing more is sent to that server, its remaining requests
    fail ``quota_exhausted`` (a journal keeps them for ``resume``). ``classify=`` overrides it:
    a function of the :class:`HttpResponse` returning a :class:`~paceline.http.Verdict` or its
    name, or ``None`` for the default::

        def classify(response):
            if response.status_code == 403 and "abuse" in str(response.body):
                return "throttled"
            return None
    """
    extra: dict[str, Any] = dict(options)  # _Setup fills in the HTTP defaults
    checked_options("fetch_all", extra, FetchOptions)
    setup = _Setup(
        requests,
        base_url,
        client,
        max_concurrent,
        rate_limiter,
        adaptive,
        retry,
        max_body_bytes,
        extra,
        classify,
    )
    try:
        return await batch_execute(
            requests,
            setup.sender(),
            setup.workers,
            lanes=setup.lanes,
            retry=setup.retry,
            **extra,
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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    classify: AnswerClassifier | None = None,
    **options: Unpack[StreamRequestsOptions],
) -> AsyncIterator[BatchItemResult]:
    """:func:`fetch_all` for huge or endless inputs: yields each request's
    :class:`~paceline.BatchItemResult` as it settles (see :func:`paceline.stream`)."""
    extra: dict[str, Any] = dict(options)  # _Setup fills in the HTTP defaults
    checked_options("stream_requests", extra, StreamRequestsOptions)
    extra.setdefault("item_id", _request_key)
    setup = _Setup(
        requests,
        base_url,
        client,
        max_concurrent,
        rate_limiter,
        adaptive,
        retry,
        max_body_bytes,
        extra,
        classify,
    )
    try:
        async for result in stream(
            requests,
            setup.sender(),
            setup.workers,
            lanes=setup.lanes,
            retry=setup.retry,
            **extra,
        ):
            yield result
    finally:
        await setup.close()


def fetch_all_sync(
    requests: Iterable[RequestLike], **options: Unpack[AllFetchOptions]
) -> list[Result[HttpResponse]]:
    """:func:`fetch_all` from sync code (also inside a running event loop); the options are
    :func:`fetch_all`'s (:class:`AllFetchOptions`).

    >>> from paceline.testing.api_server import ApiServer
    >>> with ApiServer() as server:
    ...     results = fetch_all_sync([f"{server.url}/items/1"], max_concurrent=2)
    >>> [r.value.status_code for r in results]
    [200]
    """
    checked_options("fetch_all_sync", dict(options), AllFetchOptions)
    return run_sync(fetch_all(requests, **options))
