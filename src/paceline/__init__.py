"""paceline: run large batches against rate-limited APIs as fast as the other side allows.

Which call do I want (the README has the table with each face's concurrency defaults):

* an async function over a list: ``await batch_execute(keys, op)`` -> ``list[Result]``, in
  key order; from sync code ``batch_execute_sync(keys, op)``;
* over a huge or endless input: ``async for r in stream(keys, op)`` -> ``BatchItemResult``;
* sync functions on threads: ``BatchExecutor(...).execute_batch(tasks)`` -> ``BatchResult``
  (``RateLimitedExecutor``: the seed's plain list of values and exceptions);
* a bulk endpoint: ``await fetch_many(keys, fetch_chunk)`` -> ``list[Result]``;
* HTTP requests: ``await paceline.http.fetch_all(requests)`` -> ``list[Result[HttpResponse]]``
  (``fetch_all_sync``, ``stream_requests``);
* a limit alone, in any code: ``RateLimiter("100/s")``; a plan without running:
  ``dry_run(items, ...)``.

>>> import asyncio, paceline
>>> async def fetch(n: int) -> int:
...     return n * n
>>> limiter = paceline.RateLimiter("100/s")
>>> results = asyncio.run(paceline.batch_execute(range(5), fetch, rate_limiter=limiter))
>>> [r.value for r in results]
[0, 1, 4, 9, 16]
"""

from paceline._limiter import AsyncRateLimiterProtocol, RateLimiter, RateLimiterProtocol
from paceline._results import (
    Attempt,
    BatchInterrupted,
    BatchItemResult,
    BatchResult,
    ErrorCode,
    Failure,
    NotAttempted,
    Result,
    Success,
)
from paceline.errors import PacelineError, QuotaExhausted, Throttled
from paceline.faces.batch import batch_execute, batch_execute_sync, run_sync, stream
from paceline.faces.bulk import fetch_many
from paceline.faces.executor import BatchExecutor, RateLimitedExecutor
from paceline.faces.plan import DryRun, dry_run
from paceline.policy.adaptive import AdaptiveSettings, Outcome
from paceline.policy.halt import HaltRule
from paceline.policy.rate import RateSpecError
from paceline.policy.retry import RetryAfterTooLong, RetryBudget, RetryPolicy
from paceline.runners.dask_runner import DaskRunner
from paceline.runners.identity import current_item_key

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSettings",
    "AsyncRateLimiterProtocol",
    "Attempt",
    "BatchExecutor",
    "BatchInterrupted",
    "BatchItemResult",
    "BatchResult",
    "DaskRunner",
    "DryRun",
    "ErrorCode",
    "Failure",
    "HaltRule",
    "NotAttempted",
    "Outcome",
    "PacelineError",
    "QuotaExhausted",
    "RateLimitedExecutor",
    "RateLimiter",
    "RateLimiterProtocol",
    "RateSpecError",
    "Result",
    "RetryAfterTooLong",
    "RetryBudget",
    "RetryPolicy",
    "Success",
    "Throttled",
    "__version__",
    "batch_execute",
    "batch_execute_sync",
    "current_item_key",
    "dry_run",
    "fetch_many",
    "run_sync",
    "stream",
]
