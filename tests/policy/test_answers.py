"""The answer classifier on the shapes real APIs send (docs/design.md, 'Answers told apart')."""

from __future__ import annotations

import json

import pytest

from paceline.errors import ErrorCode, InvalidArgument, QuotaExhausted, Throttled, error_code_for
from paceline.http import HttpStatusError
from paceline.policy.adaptive import Outcome
from paceline.policy.answers import AnswerRule, Verdict, classify_answer, classify_by_rules
from paceline.policy.retry import RetryPolicy
from paceline.runners.adaptive_gate import default_classify

# GitHub's secondary rate limit (docs.github.com, "Rate limits for the REST API"): 403 with
# Retry-After and this body.
GITHUB_SECONDARY = json.dumps(
    {
        "message": "You have exceeded a secondary rate limit. Please wait a few minutes before "
        "you try again. If you reach out to GitHub Support for help, please include the "
        "request ID 1234:5678.",
        "documentation_url": "https://docs.github.com/free-pro-team@latest/rest/overview/"
        "rate-limits-for-the-rest-api#about-secondary-rate-limits",
    }
)
# GitHub's primary limit: 403 (or 429) with x-ratelimit-remaining: 0.
GITHUB_PRIMARY = json.dumps(
    {
        "message": "API rate limit exceeded for user ID 1.",
        "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api",
    }
)
GITHUB_FORBIDDEN = json.dumps(
    {
        "message": "Resource not accessible by integration",
        "documentation_url": "https://docs.github.com/rest/repos/repos#update-a-repository",
    }
)


def _google(reason: str, message: str) -> str:
    return json.dumps(
        {
            "error": {
                "errors": [{"domain": "usageLimits", "reason": reason, "message": message}],
                "code": 403,
                "message": message,
            }
        }
    )


AWS_THROTTLING = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
AWS_VALIDATION = json.dumps(
    {"__type": "ValidationException", "message": "1 validation error detected"}
)
OPENAI_QUOTA = json.dumps(
    {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing "
            "details. For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
)
OPENAI_RATE = json.dumps(
    {
        "error": {
            "message": "Rate limit reached for gpt-4o in organization org-abc on tokens per min "
            "(TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 1s.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
)
OPENAI_BILLING = json.dumps(
    {
        "error": {
            "message": "Billing hard limit has been reached",
            "type": "invalid_request_error",
            "code": "billing_hard_limit_reached",
        }
    }
)
ANTHROPIC_RATE = json.dumps(
    {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "Number of request tokens has exceeded your per-minute rate limit",
        },
    }
)
ANTHROPIC_OVERLOADED = json.dumps(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
)
ANTHROPIC_CREDIT = json.dumps(
    {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Your credit balance is too low to access the Anthropic API. Please go "
            "to Plans & Billing to upgrade or purchase credits.",
        },
    }
)
GRAPHQL_RATE_LIMITED = json.dumps(
    {
        "data": None,
        "errors": [{"type": "RATE_LIMITED", "message": "API rate limit exceeded for user ID 1."}],
    }
)
SHOPIFY_THROTTLED = json.dumps(
    {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]}
)
GRAPHQL_NOT_FOUND = json.dumps(
    {"data": None, "errors": [{"type": "NOT_FOUND", "message": "Could not resolve"}]}
)

