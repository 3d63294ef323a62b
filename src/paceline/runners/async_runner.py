"""The async runner: a bounded pool of worker coroutines pulling from one iterator.

No task per item: ``concurrency`` workers each loop "take a due retry or pull an item → take a
token → await the operation → settle or schedule a retry", so memory holds only what is in
flight, and lazy or endless inputs (sync or async iterables) are read as work frees up. A
token is taken immediately before each attempt starts — retries included — by the worker that
starts it. An item waiting for its retry holds no concurrency slot.

With :class:`~paceline.runners.lanes.Lanes` (the HTTP face: one lane per server) each lane has
its own gates and a queue of ready items inside a bounded read-ahead, and a worker takes an
item from any lane no other worker is waiting at, so a paused or throttling server holds up
only its own items (the decisions and what they cost are in ``runners/lanes.py``).
"""

from __future__ import annotations

import asyncio
import heapq
import sys
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Iterator,
)
from typing import Any, Generic, TypeVar, cast

from paceline.errors import InvalidArgument, PacelineError
from paceline.policy.adaptive import Ticket
from paceline.policy.batch import BatchState
from paceline.policy.pause import ServerPause
from paceline.policy.rate import NS_PER_S
from paceline.policy.retry import retry_after_of
from paceline.runners._common import controller_for, sized_length
from paceline.runners.adaptive_gate import AdaptiveGate, Classifier
from paceline.runners.gates import (
    CostReserver,
    LeaseGate,
    async_acquirer,
    cost_reserver,
    server_pause_for,
    share_pause,
    shared_limiter_of,
)
from paceline.runners.identity import CURRENT
from paceline.runners.lanes import DEFAULT_LANE_READ_AHEAD, Lane, Lanes
from paceline.runners.settle import Job, RunOptions, Settler

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")
W = TypeVar("W")  # what a gate hands back

_monotonic_ns = time.monotonic_ns


class _Stop(PacelineError):
    """Internal: the input ran out."""


async def _with_timeout(awaitable: Awaitable[T], timeout_s: float) -> T:
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout_s):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout_s)  # pragma: no cover - 3.10


class AsyncRunner(Generic[K, T, R]):
    """Run ``operation(item)`` for every item with at most ``concurrency`` in flight.

    ``options`` says how results are built, which limiter, retry policy, halt rules, timeouts
    and journal apply (see :class:`~paceline.runners.settle.RunOptions`).
    """

    def __init__(
        self,
        operation: Callable[[K], Awaitable[T]],
        *,
        concurrency: int | None,
        options: RunOptions[K, T, R],
        read_ahead: int | None = None,
    ) -> None:
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise InvalidArgument(
                f"max_concurrent={concurrency!r}: use a whole number of at least 1 (or 'auto')"
            )
        if read_ahead is not None and read_ahead < 1:
            raise InvalidArgument(f"read_ahead={read_ahead!r}: must be at least 1")
        self.operation = operation
        self.concurrency = concurrency
        self.options = options
        self.read_ahead = read_ahead
        self._try_now, self._acquire = async_acquirer(options.limiter)
        self._reserver = (
            None if options.lanes is not None else cost_reserver(options.limiter, options.cost)
        )

    def _new_state(self, items: object, streaming: bool, ordered: bool = True) -> BatchState[R]:
        return BatchState(
            sized_length(items),
            self.options.stop_on_error,
            streaming=streaming,
            ordered=ordered,
            rules=self.options.halt,
        )

    async def collect(self, items: Iterable[K] | AsyncIterable[K]) -> BatchState[R]:
        """Run every item; results land in ``state.slots`` in input order (``None`` for items
        never attempted because the batch halted)."""
        state = self._new_state(items, streaming=False)
        # Without lanes an item is read when a worker is free to start it: no read-ahead.
        bound = None
        if self.options.lanes is not None:
            bound = self._lane_bound(self._workers_for(state.total))
        await _Batch(self, state, items, bound=bound).run()
        return state

    async def stream(
        self, items: Iterable[K] | AsyncIterable[K], *, ordered: bool = True
    ) -> AsyncGenerator[R, None]:
        """Yield results as they settle (``ordered``: in input order), reading the input at most
        ``read_ahead`` items (default 2x concurrency; with lanes, at least
        :data:`~paceline.runners.lanes.DEFAULT_LANE_READ_AHEAD`) ahead of what was handed out."""
        state = self._new_state(items, streaming=True, ordered=ordered)
        workers = self._workers_for(state.total)
        if self.options.lanes is not None:
            bound = self._lane_bound(workers)
        else:
            bound = self.read_ahead if self.read_ahead is not None else 2 * workers
        batch = _Batch(self, state, items, bound=max(bound, 1))
        runner = asyncio.ensure_future(batch.run())
        try:
            while True:
                while state.ready:
                    result = state.pop_ready()
                    batch.space_freed()
                    yield result
                if runner.done():
                    runner.result()  # re-raise a failure or an input error
                    while state.ready:
                        yield state.pop_ready()
                    return
                await batch.wait_for_results(runner)
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    def _lane_bound(self, workers: int) -> int:
        if self.read_ahead is not None:
            return self.read_ahead
        return max(2 * workers, DEFAULT_LANE_READ_AHEAD)

    def _workers_for(self, total: int | None) -> int:
        if self.concurrency is None:
            if total is None:
                raise InvalidArgument(
                    "max_concurrent=None (no limit) needs an input with a length; "
                    "give a number for lazy or endless inputs"
                )
            return max(1, total)
        return max(1, min(self.concurrency, total)) if total is not None else self.concurrency


