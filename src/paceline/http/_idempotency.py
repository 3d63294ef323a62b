"""Safe retries of requests that are not idempotent: an ``Idempotency-Key`` on each, and no
blind retry of one that may have been processed.

A POST that timed out, or whose connection dropped after it was sent, may have been processed:
sending it again may create a second object. Servers that deduplicate (Stripe, Adyen, PayPal's
``PayPal-Request-Id``, Square, the IETF httpapi draft ``Idempotency-Key``) do so by a key the
client sends with every attempt of one operation. So by default:

- every POST and PATCH (the methods RFC 9110 §9.2.2 does not call idempotent; PUT and DELETE
  are) carries ``Idempotency-Key: <uuid>``, the item's stable key
  (:func:`paceline.current_item_key`): the same on every retry and after a resume from the
  journal, different for every item. A key the request carries itself is left alone;
- such a request that failed after it may have reached the server (a read or whole-attempt
  timeout, a connection broken after it was made) is retried only when it carries a key;
  without one it fails with :class:`MaybeProcessed` (``error_code`` ``maybe_processed``);
- a connection never made (refused, unknown host, a connect timeout, no free pooled
  connection) sent nothing, and is retried as ever.

``retry_unsafe=True`` (``--retry-unsafe``) retries them anyway: for servers where a duplicate
is harmless or caught some other way.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from paceline.errors import InvalidArgument, PacelineError
from paceline.http._messages import HttpRequest, HttpTimeout, ServerUnreachable
from paceline.redact import redact_text
from paceline.runners.identity import current_item_key

__all__ = [
    "DEFAULT_IDEMPOTENCY_HEADER",
    "DEFAULT_UNSAFE_METHODS",
    "Idempotency",
    "MaybeProcessed",
]

DEFAULT_IDEMPOTENCY_HEADER = "Idempotency-Key"
"""The IETF httpapi draft's name, which Stripe, Square, Adyen, GoCardless and others use."""

