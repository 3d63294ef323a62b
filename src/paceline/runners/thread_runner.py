"""The thread runner: one dispatcher, worker threads, no event loop.

The calling thread is the dispatcher: it reads the input, takes the rate-limit token when a
worker is free (never inside a worker, so no worker sits blocked in the limiter and no
pre-approved work queues up), hands the item over a queue, and collects finished attempts from
a second queue — settling them or scheduling their retries, calling progress serially, and
applying the halt rules, per-attempt timeouts and the batch deadline. Worker threads only run
calls.

A start here is the handoff to a free worker; the call inside the worker begins a thread
wake-up later — microseconds usually (the dispatcher yields the GIL after each rate-limited
handoff), but up to a GIL switch interval (``sys.getswitchinterval()``, 5 ms) on a busy
machine. For a limit that must hold on starts measured inside the operation, give the limiter
``margin_s`` of at least that.

Threads cannot be cancelled. When the batch stops, nothing new starts and calls already
running are waited for; their outcomes are settled (and journaled) like any other. A call
that outlives its ``timeout_s`` is settled as a ``TimeoutError`` at that moment — and retried
if the policy says so — while it keeps running in its thread; its worker stays busy (so no
more than ``workers`` calls ever run at once) and its eventual result is discarded.
"""

from __future__ import annotations

import contextlib
import heapq
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from paceline.policy.adaptive import Outcome, Ticket
from paceline.policy.batch import BatchState
from paceline.policy.rate import NS_PER_S
from paceline.policy.retry import retry_after_of
from paceline.runners._common import controller_for, sized_length
from paceline.runners.adaptive_gate import default_classify
from paceline.runners.gates import (
    LeaseGate,
    cost_reserver,
    server_pause_for,
    share_pause,
    shared_limiter_of,
    start_rechecker,
    sync_acquirer,
)
from paceline.runners.identity import CURRENT
from paceline.runners.settle import Job, RunOptions, Settler
from paceline.runners.signals import InterruptGate, deferred_interrupts

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")

_monotonic_ns = time.monotonic_ns


class _Fatal:
    """A worker hit a BaseException that is not an item failure (e.g. SystemExit)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Wake:
    """Put on the done queue by the signal handler, to wake a dispatcher blocked on it."""

    __slots__ = ()


_WAKE = _Wake()


class _Skipped:
    """A worker's answer for a queued job it did not start because the batch is halting."""

    __slots__ = ("job_id",)

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id


# (job id, value or exception, failed, started ns, elapsed ns)
_Done = tuple[int, Any, bool, int, int] | _Fatal | _Skipped | _Wake


def _give_back(job: Job[Any]) -> None:
    """Return the cost reserved for ``job``'s attempt, which never started."""
    grant, job.grant = job.grant, None
    if grant is not None:
        grant.give_back()


class ThreadRunner(Generic[K, T, R]):
    """Run ``operation(item)`` for every item on ``workers`` threads (``None`` or 1: in the
    calling thread, one at a time)."""

    def __init__(
        self,
        operation: Callable[[K], T],
        *,
        workers: int | None,
        options: RunOptions[K, T, R],
    ) -> None:
        self.operation = operation
        self.workers = workers
        self.options = options
        self._acquire = sync_acquirer(options.limiter)
        self._reserver = cost_reserver(options.limiter, options.cost)
        self.state: BatchState[R] | None = None

    def collect(self, items: Iterable[K], total: int | None = None) -> BatchState[R]:
        """Run every item; results land in ``state.slots`` in input order (``None`` for items
        never attempted because the batch halted). With ``stop_on_error`` the first failure's
        original exception is raised after the calls already running have finished.
        ``total``: the length of a lazy input, if known."""
        if total is None:
            total = sized_length(items)
        state: BatchState[R] = BatchState(
            total, self.options.stop_on_error, rules=self.options.halt
        )
        self.state = state  # what settled so far stays readable if the run is interrupted
        dispatch = _Dispatch(self, state)
        dispatch.run(items)
        if dispatch.settler.failure is not None:
            raise dispatch.settler.failure
        return state