class _Batch(Generic[K, T, R]):
    """One run of an :class:`AsyncRunner` over one input."""

    def __init__(
        self,
        runner: AsyncRunner[K, T, R],
        state: BatchState[R],
        items: Iterable[K] | AsyncIterable[K],
        bound: int | None,
    ) -> None:
        self.runner = runner
        self.state = state
        self.items = items
        self.bound = bound
        self.settler: Settler[K, T, R] = Settler(runner.options, state)
        self.pulled = 0
        self.exhausted = False
        self.fatal: BaseException | None = None  # an error of the machinery (journal, input)
        self.tasks: list[asyncio.Task[None]] = []
        self.retries: list[tuple[int, int, Job[K]]] = []  # (due ns, tie-break, job)
        self._retry_seq = 0
        self._idle: set[asyncio.Task[Any]] = set()  # workers sleeping until a retry is due
        self._results_waiter: asyncio.Future[None] | None = None
        self._space_waiter: asyncio.Future[None] | None = None
        self._pull_lock = asyncio.Lock()
        self._halt_handled = False
        # Lanes (one per server) or the one lane the options describe.
        self.lane_spec: Lanes | None = runner.options.lanes
        self.lanes: dict[Hashable, Lane[Job[K]]] = {}
        self.ready_lanes: deque[Lane[Job[K]]] = deque()  # free lanes with queued jobs
        self.queued = 0  # jobs in lane queues
        self._lane_waiters: deque[asyncio.Future[None]] = deque()
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retry_timer_ns = 0
        # A limiter on a shared store (Redis): a Retry-After seen here pauses its whole key.
        self._shared = shared_limiter_of(runner.options.limiter, runner.options.lanes)
        if self.lane_spec is not None:
            self.lease: LeaseGate | None = None
            self.adaptive: AdaptiveGate | None = None
            self.pause: ServerPause | None = None
        else:
            # With costs every attempt reserves its own cost: no lease of plain permits.
            self.lease = (
                LeaseGate.for_limiter(runner.options.limiter) if runner._reserver is None else None
            )
            self.adaptive = _adaptive_gate(runner.options.adaptive, runner.options.classify)
            self.pause = server_pause_for(runner.options.adaptive, runner.options.retry)

    async def run(self) -> None:
        runner, state, options = self.runner, self.state, self.runner.options
        count = runner._workers_for(state.total)
        worker = self._worker if self.lane_spec is None else self._lane_worker
        if isinstance(self.items, AsyncIterable):
            aiter_ = self.items.__aiter__()
            workers = [worker(None, self._async_puller(aiter_)) for _ in range(count)]
        else:
            it = iter(self.items)
            workers = [worker(self._sync_puller(it), None) for _ in range(count)]
        deadline = None
        if options.deadline_s is not None:
            deadline = asyncio.get_running_loop().call_later(options.deadline_s, self._on_deadline)
        self.tasks = [asyncio.ensure_future(w) for w in workers]
        try:
            await asyncio.gather(*self.tasks)
        except BaseException:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if self.fatal is not None:
                raise self.fatal from None
            if self.settler.failure is not None:
                raise self.settler.failure from None
            if not state.stopped:
                raise  # cancelled from outside (or a bug): propagate
        finally:
            if deadline is not None:
                deadline.cancel()
            if self.lease is not None:
                self.lease.close()
            if self._retry_timer is not None:
                self._retry_timer.cancel()
            self._wake_results()
        # Items waiting for a retry when the batch stopped were attempted: they settle failed.
        while self.retries:
            self.settler.abandon(heapq.heappop(self.retries)[2])
        for lane in self.lanes.values():
            for job in lane.queue:
                self._unstarted(job)
        if self.fatal is not None:
            raise self.fatal
        if self.settler.failure is not None:
            raise self.settler.failure

    # pulling ----------------------------------------------------------------------------

    def _sync_puller(self, it: Iterator[K]) -> Callable[[], K]:
        nxt = it.__next__

        def pull() -> K:
            try:
                return nxt()
            except StopIteration:
                raise _Stop from None

        return pull

    def _async_puller(self, it: AsyncIterator[K]) -> Callable[[], Awaitable[K]]:
        async def pull() -> K:
            try:
                return await it.__anext__()
            except StopAsyncIteration:
                raise _Stop from None

        return pull

    async def _next_job(
        self, pull: Callable[[], K] | None, pull_async: Callable[[], Awaitable[K]] | None
    ) -> Job[K] | None:
        """The next job: a retry that is due, else a new item; ``None``: nothing left."""
        state, bound = self.state, self.bound
        while not state.stopped:
            retries = self.retries
            if retries and retries[0][0] <= _monotonic_ns():
                return heapq.heappop(retries)[2]
            if self.exhausted:
                if not retries:
                    return None
                await self._sleep_until(retries[0][0])
                continue
            if pull_async is not None:
                # One puller at a time: async generators refuse a second __anext__ while one
                # runs, and the read-ahead check must see the count the pull will change.
                async with self._pull_lock:
                    if bound is not None and self.pulled - state.delivered >= bound:
                        await self._wait_for_space()
                        continue  # room now, a retry due, or the batch stopped: look again
                    if state.stopped or self.exhausted:
                        continue
                    try:
                        item = await pull_async()
                    except _Stop:
                        self.exhausted = True
                        continue
            else:
                if bound is not None and self.pulled - state.delivered >= bound:
                    await self._wait_for_space()
                    continue  # room now, a retry due, or the batch stopped: look again
                assert pull is not None
                try:
                    item = pull()
                except _Stop:
                    self.exhausted = True
                    continue
            index = self.pulled
            self.pulled = index + 1
            job = self.settler.new_job(index, item)
            if job is not None:
                return job
            self._after_settle()  # restored from the journal
        return None

    async def _unless_stopped(self, awaitable: Awaitable[W]) -> W | None:
        """Await a gate (the adaptive controller's, a token) that a stop may interrupt: the
        task counts as idle meanwhile, so a graceful stop does not wait out a probe's minute or
        a slow limit. ``None``: the batch stopped first."""
        task = asyncio.current_task()
        assert task is not None
        self._idle.add(task)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self.state.stopped:
                raise  # a real cancellation, not our "the batch stopped" nudge
            return None
        finally:
            self._idle.discard(task)

    async def _sleep_until(self, due_ns: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._idle.add(task)
        try:
            await asyncio.sleep(max(0, due_ns - _monotonic_ns()) / NS_PER_S)
        except asyncio.CancelledError:
            if not self.state.stopped:
                raise  # a real cancellation, not our "the batch stopped" nudge
        finally:
            self._idle.discard(task)

    # flow control (stream mode) -----------------------------------------------------------

    def _wake_results(self) -> None:
        waiter = self._results_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_for_results(self, runner_task: asyncio.Future[None]) -> None:
        """Suspend the consumer until a result is ready or the batch ends."""
        if self.state.ready or runner_task.done():
            return
        self._results_waiter = asyncio.get_running_loop().create_future()
        await self._results_waiter
        self._results_waiter = None

    def space_freed(self) -> None:
        waiter = self._space_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._lane_waiters:
            self._nudge()

    async def _wait_for_space(self) -> None:
        """Wait until the read-ahead has room, a parked retry falls due, or the batch stops.

        Parked retries count against the read-ahead (they were read), so when every item in it
        waits for its backoff only a retry falling due frees the worker: without that wake-up
        such a batch stopped for good (issue 10).
        """
        state, bound = self.state, cast(int, self.bound)
        loop = asyncio.get_running_loop()
        while self.pulled - state.delivered >= bound and not state.stopped:
            retries = self.retries
            timer = None
            if retries:
                wait_ns = retries[0][0] - _monotonic_ns()
                if wait_ns <= 0:
                    return
                timer = loop.call_later(wait_ns / NS_PER_S, self.space_freed)
            waiter = self._space_waiter
            if waiter is None or waiter.done():
                waiter = self._space_waiter = loop.create_future()
            self._wake_results()
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()

    # halting ------------------------------------------------------------------------------

    def _stop_on_fatal(self, exc: BaseException) -> None:
        """The batch cannot go on (its journal, input or progress callback failed): keep the
        first such error to raise and stop every worker now."""
        if self.fatal is None:
            self.fatal = exc
        self.state.halt(f"stopped by an error: {type(exc).__name__}: {exc}", now=True)
        self._after_settle()

    def _after_settle(self) -> None:
        state = self.state
        if state.streaming:
            self._wake_results()
        elif self._lane_waiters:
            self._nudge()  # collect mode: a settled item is room in the read-ahead
        if state.stopped and not self._halt_handled:
            self._halt_handled = True
            self._stop_workers(cancel_running=state.halt_now)

    def _stop_workers(self, cancel_running: bool) -> None:
        me = asyncio.current_task()
        for task in self.tasks if cancel_running else list(self._idle):
            if task is not me:
                task.cancel()
        self.space_freed()
        self._wake_results()

    def _on_deadline(self) -> None:
        deadline_s = self.runner.options.deadline_s
        self.state.halt(f"deadline of {deadline_s:g} s passed", now=True)
        self._after_settle()

    # the worker ---------------------------------------------------------------------------

    async def _worker(
        self, pull: Callable[[], K] | None, pull_async: Callable[[], Awaitable[K]] | None
    ) -> None:
        runner, state = self.runner, self.state
        options = runner.options
        operation = runner.operation
        try_now, acquire, lease = runner._try_now, runner._acquire, self.lease
        weigh, timeout_s = options.weight, options.timeout_s
        reserver, cost_of = runner._reserver, options.cost
        timed = options.timed or options.retry is not None
        # This worker's own lease, in locals: the per-item check is two comparisons.
        lease_clock = lease.clock_ns if lease is not None else _monotonic_ns
        leased = use_by = stamp = 0
        adaptive, pause = self.adaptive, self.pause
        try:
            while not state.stopped:
                job = await self._next_job(pull, pull_async)
                if job is None:
                    return
                if pause is not None and pause.until_ns and not await self._paused(pause):
                    self._unstarted(job)
                    return
                # Gates in series: the adaptive controller's (pause, rate, concurrency), then the
                # strict limiter's token, taken last so it comes right before the start.
                ticket = None
                if adaptive is not None:
                    ticket = await self._unless_stopped(adaptive.enter())
                    if ticket is None:  # the batch stopped while it waited (a probe: ~1 min)
                        self._unstarted(job)
                        return
                if reserver is not None:
                    assert cost_of is not None
                    if not await self._reserved(reserver, cost_of, job, adaptive, ticket):
                        self._unstarted(job)
                        return
                elif acquire is not None:
                    weight = weigh(job.item) if weigh is not None else 1
                    if weight == 1 and leased and lease_clock() <= use_by:
                        leased -= 1
                    else:
                        if lease is not None and weight == 1:
                            lease.release(stamp, leased)
                            leased, use_by, stamp = lease.refill()
                        if leased:
                            leased -= 1
                        else:
                            if try_now is None or try_now(weight) is None:
                                try:
                                    await self._unless_stopped(acquire(weight))
                                except asyncio.CancelledError:
                                    if adaptive is not None and ticket is not None:
                                        adaptive.abandon(ticket)
                                    raise
                            if state.stopped:
                                if adaptive is not None and ticket is not None:
                                    adaptive.abandon(ticket)
                                self._unstarted(job)
                                return
                if adaptive is not None and ticket is not None:
                    adaptive.sent(ticket)
                await self._attempt(job, operation, timeout_s, timed, adaptive, ticket, pause)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the journal, the input or a progress callback failed
            self._stop_on_fatal(exc)
        finally:
            if lease is not None:
                lease.release(stamp, leased)

    async def _reserved(
        self,
        reserver: CostReserver,
        cost_of: Callable[[K], Any],
        job: Job[K],
        adaptive: AdaptiveGate | None,
        ticket: Ticket | None,
    ) -> bool:
        """Reserve ``job``'s cost before its attempt (kept on ``job.grant``); ``False``: the
        batch stopped first (nothing stays reserved; the caller leaves the job unstarted)."""
        try:
            grant = await self._unless_stopped(reserver.reserve_async(cost_of(job.item)))
        except asyncio.CancelledError:
            if adaptive is not None and ticket is not None:
                adaptive.abandon(ticket)
            raise
        if grant is None or self.state.stopped:
            if grant is not None:
                grant.give_back()
            if adaptive is not None and ticket is not None:
                adaptive.abandon(ticket)
            return False
        job.grant = grant
        return True

    def _attempt_failed(
        self,
        job: Job[K],
        exc: Exception,
        started: int,
        timed: bool,
        adaptive: AdaptiveGate | None,
        ticket: Ticket | None,
        pause: ServerPause | None,
    ) -> bool:
        """An attempt raised: tell its gates, then settle the item or park its retry (``True``)."""
        share_pause(self._shared, exc)  # every process on a shared store's key pauses too
        if adaptive is not None and ticket is not None:
            adaptive.exit(ticket, None, exc)
        elif pause is not None and (retry_after := retry_after_of(exc)):
            pause.ask(_monotonic_ns(), retry_after)
        elapsed = _monotonic_ns() - started if timed else 0
        delay = self.settler.failure_of(job, exc, started, elapsed)
        lane = job.lane
        if lane is not None and lane.closed is not None:
            self._sweep_closed(lane)  # its parked retries fail now, not when they fall due
            if delay is not None:
                self.settler.refuse(job, lane.closed, lane.key)
            return False
        if delay is None:
            return False
        self._retry_seq += 1
        heapq.heappush(self.retries, (_monotonic_ns() + delay, self._retry_seq, job))
        if self.lane_spec is None:
            self.space_freed()  # a worker waiting for room re-times its wake-up
        else:
            self._arm_retry_timer()
        return True

    def _sweep_closed(self, lane: Lane[Job[K]]) -> None:
        """Fail the parked retries of a lane whose quota is exhausted (see ``Lane.closed``)."""
        closed = [entry for entry in self.retries if entry[2].lane is lane]
        if not closed:
            return
        self.retries = [entry for entry in self.retries if entry[2].lane is not lane]
        heapq.heapify(self.retries)
        assert lane.closed is not None
        for _, _, job in closed:
            self.settler.refuse(job, lane.closed, lane.key)
            self._after_settle()

    async def _paused(self, pause: ServerPause) -> bool:
        """Wait out the server's pause (it may grow meanwhile); ``False``: the batch stopped."""
        while (wait_ns := pause.wait_ns(_monotonic_ns())) > 0 and not self.state.stopped:
            await self._sleep_until(_monotonic_ns() + wait_ns)
        return not self.state.stopped

    async def _attempt(
        self,
        job: Job[K],
        operation: Callable[[K], Awaitable[T]],
        timeout_s: float | None,
        timed: bool,
        adaptive: AdaptiveGate | None,
        ticket: Ticket | None,
        pause: ServerPause | None,
    ) -> None:
        """Start the attempt ``job`` passed its gates for, then settle it, or park its retry
        (both workers, with and without lanes)."""
        self.settler.first_attempt(job)
        started = _monotonic_ns() if timed else 0
        # The item's stable key, for the operation to read (runners/identity.py). Not reset
        # after: a worker is a task of its own, whose context no one else sees (a task the
        # operation starts copies it, this job included); a set alone is 0.1-0.2 us, a reset
        # as much again.
        CURRENT.set(job)
        try:
            if timeout_s is None:
                value = await operation(job.item)
            else:
                value = await _with_timeout(operation(job.item), timeout_s)
        except asyncio.CancelledError:
            if adaptive is not None and ticket is not None:
                adaptive.abandon(ticket)
            raise
        except Exception as exc:
            if self._attempt_failed(job, exc, started, timed, adaptive, ticket, pause):
                return
        else:
            if adaptive is not None and ticket is not None:
                adaptive.exit(ticket, value, None)
            elapsed = _monotonic_ns() - started if timed else 0
            self.settler.success(job, value, started, elapsed)
        self._after_settle()

    # lanes (one per server) -------------------------------------------------------------

    async def _lane_worker(
        self, pull: Callable[[], K] | None, pull_async: Callable[[], Awaitable[K]] | None
    ) -> None:
        """The worker of a batch with lanes: take a job from a lane nobody waits at, wait at
        that lane's gates alone, then let the lane go and run the attempt."""
        runner, state = self.runner, self.state
        options = runner.options
        operation = runner.operation
        timeout_s = options.timeout_s
        timed = options.timed or options.retry is not None
        try:
            while not state.stopped:
                got = await self._next_lane_job(pull, pull_async)
                if got is None:
                    return
                lane, job = got
                try:
                    passed, ticket = await self._through_gates(lane, job)
                finally:
                    self._lane_freed(lane)
                if not passed:
                    self._unstarted(job)
                    return
                if lane.closed is not None:  # its quota ran out while this job waited
                    if lane.adaptive is not None and ticket is not None:
                        lane.adaptive.abandon(ticket)
                    self.settler.refuse(job, lane.closed, lane.key)
                    self._after_settle()
                    continue
                await self._attempt(
                    job, operation, timeout_s, timed, lane.adaptive, ticket, lane.pause
                )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the journal, the input or a progress callback failed
            self._stop_on_fatal(exc)

    async def _through_gates(self, lane: Lane[Job[K]], job: Job[K]) -> tuple[bool, Ticket | None]:
        """Wait at ``lane``'s gates (its pause, its controller, its limiter's token) for
        ``job``'s attempt; ``(False, None)``: the batch stopped first."""
        pause, adaptive, acquire = lane.pause, lane.adaptive, lane.acquire
        if pause is not None and pause.until_ns and not await self._paused(pause):
            return False, None
        ticket = None
        if adaptive is not None:
            ticket = await self._unless_stopped(adaptive.enter())
            if ticket is None:
                return False, None
        reserver, cost_of = lane.reserver, self.runner.options.cost
        if reserver is not None:
            assert cost_of is not None
            if not await self._reserved(reserver, cost_of, job, adaptive, ticket):
                return False, None
        elif acquire is not None:
            weigh = self.runner.options.weight
            weight = weigh(job.item) if weigh is not None else 1
            try_now = lane.try_now
            if try_now is None or try_now(weight) is None:
                try:
                    await self._unless_stopped(acquire(weight))
                except asyncio.CancelledError:
                    if adaptive is not None and ticket is not None:
                        adaptive.abandon(ticket)
                    raise
            if self.state.stopped:
                if adaptive is not None and ticket is not None:
                    adaptive.abandon(ticket)
                return False, None
        if adaptive is not None and ticket is not None:
            adaptive.sent(ticket)
        return True, ticket

    async def _next_lane_job(
        self, pull: Callable[[], K] | None, pull_async: Callable[[], Awaitable[K]] | None
    ) -> tuple[Lane[Job[K]], Job[K]] | None:
        """A job from a lane nobody waits at (the lane is then this worker's until
        :meth:`_lane_freed`), reading input into the lanes' queues while none is ready and the
        read-ahead has room; ``None``: nothing left."""
        state = self.state
        while not state.stopped:
            retries = self.retries
            if retries and retries[0][0] <= _monotonic_ns():
                self._promote_due()
            ready = self.ready_lanes
            if ready:
                lane = ready.popleft()
                lane.listed = False
                if lane.closed is not None:  # its quota is exhausted: fail its jobs unsent
                    while lane.queue:
                        self.queued -= 1
                        self.settler.refuse(lane.queue.popleft(), lane.closed, lane.key)
                        self._after_settle()
                    continue
                lane.busy = True
                job = lane.queue.popleft()
                self.queued -= 1
                self._nudge()  # another lane may be ready, or input waiting to be read
                return lane, job
            if not self.exhausted and self._room():
                if pull_async is not None:
                    async with self._pull_lock:  # one __anext__ at a time (see _next_job)
                        if state.stopped or self.exhausted or not self._room():
                            continue
                        try:
                            item = await pull_async()
                        except _Stop:
                            self.exhausted = True
                            self._nudge()
                            continue
                else:
                    assert pull is not None
                    try:
                        item = pull()
                    except _Stop:
                        self.exhausted = True
                        self._nudge()
                        continue
                index = self.pulled
                self.pulled = index + 1
                fresh = self.settler.new_job(index, item)
                if fresh is None:
                    self._after_settle()  # restored from the journal
                else:
                    self._enqueue(fresh)
                continue
            if self.exhausted and not self.queued and not retries:
                return None
            await self._wait_for_lane()
        return None

    def _room(self) -> bool:
        """Whether the read-ahead lets another item be read: items read and not yet handed out
        (stream) or settled (collect) — queued, waiting for a retry, in flight — are fewer
        than the bound."""
        state = self.state
        out = state.delivered if state.streaming else state.completed
        return self.pulled - out < cast(int, self.bound)

    def _enqueue(self, job: Job[K]) -> None:
        spec = cast(Lanes, self.lane_spec)
        key = spec.key_of(job.item)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = self._open_lane(spec, key)
        job.lane = lane
        lane.queue.append(job)
        self.queued += 1
        if not lane.busy and not lane.listed:
            lane.listed = True
            self.ready_lanes.append(lane)

    def _open_lane(self, spec: Lanes, key: Hashable) -> Lane[Job[K]]:
        options = self.runner.options
        gates = spec.open(key)
        try_now, acquire = async_acquirer(gates.limiter)
        return Lane(
            key,
            _adaptive_gate(gates.controller, options.classify),
            server_pause_for(gates.controller, options.retry),
            try_now,
            acquire,
            cost_reserver(gates.limiter, options.cost) if gates.limiter is not None else None,
        )

    def _lane_freed(self, lane: Lane[Job[K]]) -> None:
        """The worker at ``lane``'s gates has passed them (or given up): the lane's next job
        is for another worker."""
        lane.busy = False
        if lane.queue and not lane.listed:
            lane.listed = True
            self.ready_lanes.append(lane)
        self._nudge()

    def _promote_due(self) -> None:
        """Retries whose backoff has passed go to the front of their lane's queue."""
        retries, now = self.retries, _monotonic_ns()
        while retries and retries[0][0] <= now:
            job = heapq.heappop(retries)[2]
            lane = cast(Lane[Job[K]], job.lane)
            lane.queue.appendleft(job)
            self.queued += 1
            if not lane.busy and not lane.listed:
                lane.listed = True
                self.ready_lanes.append(lane)
        self._arm_retry_timer()

    def _arm_retry_timer(self) -> None:
        """One timer for the earliest parked retry: it wakes a worker when the retry is due."""
        retries = self.retries
        if not retries:
            return
        due = retries[0][0]
        if self._retry_timer is not None:
            if self._retry_timer_ns <= due:
                return
            self._retry_timer.cancel()
        self._retry_timer_ns = due
        delay_s = max(0, due - _monotonic_ns()) / NS_PER_S
        self._retry_timer = asyncio.get_running_loop().call_later(delay_s, self._on_retry_due)

    def _on_retry_due(self) -> None:
        self._retry_timer = None
        self._promote_due()
        self._nudge()

    def _nudge(self) -> None:
        """Wake one idle worker when there is work for it (a ready lane, input to read), or
        every one when nothing is left (so they end)."""
        waiters = self._lane_waiters
        if not waiters:
            return
        if self.exhausted and not self.queued and not self.retries:
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
            return
        if not self.ready_lanes and (self.exhausted or not self._room()):
            return
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _wait_for_lane(self) -> None:
        """Wait until a lane is free with a job, the read-ahead has room, a retry falls due,
        or the batch stops (an idle worker: a stop cancels the wait)."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._lane_waiters.append(waiter)
        task = asyncio.current_task()
        assert task is not None
        self._idle.add(task)
        if self.state.streaming:
            self._wake_results()  # the consumer may be what frees the read-ahead
        try:
            await waiter
        except asyncio.CancelledError:
            if not self.state.stopped:
                raise  # a real cancellation, not our "the batch stopped" nudge
        finally:
            self._idle.discard(task)
            if not waiter.done():
                waiter.cancel()

    def _unstarted(self, job: Job[K]) -> None:
        """A job that got no attempt because the batch stopped while it waited for a token."""
        if job.attempt > 1:
            self.settler.abandon(job)


def _adaptive_gate(adaptive: object, classify: Classifier | None) -> AdaptiveGate | None:
    """The gate for ``options.adaptive`` (read by :func:`controller_for`)."""
    controller = controller_for(adaptive)
    return None if controller is None else AdaptiveGate(controller, classify)
