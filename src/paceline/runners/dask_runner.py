"""The Dask runner: the same batch on a Dask cluster, one journal on the driver.

The driver reads the input lazily, skips what the journal says is done, and sends the rest as
chunks (Dask tasks, ``pure=False``, Dask ``retries=0``: paceline retries attempts itself),
never more than ``chunks_in_flight`` at once. A worker runs a chunk with the async runner
(:mod:`paceline.runners.dask_chunk`) and every attempt books its token from the shared
limiter right before it starts. Each finished chunk's items are settled on the driver —
results, journal, progress, halt rules — back to back, so the journal's writer commits them
together.

**Chunk size.** A chunk should hold ~2 s of work (``TARGET_CHUNK_S``): long enough that
Dask's ~1 ms per task is noise, short enough that a killed worker re-runs little and a stop
is quick. The first chunks hold ``FIRST_CHUNK_ITEMS``; after each chunk the size becomes
``size * TARGET_CHUNK_S / its time on the worker``, at most 4x the previous size and within
``[1, MAX_CHUNK_ITEMS]``. The time on the worker includes waiting for the limiter, so a
tight rate limit gives smaller chunks, fast no-op items bigger ones.

**Faults.** A worker killed mid-chunk: the scheduler runs the chunk again elsewhere (Dask's
``allowed-failures``), so its items run at least once; the items that run twice are those of
the chunks that were running on the killed worker — at most one chunk per worker thread (a
queued chunk had not started; a finished one's result was already fetched), so one chunk with
one thread per worker; the journal keeps each item's final outcome once. The worker holding the
cluster's limiter killed: chunks report their unfinished items, the driver hosts a new limiter
fenced for one window and sends those items again. The scheduler gone: the driver stops with
:class:`ClusterLost`; what settled is in the journal, and a rerun resumes.

>>> from distributed import Client, LocalCluster   # doctest: +SKIP
>>> with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:  # doctest: +SKIP
...     results = run_sync(batch_execute(urls, fetch, runner=DaskRunner(client)))
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from paceline._limiter import RateLimiter
from paceline.errors import ErrorCode, InvalidArgument, InvalidArgumentType, PacelineError
from paceline.policy.batch import BatchState
from paceline.policy.rate import NS_PER_S
from paceline.runners._common import sized_length
from paceline.runners.dask_chunk import ChunkResult, ChunkSpec, Outcome, Pair, run_chunk
from paceline.runners.dask_limiter import (
    ACTOR_TIMEOUT_S,
    DEFAULT_MARGIN_S,
    ClusterLimiter,
    host_limiter,
)
from paceline.runners.settle import Job, RunOptions, Settler

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")

# Work per chunk (see the module's docstring): ~2 s, within the 1-5 s.
TARGET_CHUNK_S = 2.0
# The first chunks' size, before any was timed: small, so a slow or rate-limited batch does
# not put minutes of work into its first tasks; the size grows 4x per chunk when items are fast.
FIRST_CHUNK_ITEMS = 8
# The largest chunk: 10,000 small items pickle to ~100 KB-1 MB, a comfortable Dask message.
MAX_CHUNK_ITEMS = 10_000
# How much a chunk may grow over the previous size (one slow-start step).
GROWTH = 4
# Chunks in flight per worker thread: one running and one queued behind it, so no thread idles
# while the driver settles a chunk (the bounded window of docs/design.md, "Dask runner").
CHUNKS_PER_THREAD = 2
# How often the driver looks up from waiting to see a stop (Ctrl-C, the deadline).
POLL_S = 0.2
# Chunks cancelled by the scheduler (a lost dependency) that the driver sends again before it
# calls the cluster lost: a lost spec cancels the chunks in flight once (<= the window), so
# 100 is many such losses, not one, and a cluster that keeps dropping work is not waited on.
MAX_RESENT_CHUNKS = 100
# Slots that come back late (a worker could not start within the margin of its slot: its CPU
# is saturated, its event loops wake late) are silent otherwise, and each costs a round trip
# to the actor and its item a wait: measured on a saturated CPU, 78-82 % of the slots came
# back and the batch ran at 0.13-0.25 of its rate. The driver reads the actor's counts every
# LATE_CHECK_S (one round trip, ~1-4 ms) and says so once when more than LATE_SHARE_TOLD of
# at least LATE_MIN_BOOKED slots since the last look came back late: 5 % is where the actor's
# margin starts to grow (MARGIN_GROW_AT), 200 slots keep one stalled worker from telling.
LATE_CHECK_S = 5.0
LATE_SHARE_TOLD = 0.05
LATE_MIN_BOOKED = 200


class LateWatch:
    """Whether the cluster limiter's slots came back late often enough to say so (once): fed
    the actor's running counts (its ``stats()``), it compares each look with the one before.

    >>> watch = LateWatch(clock_ns=lambda: 0)
    >>> told = watch.look({"booked": 1000, "given_back": 130, "paused": 10}, margin_ns=10_000_000)
    >>> told.split(":")[0]
    "12 % of the cluster's slots came back late (not started within 10 ms of their slot)"
    >>> watch.look({"booked": 2000, "given_back": 400, "paused": 10}, margin_ns=10_000_000)
    """

    __slots__ = ("_booked", "_clock_ns", "_late", "_next_ns", "told")

    def __init__(self, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock_ns = clock_ns
        self._next_ns = clock_ns()  # the first look is due at once, later every LATE_CHECK_S
        self._booked = self._late = 0
        self.told = False

    def due(self) -> bool:
        """Whether a look is due (the caller then asks the actor for its counts)."""
        return not self.told and self._clock_ns() >= self._next_ns

    def look(self, stats: dict[str, int], margin_ns: int) -> str | None:
        """The message to say, the first time it is true; ``None`` otherwise."""
        booked = stats.get("booked", 0)
        late = stats.get("given_back", 0) - stats.get("paused", 0)  # a pause's are not late
        new_booked, new_late = booked - self._booked, late - self._late
        if new_booked < LATE_MIN_BOOKED:
            return None  # too few to tell: look again (after the next chunk) from the same base
        self._next_ns = self._clock_ns() + round(LATE_CHECK_S * NS_PER_S)
        self._booked, self._late = booked, late
        if self.told or new_late <= LATE_SHARE_TOLD * new_booked:
            return None
        self.told = True
        return (
            f"{100 * new_late / new_booked:.0f} % of the cluster's slots came back late (not "
            f"started within {margin_ns / 1e6:g} ms of their slot): the workers' CPU is "
            "saturated; fewer items at once per worker, lighter items or more workers help"
        )


class ClusterLost(PacelineError):
    """The Dask scheduler went away mid-batch: the driver stopped; the journal (if any) holds
    every item that settled, and running the batch again resumes it."""


class ChunkFailed(PacelineError):
    """A chunk's task raised on its worker outside any item (the operation could not be
    unpickled there, a worker-side error of paceline): the batch stops."""


class ChunkNotSerializable(InvalidArgumentType):
    """An item of the batch cannot be sent to the cluster (it does not pickle)."""


class RemoteError(PacelineError):
    """An item's failure on a Dask worker, rebuilt on the driver: the message and error code
    of the original exception; :attr:`remote_type` is its type's name (the class of the
    exception is a subclass of this one named after it, so the journal keeps that name);
    :attr:`status_code` the HTTP status of its last answer, when it had one."""

    remote_type = "RemoteError"
    # The HTTP status of the item's last answer on its worker, when it had one.
    status_code: int | None = None

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


_REMOTE_TYPES: dict[str, type[RemoteError]] = {}


def remote_error(message: str, type_name: str, error_code: str) -> RemoteError:
    """A :class:`RemoteError` whose class is named ``type_name``."""
    cls = _REMOTE_TYPES.get(type_name)
    if cls is None:
        name = type_name if type_name.isidentifier() else "RemoteError"
        cls = _REMOTE_TYPES[type_name] = type(name, (RemoteError,), {"remote_type": type_name})
    return cls(message, error_code)


@dataclass(frozen=True, slots=True)
class ItemAttempts:
    """How one item's attempts went on its Dask worker, told to ``DaskRunner(on_attempts=)``
    right before the item settles on the driver: ``attempts`` in all, of them ``throttled``
    (429, 503, a raised ``Throttled``), whether the last one succeeded, the last one's
    ``duration_s``, and the failure's type name (``None`` on success).

    >>> ItemAttempts(index=3, attempts=3, throttled=2, success=True, duration_s=0.01).throttled
    2
    """

    index: int
    attempts: int
    throttled: int
    success: bool
    duration_s: float
    error_type: str | None = None


class DaskRunner:
    """Run a batch's items on a Dask cluster, with the journal and the progress on this side.

    Pass it to :func:`~paceline.batch_execute` as ``runner=``; everything else about the batch
    stays as it is: the limiter (a :class:`~paceline.RateLimiter` is hosted on the cluster as
    an actor that every worker books from; a shared limiter such as one on Redis is sent to
    the workers as is), retries, timeouts, the journal, halt rules, progress.
    ``max_concurrent`` is the number of items each chunk runs at once on its worker.

    ``chunk_items`` fixes the chunk size (default: chosen from timing, ~2 s of work a chunk);
    ``chunks_in_flight`` bounds the chunks sent and not yet settled (default: 2 per worker
    thread); ``limiter_margin_s`` is the cluster limiter's margin between a slot and the latest
    start it allows, ``limiter_timeout_s`` how long a worker waits for its answer before it
    calls it lost (see :mod:`paceline.runners.dask_limiter`). A ``RateLimiter`` without a
    ``margin_s`` of its own gets 5 ms on the cluster (its workers' requests reach the server
    more spread than one process's); with ``burst=1`` its starts stay 1/rate apart (up to
    125/s), as a server's limit without burst counts them. A 429's pause reaches every worker
    process at once (a Dask event). ``on_attempts`` is called on
    the driver's thread with an :class:`ItemAttempts` for each item back from a worker, right
    before it settles: the attempts that ran there, the throttled ones among them (a local run's
    progress counts them attempt by attempt; here they come back with the item).

    Operations, items and the limiter must pickle (cloudpickle: lambdas and closures do);
    results travel back JSON-ready, as the journal stores them (``codec=`` for other types).

    >>> from distributed import Client                     # doctest: +SKIP
    >>> client = Client("tcp://scheduler:8786")              # doctest: +SKIP
    >>> results = await batch_execute(ids, fetch, rate_limiter=RateLimiter("500/s"),
    ...                               runner=DaskRunner(client))  # doctest: +SKIP
    """

    def __init__(
        self,
        client: Any,
        *,
        chunk_items: int | None = None,
        chunks_in_flight: int | None = None,
        limiter_margin_s: float = DEFAULT_MARGIN_S,
        limiter_timeout_s: float = ACTOR_TIMEOUT_S,
        on_attempts: Callable[[ItemAttempts], None] | None = None,
    ) -> None:
        for name, value in (("chunk_items", chunk_items), ("chunks_in_flight", chunks_in_flight)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidArgument(f"{name}={value!r}: a whole number of at least 1, or None")
        if not hasattr(client, "submit") or not hasattr(client, "scatter"):
            raise InvalidArgumentType(
                f"DaskRunner({client!r}): pass a distributed.Client, e.g. "
                "Client('tcp://scheduler:8786') or Client(LocalCluster(n_workers=2))"
            )
        self.client = client
        self.chunk_items = chunk_items
        self.chunks_in_flight = chunks_in_flight
        self.limiter_margin_s = limiter_margin_s
        if not limiter_timeout_s > 0:
            raise InvalidArgument(f"limiter_timeout_s={limiter_timeout_s!r}: seconds above 0")
        self.limiter_timeout_s = limiter_timeout_s
        self.on_attempts = on_attempts

    def __repr__(self) -> str:
        return f"DaskRunner({self.client!r})"

    def window(self) -> int:
        """Chunks in flight at most: ``chunks_in_flight``, or 2 per worker thread."""
        if self.chunks_in_flight is not None:
            return self.chunks_in_flight
        threads = sum(self.client.nthreads().values())
        return CHUNKS_PER_THREAD * max(1, int(threads))

    def collect(
        self,
        items: Iterable[K] | AsyncIterable[K],
        operation: Callable[[K], Any],
        *,
        concurrency: int | None,
        options: RunOptions[K, T, R],
        codec: Any = None,
        stop: threading.Event | None = None,
    ) -> BatchState[R]:
        """Run every item (blocking; call it in a thread from async code); results land in
        ``state.slots`` in input order (``None`` for items never attempted because the batch
        stopped). ``stop`` set from another thread stops it: nothing new is sent, the chunks in
        flight are cancelled, what settled stays settled."""
        if isinstance(items, AsyncIterable):
            raise InvalidArgumentType(
                "runner=DaskRunner(...) reads a plain iterable (a list, a generator); an async "
                "iterable's items cannot be read from the driver's thread"
            )
        if options.cost is not None or options.lanes is not None or options.adaptive is not None:
            raise InvalidArgument(
                "runner=DaskRunner(...) does not take cost=, lanes= or adaptive= yet: give the "
                "batch a rate_limiter (hosted on the cluster) and retry="
            )
        state: BatchState[R] = BatchState(
            sized_length(items), options.stop_on_error, streaming=False, rules=options.halt
        )
        drive = _Drive(self, items, operation, concurrency, options, state, codec, stop)
        try:
            drive.run()
        finally:
            drive.end()
        return state


class _Drive(Generic[K, T, R]):
    """One batch on the cluster (the driver's loop)."""

    def __init__(
        self,
        runner: DaskRunner,
        items: Iterable[K],
        operation: Callable[[K], Any],
        concurrency: int | None,
        options: RunOptions[K, T, R],
        state: BatchState[R],
        codec: Any,
        stop: threading.Event | None,
    ) -> None:
        self.runner = runner
        self.client = runner.client
        self.items: Iterator[tuple[int, K]] = enumerate(items)
        self.options = options
        self.state = state
        self.codec = codec
        self.stop = stop or threading.Event()
        self.settler: Settler[K, T, R] = Settler(options, state)
        self.size = runner.chunk_items or FIRST_CHUNK_ITEMS
        self.jobs: dict[int, Job[K]] = {}  # the items sent and not settled, by position
        self.again: list[int] = []  # positions to send again (their limiter was lost)
        self.exhausted = False
        self.resent = 0  # chunks the scheduler cancelled and the driver sent again
        self.chunk_result: ChunkResult | None = None  # the chunk whose items are settling
        # Finished chunks, fetched by _fetch: (future, result, error).
        self.completed: queue.Queue[tuple[Any, ChunkResult | None, BaseException | None]] = (
            queue.Queue()
        )
        self.read = 0  # items read from the input
        self.window = runner.window()  # chunks in flight at most
        self.cluster_limiter: ClusterLimiter | None = None
        self.late_watch = LateWatch()
        limiter = options.limiter
        self.hosted = isinstance(limiter, RateLimiter) and not getattr(limiter, "shared", False)
        if self.hosted:
            assert isinstance(limiter, RateLimiter)
            self.cluster_limiter = host_limiter(
                self.client,
                limiter,
                runner.limiter_margin_s,
                timeout_s=runner.limiter_timeout_s,
            )
            limiter = self.cluster_limiter
        self.spec = ChunkSpec(
            operation=operation,
            concurrency=concurrency or 10,
            limiter=limiter,
            weight=options.weight,
            retry=options.retry,
            timeout_s=options.timeout_s,
            codec=codec,
            classify=options.classify,
        )
        self.spec_future = self._scatter_spec()
        deadline_s = options.deadline_s
        self.deadline_ns = (
            time.monotonic_ns() + round(deadline_s * NS_PER_S) if deadline_s is not None else None
        )

    def end(self) -> None:
        """The batch is over: the workers stop listening for its limiter's pauses."""
        if self.cluster_limiter is not None:
            self.cluster_limiter.end(self.client)

    def _scatter_spec(self) -> Any:
        pickle_check(self.spec, "the operation and options")
        return self.client.scatter(self.spec, broadcast=True, hash=False)

    # the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        in_flight: dict[Any, list[Pair]] = {}
        window = self.window
        try:
            while True:
                self._check_stop()
                while not self.state.stopped and len(in_flight) < window:
                    chunk = self._next_chunk()
                    if not chunk:
                        break
                    future = self._submit(chunk)
                    in_flight[future] = chunk
                    future.add_done_callback(self._fetch)
                if not in_flight:
                    return
                try:
                    future, result, error = self.completed.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if future not in in_flight:
                    continue  # cancelled, and already forgotten
                chunk = in_flight.pop(future)
                self._finished(future, chunk, result, error)
                self._tell_late()
                if self.state.stopped:
                    self._cancel(in_flight, now=self.state.halt_now)
        finally:
            if in_flight:
                self._cancel(in_flight, now=True)

    def _tell_late(self) -> None:
        """Say once when the cluster's slots keep coming back late (LateWatch)."""
        limiter, watch = self.cluster_limiter, self.late_watch
        if limiter is None or not watch.due():
            return
        try:
            stats = limiter.stats()
        except PacelineError:  # the actor lost: the chunks' own results tell
            return
        message = watch.look(stats, stats.get("margin_ns", limiter.margin_ns))
        if message is not None:
            warnings.warn(message, RuntimeWarning, stacklevel=1)

    def _fetch(self, future: Any) -> None:
        """A chunk's task ended (a callback on a Dask client thread): fetch its result into
        this process at once, so the driver's own pace (settling, progress callbacks) never
        leaves it on a worker, where a killed worker would lose it and Dask run it again."""
        try:
            self.completed.put((future, future.result(), None))
        except BaseException as exc:
            self.completed.put((future, None, exc))

    def _check_stop(self) -> None:
        if self.stop.is_set() and not self.state.stopped:
            self.state.halt("stopped", now=True)
        deadline = self.deadline_ns
        if deadline is not None and not self.state.stopped and time.monotonic_ns() >= deadline:
            self.state.halt(f"deadline of {self.options.deadline_s:g} s passed", now=True)

    def _cancel(self, in_flight: dict[Any, list[Pair]], now: bool) -> None:
        if not now:
            return  # a "soon" halt lets the chunks in flight finish and settle
        futures = list(in_flight)
        in_flight.clear()
        try:
            self.client.cancel(futures)
        except Exception:  # the scheduler may be gone; nothing left to cancel then
            return

    def _next_chunk(self) -> list[Pair]:
        chunk: list[Pair] = []
        jobs = self.jobs
        size = self.size
        total = self.state.total
        if total is not None and self.runner.chunk_items is None:
            # The tail in smaller chunks (guided self-scheduling): no worker is handed a big
            # last chunk while the others have nothing left to do.
            size = max(1, min(size, (total - self.read) // self.window))
        while self.again and len(chunk) < size:
            index = self.again.pop()
            chunk.append((index, jobs[index].item))
        while not self.exhausted and len(chunk) < size and not self.state.stopped:
            try:
                index, item = next(self.items)
            except StopIteration:
                self.exhausted = True
                break
            self.read += 1
            job = self.settler.new_job(index, item)
            if job is None:
                continue  # restored from the journal, or a duplicate key
            jobs[index] = job
            chunk.append((index, item))
        return chunk

    def _submit(self, chunk: list[Pair]) -> Any:
        try:
            return self.client.submit(run_chunk, self.spec_future, chunk, pure=False, retries=0)
        except Exception as exc:
            for index, item in chunk:
                pickle_check(item, f"item #{index}")
            raise self._lost(exc) from exc

    def _lost(self, exc: BaseException) -> BaseException:
        if isinstance(exc, PacelineError):
            return exc
        reason = (str(exc).splitlines() or [""])[0].rstrip(":")
        return ClusterLost(
            f"the Dask cluster went away mid-batch ({type(exc).__name__}: {reason}); "
            f"{self.state.completed} items settled — run the batch again to resume it"
        )

    # settling ---------------------------------------------------------------------------

    def _finished(
        self, future: Any, chunk: list[Pair], result: ChunkResult | None, exc: BaseException | None
    ) -> None:
        if future.status == "cancelled" and self.state.stopped:
            return
        if exc is not None:
            if _is_killed(exc) or self._cancelled_by_cluster(exc):
                # Every worker that took the chunk died (Dask's allowed-failures), or the
                # scheduler dropped it: its items go out again, as any killed worker's do.
                self.again.extend(index for index, _item in chunk)
                return
            if future.status == "error":  # the task itself raised on its worker
                raise ChunkFailed(
                    f"a worker could not run a chunk (items #{chunk[0][0]}...): "
                    f"{type(exc).__name__}: {exc} — the operation's module must be importable "
                    "on every worker (install it there, or define the operation in __main__)"
                ) from exc
            raise self._lost(exc) from exc
        assert result is not None
        self._resize(len(chunk), result.elapsed_ns)
        self.chunk_result = result  # its items' throttles and statuses, read as they settle
        for outcome in result.outcomes:
            self._settle(outcome)
            if self.state.stopped and self.state.halt_now:
                return
        if result.unfinished:
            self._limiter_lost(result)

    def _cancelled_by_cluster(self, exc: BaseException) -> bool:
        """Whether the scheduler cancelled a chunk this driver did not: a key it needed was
        lost — the batch's scattered spec, when every worker holding it died (the limiter's
        worker killed as a successor was hosted). The spec is scattered again if it was lost.
        A lost connection to the scheduler is not this (the cluster went away)."""
        if type(exc).__name__ != "FutureCancelledError" or self.state.stopped:
            return False
        if getattr(exc, "reason", None) == "scheduler-connection-lost":
            return False
        if self.client.status != "running":
            return False
        self.resent += 1
        if self.resent > MAX_RESENT_CHUNKS:
            return False  # the cluster keeps dropping chunks: stop, as if it were gone
        if self.spec_future.status != "finished":
            self.spec_future = self._scatter_spec()
        return True

    def _resize(self, count: int, elapsed_ns: int) -> None:
        if self.runner.chunk_items is not None or count < self.size:
            return  # fixed, or a short chunk (the input's tail) that says little
        elapsed_s = max(elapsed_ns / NS_PER_S, 1e-6)
        wanted = round(count * TARGET_CHUNK_S / elapsed_s)
        self.size = max(1, min(MAX_CHUNK_ITEMS, GROWTH * self.size, wanted))

    def _settle(self, outcome: Outcome) -> None:
        index, success, data, attempts, started_ns, duration_ns = outcome
        job = self.jobs.pop(index)
        job.attempt = attempts
        self._tell_attempts(outcome)
        settler = self.settler
        if success:
            value = self.codec.decode(data) if self.codec is not None else data
            settler.success(job, value, started_ns, duration_ns)
            return
        error = self._remote_failure(index, data)
        if error.error_code == ErrorCode.QUOTA_EXHAUSTED.value:
            # As a local run: not journaled (resume sends it again), the batch stops soon.
            settler.settle_exhausted(job, error, started_ns, duration_ns)
            return
        if self.chunk_result is not None and index in self.chunk_result.waited:
            # Waiting for a retry when the quota ran out on its worker: as locally, resume
            # runs it again.
            settler.settle_failure(job, error, started_ns, duration_ns, journal=False)
            return
        if settler.give_up is not None and not self.state.stopped:
            reason = settler.give_up.failure(time.monotonic_ns())
            if reason is not None:
                self.state.halt(f"giving up: {reason}", now=False)
        settler.settle_failure(job, error, started_ns, duration_ns)
        if settler.failure is not None:
            raise settler.failure

    def _remote_failure(self, index: int, data: Any) -> RemoteError:
        """An item's failure rebuilt from its worker's ``(message, type name, error code)``,
        with the ``status_code`` of its last HTTP answer when it had one (as ``--out`` shows
        it locally)."""
        message, type_name, error_code = data
        error = remote_error(message, type_name, error_code)
        status = self.chunk_result.statuses.get(index) if self.chunk_result else None
        if status is not None:
            error.status_code = status
        return error

    def _tell_attempts(self, outcome: Outcome) -> None:
        """Tell ``on_attempts`` how an item's attempts went on its worker (before it
        settles)."""
        tell = self.runner.on_attempts
        if tell is None:
            return
        index, success, data, attempts, _started_ns, duration_ns = outcome
        result = self.chunk_result
        tell(
            ItemAttempts(
                index=index,
                attempts=attempts,
                throttled=result.throttles.get(index, 0) if result is not None else 0,
                success=success,
                duration_s=duration_ns / NS_PER_S,
                error_type=None if success else data[1],
            )
        )

    def _limiter_lost(self, result: ChunkResult) -> None:
        """The chunk's limiter stopped answering: host a fenced successor (once for all the
        chunks that report it) and send the unfinished items again."""
        self.again.extend(result.unfinished)
        limiter = self.cluster_limiter
        if limiter is None:
            raise ClusterLost(
                f"the batch's rate limiter failed on a worker: {result.limiter_error}"
            )
        if limiter.alive(self.client):
            return  # a successor is already hosted, or the actor was only slow
        original = self.options.limiter
        assert isinstance(original, RateLimiter)
        limiter.end(self.client)  # its successor has a topic of its own
        self.cluster_limiter = host_limiter(
            self.client,
            original,
            self.runner.limiter_margin_s,
            fenced=True,
            timeout_s=self.runner.limiter_timeout_s,
        )
        self.spec.limiter = self.cluster_limiter
        self.spec_future = self._scatter_spec()


def _is_killed(exc: BaseException) -> bool:
    return type(exc).__name__ == "KilledWorker"


def pickle_check(value: Any, what: str) -> None:
    """Raise :class:`ChunkNotSerializable` naming ``what`` if ``value`` does not pickle the way
    Dask sends it (cloudpickle)."""
    try:
        import cloudpickle  # type: ignore[import-untyped]  # comes with distributed

        cloudpickle.dumps(value)
    except Exception as exc:
        raise ChunkNotSerializable(
            f"{what} cannot be sent to the Dask cluster: {type(exc).__name__}: {exc} — items, "
            "the operation and its limiter must pickle (no open files, sockets or locks)"
        ) from exc


__all__ = [
    "ChunkFailed",
    "ChunkNotSerializable",
    "ClusterLost",
    "DaskRunner",
    "ItemAttempts",
    "RemoteError",
    "remote_error",
]