DEFAULT_UNSAFE_METHODS = frozenset({"POST", "PATCH"})
"""The methods that get a key: RFC 9110 §9.2.2 calls GET, HEAD, OPTIONS, TRACE, PUT and
DELETE idempotent, so a repeat of those does no more than the first; POST and PATCH it does
not (the IETF draft names the same two)."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2, a header name

# httpx errors whose request never left: nothing to repeat (their names, as the face keeps them).
_NEVER_SENT = frozenset({"ConnectTimeout", "PoolTimeout"})


class MaybeProcessed(PacelineError):
    """A request that is not idempotent (a POST, a PATCH) failed after it may have reached the
    server — a timeout, a connection dropped after sending — and carries no idempotency key,
    so it is not retried: a second attempt might do it twice. The original error is the
    ``__cause__``.

    >>> error = MaybeProcessed("POST", "http://h/tenants", "ReadTimeout after 30 s")
    >>> str(error)  # doctest: +ELLIPSIS
    'POST http://h/tenants may have been processed; not retried without an idempotency key ...'
    """

    retryable = False
    error_code = "maybe_processed"

    def __init__(self, method: str, url: str, cause: str) -> None:
        super().__init__(
            f"{method} {redact_text(url)} may have been processed; not retried without an "
            f"idempotency key ({cause}). Check whether it was done; to retry such requests, "
            "send an Idempotency-Key (the default, unless --no-idempotency-key / "
            "idempotency_header=None) or pass --retry-unsafe / retry_unsafe=True"
        )
        self.method = method
        self.url = url


def reached_server(error: Exception) -> bool:
    """Whether a failed attempt may have been processed: ``False`` only when the connection
    was never made (nothing was sent).

    >>> reached_server(HttpTimeout("ConnectTimeout", 5.0, "connecting to", "http://h/"))
    False
    >>> reached_server(HttpTimeout("ReadTimeout", 30.0, "waiting for the answer from", "http://h/"))
    True
    """
    if isinstance(error, ServerUnreachable):
        return False
    return not (isinstance(error, HttpTimeout) and error.kind in _NEVER_SENT)


@dataclasses.dataclass(frozen=True, slots=True)
class Idempotency:
    """Which requests get a stable key, in which header, and whether an ambiguous failure of
    one without a key is retried (see the module).

    >>> Idempotency().header, sorted(Idempotency().methods), Idempotency().retry_unsafe
    ('Idempotency-Key', ['PATCH', 'POST'], False)
    >>> Idempotency.of(header=None).header is None
    True
    """

    header: str | None = DEFAULT_IDEMPOTENCY_HEADER
    methods: frozenset[str] = DEFAULT_UNSAFE_METHODS
    retry_unsafe: bool = False

    @classmethod
    def of(
        cls,
        header: str | None = DEFAULT_IDEMPOTENCY_HEADER,
        methods: Iterable[str] | None = None,
        retry_unsafe: bool = False,
    ) -> Idempotency:
        """From the faces' options: ``header`` ``None`` or ``""`` sends no key; ``methods``
        (default POST and PATCH) are the ones that get one and are guarded."""
        if header and (not isinstance(header, str) or not _TOKEN.fullmatch(header)):
            raise InvalidArgument(
                f"idempotency header {header!r}: a header name such as 'Idempotency-Key' "
                "(letters, digits and !#$%&'*+-.^_`|~), or None / '' to send none"
            )
        chosen = DEFAULT_UNSAFE_METHODS if methods is None else methods
        if isinstance(chosen, str):
            chosen = chosen.split(",")
        names = frozenset(m.strip().upper() for m in chosen if m.strip())
        for name in names:
            if not _TOKEN.fullmatch(name):
                raise InvalidArgument(
                    f"idempotency methods: {name!r} is not an HTTP method; give e.g. POST,PATCH"
                )
        return cls(header or None, names, bool(retry_unsafe))

    def describe(self) -> str:
        """One line for a dry run.

        >>> Idempotency().describe()
        'Idempotency-Key on PATCH, POST; unanswered ones retried only with a key'
        >>> Idempotency.of(header="", retry_unsafe=True).describe()
        'no key sent; unanswered PATCH, POST retried anyway (--retry-unsafe)'
        """
        methods = ", ".join(sorted(self.methods)) or "no method"
        if self.retry_unsafe:
            sent = f"{self.header} on {methods}" if self.header else "no key sent"
            return f"{sent}; unanswered {methods} retried anyway (--retry-unsafe)"
        if self.header is None:
            return f"no key sent; unanswered {methods} not retried (they may have been done)"
        return f"{self.header} on {methods}; unanswered ones retried only with a key"

    def keyed(self, request: HttpRequest) -> HttpRequest:
        """``request`` with its stable key in the header, when its method wants one, a batch
        attempt is running and the request has no such header of its own."""
        if self.header is None or request.method not in self.methods:
            return request
        if _has(request.headers, self.header):
            return request  # the user's own key wins
        key = current_item_key()
        if key is None:
            return request
        headers = dict(request.headers)
        headers[self.header] = key
        return dataclasses.replace(request, headers=headers)

    def checked(self, error: Exception, request: HttpRequest | None, url: str) -> Exception:
        """The error to raise for a failed attempt: ``error`` itself, or :class:`MaybeProcessed`
        when it may have been processed and cannot safely be sent again."""
        if (
            self.retry_unsafe
            or request is None
            or request.method not in self.methods
            or not reached_server(error)
            or _has(request.headers, self.header or DEFAULT_IDEMPOTENCY_HEADER)
            or _has(request.headers, DEFAULT_IDEMPOTENCY_HEADER)
        ):
            return error
        refused = MaybeProcessed(request.method, url, str(error))
        refused.__cause__ = error
        return refused


def _has(headers: Mapping[str, str], name: str) -> bool:
    lowered = name.lower()
    return any(key.lower() == lowered for key in headers)
