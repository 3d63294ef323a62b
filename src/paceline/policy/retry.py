"""Retries: which failures to retry, how long to wait, and a budget for the whole batch.

Backoff is *full jitter* (``uniform(0, min(cap, base * 2**(n-1)))`` before retry ``n``): the
AWS architecture blog's comparison found it spreads a thundering herd best, and un-jittered
exponential backoff worst (docs/design.md, 'Backoff'). A server's ``Retry-After`` sets a floor
on the wait; one beyond ``max_retry_after_s`` is not obeyed but surfaced as the item's failure.

The budget caps retries at ``ratio`` of first attempts plus a small ``floor`` (gRPC and
Finagle use 10-20 %; SRE book 10 %), so a server that fails everything gets at most ~20 %
extra traffic, not ``attempts``-fold. An item refused a retry because the budget is spent fails
with :class:`RetryBudgetExhausted` ("retry budget exhausted after 1 attempt: HTTP 500 ..."), its
original error the ``__cause__``, never silently with a bare error.

Throttles are not errors (issue 11). A throttled attempt (429, 503 or a raised ``Throttled``:
the caller says which, see ``decide(throttled=...)``) spends nothing from the budget and does
not count toward ``attempts``: the server is up and answering, it asks us to go slower, and the
budget is there to cap extra load on a server that is failing. Against nginx ``limit_req`` at
50 r/s with 8 fixed workers, throttles ate the whole budget in two seconds and 221 of 300 items
failed "HTTP 429". A throttled item waits its backoff instead, and since the backoff doubles
with every attempt the item made (throttles included), the batch slows down: its read-ahead is
bounded, so the attempt rate falls to about ``read-ahead / backoff``. What still ends it:
``max_throttles`` per item, and for a server that only ever throttles, the runners' give-up
rule (no success for ``give_up_after_s``, 600 s by default).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from paceline.errors import InvalidArgument, PacelineError, Throttled, error_code_for
from paceline.policy.answers import Verdict, verdict_of
from paceline.policy.pause import DEFAULT_MAX_PAUSE_S
from paceline.policy.rate import NS_PER_S

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class DefaultRetryOn(tuple[type[BaseException], ...]):
    """A library default for ``retry_on``: with it an error's own ``retryable`` attribute
    (``False`` for a 404, ``True`` for a 503) has the last word. A ``retry_on`` the user passes
    (any other tuple, or a predicate) is the user's word and wins over that attribute
    (docs/design.md, 'Answers told apart').

    >>> DefaultRetryOn((TimeoutError,)) == (TimeoutError,)
    True
    """

    __slots__ = ()


# Retryable by default: the transient kinds. A ValueError or a 404 will fail again the same way.
DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = DefaultRetryOn(
    (Throttled, TimeoutError, ConnectionError)
)


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


class RetryAfterTooLong(PacelineError):
    """The server asked for a wait beyond the configured cap; the item fails instead."""

    def __init__(self, retry_after_s: float, cap_s: float, cause: BaseException) -> None:
        super().__init__(
            f"the server asked to retry after {retry_after_s:g} s, beyond max_retry_after_s="
            f"{cap_s:g}; not waiting that long — raise max_retry_after_s to obey it"
        )
        self.retry_after_s = retry_after_s
        self.cause = cause


class RetryBudgetExhausted(PacelineError):
    """An item failed with retries left, because the batch's retry budget was spent.

    The message names the budget, then the last error's text; that error is ``cause`` and
    ``__cause__``. ``error_code`` and ``status_code`` are the last error's (a 429 is
    ``rate_limited``), so failures still sort by what went wrong.

    >>> error = RetryBudgetExhausted(1, TimeoutError("read timed out"), spent=12, first=10)
    >>> str(error)
    'retry budget exhausted after 1 attempt (the batch spent its 12 retries): read timed out'
    >>> error.error_code, error.__cause__ is error.cause
    ('timeout', True)
    """

    retryable = False  # never retried: the budget says no more

    def __init__(self, attempts: int, cause: BaseException, *, spent: int, first: int) -> None:
        noun = "attempt" if attempts == 1 else "attempts"
        super().__init__(
            f"retry budget exhausted after {attempts} {noun} (the batch spent its {spent} "
            f"retries): {str(cause) or type(cause).__name__}"
        )
        self.attempts = attempts
        self.cause = cause
        self.__cause__ = cause
        self.retries_spent = spent
        self.first_attempts = first
        status = getattr(cause, "status_code", None)
        self.status_code: int | None = status if isinstance(status, int) else None

    @property
    def error_code(self) -> str:
        """The last error's code (see :func:`paceline.errors.error_code_for`)."""
        if is_throttle(self.cause):
            return "rate_limited"
        return error_code_for(self.cause).value


