"""The async faces: ``batch_execute``, ``stream``, and running them from sync code."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import difflib
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

from paceline._results import BatchItemResult, ErrorCode, Failure, NotAttempted, Result, Success
from paceline.errors import InvalidArgumentType
from paceline.faces._journal import JournalSpec as JournalSpec  # re-exported: the HTTP face
from paceline.faces._journal import journal_options, opened, restored_result
from paceline.faces._options import ActualCost as ActualCost  # re-exported: the HTTP face
from paceline.faces._options import CostSpec as CostSpec  # re-exported: the HTTP face
from paceline.faces._options import HaltSpec as HaltSpec  # re-exported: the HTTP face
from paceline.faces._options import (
    RetrySpec,
    build_options,
    item_result,
    restored_item,
)
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings, Outcome
from paceline.policy.batch import BatchState
from paceline.policy.halt import DEFAULT_GIVE_UP_AFTER_S
from paceline.policy.retry import RetryBudget
from paceline.runners import ProgressCallback, auto_workers, controller_for, sized_length
from paceline.runners.async_runner import AsyncRunner
from paceline.runners.dask_runner import DaskRunner
from paceline.runners.lanes import Lanes
from paceline.runners.settle import AttemptInfo, RunOptions
from paceline.stores import Codec, StoredOutcome, item_key

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; only for mypy

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")

__all__ = ["batch_execute", "batch_execute_sync", "run_sync", "stream"]

Concurrency = int | Literal["auto"] | None
Adaptive = AdaptiveSettings | AdaptiveController | bool | None


def concurrency_plan(
    max_concurrent: Concurrency, max_workers: Concurrency, total: int | None, adaptive: Adaptive
) -> tuple[int | None, AdaptiveController | None]:
    """Workers to start, and the adaptive controller — the one reading of the async faces'
    ``max_concurrent``/``adaptive`` (``fetch_all`` too): ``"auto"`` means adaptive control
    starting from :func:`auto_workers`; with adaptive control the workers are its ceiling."""
    chosen = max_workers if max_workers is not None else max_concurrent
    if chosen == "auto" and adaptive is None:
        adaptive = AdaptiveSettings(initial_concurrency=auto_workers(total))
    fixed = None if chosen == "auto" else chosen
    controller = controller_for(adaptive)
    if controller is None:
        return fixed, None
    return (controller.settings.max_concurrency if fixed is None else fixed), controller


def _ok(_index: int, _key: object, value: Any, _info: AttemptInfo) -> Success[Any]:
    return Success(value)


def _err(_index: int, _key: object, exc: BaseException, _info: AttemptInfo) -> Failure:
    return Failure.from_exception(exc)


class BatchOptions(TypedDict, total=False):
    """The keyword options of :func:`batch_execute`, typed, for the faces that pass them on
    (:func:`batch_execute_sync`, :func:`~paceline.fetch_many`): a misspelt option fails
    ``mypy --strict`` there, and at run time the error names the function that was called."""

    rate_limiter: object | None
    weight: Callable[[Any], int] | None
    cost: CostSpec[Any]
    actual_cost: ActualCost
    max_workers: Concurrency
    retry: RetrySpec
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
    adaptive: Adaptive
    classify: Callable[[Any, BaseException | None], Outcome] | None
    give_up_after_s: float | None
    lanes: Lanes | None
    runner: DaskRunner | None


class AllBatchOptions(BatchOptions, total=False):
    """:class:`BatchOptions` and :func:`batch_execute`'s first three, for a face that takes
    none of them itself (:func:`~paceline.fetch_many`)."""

    max_concurrent: Concurrency
    on_progress: ProgressCallback | None
    fail_fast: bool


def checked_options(function: str, options: dict[str, Any], known: Any = BatchOptions) -> None:
    """Refuse an option not among ``known``'s keys (a ``TypedDict`` of a face's keyword
    options; :class:`BatchOptions` by default), naming ``function`` (the one the user called)
    and the nearest option, as Python would for its own parameters.

    >>> try:
    ...     checked_options("batch_execute_sync", {"retires": 3})
    ... except TypeError as exc:
    ...     print(exc)
    batch_execute_sync() got an unexpected keyword argument 'retires' (did you mean 'retry'?)
    """
    names = known.__annotations__.keys()  # a TypedDict's, its bases' keys included
    for name in options:
        if name not in names:
            near = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InvalidArgumentType(
                f"{function}() got an unexpected keyword argument {name!r}{hint}"
            )


async def batch_execute(
    keys: Iterable[K] | AsyncIterable[K],
    operation: Callable[[K], Awaitable[T]],
    max_concurrent: Concurrency = 10,
    on_progress: ProgressCallback | None = None,
    fail_fast: bool = False,
    *,
    rate_limiter: object | None = None,
    weight: Callable[[K], int] | None = None,
    cost: CostSpec[K] = None,
    actual_cost: ActualCost = None,
    max_workers: Concurrency = None,
    retry: RetrySpec = None,
    retry_budget: RetryBudget | None = None,
    halt: HaltSpec = None,
    timeout_s: float | None = None,
    deadline_s: float | None = None,
    journal: JournalSpec = None,
    journal_label: str | None = None,
    retry_failed: bool = False,
    reuse_journal: bool = False,
    codec: Codec | None = None,
    key: Callable[[K], Any] | None = None,
    adaptive: Adaptive = None,
    classify: Callable[[Any, BaseException | None], Outcome] | None = None,
    give_up_after_s: float | None = DEFAULT_GIVE_UP_AFTER_S,
    lanes: Lanes | None = None,
    runner: DaskRunner | None = None,
) -> list[Result[T]]:
    """Run ``await operation(key)`` for every key; return a ``Result`` per key, in key order.

    At most ``max_concurrent`` operations run at once (``"auto"``: chosen from the batch size;
    ``None``: no limit). ``max_workers`` is accepted as another name for it. With a
    ``rate_limiter``, each operation takes a token (of ``weight(key)`` permits, default 1)
    immediately before it starts. With ``cost`` (a mapping such as ``{"tokens": 1200}``, or
    a function of the key returning one) each attempt reserves that estimate from the
    limiter (a :class:`~paceline.RateLimiter`, e.g. ``from_rates("500/min",
    "tokens:90000/min")``) instead; after a success ``actual_cost(value)`` settles it to the
    actual usage (the unused part is given back, an overrun charged; ``None`` keeps the
    estimate, as does a failed attempt). A limit in a unit other than requests needs
    ``cost``. ``fail_fast=True`` cancels the operations in flight at the
    first failure and raises that original exception; by default every key is attempted and
    failures come back as :class:`~paceline.Failure` values.

    ``retry`` (a number of attempts or a :class:`~paceline.RetryPolicy`) retries transient
    failures with jittered backoff, within a ``retry_budget`` for the batch; every retry takes
    a token and a concurrency slot like a first attempt. ``halt`` stops early by a rule
    (``"soon,fail=5%"``; ``now`` also cancels work in flight); ``timeout_s`` cancels an attempt
    that runs too long; ``deadline_s`` stops the whole batch; ``give_up_after_s`` (default
    10 min, ``None``: never) stops it when attempts keep failing and none has succeeded for
    that long (a server answering only 429 or 500). Keys never attempted because the batch
    halted come back as failures with ``error_code`` ``CANCELLED``.

    ``journal`` (a file path, or an open :class:`~paceline.stores.Journal`) makes the batch
    resumable: each key's outcome is stored as it settles; a rerun skips the keys already
    settled and returns their stored results in place (``retry_failed=True`` runs the failed
    ones again). Keys are identified by ``key(k)`` if given, else by the key itself (strings
    and ints) or a hash of its canonical JSON — never by position. The journal belongs to
    this operation and ``journal_label``; another batch's journal is refused unless
    ``reuse_journal=True``. Results are stored as JSON (``codec`` for other types).

    ``adaptive`` (``True``, :class:`paceline.AdaptiveSettings` or a controller) finds an
    unknown server limit from its answers: a raised :class:`~paceline.Throttled` or an
    exception with ``status_code`` 429 cuts the rate, 503 or rising latency the concurrency,
    and a ``retry_after`` pauses every dispatch (to map outcomes yourself, pass
    ``classify(value, error)`` returning a :class:`paceline.Outcome`).
    ``max_concurrent="auto"`` turns it on, starting from a concurrency chosen from the batch
    size.

    ``lanes`` (a :class:`~paceline.runners.lanes.Lanes`) gives each group of keys its own
    gates — pause, adaptive controller, limiter — in place of ``rate_limiter`` and
    ``adaptive``, so one server's pause holds up only its keys (the HTTP face passes one lane
    per server); keys then queue per lane inside a read-ahead of
    :data:`~paceline.runners.lanes.DEFAULT_LANE_READ_AHEAD`.

    ``runner`` (a :class:`~paceline.runners.dask_runner.DaskRunner`) runs the items on a Dask
    cluster instead of this event loop: the journal, progress and halt rules stay here,
    ``max_concurrent`` is per chunk on each worker, and a ``rate_limiter`` is shared by every
    worker (docs/design.md, "Dask runner").

    >>> async def double(x: int) -> int:
    ...     return 2 * x
    >>> results = asyncio.run(batch_execute([1, 2, 3], double))
    >>> [r.value for r in results]
    [2, 4, 6]
    """
    total = sized_length(keys)
    workers, control = concurrency_plan(max_concurrent, max_workers, total, adaptive)
    with opened(
        journal, operation=operation, label=journal_label, reuse=reuse_journal, codec=codec
    ) as store:
        options: RunOptions[K, T, Result[T]] = build_options(
            ok=_ok,
            err=_err,
            limiter=rate_limiter,
            stop_on_error=fail_fast,
            on_progress=on_progress,
            weight=weight,
            cost=cost,
            actual_cost=actual_cost,
            retry=retry,
            retry_budget=retry_budget,
            halt=halt,
            timeout_s=timeout_s,
            deadline_s=deadline_s,
            **journal_options(store, _key_of(key), retry_failed, _restore_result),
            adaptive=control,
            classify=classify,
            give_up_after_s=give_up_after_s,
            lanes=lanes,
        )
        if runner is not None:
            state = await on_cluster(runner, keys, operation, workers, options, codec)
        else:
            local: AsyncRunner[K, T, Result[T]] = AsyncRunner(
                operation, concurrency=workers, options=options
            )
            state = await local.collect(keys)
    if state.halt_reason is None:
        return state.slots  # type: ignore[return-value]  # every slot is filled
    missing = Failure(NotAttempted(f"not attempted: {state.halt_reason}"), ErrorCode.CANCELLED)
    return [missing if slot is None else slot for slot in state.slots]


async def on_cluster(
    runner: DaskRunner,
    keys: Iterable[K] | AsyncIterable[K],
    operation: Callable[[K], Awaitable[T]],
    workers: int | None,
    options: RunOptions[K, T, R],
    codec: Codec | None,
) -> BatchState[R]:
    """Run the batch with ``runner`` in a thread (its driver blocks on the cluster); a
    cancellation (Ctrl-C) stops it — nothing new sent, the chunks in flight cancelled — and
    waits for that before it propagates, so the journal holds every item that settled."""
    stop = threading.Event()
    driver = asyncio.ensure_future(
        asyncio.to_thread(
            runner.collect,
            keys,
            operation,
            concurrency=workers,
            options=options,
            codec=codec,
            stop=stop,
        )
    )
    try:
        return await asyncio.shield(driver)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.gather(driver, return_exceptions=True)
        raise


def _restore_result(_index: int, _key: object, stored: StoredOutcome) -> Result[Any]:
    return restored_result(stored)


def _key_of(key: Callable[[Any], Any] | None) -> Callable[[int, Any], str]:
    return lambda _index, item: item_key(item, key=key)


def _default_item_id(index: int, key: object) -> str:
    return key if isinstance(key, str) else str(key) if isinstance(key, int) else str(index)


async def stream(
    keys: Iterable[K] | AsyncIterable[K],
    operation: Callable[[K], Awaitable[T]],
    max_concurrent: Concurrency = 10,
    *,
    ordered: bool = True,
    fail_fast: bool = False,
    rate_limiter: object | None = None,
    weight: Callable[[K], int] | None = None,
    cost: CostSpec[K] = None,
    actual_cost: ActualCost = None,
    on_progress: ProgressCallback | None = None,
    item_id: Callable[[K], str] | None = None,
    read_ahead: int | None = None,
    max_workers: Concurrency = None,
    retry: RetrySpec = None,
    retry_budget: RetryBudget | None = None,
    halt: HaltSpec = None,
    timeout_s: float | None = None,
    deadline_s: float | None = None,
    journal: JournalSpec = None,
    journal_label: str | None = None,
    retry_failed: bool = False,
    reuse_journal: bool = False,
    codec: Codec | None = None,
    key: Callable[[K], Any] | None = None,
    adaptive: Adaptive = None,
    classify: Callable[[Any, BaseException | None], Outcome] | None = None,
    give_up_after_s: float | None = DEFAULT_GIVE_UP_AFTER_S,
    on_halt: Callable[[str], None] | None = None,
    lanes: Lanes | None = None,
    runner: DaskRunner | None = None,
) -> AsyncIterator[BatchItemResult]:
    """Run ``operation`` over a lazy, possibly endless input and yield each item's
    :class:`~paceline.BatchItemResult` as it settles.

    ``ordered=True`` yields in input order (a result waits for the ones before it);
    ``False`` yields in completion order. The input is read at most ``read_ahead`` items
    (default twice the concurrency) ahead of what has been yielded, so memory stays bounded
    however long the input is. ``item_id(key)`` names each result (default: the key itself
    for ``str``/``int`` keys, else its position).

    Stopping the iteration early cancels the work in flight. The reliability and journal
    arguments are those of :func:`batch_execute`; items restored from the journal are yielded
    with ``restored=True``. When the batch stops early (a ``halt`` rule, the deadline, giving
    up) the iteration ends and ``on_halt(reason)`` is called once with the reason.

    ``runner`` (a :class:`~paceline.runners.dask_runner.DaskRunner`) runs the items on a Dask
    cluster, as for :func:`batch_execute`; results are yielded in completion order (``ordered``
    does not apply) and an async input is read from the driver's thread through this loop.

    >>> async def main() -> list[str]:
    ...     async def shout(word: str) -> str:
    ...         return word.upper()
    ...     return [r.result async for r in stream(iter(["a", "b"]), shout)]
    >>> asyncio.run(main())
    ['A', 'B']
    """

    def name(index: int, key: K) -> str:
        return item_id(key) if item_id is not None else _default_item_id(index, key)

    def ok(index: int, key: K, value: T, info: AttemptInfo) -> BatchItemResult:
        return item_result(name(index, key), index, value, info, failed=False)

    def err(index: int, key: K, exc: BaseException, info: AttemptInfo) -> BatchItemResult:
        return item_result(name(index, key), index, exc, info, failed=True)

    def restore(index: int, key_: K, stored: StoredOutcome) -> BatchItemResult:
        return restored_item(name(index, key_), index, stored)

    total = sized_length(keys)
    workers, control = concurrency_plan(max_concurrent, max_workers, total, adaptive)
    with opened(
        journal, operation=operation, label=journal_label, reuse=reuse_journal, codec=codec
    ) as store:
        options = build_options(
            ok=ok,
            err=err,
            limiter=rate_limiter,
            stop_on_error=fail_fast,
            on_progress=on_progress,
            weight=weight,
            cost=cost,
            actual_cost=actual_cost,
            timed=True,
            retry=retry,
            retry_budget=retry_budget,
            halt=halt,
            timeout_s=timeout_s,
            deadline_s=deadline_s,
            **journal_options(store, _key_of(key), retry_failed, restore),
            adaptive=control,
            classify=classify,
            give_up_after_s=give_up_after_s,
            on_halt=on_halt,
            lanes=lanes,
        )
        if runner is not None:
            async with contextlib.aclosing(
                _stream_on_cluster(runner, keys, operation, workers, options, codec)
            ) as settled:
                async for result in settled:
                    yield result
            return
        local: AsyncRunner[K, T, BatchItemResult] = AsyncRunner(
            operation, concurrency=workers, options=options, read_ahead=read_ahead
        )
        async with contextlib.aclosing(local.stream(keys, ordered=ordered)) as results:
            async for result in results:
                yield result


async def _stream_on_cluster(
    runner: DaskRunner,
    keys: Iterable[K] | AsyncIterable[K],
    operation: Callable[[K], Awaitable[T]],
    workers: int | None,
    options: RunOptions[K, T, BatchItemResult],
    codec: Codec | None,
) -> AsyncGenerator[BatchItemResult, None]:
    """:func:`stream` on a Dask cluster: the driver runs in a thread and hands each settled
    item to this loop as it settles (its batch state keeps ``None`` in their place, so memory
    holds no results); an async input is read from the driver's thread through this loop.
    Closing the iteration stops the driver (nothing new sent, the chunks in flight cancelled)
    and waits for it."""
    loop = asyncio.get_running_loop()
    settled: asyncio.Queue[BatchItemResult | None] = asyncio.Queue()
    stop = threading.Event()

    def handed(callback: Callable[..., BatchItemResult]) -> Callable[..., Any]:
        def hand(*args: Any) -> None:
            loop.call_soon_threadsafe(settled.put_nowait, callback(*args))

        return hand

    assert options.ok is not None
    assert options.err is not None
    options.ok, options.err = handed(options.ok), handed(options.err)
    if options.restore is not None:
        options.restore = handed(options.restore)
    items: Iterable[K] = (
        _read_through(keys, loop, stop) if isinstance(keys, AsyncIterable) else keys
    )

    def drive() -> None:
        try:
            runner.collect(
                items, operation, concurrency=workers, options=options, codec=codec, stop=stop
            )
        finally:
            loop.call_soon_threadsafe(settled.put_nowait, None)

    driver = asyncio.ensure_future(asyncio.to_thread(drive))
    try:
        while (result := await settled.get()) is not None:
            yield result
        await driver  # its error, if it failed
    finally:
        if not driver.done():
            stop.set()
            await asyncio.gather(asyncio.shield(driver), return_exceptions=True)


def _read_through(
    keys: AsyncIterable[K], loop: asyncio.AbstractEventLoop, stop: threading.Event
) -> Iterator[K]:
    """An async input read from another thread, one item at a time, on ``loop``."""
    source = aiter(keys)
    while not stop.is_set():
        try:
            yield asyncio.run_coroutine_threadsafe(_next_of(source), loop).result()
        except StopAsyncIteration:
            return


async def _next_of(source: AsyncIterator[K]) -> K:
    return await anext(source)


def run_sync(awaitable: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, and return its result.

    Outside an event loop this is ``asyncio.run``. Called from code that is already inside a
    running loop (Jupyter, an async web handler calling sync code), where ``asyncio.run``
    fails, it runs the coroutine on a fresh loop in a helper thread and blocks until it
    finishes — so the calling loop is paused meanwhile, as any blocking call would pause it.

    >>> async def answer() -> int:
    ...     return 42
    >>> run_sync(answer())
    42
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(awaitable)
    outcome: list[Any] = []
    failure: list[BaseException] = []
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome.append(context.run(asyncio.run, awaitable))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="paceline-run-sync", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]  # type: ignore[no-any-return]


def batch_execute_sync(
    keys: Iterable[K],
    operation: Callable[[K], Awaitable[T]],
    max_concurrent: Concurrency = 10,
    on_progress: ProgressCallback | None = None,
    fail_fast: bool = False,
    **options: Unpack[BatchOptions],
) -> list[Result[T]]:
    """:func:`batch_execute` for sync callers (works inside a running event loop too); the
    options are :func:`batch_execute`'s (:class:`BatchOptions`).

    >>> async def double(x: int) -> int:
    ...     return 2 * x
    >>> [r.value for r in batch_execute_sync([1, 2], double)]
    [2, 4]
    """
    checked_options("batch_execute_sync", dict(options))
    return run_sync(
        batch_execute(keys, operation, max_concurrent, on_progress, fail_fast, **options)
    )
