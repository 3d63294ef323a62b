"""What both runners do with an item whose journal key an earlier item of the same batch has:
it fails as a duplicate (never restored from that item's outcome, never run into its entry),
whatever the concurrency, while keys settled by an earlier run are still skipped. And how
the settler spends the retry budget: throttles spend none of it, a refusal names it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from paceline import Throttled
from paceline.policy.adaptive import Outcome
from paceline.policy.retry import RetryBudget, RetryBudgetExhausted, RetryPolicy
from paceline.runners.async_runner import AsyncRunner
from paceline.runners.settle import DuplicateKey, RunOptions
from paceline.runners.thread_runner import ThreadRunner
from paceline.stores import Journal

KEYS = ["a", "b", "a", "c", "b", "a"]  # positions 2, 4 and 5 repeat an earlier key


def _options(journal: Journal, **extra: Any) -> RunOptions[str, str, tuple[str, Any]]:
    return RunOptions(
        ok=lambda _i, _item, value, _info: ("ok", value),
        err=lambda _i, _item, exc, _info: ("err", exc),
        journal=journal,
        key_of=lambda _i, item: item,
        restore=lambda _i, _item, stored: ("restored", stored.result),
        **extra,
    )


class Recorder:
    """The operation: records each call; slow enough that at 8 workers the first ``a`` is
    still running when its repeat is read."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def sync(self, item: str) -> str:
        with self._lock:
            self.calls.append(item)
        time.sleep(0.02)
        return item.upper()

    async def coro(self, item: str) -> str:
        self.calls.append(item)
        await asyncio.sleep(0.02)
        return item.upper()


def run_async(journal: Journal, recorder: Recorder, workers: int, **extra: Any) -> list[Any]:
    runner = AsyncRunner(recorder.coro, concurrency=workers, options=_options(journal, **extra))
    return asyncio.run(runner.collect(KEYS)).slots


def run_threads(journal: Journal, recorder: Recorder, workers: int, **extra: Any) -> list[Any]:
    runner = ThreadRunner(recorder.sync, workers=workers, options=_options(journal, **extra))
    return runner.collect(KEYS).slots


RUNNERS = pytest.mark.parametrize("run", [run_async, run_threads], ids=["async", "threads"])
WORKERS = pytest.mark.parametrize("workers", [1, 8])


def _is_duplicate(slot: Any, key: str, position: int) -> bool:
    kind, error = slot
    return (
        kind == "err"
        and isinstance(error, DuplicateKey)
        and f"position {position}" in str(error)
        and repr(key) in str(error)
    )


@RUNNERS
@WORKERS
def test_a_repeated_key_fails_as_a_duplicate_and_runs_once(
    tmp_path: Path, run: Callable[..., list[Any]], workers: int
) -> None:
    recorder = Recorder()
    with Journal.open(tmp_path / "j.db", fingerprint="t") as journal:
        slots = run(journal, recorder, workers)
        counts = journal.counts()
    assert sorted(recorder.calls) == ["a", "b", "c"]
    assert [slots[i] for i in (0, 1, 3)] == [("ok", "A"), ("ok", "B"), ("ok", "C")]
    assert _is_duplicate(slots[2], "a", 2)
    assert _is_duplicate(slots[4], "b", 4)
    assert _is_duplicate(slots[5], "a", 5)
    # a duplicate's failure is not journaled: it would replace the first item's outcome
    assert counts == {"succeeded": 3, "failed": 0}


@RUNNERS
def test_keys_an_earlier_run_settled_are_restored_and_repeats_still_fail(
    tmp_path: Path, run: Callable[..., list[Any]]
) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path, fingerprint="t") as journal:
        run(journal, Recorder(), 8)
    again = Recorder()
    with Journal.open(path, fingerprint="t") as journal:
        slots = run(journal, again, 8)
    assert again.calls == []
    restored = [("restored", "A"), ("restored", "B"), ("restored", "C")]
    assert [slots[i] for i in (0, 1, 3)] == restored
    assert _is_duplicate(slots[2], "a", 2)
    assert _is_duplicate(slots[5], "a", 5)