def is_throttle(error: BaseException) -> bool:
    """Whether ``error`` says "slow down": its verdict (:func:`verdict_of`: an HTTP face's
    classified answer, a ``Throttled``), else an HTTP 429 or 503 (its ``status_code``, or its
    ``response.status_code``).

    >>> is_throttle(Throttled()), is_throttle(TimeoutError())
    (True, False)
    """
    verdict = verdict_of(error)
    if verdict is not None:
        return verdict is Verdict.THROTTLED
    for holder in (error, getattr(error, "response", None)):
        if getattr(holder, "status_code", None) in (429, 503):
            return True
    return False


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
    refused: int = 0  # retries asked for once it was spent (items that failed for it)

    def __post_init__(self) -> None:
        if not self.ratio >= 0 or not math.isfinite(self.ratio):
            raise InvalidArgument(f"retry budget ratio={self.ratio!r}: must be 0 or more, e.g. 0.2")
        if self.floor < 0:
            raise InvalidArgument(f"retry budget floor={self.floor!r}: must be 0 or more, e.g. 10")

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
            self.refused += 1
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

    Throttled attempts count toward ``max_throttles`` instead of ``attempts`` (see the module's
    docstring); the backoff still doubles with each:

    >>> policy.decide(3, Throttled(), throttles=2).retry
    True
    """

    # In-process defaults; a remote service's are remote_retry() (reasons: the presets below).
    attempts: int = 3
    base_s: float = 0.1
    cap_s: float = 10.0
    retry_on: RetryOn = DEFAULT_RETRY_ON
    max_retry_after_s: float = DEFAULT_MAX_PAUSE_S  # a longer wait fails the item instead
    rng: random.Random = field(default_factory=random.Random, compare=False)
    # Throttled attempts one item may have before it fails (when attempts > 1). 20 in a row is
    # minutes of backoff (full jitter, doubling to cap_s: ~70 s on average at the defaults,
    # ~200 s at the HTTP face's 30 s cap), far beyond what a limit being learned or a bucket
    # refilling takes: against nginx at 50 r/s with 8 fixed workers no item needed more than
    # 7 (300 items, two runs; tests/cli/test_retry_budget.py); yet an item never served ends.
    max_throttles: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise InvalidArgument(f"attempts={self.attempts!r}: a whole number of at least 1")
        if self.attempts < 1:
            raise InvalidArgument(f"attempts={self.attempts!r}: must be at least 1 (1: no retries)")
        if isinstance(self.max_throttles, bool) or not isinstance(self.max_throttles, int):
            raise InvalidArgument(
                f"max_throttles={self.max_throttles!r}: a whole number of at least 1"
            )
        if self.max_throttles < 1:
            raise InvalidArgument(
                f"max_throttles={self.max_throttles!r}: must be at least 1, e.g. 20"
            )
        for name in ("base_s", "cap_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"{name}={value!r}: must be a finite number of seconds >= 0")

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt. A ``retry_on`` you passed decides
        alone; with the defaults (:class:`DefaultRetryOn`) an error's own ``retryable``
        attribute wins (an HTTP 404 says ``False``). An exhausted quota (:func:`verdict_of`
        says ``EXHAUSTED``) is never retried: see :meth:`decide`.

        >>> class Forbidden(ConnectionError):
        ...     retryable = False  # the error's own default
        >>> RetryPolicy().is_retryable(Forbidden())
        False
        >>> RetryPolicy(retry_on=(Forbidden,)).is_retryable(Forbidden())
        True
        """
        retry_on = self.retry_on
        if not isinstance(retry_on, tuple):
            return bool(retry_on(error))
        if isinstance(retry_on, DefaultRetryOn):
            declared = getattr(error, "retryable", None)
            if isinstance(declared, bool):
                return declared
        return isinstance(error, retry_on)

    def backoff_ns(self, retry_number: int) -> int:
        """Full-jitter wait before retry ``retry_number`` (1 = the first retry)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(retry_number - 1, 62))
        return round(self.rng.uniform(0.0, ceiling) * NS_PER_S)

    def decide(
        self,
        attempt: int,
        error: BaseException,
        budget: RetryBudget | None = None,
        *,
        throttled: bool | None = None,
        throttles: int = 0,
    ) -> RetryDecision:
        """After attempt number ``attempt`` failed with ``error``: retry, and after how long?

        ``throttled``: whether this attempt was throttled (``None``: :func:`is_throttle`);
        ``throttles``: how many of the item's earlier attempts were. A throttle neither counts
        toward ``attempts`` nor spends from ``budget``; ``max_throttles`` bounds them.
        """
        if verdict_of(error) is Verdict.EXHAUSTED:  # waiting will not bring it back
            return RetryDecision(False, reason="quota exhausted")
        if not self.is_retryable(error):
            return RetryDecision(False, reason=f"not retryable ({type(error).__name__})")
        retry_after = retry_after_of(error)
        if retry_after is not None and retry_after > self.max_retry_after_s:
            return RetryDecision(
                False,
                reason="Retry-After beyond the cap",
                error=RetryAfterTooLong(retry_after, self.max_retry_after_s, error),
            )
        if throttled is None:
            throttled = is_throttle(error)
        refused = self._refusal(attempt, throttles + int(throttled), throttled)
        if refused is not None:
            return RetryDecision(False, reason=refused)
        if not throttled and budget is not None and not budget.try_spend():
            return RetryDecision(
                False,
                reason=f"retry budget spent ({budget.spent} retries for "
                f"{budget.first_attempts} first attempts)",
                error=RetryBudgetExhausted(
                    attempt, error, spent=budget.spent, first=budget.first_attempts
                ),
            )
        delay = self.backoff_ns(attempt)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, round(retry_after * NS_PER_S))
        return RetryDecision(True, delay_ns=delay)

    def _refusal(self, attempt: int, throttles: int, throttled: bool) -> str | None:
        """Why the item may not try again (its own limits, not the batch's), if it may not."""
        if self.attempts == 1:  # "never retry", throttles included
            return "attempts exhausted (1 of 1)"
        if throttled:
            if throttles >= self.max_throttles:
                return f"throttled {throttles} times (max_throttles={self.max_throttles})"
            return None
        errors = attempt - throttles
        if errors >= self.attempts:
            return f"attempts exhausted ({errors} of {self.attempts})"
        return None


# Named presets: the one home of the numbers the faces and the CLI retry with.
#
# RetryPolicy() itself (3 attempts, 0.1 s, 10 s cap; also what ``retry=3`` means for a callable)
# is for operations in this process: their transient failures are a lock, a socket or a pool
# that frees up within a fraction of a second, and a script or a test should not sit for long.
#
# A remote service's are an overloaded server, a restart or a quota window. REMOTE_ATTEMPTS = 5
# (four retries) is what the CLI's --help promises for http and call; REMOTE_BASE_S = 0.2 s
# spreads the first retries of a whole read-ahead over a few hundred ms instead of hitting a
# restarting server at once; REMOTE_CAP_S = 30 s bounds one wait when throttles double the
# backoff (up to max_throttles of them): half a minute is the order of the usual quota window,
# and a longer wait would leave the batch idle after the window has reopened.
REMOTE_ATTEMPTS = 5
REMOTE_BASE_S = 0.2
REMOTE_CAP_S = 30.0


def remote_retry(
    attempts: int = REMOTE_ATTEMPTS, retry_on: RetryOn = DEFAULT_RETRY_ON
) -> RetryPolicy:
    """The retry policy for calls to a remote service (see the presets' comment above).

    >>> remote_retry().attempts, remote_retry().cap_s, remote_retry(attempts=2).base_s
    (5, 30.0, 0.2)
    """
    return RetryPolicy(
        attempts=attempts, base_s=REMOTE_BASE_S, cap_s=REMOTE_CAP_S, retry_on=retry_on
    )
