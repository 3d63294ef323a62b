"""Reading the reliability arguments every face shares into one ``RunOptions``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from paceline._limiter import charged_per_attempt
from paceline._results import BatchItemResult, error_code_for
from paceline.errors import InvalidArgumentType
from paceline.faces._journal import StoredFailure, error_code_of
from paceline.policy.cost import Cost, as_cost
from paceline.policy.halt import DEFAULT_GIVE_UP_AFTER_S, HaltRule
from paceline.policy.rate import NS_PER_S
from paceline.policy.retry import RetryBudget, RetryPolicy
from paceline.runners import ProgressCallback
from paceline.runners.settle import AttemptInfo, RunOptions, Wrap
from paceline.stores import StoredOutcome

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")

HaltSpec = str | HaltRule | Sequence[str | HaltRule] | None
RetrySpec = RetryPolicy | int | None
CostSpec = Cost | Callable[[K], int | Cost] | None
"""``cost=``: one cost for every item (``{"tokens": 1000}``), or a function of the item."""
ActualCost = Callable[[Any], int | Cost | None] | None
"""``actual_cost=``: the actual cost from an attempt's result (``None``: keep the estimate)."""


def cost_of(cost: CostSpec[K]) -> Callable[[K], int | Cost] | None:
    """``cost=`` as a function of the item (a mapping is checked once, the same for all).

    >>> cost_of({"tokens": 5})("any item")
    {'tokens': 5, 'requests': 1}
    """
    if cost is None or callable(cost):
        return cost
    if not isinstance(cost, Mapping):
        raise InvalidArgumentType(
            f"cost={cost!r}: pass a mapping such as {{'tokens': 1000}} or a function of the "
            "item returning one"
        )
    fixed = as_cost(cost)
    return lambda _item: fixed


def retry_policy(retry: RetrySpec) -> RetryPolicy | None:
    """``retry=3`` means three attempts with the default backoff; a policy is used as is."""
    if retry is None or isinstance(retry, RetryPolicy):
        return retry
    if isinstance(retry, bool) or not isinstance(retry, int):
        raise InvalidArgumentType(
            f"retry={retry!r}: pass a number of attempts (e.g. 3) or a paceline.RetryPolicy"
        )
    return RetryPolicy(attempts=retry)


def halt_rules(halt: HaltSpec) -> tuple[HaltRule, ...]:
    """``"soon,fail=5%"``, a :class:`HaltRule`, or several of them."""
    if halt is None:
        return ()
    specs = [halt] if isinstance(halt, (str, HaltRule)) else list(halt)
    return tuple(s if isinstance(s, HaltRule) else HaltRule.parse(s) for s in specs)


def build_options(
    *,
    ok: Wrap[K, T, R],
    err: Wrap[K, BaseException, R],
    limiter: object | None,
    stop_on_error: bool,
    on_progress: ProgressCallback | None,
    weight: Callable[[K], int] | None = None,
    timed: bool = False,
    retry: RetrySpec = None,
    retry_budget: RetryBudget | None = None,
    halt: HaltSpec = None,
    timeout_s: float | None = None,
    deadline_s: float | None = None,
    adaptive: Any = None,
    classify: Callable[[Any, BaseException | None], Any] | None = None,
    give_up_after_s: float | None = DEFAULT_GIVE_UP_AFTER_S,
    on_halt: Callable[[str], None] | None = None,
    lanes: Any = None,
    cost: CostSpec[K] = None,
    actual_cost: ActualCost = None,
    **journal: Any,
) -> RunOptions[K, T, R]:
    """One :class:`RunOptions` from a face's arguments (journal pieces passed through)."""
    charged_per_attempt(limiter, costs=cost is not None)
    policy = retry_policy(retry)
    return RunOptions(
        ok=ok,
        err=err,
        limiter=limiter,
        stop_on_error=stop_on_error,
        on_progress=on_progress,
        weight=weight,
        timed=timed,
        retry=policy,
        budget=(retry_budget or RetryBudget()) if policy is not None else None,
        halt=halt_rules(halt),
        timeout_s=timeout_s,
        deadline_s=deadline_s,
        adaptive=adaptive,
        classify=classify,
        give_up_after_s=give_up_after_s,
        on_halt=on_halt,
        lanes=lanes,
        cost=cost_of(cost),
        actual_cost=actual_cost,
        **journal,
    )


def item_result(
    item_id: str, index: int, outcome: Any, info: AttemptInfo, failed: bool
) -> BatchItemResult:
    """A :class:`BatchItemResult` from a runner's outcome (shared by the faces)."""
    # Positional, in field order: this runs once per item on the settling thread's hot path.
    if failed:
        return BatchItemResult(
            item_id,
            False,
            None,
            str(outcome) or type(outcome).__name__,
            outcome,
            error_code_for(outcome),
            info.attempts,
            index,
            info.started_ns,
            info.duration_ns / NS_PER_S,
            info.history,
        )
    return BatchItemResult(
        item_id,
        True,
        outcome,
        None,
        None,
        None,
        info.attempts,
        index,
        info.started_ns,
        info.duration_ns / NS_PER_S,
        info.history,
    )


def restored_item(item_id: str, index: int, stored: StoredOutcome) -> BatchItemResult:
    """A :class:`BatchItemResult` for an item an earlier run settled (from the journal)."""
    common: dict[str, Any] = {
        "index": index,
        "attempts": stored.attempts,
        "duration_s": stored.duration_s,
        "restored": True,
    }
    if stored.success:
        return BatchItemResult(item_id=item_id, success=True, result=stored.result, **common)
    return BatchItemResult(
        item_id=item_id,
        success=False,
        error=stored.error,
        exception=StoredFailure(stored),
        error_code=error_code_of(stored),
        **common,
    )