class _Dispatch(Generic[K, T, R]):
    """One run of a :class:`ThreadRunner`: the dispatcher's state."""

    def __init__(self, runner: ThreadRunner[K, T, R], state: BatchState[R]) -> None:
        self.runner = runner
        self.options = runner.options
        self.state = state
        self.settler: Settler[K, T, R] = Settler(runner.options, state)
        self.timed = self.options.timed or self.options.retry is not None
        self.retries: list[tuple[int, int, Job[K]]] = []  # (due ns, tie-break, job)
        self.running: dict[int, tuple[int, Job[K]]] = {}  # job id -> (timeout at ns, job)
        self.next_index = 0
        self._attempt_id = 0
        self.in_flight = 0  # jobs handed to workers and not yet answered (busy workers)
        self._recheck = start_rechecker(self.options.limiter)
        self.deadline_ns = (
            _monotonic_ns() + round(self.options.deadline_s * NS_PER_S)
            if self.options.deadline_s is not None
            else None
        )
        # Set when the batch stops, or by a worker whose item failed under stop_on_error:
        # workers skip queued jobs once it is set, so nothing new starts.
        self.halting = False
        # (attempt id, item, its job: for its stable key, runners/identity.py)
        self.work: queue.SimpleQueue[tuple[int, K, Job[K]] | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
        self.signals: InterruptGate | None = None
        self.control = controller_for(self.options.adaptive)
        self.pause = server_pause_for(self.options.adaptive, self.options.retry)
        self.shared = shared_limiter_of(self.options.limiter)  # a Retry-After pauses its key
        self.classify = self.options.classify or default_classify
        self.tickets: dict[int, Ticket] = {}  # job id -> the adaptive controller's ticket
        self._rate_waited = False

    # -- the dispatcher loop -----------------------------------------------------------------

    def run(self, items: Iterable[K]) -> None:
        with deferred_interrupts(lambda: self.done.put(_WAKE)) as gate:
            self.signals = gate
            self._run(items)

    def _check_signals(self) -> None:
        if self.signals is not None:
            self.signals.check()

    def _run(self, items: Iterable[K]) -> None:
        runner, state = self.runner, self.state
        count = runner.workers or 1
        if state.total is not None:
            count = max(1, min(count, state.total))
        sequential = runner.workers is None or runner.workers == 1
        if sequential and self.options.timeout_s is None:
            self._run_sequential(iter(items))
            return
        threads = [
            threading.Thread(target=self._work, name=f"paceline-worker-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in threads:
            thread.start()
        finished = False
        try:
            self._dispatch(iter(items), count)
            finished = True
        finally:
            self.halting = True
            self._take_back_unstarted()
            for _ in threads:
                self.work.put(None)
            for thread in threads:
                thread.join()
            # Calls that finished while we were stopping still count.
            while not self.done.empty():
                outcome = self.done.get()
                if finished or not isinstance(outcome, _Fatal):
                    self._handle(outcome, report=finished)
            if finished:
                while self.retries:
                    self.settler.abandon(heapq.heappop(self.retries)[2])

    def _dispatch(self, source: Iterator[K], count: int) -> None:
        options, state = self.options, self.state
        acquire, weigh = self.runner._acquire, options.weight
        reserver, cost_of = self.runner._reserver, options.cost
        # With costs every attempt reserves its own cost: no lease of plain permits.
        lease = LeaseGate.for_limiter(options.limiter) if reserver is None else None
        plain = acquire is None and not options.stop_on_error and not options.halt
        # With nothing to stop for and no limiter, a second job per worker waits in the
        # queue so a worker that finishes picks up work without a round trip through the
        # dispatcher. Otherwise the token is taken right before a free worker starts, and
        # nothing waits where a stop could not take it back.
        capacity = 2 * count if plain else count
        exhausted = False
        try:
            while True:
                self._collect_ready()
                self._check_signals()
                if state.stopped or self._past_deadline():
                    break
                if self.in_flight >= capacity:
                    self._wait_for_done()
                    continue
                job = self._due_retry()
                if job is None and not exhausted:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                    else:
                        index = self.next_index
                        self.next_index += 1
                        job = self.settler.new_job(index, item)
                        if job is None:  # restored from the journal
                            continue
                if job is None:
                    if not self.retries and not self.in_flight:
                        break
                    self._wait_for_done()
                    continue
                if self.control is not None and not self._adaptive_admits():
                    self._requeue(job)
                    continue
                if self.pause is not None and self.pause.until_ns and not self._paused():
                    self._requeue(job)
                    continue
                if acquire is not None:
                    if reserver is not None:
                        assert cost_of is not None
                        cost = cost_of(job.item)
                        if self.signals is None:
                            job.grant = reserver.reserve(cost)
                        else:
                            with self.signals.waiting():
                                job.grant = reserver.reserve(cost)
                    else:
                        weight = weigh(job.item) if weigh is not None else 1
                        if weight != 1 or lease is None or not lease.take():
                            if self.signals is None:
                                granted = acquire(weight)
                            else:
                                with self.signals.waiting():
                                    granted = acquire(weight)
                        else:
                            granted = lease.stamp_ns  # the leased permit's entry
                        if self._recheck is not None:  # the worker checks it again
                            job.granted_ns = granted
                            job.granted_weight = weight
                    self._collect_ready()
                    self._check_signals()
                    if state.stopped or self._past_deadline():
                        _give_back(job)
                        if job.attempt > 1:
                            self.settler.abandon(job)
                        break
                self._start(job)
                if acquire is not None:
                    # Let the worker take the GIL now: its start should follow the grant by
                    # microseconds, not by a switch interval (5 ms) of dispatcher work.
                    time.sleep(0)
            self.halting = True
            self._take_back_unstarted()
            while self.in_flight > 0:
                self._wait_for_done()
                self._check_signals()
        finally:
            if lease is not None:
                lease.close()

    def _adaptive_admits(self) -> bool:
        """The adaptive controller's gates (pause, rate, concurrency): wait while they say
        so (collecting finished work meanwhile); ``False`` if the batch stopped first."""
        control = self.control
        assert control is not None
        self._rate_waited = False
        while not self.state.stopped:
            now = _monotonic_ns()
            decision = control.decide(now, self.in_flight)
            if decision.go:
                return True
            if decision.slot:
                self._wait_for_done()
            else:
                self._rate_waited = decision.rate
                self._wait_for_done(now + decision.wait_ns)
            self._check_signals()
        return False

    def _paused(self) -> bool:
        """Wait out the server's pause (collecting finished work, which may extend it);
        ``False`` if the batch stopped first."""
        pause = self.pause
        assert pause is not None
        while not self.state.stopped and not self._past_deadline():
            now = _monotonic_ns()
            wait_ns = pause.wait_ns(now)
            if not wait_ns:
                return True
            self._wait_for_done(now + wait_ns)
            self._check_signals()
        return False

    def _requeue(self, job: Job[K]) -> None:
        """A job held back because the batch stopped while it waited at the adaptive gate."""
        if job.attempt > 1:
            self.settler.abandon(job)

    def _start(self, job: Job[K]) -> None:
        self.settler.first_attempt(job)
        self._attempt_id += 1
        job_id = self._attempt_id
        if self.control is not None:
            self.tickets[job_id] = self.control.started(
                _monotonic_ns(), self.in_flight, self._rate_waited
            )
        timeout_at = (
            _monotonic_ns() + round(self.options.timeout_s * NS_PER_S)
            if self.options.timeout_s is not None
            else 0
        )
        self.running[job_id] = (timeout_at, job)
        self.work.put((job_id, job.item, job))
        self.in_flight += 1

    def _due_retry(self) -> Job[K] | None:
        retries = self.retries
        if retries and retries[0][0] <= _monotonic_ns():
            return heapq.heappop(retries)[2]
        return None

    def _past_deadline(self) -> bool:
        if self.deadline_ns is not None and _monotonic_ns() >= self.deadline_ns:
            self.state.halt(f"deadline of {self.options.deadline_s:g} s passed", now=True)
            return True
        return False

    def _collect_ready(self) -> None:
        done = self.done
        while not done.empty():
            self._handle(done.get())
        if self.options.timeout_s is not None:
            self._expire_timeouts()

    def _wait_for_done(self, until_ns: int | None = None) -> None:
        """Block until an attempt finishes, or until the next retry, timeout or deadline (or
        ``until_ns``)."""
        wake = [t for t in (self.deadline_ns, until_ns) if t is not None]
        if self.retries:
            wake.append(self.retries[0][0])
        if self.options.timeout_s is not None and self.running:
            wake.append(min(t for t, _ in self.running.values()))
        try:
            if wake:
                timeout = max(0, min(wake) - _monotonic_ns()) / NS_PER_S
                outcome = self.done.get(timeout=timeout)
            else:
                outcome = self.done.get()
        except queue.Empty:
            self._expire_timeouts()
            return
        self._handle(outcome)

    def _tell_controller(
        self, job_id: int, value: Any, error: BaseException | None, skipped: bool = False
    ) -> None:
        ticket = self.tickets.pop(job_id, None)
        if ticket is None or self.control is None:
            return
        outcome = Outcome.IGNORE if skipped else self.classify(value, error)
        retry_after = retry_after_of(error) if error is not None else None
        self.control.finished(_monotonic_ns(), ticket, outcome, retry_after)

    def _expire_timeouts(self) -> None:
        if self.options.timeout_s is None or not self.running:
            return
        now = _monotonic_ns()
        expired = [jid for jid, (at, _) in self.running.items() if at <= now]
        for job_id in expired:
            _, job = self.running.pop(job_id)
            # The call keeps running in its thread (it cannot be cancelled); its worker stays
            # counted in in_flight until it answers, and that answer is discarded.
            error = TimeoutError(
                f"attempt took longer than timeout_s={self.options.timeout_s:g} "
                "(the call keeps running in its thread; its result will be discarded)"
            )
            elapsed = round(self.options.timeout_s * NS_PER_S)
            self._failed(job, error, now - elapsed, elapsed)

    def _handle(self, outcome: _Done, report: bool = True) -> None:
        if isinstance(outcome, _Wake):
            return  # a signal arrived: the dispatcher checks for it at its next safe point
        if isinstance(outcome, _Fatal):
            self.in_flight -= 1
            raise outcome.error
        if isinstance(outcome, _Skipped):
            self.in_flight -= 1
            self._tell_controller(outcome.job_id, None, None, skipped=True)
            entry = self.running.pop(outcome.job_id, None)
            if entry is not None:
                _give_back(entry[1])
                if entry[1].attempt > 1:
                    self.settler.abandon(entry[1])
            return
        job_id, value, failed, started, elapsed = outcome
        self.in_flight -= 1
        if failed:
            share_pause(self.shared, value)
        if self.control is not None:
            self._tell_controller(job_id, None if failed else value, value if failed else None)
        elif failed and self.pause is not None:
            self._note_pause(value)
        entry = self.running.pop(job_id, None)
        if entry is None:
            return  # it timed out earlier and was settled (or retried) then
        job = entry[1]
        if not report:
            # stopping after an interrupt: keep the outcome, no callbacks
            progress, self.options.on_progress = self.options.on_progress, None
            try:
                self._settle_outcome(job, value, failed, started, elapsed)
            finally:
                self.options.on_progress = progress
            return
        self._settle_outcome(job, value, failed, started, elapsed)

    def _settle_outcome(
        self, job: Job[K], value: Any, failed: bool, started: int, elapsed: int
    ) -> None:
        if failed:
            self._failed(job, value, started, elapsed)
        else:
            self.settler.success(job, value, started, elapsed)
        if self.state.stopped:
            self.halting = True

    def _failed(self, job: Job[K], error: BaseException, started: int, elapsed: int) -> None:
        delay = self.settler.failure_of(job, error, started, elapsed)
        if delay is not None:
            heapq.heappush(self.retries, (_monotonic_ns() + delay, job.index, job))
        if self.state.stopped:
            self.halting = True

    def _take_back_unstarted(self) -> None:
        """Take back jobs no worker has started (the batch is stopping)."""
        while True:
            try:
                entry = self.work.get_nowait()
            except queue.Empty:
                return
            if entry is None:
                continue
            self.in_flight -= 1
            taken = self.running.pop(entry[0], None)
            if taken is not None:
                _give_back(taken[1])
                if taken[1].attempt > 1:
                    self.settler.abandon(taken[1])

    def _note_pause(self, error: BaseException) -> None:
        """A failed attempt may carry the server's Retry-After: pause, hold what is queued."""
        retry_after = retry_after_of(error)
        pause = self.pause
        if retry_after and pause is not None and pause.ask(_monotonic_ns(), retry_after):
            self._hold_unstarted(pause.until_ns)

    def _hold_unstarted(self, until_ns: int) -> None:
        """Take back jobs queued for a worker but not started, to start after ``until_ns``
        (the server asked for a pause; they were handed out before it did)."""
        while True:
            try:
                entry = self.work.get_nowait()
            except queue.Empty:
                return
            if entry is None:
                self.work.put(None)  # a stop marker: leave it for the workers
                return
            self.in_flight -= 1
            taken = self.running.pop(entry[0], None)
            if taken is not None:
                job = taken[1]
                heapq.heappush(self.retries, (until_ns, job.index, job))

    # -- one at a time, in the calling thread ------------------------------------------------

    def _run_sequential(self, source: Iterator[K]) -> None:
        options, state, settler = self.options, self.state, self.settler
        operation, acquire, weigh = self.runner.operation, self.runner._acquire, options.weight
        reserver, cost_of = self.runner._reserver, options.cost
        timed = self.timed
        index = 0
        while not state.stopped and not self._past_deadline():
            self._check_signals()
            job = self._due_retry()
            if job is None:
                try:
                    item = next(source)
                except StopIteration:
                    if not self.retries:
                        return
                    time.sleep(max(0, self.retries[0][0] - _monotonic_ns()) / NS_PER_S)
                    continue
                job = settler.new_job(index, item)
                index += 1
                if job is None:
                    continue
            settler.first_attempt(job)
            started = 0
            try:
                # One at a time, the calling thread runs the call itself: a signal may
                # interrupt the wait and the call, never the settling that follows.
                with self.signals.waiting() if self.signals else contextlib.nullcontext():
                    if reserver is not None:
                        assert cost_of is not None
                        job.grant = reserver.reserve(cost_of(job.item))
                    elif acquire is not None:
                        acquire(weigh(job.item) if weigh is not None else 1)
                    started = _monotonic_ns() if timed else 0
                    entered = CURRENT.set(job)
                    try:
                        value = operation(job.item)
                    finally:
                        CURRENT.reset(entered)
            except Exception as exc:
                self._failed(job, exc, started, _monotonic_ns() - started if timed else 0)
            else:
                settler.success(job, value, started, _monotonic_ns() - started if timed else 0)
        while self.retries:
            settler.abandon(heapq.heappop(self.retries)[2])

    # -- a worker thread -------------------------------------------------------------------

    def _work(self) -> None:
        get, put, operation = self.work.get, self.done.put, self.runner.operation
        timed, stop_on_error = self.timed, self.options.stop_on_error
        while True:
            entry = get()
            if entry is None:
                return
            job_id, item, job = entry
            if self.halting:
                put(_Skipped(job_id))
                continue
            if job.granted_ns is not None:
                # The dispatcher's grant, checked again here, right before the call: a worker
                # woken late (by up to 0.3 s on a loaded 2-core machine) would start after
                # its grant's margin, outside the window that counted it; it takes a new one.
                assert self._recheck is not None
                self._recheck(job.granted_ns, job.granted_weight)
                job.granted_ns = None
            started = _monotonic_ns() if timed else 0
            # The item's stable key (runners/identity.py): this thread's own context, so no
            # reset is needed after.
            CURRENT.set(job)
            try:
                value = operation(item)
            except Exception as exc:
                if stop_on_error:
                    self.halting = True
                put((job_id, exc, True, started, _monotonic_ns() - started if timed else 0))
            except BaseException as exc:  # SystemExit and the like: not an item's failure
                put(_Fatal(exc))
                return
            else:
                put((job_id, value, False, started, _monotonic_ns() - started if timed else 0))
