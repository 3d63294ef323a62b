"""Properties of the runners over random scripts of attempts.

Each item follows a script: what its first, second, ... attempt does (succeed, fail with a
retryable error, fail for good, raise :class:`paceline.Throttled` with or without a
``retry_after``, near or beyond the policy's ``max_retry_after_s``), each after a small delay;
attempts past the script succeed. Concurrency, read-ahead, ordering, retry policy, adaptive
control (also with more workers than the controller lets start) and a sized or lazy input are
drawn too. For the async runner (``batch_execute``, ``stream`` ordered and unordered) and the
thread runner (``BatchExecutor``):

- the batch ends, within a bound computed from the scenario (a hang fails at that bound);
- every item settles exactly once, as the script and the retry policy say it must, after
  exactly the attempts the policy allows;
- ``on_progress`` is called once per item, never two calls at once, ``completed`` going
  1, 2, ... n.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from paceline import BatchExecutor, RetryBudget, RetryPolicy, Throttled, batch_execute, stream
from paceline.policy.adaptive import AdaptiveSettings

pytestmark = pytest.mark.timeout(300)

MAX_RETRY_AFTER_S = 0.05
MAX_THROTTLES = RetryPolicy().max_throttles  # throttles are retried apart from attempts
NEAR_RETRY_AFTER_S = (0.0, 0.005, 0.02)  # obeyed: under MAX_RETRY_AFTER_S
FAR_RETRY_AFTER_S = 1000.0  # beyond it: the item fails, nobody waits
DELAYS_S = (0.0, 0.0, 0.001, 0.003)
BASE_S, CAP_S = 0.001, 0.004
# Short test clocks for the controller, so that each of its waits is small in the bound.
ADAPTIVE_RATE_FLOOR_PER_S, ADAPTIVE_PROBE_MAX_S = 200.0, 0.02
# Scheduling on a busy 2-core machine; far above what an example takes (milliseconds).
SLACK_S = 8.0


@dataclass(frozen=True)
class Step:
    """One attempt: ``kind`` is ok, fail (ConnectionError), perm (ValueError) or throttle."""

    kind: str
    delay_s: float = 0.0
    retry_after_s: float | None = None


OK = Step("ok")


@dataclass(frozen=True)
class Scenario:
    scripts: tuple[tuple[Step, ...], ...]
    concurrency: int
    attempts: int
    read_ahead: int | None = None
    # "off"; "on": the controller's ceiling is the worker count; "above": three times as many
    # workers as the controller starts with, as max_concurrent="auto" runs (workers wait for
    # the controller's slots).
    adaptive: str = "off"
    sized: bool = True

    @property
    def items(self) -> int:
        return len(self.scripts)

    def step(self, item: int, attempt: int) -> Step:
        script = self.scripts[item]
        return script[attempt] if attempt < len(script) else OK

    def expected(self, item: int) -> tuple[bool, int]:
        """(succeeds, attempts made) for ``item``, from its script and the retry policy: a
        throttle spends no attempt (up to ``max_throttles`` of them), any other failure does."""
        errors = throttles = calls = 0
        while True:
            step = self.step(item, calls)
            calls += 1
            if step.kind == "ok":
                return True, calls
            far = step.retry_after_s is not None and step.retry_after_s > MAX_RETRY_AFTER_S
            if step.kind == "perm" or (step.kind == "throttle" and far) or self.attempts == 1:
                return False, calls
            if step.kind == "throttle":
                throttles += 1
                if throttles >= MAX_THROTTLES:
                    return False, calls
            else:
                errors += 1
                if errors >= self.attempts:
                    return False, calls

    def bound_s(self) -> float:
        """Every attempt sequential, at its longest delay, backoff, obeyed wait and spacing."""
        per_attempt_s = (
            max(DELAYS_S)
            + CAP_S
            + max(NEAR_RETRY_AFTER_S)
            + 1 / ADAPTIVE_RATE_FLOOR_PER_S
            + ADAPTIVE_PROBE_MAX_S
        )
        calls = sum(self.expected(item)[1] for item in range(self.items))
        return calls * per_attempt_s + SLACK_S

    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.attempts,
            base_s=BASE_S,
            cap_s=CAP_S,
            max_retry_after_s=MAX_RETRY_AFTER_S,
            rng=random.Random(0),
        )

    @property
    def workers(self) -> int:
        return 3 * self.concurrency if self.adaptive == "above" else self.concurrency

    def adaptive_settings(self) -> AdaptiveSettings | None:
        if self.adaptive == "off":
            return None
        return AdaptiveSettings(
            initial_concurrency=self.concurrency,
            max_concurrency=self.workers,
            min_rate_per_s=ADAPTIVE_RATE_FLOOR_PER_S,
            probe_initial_s=0.005,
            probe_max_s=ADAPTIVE_PROBE_MAX_S,
        )

    def keys(self) -> Iterable[int]:
        return range(self.items) if self.sized else iter(range(self.items))


def raise_for(step: Step) -> None:
    if step.kind == "fail":
        raise ConnectionError("scripted failure")
    if step.kind == "perm":
        raise ValueError("scripted permanent failure")
    if step.kind == "throttle":
        raise Throttled(retry_after=step.retry_after_s)


@dataclass
class Recorder:
    """Counts the calls per item and checks that progress is serial and increasing."""

    scenario: Scenario
    calls: Counter[int] = field(default_factory=Counter)
    progress: list[tuple[int, int | None]] = field(default_factory=list)
    overlaps: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _inside: threading.Lock = field(default_factory=threading.Lock)

    def next_step(self, item: int) -> Step:
        with self._lock:
            attempt = self.calls[item]
            self.calls[item] += 1
        return self.scenario.step(item, attempt)

    def on_progress(self, completed: int, total: int | None) -> None:
        if not self._inside.acquire(blocking=False):
            self.overlaps += 1
            return
        try:
            self.progress.append((completed, total))
            time.sleep(0)  # let another thread in, if one is calling at the same time
        finally:
            self._inside.release()

    async def async_op(self, item: int) -> int:
        step = self.next_step(item)
        if step.delay_s:
            await asyncio.sleep(step.delay_s)
        raise_for(step)
        return item

    def sync_op(self, item: int) -> int:
        step = self.next_step(item)
        if step.delay_s:
            time.sleep(step.delay_s)
        raise_for(step)
        return item

    def check(self, outcomes: list[tuple[int, bool]]) -> None:
        scenario = self.scenario
        n = scenario.items
        settled = Counter(item for item, _ in outcomes)
        assert sorted(settled) == list(range(n)), f"settled items {sorted(settled)}"
        assert all(count == 1 for count in settled.values()), f"settled twice: {settled}"
        for item, succeeded in outcomes:
            wanted, attempts = scenario.expected(item)
            assert (succeeded, self.calls[item]) == (wanted, attempts), (
                f"item {item}: succeeded={succeeded} after {self.calls[item]} calls; the "
                f"script {scenario.scripts[item]} says {wanted} after {attempts}"
            )
        assert self.overlaps == 0, "on_progress was called while another call was running"
        assert [completed for completed, _ in self.progress] == list(range(1, n + 1)), self.progress
        # A sized input tells its total; a lazy one may not (None), unless ids give it away.
        totals = {total for _, total in self.progress}
        assert totals <= ({n} if scenario.sized else {n, None}), totals


def budget() -> RetryBudget:
    """A budget that never runs out, so that the script alone decides each item."""
    return RetryBudget(ratio=100.0, floor=10_000)


async def run_batch_execute(scenario: Scenario, rec: Recorder) -> list[tuple[int, bool]]:
    results = await batch_execute(
        scenario.keys(),
        rec.async_op,
        scenario.workers,
        rec.on_progress,
        retry=scenario.retry(),
        retry_budget=budget(),
        adaptive=scenario.adaptive_settings(),
    )
    return [(n, result.is_success) for n, result in enumerate(results)]


async def run_stream(scenario: Scenario, rec: Recorder, *, ordered: bool) -> list[tuple[int, bool]]:
    outcomes: list[tuple[int, bool]] = []
    async for result in stream(
        scenario.keys(),
        rec.async_op,
        scenario.workers,
        ordered=ordered,
        on_progress=rec.on_progress,
        read_ahead=scenario.read_ahead,
        retry=scenario.retry(),
        retry_budget=budget(),
        adaptive=scenario.adaptive_settings(),
    ):
        outcomes.append((int(result.item_id), result.success))
    if ordered:
        assert [item for item, _ in outcomes] == sorted(item for item, _ in outcomes)
    return outcomes


def run_executor(scenario: Scenario, rec: Recorder) -> list[tuple[int, bool]]:
    executor = BatchExecutor(
        stop_on_error=False,
        max_workers=scenario.workers,
        retry=scenario.retry(),
        retry_budget=budget(),
        adaptive=scenario.adaptive_settings(),
    )
    tasks = (partial(rec.sync_op, n) for n in range(scenario.items))
    result = executor.execute_batch(
        list(tasks) if scenario.sized else tasks,
        item_ids=[str(n) for n in range(scenario.items)],
        on_progress=rec.on_progress,
    )
    return [(int(item.item_id), item.success) for item in result]


Face = Callable[[Scenario, Recorder], Any]
ASYNC_FACES: dict[str, Face] = {
    "batch_execute": run_batch_execute,
    "stream-ordered": partial(run_stream, ordered=True),
    "stream-unordered": partial(run_stream, ordered=False),
}


def run_within_bound(face: str, scenario: Scenario) -> tuple[Recorder, list[tuple[int, bool]]]:
    rec = Recorder(scenario)
    bound_s = scenario.bound_s()

    def hang() -> str:
        return (
            f"{face}: the batch did not end within {bound_s:.1f} s; "
            f"{len(rec.progress)} of {scenario.items} items settled; calls {dict(rec.calls)}"
        )

    if face in ASYNC_FACES:

        async def bounded() -> list[tuple[int, bool]]:
            outcomes: list[tuple[int, bool]] = await asyncio.wait_for(
                ASYNC_FACES[face](scenario, rec), bound_s
            )
            return outcomes

        try:
            return rec, asyncio.run(bounded())
        except asyncio.TimeoutError:
            raise AssertionError(hang()) from None
    box: list[list[tuple[int, bool]]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            box.append(run_executor(scenario, rec))
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(bound_s)
    if thread.is_alive():
        raise AssertionError(hang())
    if errors:
        raise errors[0]
    return rec, box[0]


retry_afters = st.one_of(st.none(), st.sampled_from(NEAR_RETRY_AFTER_S), st.just(FAR_RETRY_AFTER_S))
steps = st.one_of(
    st.builds(Step, st.sampled_from(["ok", "fail", "perm"]), st.sampled_from(DELAYS_S)),
    st.builds(Step, st.just("throttle"), st.sampled_from(DELAYS_S), retry_afters),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    concurrency = draw(st.integers(1, 6))
    return Scenario(
        scripts=tuple(draw(st.lists(st.lists(steps, max_size=4).map(tuple), max_size=16))),
        concurrency=concurrency,
        attempts=draw(st.integers(1, 4)),
        read_ahead=draw(st.one_of(st.none(), st.integers(1, 3 * concurrency))),
        adaptive=draw(st.sampled_from(["off", "on", "above"])),
        sized=draw(st.booleans()),
    )


# Issue 10's reproduction: retries filling the read-ahead window (20 items, 2 at once, every
# attempt a ConnectionError, 3 attempts).
ALWAYS_FAILING = Scenario(
    scripts=tuple((Step("fail"),) * 3 for _ in range(20)), concurrency=2, attempts=3
)
# One far Retry-After under adaptive control: that item fails; nobody waits 1000 s.
ONE_FAR_RETRY_AFTER = Scenario(
    scripts=((Step("throttle", retry_after_s=FAR_RETRY_AFTER_S),), *(((),) * 9)),
    concurrency=3,
    attempts=3,
    adaptive="on",
)


@pytest.mark.parametrize("face", [*ASYNC_FACES, "BatchExecutor"])
@settings(
    max_examples=40,
    deadline=None,
    # No shrinking: a hang costs its whole bound per run, and the failing example is printed.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
@example(scenario=ALWAYS_FAILING)
@example(scenario=ONE_FAR_RETRY_AFTER)
@given(scenario=scenarios())
def test_batch_ends_and_settles_every_item_once_with_serial_progress(
    face: str, scenario: Scenario
) -> None:
    rec, outcomes = run_within_bound(face, scenario)
    rec.check(outcomes)
