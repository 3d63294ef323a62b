"""The sync faces: ``BatchExecutor`` and ``RateLimitedExecutor`` (threads, no event loop)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from paceline._results import BatchInterrupted, BatchItemResult, BatchResult
from paceline.errors import InvalidArgument, InvalidArgumentType
from paceline.faces._journal import JournalSpec, journal_options, opened
from paceline.faces._options import (
    HaltSpec,
    RetrySpec,
    build_options,
    halt_rules,
    item_result,
    restored_item,
    retry_policy,
)
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings, Outcome
from paceline.policy.batch import BatchState
from paceline.policy.retry import RetryBudget
from paceline.runners import (
    ProgressCallback,
    Workers,
    auto_workers,
    controller_for,
    resolve_workers,
    sized_length,
)
from paceline.runners.gates import sync_acquirer
from paceline.runners.settle import AttemptInfo, RunOptions
from paceline.runners.thread_runner import ThreadRunner
from paceline.stores import Codec, StoredOutcome, item_key

T = TypeVar("T")

# Threads are not free (a stack each, and GIL handoffs): adaptive control never grows a
# thread pool past this.
AUTO_THREADS_MAX = 64

__all__ = ["BatchExecutor", "RateLimitedExecutor"]


def _call(task: Callable[[], T]) -> T:
    return task()


def _check_ids(tasks: Iterable[Any], item_ids: Sequence[str] | None) -> Sequence[str] | None:
    if item_ids is None:
        return None
    if isinstance(item_ids, str):
        raise InvalidArgumentType(
            f"item_ids={item_ids!r}: give one id per task (a list of strings), not one string"
        )
    ids = item_ids if isinstance(item_ids, Sequence) else list(item_ids)
    try:
        n_tasks = len(tasks)  # type: ignore[arg-type]
    except TypeError:
        return ids
    if n_tasks != len(ids):
        raise InvalidArgument(
            f"tasks and item_ids must have the same length: got {n_tasks} tasks and "
            f"{len(ids)} item_ids; pass one id per task, or item_ids=None to number them"
        )
    return ids


class BatchExecutor:
    """Run a batch of zero-argument callables, collecting every item's outcome.

    ``stop_on_error=True`` (the default) re-raises the first failure — the original exception —
    and starts nothing after it; ``False`` runs everything and reports failures as values.
    ``max_workers``: ``None`` runs one at a time in the calling thread, an ``int`` uses that many
    threads, ``"auto"`` picks a count from the batch size and the machine. A ``rate_limiter``
    (anything with ``acquire(weight=1)``) is asked for a token just before each call starts.

    >>> executor = BatchExecutor(stop_on_error=False, max_workers=4)
    >>> result = executor.execute_batch([lambda: 1, lambda: 1 / 0], item_ids=["a", "b"])
    >>> result.successful, result.failed, result.failed_items[0].item_id
    (1, 1, 'b')
    """

    def __init__(
        self,
        stop_on_error: bool = True,
        rate_limiter: object | None = None,
        max_workers: Workers = None,
        *,
        retry: RetrySpec = None,
        retry_budget: RetryBudget | None = None,
        halt: HaltSpec = None,
        timeout_s: float | None = None,
        deadline_s: float | None = None,
        undo: Callable[[str, Any], Any] | None = None,
        adaptive: AdaptiveSettings | AdaptiveController | bool | None = None,
        classify: Callable[[Any, BaseException | None], Outcome] | None = None,
    ) -> None:
        resolve_workers(max_workers, None)  # validate early: a typo fails here, not mid-batch
        self._undo = undo
        self._stop_on_error = stop_on_error
        self._rate_limiter = rate_limiter
        sync_acquirer(rate_limiter)
        self._max_workers = max_workers
        self._adaptive = adaptive
        self._classify = classify
        self._reliability: dict[str, Any] = {
            "retry": retry_policy(retry),
            "retry_budget": retry_budget,
            "halt": halt_rules(halt),
            "timeout_s": timeout_s,
            "deadline_s": deadline_s,
        }

    @property
    def stop_on_error(self) -> bool:
        """Whether the first failure stops the batch."""
        return self._stop_on_error

    def _calculate_optimal_workers(self, batch_size: int) -> int:
        """The worker count ``"auto"`` starts with for a batch of ``batch_size``."""
        return auto_workers(batch_size)

    def execute(self, task: Callable[[], T]) -> T:
        """Run one task (after a token, if there is a limiter) and return its result."""
        acquire = sync_acquirer(self._rate_limiter)
        if acquire is not None:
            acquire(1)
        return task()

    def execute_batch(
        self,
        tasks: Iterable[Callable[[], Any]],
        item_ids: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
        *,
        journal: JournalSpec = None,
        journal_label: str | None = None,
        retry_failed: bool = False,
        reuse_journal: bool = False,
        codec: Codec | None = None,
    ) -> BatchResult:
        """Run every task; return a :class:`BatchResult` in input order.

        ``item_ids`` names the items (default: their positions, ``"0"``, ``"1"``, ...).
        ``on_progress(completed, total)`` is called once per finished item, never two at once.

        When a halt rule or the deadline stops the batch, ``BatchResult.halted`` says why and
        the items never started are counted in ``not_attempted``. With ``undo``, a halted
        batch is rolled back: ``undo(item_id, result)`` runs for every item that succeeded,
        newest first, through the same limiter and workers; its outcomes are in
        ``BatchResult.rollback`` (or, under ``stop_on_error``, on the raised exception's
        ``rollback`` attribute). Ctrl-C or SIGTERM stops dispatch, lets running calls finish
        and raises :class:`~paceline._results.BatchInterrupted` carrying the partial result.

        ``journal`` (a path or an open :class:`~paceline.stores.Journal`) makes the batch
        resumable, keyed by ``item_ids`` (required then: a callable has no stable identity):
        a rerun skips the items already settled and returns their stored results, marked
        ``restored`` (``retry_failed=True`` reruns the failures). Give each batch its own
        ``journal_label``: a journal written under another label is refused unless
        ``reuse_journal=True``.
        """
        ids = _check_ids(tasks, item_ids)
        if journal is not None and ids is None:
            raise InvalidArgument(
                "journal= needs item_ids: tasks are callables and have no stable identity "
                "to resume by; pass item_ids=[...] naming each task"
            )

        def name(index: int) -> str:
            if ids is None:
                return str(index)
            try:
                return ids[index]
            except IndexError:
                raise InvalidArgument(
                    f"tasks and item_ids must have the same length: task {index} has no id "
                    f"(only {len(ids)} item_ids)"
                ) from None

        succeeded: list[BatchItemResult] = []  # in completion order, for a rollback

        def ok(index: int, _task: object, value: Any, info: AttemptInfo) -> BatchItemResult:
            item = item_result(name(index), index, value, info, failed=False)
            if self._undo is not None:
                succeeded.append(item)
            return item

        def err(
            index: int, _task: object, exc: BaseException, info: AttemptInfo
        ) -> BatchItemResult:
            return item_result(name(index), index, exc, info, failed=True)

        def restore(index: int, _task: object, stored: StoredOutcome) -> BatchItemResult:
            return restored_item(name(index), index, stored)

        total = sized_length(tasks)
        if total is None and ids is not None:
            total = len(ids)
        with opened(
            journal,
            operation="paceline.BatchExecutor",
            label=journal_label,
            reuse=reuse_journal,
            codec=codec,
        ) as store:
            journaled = journal_options(
                store,
                lambda index, _task: item_key(None, item_id=name(index)),
                retry_failed,
                restore,
            )
            workers, control = self._plan(total)
            options = build_options(
                ok=ok,
                err=err,
                limiter=self._rate_limiter,
                stop_on_error=self._stop_on_error,
                on_progress=on_progress,
                timed=True,
                adaptive=control,
                classify=self._classify,
                **self._reliability,
                **journaled,
            )
            runner: ThreadRunner[Callable[[], Any], Any, BatchItemResult] = ThreadRunner(
                _call, workers=workers, options=options
            )
            try:
                state = runner.collect(tasks, total)
            except KeyboardInterrupt as exc:
                if runner.state is None or isinstance(exc, BatchInterrupted):
                    raise
                partial = _result_of(runner.state, total, "interrupted")
                raise BatchInterrupted(partial) from exc
            except Exception as exc:
                if self._undo is not None and runner.state is not None:
                    exc.rollback = self._rollback(succeeded)  # type: ignore[attr-defined]
                raise
        if ids is not None and state.halt_reason is None and state.completed != len(ids):
            raise InvalidArgument(
                f"tasks and item_ids must have the same length: got {state.completed} tasks "
                f"and {len(ids)} item_ids"
            )
        result = _result_of(state, total, state.halt_reason)
        if self._undo is not None and state.halt_reason is not None:
            result.rollback = self._rollback(succeeded)
        return result

    def _plan(self, total: int | None) -> tuple[int | None, Any]:
        """Threads to start and the adaptive control: ``max_workers="auto"`` starts from
        :func:`auto_workers` and lets the controller move between 1 and 64 threads."""
        adaptive = self._adaptive
        if self._max_workers == "auto" and adaptive is None:
            start = auto_workers(total)
            ceiling = max(start, min(AUTO_THREADS_MAX, total if total is not None else 64))
            adaptive = AdaptiveSettings(initial_concurrency=start, max_concurrency=ceiling)
        controller = controller_for(adaptive, AdaptiveSettings(max_concurrency=AUTO_THREADS_MAX))
        if controller is None:
            return resolve_workers(self._max_workers, total), None
        workers = self._max_workers if isinstance(self._max_workers, int) else None
        return (workers or controller.settings.max_concurrency), controller

    def _rollback(self, succeeded: list[BatchItemResult]) -> BatchResult:
        """Undo the items that succeeded, newest first, through the same limits."""
        undo = self._undo
        assert undo is not None
        newest_first = succeeded[::-1]
        tasks = [lambda item=item: undo(item.item_id, item.result) for item in newest_first]
        return BatchExecutor(
            stop_on_error=False, rate_limiter=self._rate_limiter, max_workers=self._max_workers
        ).execute_batch(tasks, item_ids=[item.item_id for item in newest_first])


def _result_of(
    state: BatchState[BatchItemResult], total: int | None, halted: str | None
) -> BatchResult:
    items = [item for item in state.slots if item is not None]
    return BatchResult(items=items, total=total or len(state.slots), halted=halted)


class RateLimitedExecutor:
    """Run callables one at a time (or on ``max_workers`` threads), each after a token.

    ``execute_batch`` returns a plain list in input order; when ``stop_on_error=False`` a
    failed task's exception object stands in its place.

    >>> from paceline.testing import FakeRateLimiter
    >>> executor = RateLimitedExecutor(FakeRateLimiter(), stop_on_error=False)
    >>> out = executor.execute_batch([lambda: 2, lambda: int("x")])
    >>> out[0], type(out[1]).__name__
    (2, 'ValueError')
    """

    def __init__(
        self,
        rate_limiter: object,
        stop_on_error: bool = True,
        max_workers: Workers = None,
    ) -> None:
        sync_acquirer(rate_limiter)
        resolve_workers(max_workers, None)
        self._rate_limiter = rate_limiter
        self._stop_on_error = stop_on_error
        self._max_workers = max_workers

    def execute(self, task: Callable[[], T]) -> T:
        """Take a token, then run ``task`` and return its result (its exception propagates)."""
        acquire = sync_acquirer(self._rate_limiter)
        assert acquire is not None
        acquire(1)
        return task()

    def execute_batch(
        self,
        tasks: Iterable[Callable[[], Any]],
        on_progress: ProgressCallback | None = None,
        *,
        item_ids: Sequence[str] | None = None,
        journal: JournalSpec = None,
        journal_label: str | None = None,
        retry_failed: bool = False,
        reuse_journal: bool = False,
        codec: Codec | None = None,
    ) -> list[Any]:
        """Run every task; return results in input order (exceptions in place of failures
        unless ``stop_on_error``, which re-raises the first one).

        With a ``journal`` (and ``item_ids`` naming the tasks) the batch resumes like
        :meth:`BatchExecutor.execute_batch`; a failure restored from the journal stands in
        the list as a :class:`~paceline.faces._journal.StoredFailure`.
        """
        if journal is not None:
            result = BatchExecutor(
                stop_on_error=self._stop_on_error,
                rate_limiter=self._rate_limiter,
                max_workers=self._max_workers,
            ).execute_batch(
                tasks,
                item_ids,
                on_progress,
                journal=journal,
                journal_label=journal_label,
                retry_failed=retry_failed,
                reuse_journal=reuse_journal,
                codec=codec,
            )
            return [item.result if item.success else item.exception for item in result]
        options: RunOptions[Callable[[], Any], Any, Any] = build_options(
            ok=lambda _i, _t, value, _info: value,
            err=lambda _i, _t, exc, _info: exc,
            limiter=self._rate_limiter,
            stop_on_error=self._stop_on_error,
            on_progress=on_progress,
        )
        runner: ThreadRunner[Callable[[], Any], Any, Any] = ThreadRunner(
            _call, workers=resolve_workers(self._max_workers, sized_length(tasks)), options=options
        )
        return list(runner.collect(tasks).slots)
