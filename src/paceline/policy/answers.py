"""What an answer means: a throttle, an exhausted quota, or an error (transient or permanent).

One pure function, :func:`classify_answer`: status, headers (lower-case names) and the start of
the body in, a :class:`Verdict` out. It knows how the common APIs say "slow down" besides 429
(docs/design.md, 'Answers told apart'):

- GitHub's secondary rate limit: **403** with ``Retry-After`` and "You have exceeded a secondary
  rate limit"; its primary limit: 403 with ``x-ratelimit-remaining: 0``;
- Google: 403 ``rateLimitExceeded`` / ``userRateLimitExceeded`` (and 403 ``dailyLimitExceeded``,
  a daily quota: exhausted);
- AWS: **400** ``ThrottlingException`` (``Throttling``, ``TooManyRequestsException``,
  ``RequestLimitExceeded``), S3's 503 ``SlowDown``;
- GraphQL (GitHub, Shopify): **200** with ``errors[].type == "RATE_LIMITED"`` or
  ``errors[].extensions.code`` ``RATE_LIMITED`` / ``THROTTLED``;
- OpenAI: 429 ``insufficient_quota`` (billing: it never clears by waiting) is *exhausted*, 429
  ``rate_limit_exceeded`` a throttle; ``billing_hard_limit_reached``; Anthropic's 400 "credit
  balance is too low" is exhausted, its 529 ``overloaded_error`` a throttle;
- ``x-should-retry: true|false`` (sent by OpenAI and Anthropic, obeyed by their SDKs) decides
  between a transient and a permanent error.

>>> classify_answer(403, {"retry-after": "60"}, "You have exceeded a secondary rate limit")
<Verdict.THROTTLED: 'throttled'>
>>> classify_answer(429, {}, '{"error": {"code": "insufficient_quota"}}')
<Verdict.EXHAUSTED: 'exhausted'>
>>> classify_answer(404, {}, "not found"), classify_answer(200, {}, "{}")
(<Verdict.PERMANENT: 'permanent'>, <Verdict.SUCCESS: 'success'>)

Rules of the user (the CLI's ``--throttle-on``, ``--exhausted-on``, ``--fail-on``, ``--retry-on``)
are :class:`AnswerRule` objects, checked before these defaults.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from paceline.errors import InvalidArgument, QuotaExhausted, Throttled

BODY_PREFIX_CHARS = 4096
"""Characters of a body the classifier reads. Error bodies that say why are short (GitHub's
secondary-limit answer is ~300 bytes, Google's error JSON ~500, AWS's ~150, OpenAI's ~400); a
prefix keeps the cost of a regex search over a 4 MiB success body away from every answer."""


class Verdict(str, enum.Enum):
    """What an answer means, for the retry policy, the adaptive controller and the journal.

    - ``SUCCESS``: a result;
    - ``THROTTLED``: the server asks us to slow down: retried (spending no retry budget), fed
      to the adaptive controller, its ``Retry-After`` pausing the server's other requests;
    - ``EXHAUSTED``: a quota that will not come back within the batch (billing, a daily
      quota): nothing more is sent to that server, its remaining items fail
      ``quota_exhausted`` and a journal keeps them for ``resume``;
    - ``TRANSIENT``: an error worth retrying (within the retry budget);
    - ``PERMANENT``: an error that would happen again: the item fails at once.
    """

    SUCCESS = "success"
    THROTTLED = "throttled"
    EXHAUSTED = "exhausted"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


# Bodies that say a quota is gone for longer than a batch waits. OpenAI: "insufficient_quota"
# ("You exceeded your current quota, please check your plan and billing details"),
# "billing_hard_limit_reached"; Google: "dailyLimitExceeded" (and the older "Daily Limit
# Exceeded"); OpenAI's daily limits ("... on requests per day (RPD)", "tokens per day");
# Anthropic: "Your credit balance is too low"; others: "quota exceeded for the day", "out of
# credits".
_EXHAUSTED_BODY = re.compile(
    r"insufficient_quota|billing_hard_limit|exceeded your current quota|dailyLimitExceeded"
    r"|daily[ _-]?(?:limit|quota)[ _-]?exceeded|credit balance is too low"
    r"|quota[^.\n]{0,40}(?:per|for the|this) day|(?:requests|tokens) per day|out of credits",
    re.IGNORECASE,
)
# Bodies that say "slow down" on a status that is not 429: GitHub ("secondary rate limit",
# "API rate limit exceeded"), Google ("rateLimitExceeded", "userRateLimitExceeded"), AWS
# ("ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
# S3's "SlowDown"), generic "too many requests".
_THROTTLE_BODY = re.compile(
    r"rate[ _-]?limit|ratelimit|throttl|too ?many ?requests|RequestLimitExceeded|SlowDown",
    re.IGNORECASE,
)
# Statuses that may carry a throttle in their body or headers (GitHub and Google use 403, AWS
# 400); other 4xx are the request's own fault and are not read for it.
_THROTTLE_CANDIDATES = frozenset({400, 403})
# Throttles by status alone: 429 (RFC 6585), 503 (overloaded, often with Retry-After) and
# Anthropic's 529 "overloaded_error".
_THROTTLE_STATUSES = frozenset({429, 503, 529})
_REMAINING_HEADERS = ("x-ratelimit-remaining", "ratelimit-remaining", "x-rate-limit-remaining")
_GRAPHQL_CODES = frozenset({"RATE_LIMITED", "THROTTLED"})


def _says_spent(headers: Mapping[str, str]) -> bool:
    """A rate-limit header that says the quota is spent, or a ``Retry-After``."""
    if "retry-after" in headers or "retry-after-ms" in headers:
        return True
    return any(headers.get(name, "").strip() == "0" for name in _REMAINING_HEADERS)


def _graphql_rate_limited(body: str) -> bool:
    """GraphQL's way: 200 with an ``errors`` entry of type (or extensions.code) RATE_LIMITED."""
    if "RATE_LIMITED" not in body and "THROTTLED" not in body:
        return False  # the common case, without parsing
    try:
        data = json.loads(body)
    except ValueError:
        return False
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return False
    for entry in errors:
        if not isinstance(entry, dict):
            continue
        extensions = entry.get("extensions")
        code = extensions.get("code") if isinstance(extensions, dict) else None
        if entry.get("type") in _GRAPHQL_CODES or code in _GRAPHQL_CODES:
            return True
    return False


def classify_answer(status: int, headers: Mapping[str, str], body: str) -> Verdict:
    """The default verdict on an answer; ``headers`` with lower-case names, ``body`` its start
    (:data:`BODY_PREFIX_CHARS` are read). Never raises.

    >>> classify_answer(400, {}, '{"__type": "ThrottlingException", "message": "Rate exceeded"}')
    <Verdict.THROTTLED: 'throttled'>
    >>> classify_answer(500, {"x-should-retry": "false"}, "")
    <Verdict.PERMANENT: 'permanent'>
    """
    body = body[:BODY_PREFIX_CHARS]
    if status < 400:
        if status == 200 and _graphql_rate_limited(body):
            return Verdict.THROTTLED
        return Verdict.SUCCESS
    if _EXHAUSTED_BODY.search(body):
        return Verdict.EXHAUSTED
    should_retry = headers.get("x-should-retry", "").strip().lower()
    if should_retry == "false":
        return Verdict.PERMANENT
    if status in _THROTTLE_STATUSES:
        return Verdict.THROTTLED
    if status in _THROTTLE_CANDIDATES and (_says_spent(headers) or _THROTTLE_BODY.search(body)):
        return Verdict.THROTTLED
    if should_retry == "true" or status == 408 or status >= 500:
        return Verdict.TRANSIENT
    return Verdict.PERMANENT


def verdict_of(error: BaseException) -> Verdict | None:
    """The verdict an exception carries: its ``verdict`` attribute (an HTTP face's
    :class:`~paceline.http.HttpStatusError`), a raised :class:`~paceline.Throttled` or
    :class:`~paceline.QuotaExhausted`; ``None`` when it says nothing.

    >>> verdict_of(QuotaExhausted("credit gone")), verdict_of(ValueError())
    (<Verdict.EXHAUSTED: 'exhausted'>, None)
    """
    declared = getattr(error, "verdict", None)
    if isinstance(declared, Verdict):
        return declared
    if isinstance(error, QuotaExhausted):
        return Verdict.EXHAUSTED
    if isinstance(error, Throttled):
        return Verdict.THROTTLED
    return None


# -- the user's rules -------------------------------------------------------------------------

RULE_EXAMPLE = "e.g. 'status=403,body~secondary rate limit' or 'status=5xx,header=x-should-retry'"


@dataclass(frozen=True, slots=True)
class AnswerRule:
    """A user's rule: when an answer matches every condition, it gets ``verdict``.

    Conditions (comma-separated in :meth:`parse`; all must hold):
    ``status=403`` (or ``4xx``, or ``403|429``), ``header=NAME`` (present) or
    ``header=NAME:VALUE`` (equal, ignoring case), ``body~TEXT`` (the body's start contains
    TEXT, ignoring case; it takes the rest of the rule, commas included, so put it last).

    >>> rule = AnswerRule.parse("status=403,body~secondary rate limit", Verdict.THROTTLED)
    >>> rule.matches(403, {}, "You have exceeded a Secondary Rate Limit")
    True
    >>> rule.matches(403, {}, "Resource not accessible")
    False
    """

    verdict: Verdict
    text: str
    statuses: tuple[str, ...] = ()  # "403", or "4xx"
    header: tuple[str, str | None] | None = None
    body: str | None = None

    @classmethod
    def parse(cls, text: str, verdict: Verdict) -> AnswerRule:
        """A rule from its text; :class:`~paceline.errors.InvalidArgument` names what is wrong."""
        statuses: tuple[str, ...] = ()
        header: tuple[str, str | None] | None = None
        body: str | None = None
        rest = text.strip()
        if not rest:
            raise InvalidArgument(f"rule {text!r}: empty; {RULE_EXAMPLE}")
        while rest:
            if rest.startswith("body~"):
                body = rest[len("body~") :].strip().lower()
                if not body:
                    raise InvalidArgument(f"rule {text!r}: body~ needs a text; {RULE_EXAMPLE}")
                break
            part, _, rest = rest.partition(",")
            rest = rest.strip()
            name, sep, value = part.strip().partition("=")
            name, value = name.strip().lower(), value.strip()
            if not sep or not value:
                raise InvalidArgument(
                    f"rule {text!r}: {part.strip()!r} is not a condition (status=, header= or "
                    f"body~); {RULE_EXAMPLE}"
                )
            if name == "status":
                statuses = tuple(s.strip().lower() for s in value.split("|"))
                for status in statuses:
                    if not re.fullmatch(r"[1-5](?:\d\d|xx|\dx)", status):
                        raise InvalidArgument(
                            f"rule {text!r}: status {status!r} is not a status such as 403, "
                            f"4xx or 403|429"
                        )
            elif name == "header":
                header_name, colon, header_value = value.partition(":")
                header = (header_name.strip().lower(), header_value.strip() if colon else None)
            else:
                raise InvalidArgument(
                    f"rule {text!r}: unknown condition {name!r} (status=, header= or body~); "
                    f"{RULE_EXAMPLE}"
                )
        return cls(verdict, text, statuses, header, body)

    def matches(self, status: int, headers: Mapping[str, str], body: str) -> bool:
        """Whether the answer meets every condition of the rule."""
        if self.statuses and not any(_status_is(status, s) for s in self.statuses):
            return False
        if self.header is not None:
            name, value = self.header
            if name not in headers:
                return False
            if value is not None and headers[name].strip().lower() != value.lower():
                return False
        return self.body is None or self.body in body[:BODY_PREFIX_CHARS].lower()


def _status_is(status: int, pattern: str) -> bool:
    text = str(status)
    return len(text) == len(pattern) and all(
        p in ("x", c) for p, c in zip(pattern, text, strict=True)
    )


def classify_by_rules(
    rules: Sequence[AnswerRule], status: int, headers: Mapping[str, str], body: str
) -> Verdict:
    """The first matching rule's verdict, else :func:`classify_answer`'s.

    >>> rules = [AnswerRule.parse("body~insufficient_quota", Verdict.PERMANENT)]
    >>> classify_by_rules(rules, 429, {}, '{"code": "insufficient_quota"}')
    <Verdict.PERMANENT: 'permanent'>
    """
    for rule in rules:
        if rule.matches(status, headers, body):
            return rule.verdict
    return classify_answer(status, headers, body)
