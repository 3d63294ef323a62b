"""What both runners do when an attempt ends: retry it, or settle the item.

Settling builds the item's result, records it in the journal, updates the batch state (which
applies the halt rules) and reports progress. Runners call in here from one thread at a time
(the event loop, or the dispatcher), so nothing here locks.

With a journal, a key is an item's identity, and two items of one batch with the same key are a
mistake in the input: the second fails as a :class:`DuplicateKey`, unattempted and unjournaled.
Asking the journal alone could not tell it: the journal also answers for keys this batch
settled (the repeat came back restored from the first item's outcome, never run) and knows
nothing of keys in flight (at a higher concurrency both ran into one entry). So the settler
remembers every key of the batch, the answer then the same at any concurrency. Keys an earlier
run settled are still restored. Cost: one set entry per key, ~34 bytes (CPython 3.11, 1M keys
measured); the string of a key this run records is the one the journal's index keeps anyway
(~150 bytes a key), that of a key restored from an earlier run is held once more. Without a
journal no key is computed and nothing is remembered: items are not identified, so equal ones
simply run, and memory stays bounded for endless inputs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from paceline._results import Attempt
from paceline.errors import InvalidArgument, PacelineError, QuotaExhausted
from paceline.policy.adaptive import Outcome
from paceline.policy.answers import Verdict, verdict_of
from paceline.policy.batch import BatchState
from paceline.policy.cost import Cost, as_cost
from paceline.policy.halt import DEFAULT_GIVE_UP_AFTER_S, GiveUp, HaltRule
from paceline.policy.rate import NS_PER_S
from paceline.policy.retry import RetryBudget, RetryPolicy, is_throttle
from paceline.redact import redact_text
from paceline.runners._common import ProgressCallback
from paceline.runners.identity import new_batch_id

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")


class AttemptInfo:
    """How an item got its outcome: the number of attempts, the last one's start and duration
    (ns, 0 when not timed) and, when there were several, every attempt."""

    __slots__ = ("attempts", "duration_ns", "history", "started_ns")

    def __init__(
        self,
        attempts: int,
        started_ns: int,
        duration_ns: int,
        history: tuple[Attempt, ...] = (),
    ) -> None:
        self.attempts = attempts
        self.started_ns = started_ns
        self.duration_ns = duration_ns
        self.history = history


UNTIMED = AttemptInfo(1, 0, 0)
NOT_ATTEMPTED = AttemptInfo(0, 0, 0)


class DuplicateKey(PacelineError, ValueError):
    """An item whose journal key an earlier item of the same batch has: it fails with this,
    unattempted and unjournaled (the journal keeps one outcome per key)."""

    error_code = "invalid_input"


Wrap = Callable[[int, K, T, AttemptInfo], R]
"""Builds one item's result from ``(index, item, value_or_exception, info)``."""


class StoredLike(Protocol):
    """What a journal hands back for an item settled in an earlier run."""

    success: bool
    result: Any
    error: str | None
    error_type: str | None
    error_code: str | None
    attempts: int
    duration_s: float | None


class JournalLike(Protocol):
    """The part of :class:`paceline.stores.journal.Journal` the runners use."""

    def is_settled(self, key: str, *, retry_failed: bool = False) -> bool: ...

    def lookup(self, key: str) -> Any: ...

    def record(
        self,
        key: str,
        *,
        success: bool,
        result: Any = None,
        error: BaseException | None = None,
        attempts: int = 1,
        duration_s: float | None = None,
    ) -> None: ...