@RUNNERS
def test_under_stop_on_error_a_duplicate_raises(
    tmp_path: Path, run: Callable[..., list[Any]]
) -> None:
    journal = Journal.open(tmp_path / "j.db", fingerprint="t")
    with journal, pytest.raises(DuplicateKey, match="position 2"):
        run(journal, Recorder(), 1, stop_on_error=True)


def test_a_duplicate_is_a_value_error_with_the_invalid_input_code() -> None:
    from paceline._results import ErrorCode, error_code_for

    error = DuplicateKey("x")
    assert isinstance(error, ValueError)
    assert error_code_for(error) is ErrorCode.INVALID_INPUT


# -- the retry budget: throttles spend none of it; a refusal names it ------------------------


class Flaky:
    """The operation: each item fails ``failures`` times with what ``make`` builds, then
    succeeds; records the attempts."""

    def __init__(self, failures: int, make: Callable[[], BaseException]) -> None:
        self.failures = failures
        self.make = make
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _call(self, item: str) -> str:
        with self._lock:
            self.calls[item] = self.calls.get(item, 0) + 1
            if self.calls[item] <= self.failures:
                raise self.make()
        return item.upper()

    def sync(self, item: str) -> str:
        return self._call(item)

    async def coro(self, item: str) -> str:
        return self._call(item)


def _budget_options(**extra: Any) -> RunOptions[str, str, tuple[str, Any]]:
    return RunOptions(
        ok=lambda _i, _item, value, _info: ("ok", value),
        err=lambda _i, _item, exc, info: ("err", exc, info.attempts),
        retry=RetryPolicy(attempts=3, base_s=0.0001, cap_s=0.001),
        budget=RetryBudget(ratio=0.0, floor=1),  # one retry for the whole batch
        **extra,
    )


def run_flaky(kind: str, flaky: Flaky, items: list[str], **extra: Any) -> list[Any]:
    options = _budget_options(**extra)
    if kind == "async":
        runner = AsyncRunner(flaky.coro, concurrency=4, options=options)
        return asyncio.run(runner.collect(items)).slots
    return ThreadRunner(flaky.sync, workers=4, options=options).collect(items).slots


KINDS = pytest.mark.parametrize("kind", ["async", "threads"])


@KINDS
def test_throttled_attempts_spend_no_budget_and_do_not_count_as_attempts(kind: str) -> None:
    # 4 throttles each (more than attempts=3) against a budget of 1 retry: all succeed
    flaky = Flaky(4, lambda: Throttled())
    slots = run_flaky(kind, flaky, ["a", "b", "c"])
    assert slots == [("ok", "A"), ("ok", "B"), ("ok", "C")]
    assert flaky.calls == {"a": 5, "b": 5, "c": 5}


@KINDS
def test_an_item_refused_by_the_spent_budget_fails_naming_it(kind: str) -> None:
    flaky = Flaky(1, lambda: TimeoutError("read timed out"))
    slots = run_flaky(kind, flaky, ["a", "b", "c"])
    failed = [s for s in slots if s[0] == "err"]
    assert len(failed) == 2  # one retry in the budget: one item got it
    for _, error, attempts in failed:
        assert isinstance(error, RetryBudgetExhausted)
        assert str(error).startswith("retry budget exhausted after 1 attempt (")
        assert str(error).endswith(": read timed out")
        assert isinstance(error.__cause__, TimeoutError)
        assert attempts == 1


@KINDS
def test_the_users_classifier_says_what_a_throttle_is(kind: str) -> None:
    class Busy(Exception):
        retryable = True

    def classify(_value: Any, error: BaseException | None) -> Outcome:
        return Outcome.THROTTLE if isinstance(error, Busy) else Outcome.IGNORE

    flaky = Flaky(4, Busy)
    assert run_flaky(kind, flaky, ["a", "b"], classify=classify) == [("ok", "A"), ("ok", "B")]
    # without it, a Busy is an error: 3 attempts at most, the budget's one retry shared
    unclassified = run_flaky(kind, Flaky(4, Busy), ["a", "b"])
    assert [s[0] for s in unclassified] == ["err", "err"]