CASES = [
    # (name, status, headers, body, verdict)
    ("github secondary 403", 403, {"retry-after": "60"}, GITHUB_SECONDARY, Verdict.THROTTLED),
    (
        "github secondary 403 without Retry-After",
        403,
        {},
        GITHUB_SECONDARY,
        Verdict.THROTTLED,
    ),
    (
        "github primary 403",
        403,
        {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1700000000"},
        GITHUB_PRIMARY,
        Verdict.THROTTLED,
    ),
    (
        "github forbidden 403 (headers on every answer)",
        403,
        {"x-ratelimit-remaining": "4999", "x-ratelimit-limit": "5000"},
        GITHUB_FORBIDDEN,
        Verdict.PERMANENT,
    ),
    (
        "google rateLimitExceeded",
        403,
        {},
        _google("rateLimitExceeded", "Rate Limit Exceeded"),
        Verdict.THROTTLED,
    ),
    (
        "google userRateLimitExceeded",
        403,
        {},
        _google("userRateLimitExceeded", "User Rate Limit Exceeded"),
        Verdict.THROTTLED,
    ),
    (
        "google dailyLimitExceeded",
        403,
        {},
        _google("dailyLimitExceeded", "Daily Limit Exceeded"),
        Verdict.EXHAUSTED,
    ),
    ("aws throttling 400", 400, {}, AWS_THROTTLING, Verdict.THROTTLED),
    ("aws validation 400", 400, {}, AWS_VALIDATION, Verdict.PERMANENT),
    ("openai insufficient_quota 429", 429, {}, OPENAI_QUOTA, Verdict.EXHAUSTED),
    (
        "openai insufficient_quota 429, x-should-retry false",
        429,
        {"x-should-retry": "false"},
        OPENAI_QUOTA,
        Verdict.EXHAUSTED,
    ),
    ("openai rate_limit_exceeded 429", 429, {"retry-after": "1"}, OPENAI_RATE, Verdict.THROTTLED),
    ("openai billing hard limit 400", 400, {}, OPENAI_BILLING, Verdict.EXHAUSTED),
    ("anthropic rate 429", 429, {"retry-after": "3"}, ANTHROPIC_RATE, Verdict.THROTTLED),
    ("anthropic overloaded 529", 529, {}, ANTHROPIC_OVERLOADED, Verdict.THROTTLED),
    ("anthropic credit 400", 400, {}, ANTHROPIC_CREDIT, Verdict.EXHAUSTED),
    ("graphql RATE_LIMITED 200", 200, {}, GRAPHQL_RATE_LIMITED, Verdict.THROTTLED),
    ("shopify THROTTLED 200", 200, {}, SHOPIFY_THROTTLED, Verdict.THROTTLED),
    ("graphql NOT_FOUND 200", 200, {}, GRAPHQL_NOT_FOUND, Verdict.SUCCESS),
    ("plain 429", 429, {}, "", Verdict.THROTTLED),
    ("plain 503", 503, {"retry-after": "5"}, "", Verdict.THROTTLED),
    ("500", 500, {}, "boom", Verdict.TRANSIENT),
    ("500 x-should-retry false", 500, {"x-should-retry": "false"}, "", Verdict.PERMANENT),
    ("409 x-should-retry true", 409, {"x-should-retry": "true"}, "", Verdict.TRANSIENT),
    ("408", 408, {}, "", Verdict.TRANSIENT),
    ("404", 404, {}, "Not Found", Verdict.PERMANENT),
    ("404 mentioning a rate limit", 404, {}, "no rate limit rule here", Verdict.PERMANENT),
    ("201", 201, {}, "{}", Verdict.SUCCESS),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "verdict"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_real_answers_get_their_verdict(
    status: int, headers: dict[str, str], body: str, verdict: Verdict
) -> None:
    assert classify_answer(status, headers, body) is verdict


def test_only_the_start_of_a_long_body_is_read() -> None:
    assert classify_answer(429, {}, "x" * 5000 + "insufficient_quota") is Verdict.THROTTLED


@pytest.mark.parametrize(
    ("status", "headers", "body", "code", "retryable"),
    [
        (403, {"retry-after": "60"}, GITHUB_SECONDARY, ErrorCode.THROTTLED, True),
        (429, {}, OPENAI_QUOTA, ErrorCode.QUOTA_EXHAUSTED, False),
        (403, {}, GITHUB_FORBIDDEN, ErrorCode.PERMISSION_DENIED, False),
        (404, {}, "", ErrorCode.NOT_FOUND, False),
        (422, {}, "", ErrorCode.HTTP_4XX, False),
        (502, {}, "", ErrorCode.HTTP_5XX, True),
        (408, {}, "", ErrorCode.TIMEOUT, True),
    ],
)
def test_a_status_error_says_which_kind_never_unknown(
    status: int, headers: dict[str, str], body: str, code: ErrorCode, retryable: bool
) -> None:
    error = HttpStatusError(status, body, verdict=classify_answer(status, headers, body))
    assert error_code_for(error) is code
    assert error.retryable is retryable


def test_an_exhausted_answer_names_its_cause() -> None:
    error = HttpStatusError(429, OPENAI_QUOTA, verdict=Verdict.EXHAUSTED)
    assert str(error).startswith("quota exhausted (resume when the quota is back): HTTP 429: ")
    assert "You exceeded your current quota" in str(error)


def test_the_controller_reads_the_verdict() -> None:
    throttled_403 = HttpStatusError(403, GITHUB_SECONDARY, 60.0, verdict=Verdict.THROTTLED)
    exhausted_429 = HttpStatusError(429, OPENAI_QUOTA, verdict=Verdict.EXHAUSTED)
    overloaded_529 = HttpStatusError(529, ANTHROPIC_OVERLOADED, verdict=Verdict.THROTTLED)
    assert default_classify(None, throttled_403) is Outcome.THROTTLE
    assert default_classify(None, exhausted_429) is Outcome.IGNORE
    assert default_classify(None, overloaded_529) is Outcome.OVERLOAD
    assert default_classify(None, HttpStatusError(502, "")) is Outcome.CAPACITY


def test_a_throttled_403_is_retried_without_spending_the_budget() -> None:
    error = HttpStatusError(403, GITHUB_SECONDARY, 2.0, verdict=Verdict.THROTTLED)
    decision = RetryPolicy(attempts=2).decide(2, error, throttles=1)
    assert decision.retry
    assert decision.delay_ns >= 2_000_000_000  # Retry-After is the floor


def test_an_exhausted_quota_is_never_retried_even_when_the_user_retries_everything() -> None:
    policy = RetryPolicy(attempts=5, retry_on=lambda e: True)
    assert policy.decide(1, QuotaExhausted("credit gone")).retry is False
    error = HttpStatusError(429, OPENAI_QUOTA, verdict=Verdict.EXHAUSTED)
    assert policy.decide(1, error).reason == "quota exhausted"


def test_retry_on_given_by_the_user_wins_over_a_default_retryable_false() -> None:
    forbidden = HttpStatusError(403, GITHUB_FORBIDDEN)
    assert forbidden.retryable is False
    assert RetryPolicy().decide(1, forbidden).retry is False
    assert RetryPolicy(retry_on=(HttpStatusError,)).decide(1, forbidden).retry is True
    by_status = RetryPolicy(retry_on=lambda e: getattr(e, "status_code", 0) == 403)
    assert by_status.decide(1, forbidden).retry is True
    # ... and a user's retry_on that leaves an error out is obeyed too
    assert RetryPolicy(retry_on=(TimeoutError,)).decide(1, Throttled()).retry is False


RULE_CASES = [
    ("status=403,body~secondary rate limit", 403, {}, GITHUB_SECONDARY, True),
    ("status=403,body~secondary rate limit", 429, {}, GITHUB_SECONDARY, False),
    ("status=4xx", 418, {}, "", True),
    ("status=4xx", 503, {}, "", False),
    ("status=403|429", 429, {}, "", True),
    ("header=x-abuse", 403, {"x-abuse": "1"}, "", True),
    ("header=x-should-retry:FALSE", 500, {"x-should-retry": "false"}, "", True),
    ("header=x-should-retry:false", 500, {"x-should-retry": "true"}, "", False),
    ("body~a, b", 400, {}, "says A, B here", True),
]


@pytest.mark.parametrize(("text", "status", "headers", "body", "matches"), RULE_CASES)
def test_rules_match_as_written(
    text: str, status: int, headers: dict[str, str], body: str, matches: bool
) -> None:
    assert AnswerRule.parse(text, Verdict.THROTTLED).matches(status, headers, body) is matches


def test_the_first_matching_rule_wins_over_the_defaults() -> None:
    rules = [
        AnswerRule.parse("body~insufficient_quota", Verdict.PERMANENT),
        AnswerRule.parse("status=429", Verdict.EXHAUSTED),
    ]
    assert classify_by_rules(rules, 429, {}, OPENAI_QUOTA) is Verdict.PERMANENT
    assert classify_by_rules(rules, 429, {}, OPENAI_RATE) is Verdict.EXHAUSTED
    assert classify_by_rules(rules, 500, {}, "") is Verdict.TRANSIENT


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "rule '': empty"),
        ("status=4x3", "status '4x3' is not a status"),
        ("code=403", "unknown condition 'code'"),
        ("status", "'status' is not a condition"),
        ("body~", "body~ needs a text"),
    ],
)
def test_a_bad_rule_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        AnswerRule.parse(text, Verdict.THROTTLED)