@dataclass(slots=True)
class RunOptions(Generic[K, T, R]):
    """Everything about a run except the operation and the concurrency (shared by runners)."""

    ok: Wrap[K, T, R]
    err: Wrap[K, BaseException, R]
    limiter: object | None = None
    stop_on_error: bool = False
    on_progress: ProgressCallback | None = None
    weight: Callable[[K], int] | None = None
    timed: bool = False
    retry: RetryPolicy | None = None
    budget: RetryBudget | None = None
    halt: Sequence[HaltRule] = ()
    timeout_s: float | None = None
    deadline_s: float | None = None
    journal: JournalLike | None = None
    key_of: Callable[[int, K], str] | None = None
    retry_failed: bool = False
    restore: Callable[[int, K, Any], R] | None = None
    # An AdaptiveController's settings (or the controller) for the async runner's gates.
    adaptive: Any = None
    classify: Callable[[Any, BaseException | None], Any] | None = None
    # Stop (like a "soon" halt rule) when attempts keep failing with no success this long;
    # None: never. The default's reason is at DEFAULT_GIVE_UP_AFTER_S.
    give_up_after_s: float | None = DEFAULT_GIVE_UP_AFTER_S
    on_halt: Callable[[str], None] | None = None  # told why, when the batch stops early
    # One set of gates per server (see runners/lanes.py): a Lanes, or None for one lane built
    # from ``limiter`` and ``adaptive`` above (which a batch with lanes does not use).
    lanes: Any = None
    # Costs per unit (docs/units.md): ``cost(item)`` is reserved from the limiter (a
    # paceline RateLimiter) right before each attempt, in place of ``weight``; after a success
    # the grant is settled to ``actual_cost(value)`` (``None``: keep the estimate). A failed
    # attempt keeps its estimate: the server may well have counted it.
    cost: Callable[[K], int | Cost] | None = None
    actual_cost: Callable[[Any], int | Cost | None] | None = None
    # The batch's identity, for the items' stable keys (runners/identity.py): the journal's,
    # kept across runs; without one, a fresh one per run.
    batch_id: str = dataclasses.field(default_factory=new_batch_id)

    def __post_init__(self) -> None:
        capped = next((rule for rule in self.halt if rule.budget), None)
        if capped is not None and self.cost is None:
            raise InvalidArgument(
                f"halt rule {capped}: a budget cap counts the {capped.kind} the items use, "
                "which needs costs — give cost= (e.g. cost=lambda item: {'tokens': 1000}) and "
                "actual_cost= to settle it from each result"
            )
        if self.cost is not None and self.weight is not None:
            raise InvalidArgument(
                "weight= and cost= both given: a cost includes the requests, e.g. "
                "cost=lambda item: {'requests': 2, 'tokens': 1200} — pass cost= alone"
            )
        if self.actual_cost is not None and self.cost is None:
            raise InvalidArgument(
                "actual_cost= without cost=: the actual cost settles a reservation made "
                "from the estimate — give cost= too (e.g. cost=lambda item: {'tokens': 1000})"
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise InvalidArgument(
                f"timeout_s={self.timeout_s!r}: must be a number of seconds above 0"
            )
        if self.give_up_after_s is not None and not self.give_up_after_s > 0:
            raise InvalidArgument(
                f"give_up_after_s={self.give_up_after_s!r}: a number of seconds above 0, or None"
            )
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise InvalidArgument(
                f"deadline_s={self.deadline_s!r}: must be a number of seconds above 0"
            )
        if self.journal is not None and (self.key_of is None or self.restore is None):
            raise InvalidArgument("a journal needs key_of and restore")


class Job(Generic[K]):
    """One item on its way: its position, the item, its journal key and its attempts so far."""

    __slots__ = (
        "attempt",
        "batch_id",
        "grant",
        "granted_ns",
        "granted_weight",
        "history",
        "index",
        "item",
        "key",
        "lane",
        "last_error",
        "throttles",
    )

    def __init__(self, index: int, item: K, key: str | None, batch_id: str = "") -> None:
        self.index = index
        self.item = item
        self.key = key
        self.batch_id = batch_id  # with key (or index): its stable key (runners/identity.py)
        self.lane: Any = None  # the runner's lane for it, when the batch has lanes
        self.grant: Any = None  # the Grant of its attempt in flight, with costs (RunOptions)
        # its attempt's grant time, when the thread that starts it must check it again
        self.granted_ns: int | None = None
        self.granted_weight = 1  # and its weight (permits)
        self.attempt = 1
        self.throttles = 0  # of its attempts so far, those throttled (they spend no budget)
        self.history: list[Attempt] | None = None
        self.last_error: BaseException | None = None


class Settler(Generic[K, T, R]):
    """Turns attempt outcomes into settled items for one batch."""

    __slots__ = ("exhausted", "failure", "give_up", "keys", "options", "state")

    def __init__(self, options: RunOptions[K, T, R], state: BatchState[R]) -> None:
        self.options = options
        self.state = state
        self.failure: BaseException | None = None  # the first failure, under stop_on_error
        # The first answer that said a quota is exhausted (docs/design.md, 'Answers told
        # apart'): from then on, items it stops are failed without a journal entry (resume
        # runs them once the quota is back).
        self.exhausted: BaseException | None = None
        state.on_halt = options.on_halt
        after_s = options.give_up_after_s
        self.give_up = GiveUp(round(after_s * NS_PER_S)) if after_s is not None else None
        # Every journal key of this batch so far (see the module's docstring).
        self.keys: set[str] = set()

    def new_job(self, index: int, item: K) -> Job[K] | None:
        """A job for a freshly read item, or ``None`` when it was settled here: from the
        journal's outcome (an earlier run settled it), or as a :class:`DuplicateKey`."""
        options = self.options
        if options.journal is None:
            return Job(index, item, None, options.batch_id)
        assert options.key_of is not None
        assert options.restore is not None
        key = options.key_of(index, item)
        keys = self.keys
        if key in keys:
            self._settle_duplicate(index, item, key)
            return None
        keys.add(key)
        if options.journal.is_settled(key, retry_failed=options.retry_failed):
            stored = options.journal.lookup(key)
            self.state.restored += 1
            if stored.success and options.cost is not None:
                self.state.add_cost(self._restored_cost(item, stored.result))
            self._settle(index, options.restore(index, item, stored), not stored.success)
            return None
        return Job(index, item, key, options.batch_id)

    def _settle_duplicate(self, index: int, item: K, key: str) -> None:
        error = DuplicateKey(
            f"duplicate key {redact_text(key)!r} at position {index}: an earlier item of this "
            "batch has it, and the journal keeps one outcome per key — give each item its own "
            "key (key=, item_id=, item_ids=)"
        )
        if self.options.stop_on_error and self.failure is None:
            self.failure = error
        self._settle(index, self.options.err(index, item, error, NOT_ATTEMPTED), True)

    def first_attempt(self, job: Job[K]) -> None:
        """Count a first attempt toward the retry budget."""
        if job.attempt == 1 and self.options.budget is not None:
            self.options.budget.first_attempt()

    def success(self, job: Job[K], value: T, started_ns: int, elapsed_ns: int) -> None:
        """The attempt succeeded: settle the item."""
        options = self.options
        if job.grant is not None:
            self._settle_cost(job, value)
        if self.give_up is not None:
            self.give_up.success()
        info = self._info(job, started_ns, elapsed_ns, None)
        if options.journal is not None:
            self._record(job, elapsed_ns, success=True, result=value)
        self._settle(job.index, options.ok(job.index, job.item, value, info), False)

    def _settle_cost(self, job: Job[K], value: Any) -> None:
        grant, job.grant = job.grant, None
        actual_cost = self.options.actual_cost
        actual = actual_cost(value) if actual_cost is not None else None
        if actual is not None:
            grant.settle(actual)
        self.state.add_cost(grant.cost)  # budget caps count what succeeded (policy/halt.py)

    def _restored_cost(self, item: K, value: Any) -> dict[str, int]:
        """What an item an earlier run settled used: its estimate, corrected by the actual
        cost of its stored result (so a budget cap's total survives a resume)."""
        options = self.options
        assert options.cost is not None
        cost = as_cost(options.cost(item))
        try:
            actual = options.actual_cost(value) if options.actual_cost is not None else None
        except Exception:  # a stored result the settle function cannot read: the estimate
            actual = None
        if actual is not None:
            cost.update(as_cost(actual, fill_requests=False))
        return cost

    def failure_of(
        self, job: Job[K], error: BaseException, started_ns: int, elapsed_ns: int
    ) -> int | None:
        """The attempt failed: return the ns to wait before retrying it, or ``None`` when the
        item was settled as failed."""
        options = self.options
        retry = options.retry
        job.grant = None  # a failed attempt keeps its estimate (see RunOptions.cost)
        if verdict_of(error) is Verdict.EXHAUSTED:
            self.settle_exhausted(job, error, started_ns, elapsed_ns)
            return None
        if self.give_up is not None and not self.state.stopped:
            reason = self.give_up.failure(time.monotonic_ns())
            if reason is not None:
                self.state.halt(f"giving up: {reason}", now=False)
        if retry is not None and not self.state.stopped:
            throttled = self._throttled(error)
            decision = retry.decide(
                job.attempt, error, options.budget, throttled=throttled, throttles=job.throttles
            )
            if decision.retry:
                self._remember(job, error, started_ns, elapsed_ns)
                job.attempt += 1
                job.throttles += throttled
                return decision.delay_ns
            if decision.error is not None:  # e.g. RetryBudgetExhausted, naming the budget
                error = decision.error
        self.settle_failure(job, error, started_ns, elapsed_ns)
        return None

    def settle_exhausted(
        self, job: Job[K], error: BaseException, started_ns: int, elapsed_ns: int
    ) -> None:
        """Settle the item as failed by an exhausted quota: not journaled (``resume`` runs it
        once the quota is back), and nothing more is sent where the quota is gone."""
        self._quota_exhausted(job, error)
        self.settle_failure(job, error, started_ns, elapsed_ns, journal=False)

    def _quota_exhausted(self, job: Job[K], error: BaseException) -> None:
        """Stop sending where the quota is gone: close the item's lane (its server; the runner
        fails the lane's other items with :meth:`refuse`), or without lanes stop the batch
        (like a "soon" halt: what is in flight finishes)."""
        if self.exhausted is None:
            self.exhausted = error
        lane = job.lane
        if lane is not None:
            if lane.closed is None:
                lane.closed = error
            return
        self.state.halt(f"quota exhausted: {error}", now=False)

    def refuse(self, job: Job[K], cause: BaseException, where: object) -> None:
        """Fail ``job`` unsent because ``where`` (its lane's key) said its quota is exhausted:
        a :class:`~paceline.QuotaExhausted` naming the cause, not journaled (``resume`` runs
        it once the quota is back)."""
        said = str(cause)
        if not said.startswith("quota exhausted"):
            said = f"quota exhausted (resume when the quota is back): {said}"
        error = QuotaExhausted(f"not sent: {where} answered {said}")
        error.__cause__ = cause
        info = NOT_ATTEMPTED if job.history is None else self._info(job, 0, 0, None)
        if self.options.stop_on_error and self.failure is None:
            self.failure = error
        self._settle(job.index, self.options.err(job.index, job.item, error, info), True)

    def _throttled(self, error: BaseException) -> bool:
        """Whether ``error`` is a throttle: as the user's classifier (the adaptive
        controller's) says, else :func:`~paceline.policy.retry.is_throttle` (429, 503,
        ``Throttled``: what the default classifier calls a throttle or an overload)."""
        classify = self.options.classify
        if classify is None:
            return is_throttle(error)
        return classify(None, error) in (Outcome.THROTTLE, Outcome.OVERLOAD)

    def settle_failure(
        self,
        job: Job[K],
        error: BaseException,
        started_ns: int,
        elapsed_ns: int,
        *,
        journal: bool = True,
    ) -> None:
        """Settle the item as failed with ``error`` (``journal=False``: not recorded, so a
        resume runs it again)."""
        options = self.options
        job.grant = None  # a failed attempt keeps its estimate (see RunOptions.cost)
        info = self._info(job, started_ns, elapsed_ns, error)
        if options.journal is not None and journal:
            self._record(job, elapsed_ns, success=False, error=error)
        if options.stop_on_error and self.failure is None:
            self.failure = error
        self._settle(job.index, options.err(job.index, job.item, error, info), True)

    def _record(
        self,
        job: Job[K],
        elapsed_ns: int,
        *,
        success: bool,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        journal = self.options.journal
        assert journal is not None
        assert job.key is not None
        journal.record(
            job.key,
            success=success,
            result=result,
            error=error,
            attempts=job.attempt,
            duration_s=elapsed_ns / NS_PER_S if self.options.timed else None,
        )

    def abandon(self, job: Job[K]) -> None:
        """A job waiting for its retry when the batch stopped: it settles with its last error
        (it was attempted; the retry just never happened)."""
        assert job.last_error is not None
        job.attempt -= 1
        history = job.history
        last = history.pop() if history else None
        started = last.started_ns if last else 0
        elapsed = round(last.duration_s * NS_PER_S) if last else 0
        # After an exhausted quota stopped the batch, a resume is to run it again.
        self.settle_failure(job, job.last_error, started, elapsed, journal=self.exhausted is None)

    def _remember(
        self, job: Job[K], error: BaseException, started_ns: int, elapsed_ns: int
    ) -> None:
        if job.history is None:
            job.history = []
        job.history.append(
            Attempt(
                job.attempt,
                started_ns,
                elapsed_ns / NS_PER_S,
                str(error) or type(error).__name__,
                type(error).__name__,
            )
        )
        job.last_error = error

    def _info(
        self, job: Job[K], started_ns: int, elapsed_ns: int, error: BaseException | None
    ) -> AttemptInfo:
        if job.history is None:
            # One attempt here; more when they ran elsewhere (a Dask worker sets job.attempt).
            if not self.options.timed:
                return UNTIMED if job.attempt == 1 else AttemptInfo(job.attempt, 0, 0)
            return AttemptInfo(job.attempt, started_ns, elapsed_ns)
        last = Attempt(
            job.attempt,
            started_ns,
            elapsed_ns / NS_PER_S,
            None if error is None else (str(error) or type(error).__name__),
            None if error is None else type(error).__name__,
        )
        return AttemptInfo(job.attempt, started_ns, elapsed_ns, (*job.history, last))

    def _settle(self, index: int, result: R, failed: bool) -> None:
        state = self.state
        state.settle(index, result, failed)
        progress = self.options.on_progress
        if progress is not None:
            progress(state.completed, state.total)


def now_ns() -> int:
    """The runners' clock for timeouts, deadlines and retry delays."""
    return time.monotonic_ns()
