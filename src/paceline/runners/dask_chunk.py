"""The worker's half of the Dask runner: run one chunk of items, return JSON-ready outcomes.

A chunk runs on a Dask worker with paceline's :class:`~paceline.runners.async_runner.AsyncRunner`
(at most ``concurrency`` items at once, the batch's retry policy and attempt timeout), taking a
token from the batch's shared limiter right before every attempt, retries included. What goes
back to the driver is plain data: per item its index, whether it succeeded, its value encoded
the way the journal stores it (the batch's codec, then JSON-ready), or its error's message,
type name and code; per item, how many of its attempts were throttled and the HTTP status of
a failure's last answer (the driver's progress counts throttles apart from errors, ``--out``
shows the status); and how long the chunk took (the driver sizes the next chunks from it).

An error that carries a server's ``retry_after`` also pauses the shared limiter (when it can
pause: the cluster's actor can), so a 429 holds back every worker sharing the limit, not only
the one that saw it.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from paceline._results import error_code_for
from paceline.errors import PacelineError
from paceline.policy.answers import Verdict, verdict_of
from paceline.policy.retry import RetryBudget, RetryPolicy, is_throttle, retry_after_of
from paceline.runners.async_runner import AsyncRunner
from paceline.runners.dask_limiter import LimiterLost
from paceline.runners.settle import AttemptInfo, RunOptions
from paceline.stores import Codec, check_json_ready

Pair = tuple[int, Any]  # (the item's position in the batch, the item)

# A Dask worker process holds a few hundred thousand objects (distributed's state, imported
# modules), and the cycle collector walks all of them in each full collection: 23-42 ms
# measured at a shared 500/s, a few times per worker per 40 s run, during which every event
# loop of the process stands still and the requests it was sending reach the server that much
# later (the tail of start -> arrival; docs/design.md, "Dask runner: where a request waits").
# The first chunk in a process moves what exists then out of the collector's sight
# (``gc.freeze()``, once): full collections then walk only what came later (4-18 ms measured).
# The cost: cyclic garbage that existed before the first chunk is never freed.
_FROZEN = threading.Event()

# One item's outcome as it travels back:
# (index, True, json_value, attempts, started_ns, duration_ns) or
# (index, False, (message, type_name, error_code), attempts, started_ns, duration_ns).
Outcome = tuple[int, bool, Any, int, int, int]


@dataclass(slots=True)
class ChunkSpec:
    """What every chunk of one batch runs with; sent to each worker once (scattered)."""

    operation: Callable[[Any], Awaitable[Any]]
    concurrency: int
    limiter: object | None = None
    weight: Callable[[Any], int] | None = None
    retry: RetryPolicy | None = None
    timeout_s: float | None = None
    codec: Codec | None = None
    classify: Callable[[Any, BaseException | None], Any] | None = None


@dataclass(slots=True)
class ChunkResult:
    """A chunk's outcomes, the ns it took on the worker, and the positions left unfinished
    because the shared limiter was lost (the driver runs those again)."""

    outcomes: list[Outcome]
    elapsed_ns: int
    unfinished: list[int] = field(default_factory=list)
    limiter_error: str | None = None
    # Per position, of the item's attempts those throttled (429, 503, ``Throttled``: what the
    # CLI's progress counts apart from errors); items with none are left out.
    throttles: dict[int, int] = field(default_factory=dict)
    # Per position, the HTTP status of a failed item's last answer, when it had one.
    statuses: dict[int, int] = field(default_factory=dict)
    # Positions of items that were waiting for a retry when an exhausted quota stopped the
    # chunk: they come back failed with their last error, and (as locally) stay unjournaled.
    waited: list[int] = field(default_factory=list)


def _encoded(value: Any, codec: Codec | None, index: int, item: Any) -> Any:
    data = codec.encode(value) if codec is not None else value
    try:
        check_json_ready(data, f"the result of item #{index} ({item!r:.80})")
    except Exception as exc:
        raise ResultNotJsonReady(str(exc)) from exc
    return data


class ResultNotJsonReady(PacelineError):
    """An item's result that cannot travel back from its worker the way the journal would store
    it (JSON-ready, through the batch's codec): the item fails with this, naming it."""

    error_code = "invalid_input"


def _failure(index: int, exc: BaseException, info: AttemptInfo) -> Outcome:
    message = str(exc) or type(exc).__name__
    code = error_code_for(exc).value
    return (
        index,
        False,
        (message, type(exc).__name__, code),
        info.attempts,
        info.started_ns,
        info.duration_ns,
    )


def _note_throttle(throttles: dict[int, int], index: int, exc: BaseException) -> None:
    """Count a failed attempt of item ``index`` that was a throttle (as the CLI's local
    progress counts it: :func:`~paceline.policy.retry.is_throttle`)."""
    if is_throttle(exc):
        throttles[index] = throttles.get(index, 0) + 1


def _note_status(statuses: dict[int, int], index: int, exc: BaseException) -> None:
    """Keep the HTTP status of item ``index``'s failure, when its error has one."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        statuses[index] = status


class _HaltWatch:
    """Which items were waiting for a retry when the chunk stopped (only an exhausted quota
    stops a chunk): those the runner settles afterwards with their last error, where a local
    run leaves them out of the journal (``Settler.abandon``), unlike an attempt that was
    running then and failed."""

    __slots__ = ("running", "running_at_halt")

    def __init__(self) -> None:
        self.running: set[int] = set()  # positions with an attempt running now
        self.running_at_halt: set[int] | None = None

    def halted(self, _reason: str) -> None:
        self.running_at_halt = set(self.running)

    def waited(self, index: int, exc: BaseException) -> bool:
        at_halt = self.running_at_halt
        return (
            at_halt is not None
            and index not in at_halt
            and verdict_of(exc) is not Verdict.EXHAUSTED
        )


def freeze_worker_heap(freeze: Callable[[], None] = gc.freeze) -> bool:
    """Move every object of this worker process out of the cycle collector's sight, once per
    process (see ``_FROZEN``); ``True`` when this call did it."""
    if _FROZEN.is_set():
        return False
    _FROZEN.set()
    freeze()
    return True


def run_chunk(spec: ChunkSpec, pairs: list[Pair]) -> ChunkResult:
    """Run ``pairs`` on this worker (the Dask task of one chunk)."""
    freeze_worker_heap()
    started = time.monotonic_ns()
    outcomes: list[Outcome] = []
    throttles: dict[int, int] = {}
    statuses: dict[int, int] = {}
    watch = _HaltWatch()
    waited: list[int] = []
    operation, limiter, codec = spec.operation, spec.limiter, spec.codec
    pause = getattr(limiter, "pause", None)

    async def attempt(pair: Pair) -> Any:
        watch.running.add(pair[0])
        try:
            return await operation(pair[1])
        except Exception as exc:
            _note_throttle(throttles, pair[0], exc)
            seconds = retry_after_of(exc)
            if pause is not None and seconds is not None and seconds > 0:
                await asyncio.to_thread(pause, seconds)
            raise
        finally:
            watch.running.discard(pair[0])

    def ok(_i: int, pair: Pair, value: Any, info: AttemptInfo) -> None:
        index, item = pair
        try:
            data = _encoded(value, codec, index, item)
        except ResultNotJsonReady as exc:
            outcomes.append(_failure(index, exc, info))
            return
        outcomes.append((index, True, data, info.attempts, info.started_ns, info.duration_ns))

    def err(_i: int, pair: Pair, exc: BaseException, info: AttemptInfo) -> None:
        outcomes.append(_failure(pair[0], exc, info))
        _note_status(statuses, pair[0], exc)
        if watch.waited(pair[0], exc):
            waited.append(pair[0])

    weight = spec.weight
    options: RunOptions[Pair, Any, None] = RunOptions(
        ok=ok,
        err=err,
        limiter=limiter,
        weight=(lambda pair: weight(pair[1])) if weight is not None else None,
        timed=True,
        retry=spec.retry,
        # The retry budget is per chunk here: the driver cannot share one across workers.
        budget=RetryBudget() if spec.retry is not None else None,
        timeout_s=spec.timeout_s,
        classify=spec.classify,
        give_up_after_s=None,  # the driver applies the batch's give-up rule
        on_halt=watch.halted,
    )
    runner: AsyncRunner[Pair, Any, None] = AsyncRunner(
        attempt, concurrency=max(1, min(spec.concurrency, len(pairs))), options=options
    )
    try:
        asyncio.run(runner.collect(pairs))
    except LimiterLost as exc:
        done = {outcome[0] for outcome in outcomes}
        unfinished = [index for index, _item in pairs if index not in done]
        result = ChunkResult(outcomes, time.monotonic_ns() - started, unfinished, str(exc))
    else:
        result = ChunkResult(outcomes, time.monotonic_ns() - started)
    result.throttles, result.statuses, result.waited = throttles, statuses, waited
    return result
