"""Retries: which failures to retry, how long to wait, and a budget for the whole batch.

Backoff is *full jitter* (``uniform(0, min(cap, base * 2**(n-1)))`` before retry ``n``): the
AWS architecture blog's comparison found it spreads a thundering herd best, and un-jittered
exponential backoff worst (ALGORITHMS §2). A server's ``Retry-After`` sets a floor on the wait;
one beyond ``max_retry_after_s`` is not obeyed but surfaced as the item's failure.

The budget caps retries at ``ratio`` of first attempts plus a small ``floor`` (gRPC and
Finagle use 10-20 %; SRE book 10 %), so a server that fails everything gets at most ~20 %
extra traffic, not ``attempts``-fold.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from paceline.errors import Throttled
from paceline.policy.pause import DEFAULT_MAX_PAUSE_S
from paceline.policy.rate import NS_PER_S

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]

# Retryable by default: the transient kinds. A ValueError or a 404 will fail again the same way.
DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (Throttled, TimeoutError, ConnectionError)


def retry_after_of(error: BaseException) -> float | None:
    """The server's requested wait carried by an exception (``retry_after`` attribute)."""
    value = getattr(error, "retry_after", None)
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None


class RetryAfterTooLong(Exception):
    """The server asked for a wait beyond the configured cap; the item fails instead."""

    def __init__(self, retry_after_s: float, cap_s: float, cause: BaseException) -> None:
        super().__init__(
            f"the server asked to retry after {retry_after_s:g} s, beyond max_retry_after_s="
            f"{cap_s:g}; not waiting that long — raise max_retry_after_s to obey it"
        )
        self.retry_after_s = retry_after_s
        self.cause = cause


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """``retry``: try again after ``delay_ns``; otherwise ``reason`` says why not."""

    retry: bool
    delay_ns: int = 0
    reason: str = ""
    error: BaseException | None = None  # what to report instead of the original, if anything


@dataclass(slots=True)
class RetryBudget:
    """Retries allowed so far: ``floor + ratio * first_attempts``; never overspent.

    >>> budget = RetryBudget(ratio=0.2, floor=1)
    >>> for _ in range(10): budget.first_attempt()
    >>> [budget.try_spend() for _ in range(4)]
    [True, True, True, False]
    """

    ratio: float = 0.2
    floor: int = 10
    first_attempts: int = 0
    spent: int = 0

    def __post_init__(self) -> None:
        if not self.ratio >= 0 or not math.isfinite(self.ratio):
            raise ValueError(f"retry budget ratio={self.ratio!r}: must be 0 or more, e.g. 0.2")
        if self.floor < 0:
            raise ValueError(f"retry budget floor={self.floor!r}: must be 0 or more, e.g. 10")

    @property
    def allowed(self) -> int:
        """How many retries the batch may have made by now."""
        return self.floor + math.floor(self.ratio * self.first_attempts)

    def first_attempt(self) -> None:
        """Count a first attempt (it earns the batch ``ratio`` of a retry)."""
        self.first_attempts += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` when it is spent."""
        if self.spent >= self.allowed:
            return False
        self.spent += 1
        return True


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one item's failures are retried.

    ``attempts`` counts the first try (``attempts=1``: never retry). ``retry_on`` is a tuple of
    exception types or a predicate. ``rng`` makes the jitter reproducible in tests.

    >>> policy = RetryPolicy(attempts=3, base_s=0.1, cap_s=1.0, rng=random.Random(7))
    >>> d = policy.decide(1, TimeoutError("slow"))
    >>> d.retry, 0 <= d.delay_ns <= 100_000_000
    (True, True)
    >>> policy.decide(3, TimeoutError("slow")).reason
    'attempts exhausted (3 of 3)'
    """

    attempts: int = 3
    base_s: float = 0.1
    cap_s: float = 10.0
    retry_on: RetryOn = DEFAULT_RETRY_ON
    max_retry_after_s: float = DEFAULT_MAX_PAUSE_S  # a longer wait fails the item instead
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ValueError(f"attempts={self.attempts!r}: a whole number of at least 1")
        if self.attempts < 1:
            raise ValueError(f"attempts={self.attempts!r}: must be at least 1 (1: no retries)")
        for name in ("base_s", "cap_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r}: must be a finite number of seconds >= 0")

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt."""
        if getattr(error, "retryable", None) is False:
            return False
        if getattr(error, "retryable", None) is True:
            return True
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        return bool(self.retry_on(error))

    def backoff_ns(self, retry_number: int) -> int:
        """Full-jitter wait before retry ``retry_number`` (1 = the first retry)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(retry_number - 1, 62))
        return round(self.rng.uniform(0.0, ceiling) * NS_PER_S)

    def decide(
        self, attempt: int, error: BaseException, budget: RetryBudget | None = None
    ) -> RetryDecision:
        """After attempt number ``attempt`` failed with ``error``: retry, and after how long?"""
        if not self.is_retryable(error):
            return RetryDecision(False, reason=f"not retryable ({type(error).__name__})")
        retry_after = retry_after_of(error)
        if retry_after is not None and retry_after > self.max_retry_after_s:
            return RetryDecision(
                False,
                reason="Retry-After beyond the cap",
                error=RetryAfterTooLong(retry_after, self.max_retry_after_s, error),
            )
        if attempt >= self.attempts:
            return RetryDecision(False, reason=f"attempts exhausted ({attempt} of {self.attempts})")
        if budget is not None and not budget.try_spend():
            return RetryDecision(
                False,
                reason=f"retry budget spent ({budget.spent} retries for "
                f"{budget.first_attempts} first attempts)",
            )
        delay = self.backoff_ns(attempt)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, round(retry_after * NS_PER_S))
        return RetryDecision(True, delay_ns=delay)
