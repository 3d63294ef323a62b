"""Running one CLI batch: input -> items -> the async runner -> journal, output, progress.

Exit codes: 0 every item succeeded; 1 some failed; 2 usage or input error, or the journal or
``--out`` could not be written (disk full, read-only); 3 halted by a ``--halt`` rule or given
up (``--give-up-after``: no attempt succeeded for that long); 130 interrupted by Ctrl-C, SIGTERM
or SIGHUP; 141 the reader of ``--out -`` went away (``| head``: 128 + SIGPIPE, what a shell
reports for a tool killed by it). After 2, 3, 130 and 141 the journal keeps what finished, and
``paceline resume`` picks up the rest.

A result reaches ``--out`` only once the journal has committed it, so a crash never shows an item
done that then runs again on resume. ``PACELINE_STOP_GRACE_S`` overrides how long a graceful stop
waits for the attempts in flight (``STOP_GRACE_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from paceline import RateLimiter
from paceline.cli.inputs import InputError, RowSource, open_rows
from paceline.cli.metrics import Metrics, hold_from_pacing
from paceline.cli.ops import (
    BadInputRow,
    CallOperation,
    ExecOperation,
    HttpOperation,
    Item,
    Operation,
    is_throttle,
    to_item,
)
from paceline.cli.output import (
    CommittedOutput,
    OutputClosed,
    ResultWriter,
    refuse_same_file,
    write_private,
)
from paceline.cli.share import share_adaptive
from paceline.cli.spec import RunSpec, UsageError
from paceline.errors import (
    ErrorCode,
    InvalidArgument,
    InvalidState,
    QuotaExhausted,
    RateStoreUnavailable,
)
from paceline.faces.batch import stream
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings
from paceline.policy.halt import HaltRule
from paceline.policy.limits import Limit
from paceline.policy.rate import NS_PER_S, Rate
from paceline.policy.retry import RetryBudget, RetryBudgetExhausted, RetryPolicy, remote_retry
from paceline.redact import redact_text
from paceline.runners import auto_workers
from paceline.stores import (
    Journal,
    JournalCorrupt,
    JournalError,
    JournalMismatch,
    fingerprint_of,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HALTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_OUTPUT_CLOSED = 141
SPEC_META = "cli.spec"
TICK_S = 0.2  # progress redraws
SAMPLE_S = 1.0  # timeline samples in the journal
# A graceful stop waits this long for the attempts in flight, then stops without them (they
# run again on resume). Longer than an ordinary API call (so a stop does not send it twice),
# shorter than the grace a supervisor gives before its SIGKILL (Kubernetes: 30 s), so the
# summary is printed and the journal closed by us; docker stop's 10 s needs --time 30.
STOP_GRACE_S = 20.0
# A stop ends the stream once no attempt has run for two polls this far apart: a finished
# attempt reaches the output within a few event-loop turns, and a poll waits behind them.
DRAIN_POLL_S = 0.02
DRAINED_POLLS = 2
# The CLI's journal commits at least every this many outcomes (and every 50 ms): what a
# SIGKILL can make run again is the attempts in flight plus at most about this many. A commit
# in WAL mode costs tens of microseconds, so even thousands of items/s pay under 1 % for it.
COMMIT_ROWS = 64


@dataclass(slots=True)
class Display:
    """Where and how much to tell the user."""

    err: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    live: bool | None = None  # None: when stderr is a terminal
    report: bool = True
    html: str | None = None


@dataclass(slots=True)
class Plan:
    """What the run will use, decided before it starts."""

    workers: int | None
    controller: AdaptiveController | None
    limiter: RateLimiter | None
    rate_limiter: Any  # what the runner takes tokens from (None for http: see ``lanes``)
    retry: RetryPolicy | None
    # http: a lane per server (paceline.http._servers.ServerLanes), each with its own header
    # limits and controller; ``controller`` is the first server's (and the others' template).
    lanes: Any = None


# --rate-margin's default with --rate-store: a limit shared by several machines holds for starts,
# but the server counts arrivals, and each machine's requests take their own time to get there:
# the margin must cover the spread of start-to-arrival delays among them. 50 ms covers machines
# in one region (one-way delays of 1-5 ms), the scheduling of a loaded host (arrivals spread
# 5-15 ms past their starts with 16 threads a process on a loaded 2-core machine,
# docs/benchmarks.md) and the first requests' connection set-up: at 20 ms, two commands one of
# them 8 ms further away drew one 429 in a fresh-clone CI run (tests/ratestore/test_cli_store.py).
# It costs 5 % of a 1 s window and 0.08 % of a minute's. Machines in several regions need
# --rate-margin of about their spread of one-way delays (0.1 or more).
SHARED_RATE_MARGIN_S = 0.05
# More margin for each process's first grants on a --rate-store (one per first worker): each
# opens a new connection, and those arrivals came up to ~0.1 s after their starts on a loaded
# 2-core machine (3 commands sharing a header-learned 30/s: one 429 in 8 of 12 hand runs at the
# 50 ms above). 0.15 s gives them what --rate-margin 0.2 gave every grant (0 in 8): the first
# window's entries hold 0.15 s longer once, instead of 15 % of every window.
FIRST_GRANTS_MARGIN_S = 0.15


def _margin_ns(spec: RunSpec) -> int | None:
    """--rate-margin in ns; None: the limiter's own default (a local limit: at most 1 ms)."""
    margin_s = spec.rate_margin_s
    if margin_s is None:
        margin_s = SHARED_RATE_MARGIN_S if spec.rate_store is not None else None
    if margin_s is None:
        return None
    if not margin_s >= 0:
        raise UsageError(f"--rate-margin {margin_s!r}: give seconds >= 0, e.g. 0.02")
    return round(margin_s * 1e9)


def _limiter(rates: list[str], burst: int | None, margin_ns: int | None = None) -> RateLimiter:
    """The --rate limits: requests paced evenly unless --burst says otherwise; a limit in
    another unit (tokens) is a window without even pacing unless --burst is given: an even
    schedule is never rewound when a settlement gives back the unused estimate, so it would
    hold the batch to its estimates (docs/units.md), and a token limit is a provider's bucket
    of a minute's worth, which a strict window never overdraws."""
    limits = []
    for text in rates:
        rate = Rate.parse(text)
        even = 1 if burst is None and rate.unit == "requests" else burst
        limits.append(Limit(rate, even, margin_ns))
    return RateLimiter.from_rates(*limits)


def rate_key_for(spec: RunSpec, limiter: RateLimiter) -> str:
    """The shared limit's key: ``--rate-key``, or the limits and the target's host (two
    commands with the same limits against the same host share one quota)."""
    if spec.rate_key:
        return spec.rate_key
    target = spec.base_url or spec.url or ""
    host = urllib.parse.urlsplit(target).hostname if "://" in target else None
    return RateLimiter.default_store_key(limiter.limits, host or spec.command)


def _shared(spec: RunSpec, limiter: RateLimiter | None) -> RateLimiter:
    """The --rate limits on the shared store of ``--rate-store`` (a clear error: exit 2)."""
    if limiter is None:
        raise UsageError("--rate-store shares --rate limits: give at least one --rate, e.g. 10/s")
    try:
        return RateLimiter.from_rates(
            *limiter.limits,
            store=spec.rate_store,
            key=rate_key_for(spec, limiter),
            store_outage_s=spec.rate_store_outage_s,
            store_degraded=spec.rate_store_degraded,
        )
    except InvalidArgument as exc:
        raise UsageError(f"--rate-store/--rate-key/--rate-store-degraded: {exc}") from None


def check_store(limiter: RateLimiter | None) -> None:
    """Reach the shared store once before a run: unreachable at the start is exit 2."""
    store = None if limiter is None else limiter.store
    if store is None:
        return
    try:
        store.check()
    except (RateStoreUnavailable, InvalidState) as exc:
        raise UsageError(f"--rate-store: {exc}") from None


def plan_for(spec: RunSpec, total: int | None) -> Plan:
    """Concurrency, adaptive control, rate limits and retries for ``spec``."""
    fixed = spec.concurrency_limit()
    # --rate paces evenly unless --burst says otherwise: an unknown server is more often a
    # bucket (nginx limit_req refuses back-to-back requests) than a window (issue 11).
    burst = 1 if spec.burst is None else spec.burst
    try:
        limiter = _limiter(spec.rates, spec.burst, _margin_ns(spec)) if spec.rates else None
    except ValueError as exc:  # a --burst above a --rate's count
        raise UsageError(f"--{exc}; lower --burst, or raise the --rate count") from None
    if spec.rate_store is not None:
        limiter = _shared(spec, limiter)
    controller = None
    if fixed is None and spec.dask is not None and spec.command in ("call", "http"):
        from paceline.cli.dask import DASK_CONCURRENCY

        fixed = DASK_CONCURRENCY  # no adaptive controller on a cluster (see cli/dask.py)
    if fixed is None and spec.command == "exec":
        fixed = os.cpu_count() or 2  # like GNU parallel: one job per core
    if fixed is None:
        settings = AdaptiveSettings(
            initial_concurrency=auto_workers(total),
            # A shared --rate is the sum of every process on the key, not this one's floor:
            # the controllers find their shares together (cli/share.py)
            user_rate_per_s=None if spec.rate_store is not None else user_rate_per_s(limiter),
            user_rate_even=burst == 1,
        )
        controller = AdaptiveController(settings)
        workers: int | None = settings.max_concurrency
    else:
        workers = fixed
    store = None if limiter is None else limiter.store
    if store is not None:  # each first worker's first request opens a connection
        first = fixed if fixed is not None else auto_workers(total)
        store.widen_first(first, round(FIRST_GRANTS_MARGIN_S * 1e9))
    retries = spec.retries
    if spec.command == "http":
        from paceline.http import DEFAULT_RETRY, ServerLanes, http_retry

        policy = DEFAULT_RETRY if retries is None else http_retry(retries + 1)
        if spec.dask is not None:  # no lanes: the cluster's limiter paces (cli/dask_http.py)
            return Plan(workers, None, limiter, limiter, policy)
        lanes = ServerLanes(
            limiter, controller=controller, base_url=spec.base_url, request_of=_payload
        )
        return Plan(workers, controller, limiter, None, policy, lanes)
    retry: RetryPolicy | None = None
    if retries is None and spec.command == "call":
        # Transient failures only (Throttled, TimeoutError, ConnectionError), like http.
        retry = remote_retry()
    elif retries:
        # Everything but a bad row (a row that cannot become an item never will) and an error
        # that says it will fail again (``retryable = False``: --retries N is a count, not the
        # user's word that such an error is worth another attempt).
        retry = remote_retry(attempts=retries + 1, retry_on=_worth_retrying)
    return Plan(workers, controller, limiter, limiter, retry)


def _bad_row(error: BaseException | None) -> bool:
    """A bad input row's failure (here, or rebuilt from a Dask worker: a RemoteError)."""
    return isinstance(error, BadInputRow) or getattr(error, "remote_type", None) == "BadInputRow"


def _attempts_seen(metrics: Metrics, told: Any) -> None:
    """An item's attempts on a Dask worker (a ``runners.dask_runner.ItemAttempts``), counted
    here once it is back as a local run counts them one by one: the throttled ones apart from
    the errors (the progress of a --dask run lags its workers by a chunk)."""
    if told.error_type == "BadInputRow":
        return  # a row that never became a request: no attempt of ours, as locally
    attempts = max(1, told.attempts)
    failures = attempts if not told.success else attempts - 1
    for number in range(attempts):
        metrics.attempt_started(number == 0)
        failed = number < failures  # which ones failed does not change the counts
        throttled = failed and number < told.throttled
        metrics.attempt_ended(told.duration_s, throttled=throttled, failed=failed)


def _worth_retrying(error: BaseException) -> bool:
    return not isinstance(error, BadInputRow) and getattr(error, "retryable", None) is not False


def _payload(item: Item) -> Any:
    return item.payload


def _item_cost(item: Item) -> dict[str, int]:
    # A bad row has no cost and never runs: it reserves nothing. A row without a cost is one
    # request (its usage still settles it, for a budget cap).
    if item.cost is not None:
        return item.cost
    return {"requests": 0} if item.bad is not None else {"requests": 1}


def _usage_cost(response: Any) -> Any:
    from paceline.http import usage_cost

    return usage_cost(response)


def user_rate_per_s(limiter: RateLimiter | None) -> float | None:
    """The user's tightest --rate, per second (the adaptive controller keeps to it)."""
    if limiter is None:
        return None
    rates = [
        lim.rate.max_requests * NS_PER_S / lim.rate.window_ns
        for lim in limiter.limits
        if lim.rate.unit == "requests"  # a tokens limit is no pace for starts
    ]
    return min(rates) if rates else None


def make_operation(spec: RunSpec, plan: Plan) -> Operation:
    """The operation object for ``spec.command``."""
    if spec.command == "http":
        return HttpOperation(spec, plan.workers, plan.lanes)
    if spec.command == "call":
        return CallOperation(spec, plan.workers or 32)
    return ExecOperation(spec)


def open_journal(spec: RunSpec, operation: Operation, fresh: bool) -> Journal | None:
    """The batch's journal (created, or reopened to resume); usage errors name the fix."""
    path = spec.journal_path()
    if path is None:
        return None
    check_journal_directory(path)
    try:
        if fresh:
            Journal.delete(path)  # refuses a journal another run holds open
        journal = Journal.open(
            path,
            fingerprint=fingerprint_of(spec.fingerprint_text()),
            label=spec.label(),
            codec=operation.codec,
            flush_rows=COMMIT_ROWS,
            # A kill re-runs at most the attempts in flight and one commit batch: recording
            # waits for the writer when a batch is still uncommitted (issue 10).
            max_uncommitted_rows=COMMIT_ROWS,
        )
    except JournalMismatch as exc:
        raise UsageError(
            f"{exc} — pass another --journal path, or --fresh to start this batch over in it"
        ) from None
    except JournalError as exc:
        raise UsageError(str(exc)) from None
    journal.set_meta(SPEC_META, spec.public().to_json())
    return journal


def check_journal_directory(path: Path) -> None:
    """Refuse a --journal whose directory is missing outside the working directory: a typo
    there would silently make a tree of directories. Under it (``.paceline/``), it is made."""
    parent = Path(os.path.abspath(path)).parent
    if parent.is_dir():
        return
    cwd = Path.cwd()
    if parent == cwd or cwd in parent.parents:
        return
    raise UsageError(
        f"--journal {path}: the directory {parent} does not exist; create it first "
        f"(mkdir -p {parent}), or pass a path under the current directory"
    )


def check_outputs(spec: RunSpec, html: str | None) -> None:
    """Refuse an --out or --html that would overwrite the input or the journal."""
    journal = spec.journal_path()
    protected: dict[str, Path | None] = {
        "the input": None if spec.input == "-" else Path(spec.input),
    }
    if journal is not None:
        protected["the journal"] = journal
        for suffix in ("-wal", "-shm"):
            protected[f"the journal's {suffix} file"] = Path(f"{journal}{suffix}")
    if spec.out:
        refuse_same_file("--out", spec.out, protected)
    if html:
        refuse_same_file("--html", html, {**protected, "the --out file": _path_or_none(spec.out)})


def _path_or_none(target: str | None) -> Path | None:
    return None if target in (None, "-") else Path(str(target))


def resume_hint(path: Path, *, retry_failed: bool = False) -> str:
    """The command that continues the batch of the journal at ``path``."""
    return f"paceline resume {display_path(path)}" + (" --retry-failed" if retry_failed else "")


def journal_failure(exc: JournalError, path: Path) -> str:
    """One line for a journal that failed mid-run: what happened, and how to go on."""
    if isinstance(exc, JournalCorrupt):
        return (
            f"{exc}; the other outcomes are intact: restore the journal from a backup, or start "
            f"this batch over with --fresh"
        )
    return (
        f"{exc}. The outcomes committed before are intact: fix that (free some space, make it "
        f"writable), then continue with: {resume_hint(path)}"
    )


def stop_grace_s() -> float:
    """How long a graceful stop waits for attempts in flight (``PACELINE_STOP_GRACE_S``)."""
    text = os.environ.get("PACELINE_STOP_GRACE_S")
    try:
        value = float(text) if text else STOP_GRACE_S
    except ValueError:
        raise UsageError(
            f"PACELINE_STOP_GRACE_S={text!r}: must be a number of seconds, e.g. 20"
        ) from None
    return value if value >= 0 else STOP_GRACE_S


class Batch:
    """One run of a CLI batch."""

    def __init__(self, spec: RunSpec, display: Display, *, fresh: bool = False) -> None:
        self.spec = spec
        self.display = display
        self.fresh = fresh
        self.bad_input: Item | None = None
        self.halt_reason: str | None = None  # why the runner stopped early, if it did
        # Items failed because a server said its quota is exhausted, and the first such error
        # (docs/design.md, 'Answers told apart'): exit 3, resumable.
        self.exhausted = 0
        self.exhausted_by: str | None = None
        self._inputs: dict[str, dict[str, Any]] | None = None  # see _run_with
        self.input_done = False
        self.metrics: Metrics | None = None
        self.run_number = 1
        # Ctrl-C, SIGTERM or SIGHUP (or the reader of --out - going away): stop starting
        # attempts, let those running finish and be recorded (so nothing done is done again on
        # resume), at most stop_grace_s, then stop. A second signal abandons the running
        # attempts at once (they run again on resume).
        self.stopping = False
        self.stop_grace_s = stop_grace_s()
        self.output_closed = False
        self.output_error: UsageError | None = None
        self._streaming = False
        self._main: asyncio.Task[Any] | None = None
        self._held: asyncio.Future[None] | None = None
        self._stopper: asyncio.Task[None] | None = None

    # -- the input ---------------------------------------------------------------------------

    async def items(self, source: RowSource, operation: Operation) -> AsyncIterator[Item]:
        stop_on_bad = self.spec.on_bad_input == "stop"
        async for row in source.aiter():
            if self.stopping:
                return
            item = to_item(operation, row, source.name)
            if item.extra is not None and self._inputs is not None and self.spec.out:
                self._inputs[item.key] = item.extra
            if item.bad is not None:
                if stop_on_bad:
                    self.bad_input = item
                    return
                self._log(f"skipped: {item.bad}")
            yield item
        self.input_done = True

    # -- one attempt -------------------------------------------------------------------------

    def attempt_function(self, operation: Operation, metrics: Metrics) -> Any:
        clock = time.monotonic

        async def attempt(item: Item) -> Any:
            if self.stopping:  # nothing new starts; the stop cancels this wait
                assert self._held is not None
                await self._held
            if item.bad is not None:
                raise BadInputRow(item.bad)
            item.tries += 1
            metrics.attempt_started(item.tries == 1)
            started = clock()
            try:
                value = await operation.run(item.payload)
            except asyncio.CancelledError:
                metrics.attempt_ended(clock() - started, throttled=False, failed=False)
                raise
            except Exception as exc:
                metrics.attempt_ended(clock() - started, throttled=is_throttle(exc), failed=True)
                raise
            metrics.attempt_ended(clock() - started, throttled=False, failed=False)
            return value

        return attempt

    # -- stopping ----------------------------------------------------------------------------

    def _on_signal(self) -> None:
        if self.stopping:
            self._log("paceline: stopping now; the attempts still running will run again on resume")
            self._cancel_stream()
            return
        running = self.metrics.in_flight if self.metrics is not None else 0
        self._begin_stop(
            f"paceline: stopping — waiting up to {self.stop_grace_s:g} s for {running} running "
            "to finish (Ctrl-C again to stop at once)"
        )

    def _begin_stop(self, message: str | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        if message:
            self._log(message)
        self._stopper = asyncio.ensure_future(self._stop_when_drained())

    async def _stop_when_drained(self) -> None:
        """End the stream once no attempt runs (their results delivered), or after the grace."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.stop_grace_s
        quiet = 0
        while quiet < DRAINED_POLLS:
            await asyncio.sleep(DRAIN_POLL_S)
            running = self.metrics.in_flight if self.metrics is not None else 0
            quiet = 0 if running else quiet + 1
            if running and loop.time() >= give_up:
                self._log(
                    f"paceline: {running} attempts still running after {self.stop_grace_s:g} s; "
                    "stopping without them (they run again on resume)"
                )
                break
        self._cancel_stream()

    def _cancel_stream(self) -> None:
        main = self._main
        if self._streaming and main is not None and not main.done():
            main.cancel()

    def _install_signals(self) -> None:
        import signal

        loop = asyncio.get_running_loop()
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # SIGHUP: the terminal closed
            signum = getattr(signal, name, None)
            if signum is None:  # Windows has no SIGHUP
                continue
            # Not on Windows or off the main thread: there, Ctrl-C cancels at once.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._on_signal)

    def _output_failed(self, error: BaseException) -> None:
        """The output task failed: the reader went away, or the file cannot be written."""
        if isinstance(error, OutputClosed):
            self.output_closed = True
            _silence_stdout()
        elif isinstance(error, UsageError):
            self.output_error = error
        else:
            self.output_error = UsageError(f"writing --out failed: {type(error).__name__}: {error}")
        self._begin_stop(None)

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> int:
        spec = self.spec
        spec.check()
        check_outputs(spec, self.display.html)
        self._main = asyncio.current_task()
        self._held = asyncio.get_running_loop().create_future()
        self._install_signals()
        try:
            source = open_rows(spec.input, spec.format)
        except InputError as exc:
            raise UsageError(str(exc)) from None
        try:
            return await self._run(source)
        finally:
            source.close()

    async def _run(self, source: RowSource) -> int:
        spec = self.spec
        plan = plan_for(spec, source.total)
        check_store(plan.limiter)
        operation = make_operation(spec, plan)
        try:
            if spec.dask is not None:
                from paceline.cli.dask import check_dask

                check_dask(spec, operation)
            operation.prepare(source)
            journal = open_journal(spec, operation, self.fresh)
            if journal is None:
                return await self._run_with(source, operation, plan, None)
            try:
                if plan.controller is not None:
                    start_where_we_left(plan.controller, journal)
                code = await self._run_with(source, operation, plan, journal)
            except JournalError as exc:
                _close_quietly(journal)
                raise UsageError(journal_failure(exc, journal.path)) from None
            except BaseException:
                _close_quietly(journal)
                raise
            try:
                journal.close()
            except JournalError as exc:
                raise UsageError(journal_failure(exc, journal.path)) from None
            return code
        finally:
            await operation.close()

    async def _run_with(
        self, source: RowSource, operation: Operation, plan: Plan, journal: Journal | None
    ) -> int:
        spec = self.spec
        metrics = Metrics(source.total)
        self.metrics = metrics
        controller = plan.controller
        fixed = plan.workers if controller is None else None
        metrics.concurrency_limit = (
            (lambda: concurrency_now(plan)) if controller is not None else (lambda: fixed)
        )
        metrics.rate_limit_per_s = lambda: rate_limit_now(plan)

        def holds() -> None:  # what holds the batch back, shown on the progress line
            now_ns = time.monotonic_ns()
            hold_from_pacing(metrics, *pacing_hold(plan, now_ns), now_ns)
            metrics.hold(
                "stop", "stopping: waiting for the running attempts" if self.stopping else None
            )
            store = None if plan.limiter is None else plan.limiter.store
            # Nothing starts without a grant: the line says why (and for how long, as a hold);
            # in degraded mode, at what share of the limit it runs meanwhile.
            metrics.hold("store", None if store is None else store.hold_reason())

        metrics.read_holds = holds
        if journal is not None:
            self._note_start(journal, controller is not None)
        view = self._open_view()
        # Input fields to write with the results: JSON Lines request rows' own extra fields
        # (http), and --include-input's (filled as items are read, taken as written).
        keeps_inputs = bool(spec.include_input) or (
            spec.command == "http" and source.format == "jsonl"
        )
        self._inputs = {} if keeps_inputs else None
        writer = ResultWriter.open(spec.out, self._inputs) if spec.out else None
        output = CommittedOutput(writer, journal) if writer is not None else None
        view.start()
        ticker = asyncio.ensure_future(self._tick(view, metrics, journal))
        sharer = asyncio.ensure_future(share_adaptive(plan))  # --rate-store: the learned rate
        if output is not None:
            output.start(self._output_failed)
        try:
            outcome = await self._stream(source, operation, plan, journal, output)
        finally:
            ticker.cancel()
            sharer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            with contextlib.suppress(asyncio.CancelledError):
                await sharer
            if self._stopper is not None:
                self._stopper.cancel()
            if output is not None:
                output.stop()
        if journal is not None:
            journal.flush()  # what settled is committed, so it may be shown
        if output is not None and not self.output_closed and self.output_error is None:
            try:
                output.finish()
            except OutputClosed:
                self.output_closed = True
                _silence_stdout()
            except UsageError as exc:
                self.output_error = exc
        code, reason = self._verdict(outcome, metrics)
        final = metrics.snapshot()
        view.finish(final, outcome=reason)
        if journal is not None:
            journal.add_sample(
                {
                    "kind": "end",
                    "run": self.run_number,
                    "t": time.time(),
                    "exit_code": code,
                    "reason": reason,
                    "snapshot": final.to_dict(),
                }
            )
            journal.flush()
        self._summarise(code, reason, journal)
        if reason == "interrupted":
            raise KeyboardInterrupt
        return code

    def _note_exhausted(self, message: str | None) -> None:
        self.exhausted += 1
        if self.exhausted_by is None:
            self.exhausted_by = message
            self._log(
                f"paceline: {redact_text(message or 'quota exhausted')}; nothing more is sent there"
            )

    def _on_halt(self, reason: str) -> None:
        self.halt_reason = reason
        if reason.startswith("giving up"):
            self._log(f"paceline: {reason}; stopping (in flight: let finish)")

    async def _stream(
        self,
        source: RowSource,
        operation: Operation,
        plan: Plan,
        journal: Journal | None,
        output: CommittedOutput | None,
    ) -> str:
        """Run the items through the runner until the input ends or a stop; the outcome."""
        spec, metrics = self.spec, self.metrics
        assert metrics is not None
        costs = spec.counts_costs() or getattr(operation, "row_costs", False) or spec.budget_caps()
        if costs:  # tokens per second beside the requests, against the limit in force
            metrics.unit_limits_per_s = lambda: unit_limits_now(plan)
        on_dask = spec.dask is not None
        if not on_dask:
            return await self._stream_with(source, operation, plan, journal, output, costs, None)
        from paceline.runners.dask_runner import ChunkFailed, ChunkNotSerializable, ClusterLost

        try:
            async with contextlib.AsyncExitStack() as cluster:
                try:
                    runner = await self._dask_runner(cluster)
                except Exception:
                    if self.stopping:  # a Ctrl-C reached local:N's starting workers too
                        return "interrupted"
                    raise
                return await self._stream_with(
                    source, operation, plan, journal, output, costs, runner
                )
        except (ClusterLost, ChunkFailed, ChunkNotSerializable) as exc:
            if self.stopping:
                # A Ctrl-C at a terminal reaches local:N's worker processes too (one process
                # group): their chunks end with the stop, which is not the cluster failing.
                return "interrupted"
            raise UsageError(f"--dask: {exc}") from None
        except Exception as exc:
            # A worker's error sent back as text (distributed re-raises it as a bare
            # Exception), or distributed's own: the cluster could not take the batch.
            if type(exc) is not Exception and not type(exc).__module__.startswith("distributed"):
                raise
            if self.stopping:
                return "interrupted"
            raise UsageError(
                f"--dask: the cluster could not take the batch ({exc}); every worker needs "
                "paceline, the same version as here, and a call target's module"
            ) from None

    async def _dask_runner(self, cluster: contextlib.AsyncExitStack) -> Any:
        """The Dask runner of --dask: its client opened (and a local cluster started) in a
        thread — distributed's sync API runs its own loop — and closed the same way."""
        from paceline.cli.dask import dask_client
        from paceline.runners.dask_runner import DaskRunner

        assert self.spec.dask is not None
        stack = contextlib.ExitStack()
        client = await asyncio.to_thread(stack.enter_context, dask_client(self.spec.dask))
        cluster.push_async_callback(asyncio.to_thread, stack.close)
        loop, metrics = asyncio.get_running_loop(), self.metrics
        assert metrics is not None

        def seen(told: Any) -> None:  # on the driver's thread: counted on this loop, before
            loop.call_soon_threadsafe(_attempts_seen, metrics, told)  # the item's result

        return DaskRunner(client, on_attempts=seen)

    async def _stream_with(
        self,
        source: RowSource,
        operation: Operation,
        plan: Plan,
        journal: Journal | None,
        output: CommittedOutput | None,
        costs: bool,
        runner: Any,
    ) -> str:
        spec, metrics = self.spec, self.metrics
        assert metrics is not None
        attempt: Any = self.attempt_function(operation, metrics)
        if runner is not None:  # the workers rebuild the operation (cli/dask.py)
            from paceline.cli.dask import OnWorker
            from paceline.cli.dask_http import HttpOnWorker, HttpSettings
            from paceline.runners.identity import BATCH_ID_META

            attempt = (
                HttpOnWorker(HttpSettings.of(spec, plan.workers or 1))
                if spec.command == "http"
                else OnWorker(spec, plan.workers or 1)
            )
            if journal is not None:  # the batch's id, kept as stream() keeps it (first use)
                stored_id = journal.get_meta(BATCH_ID_META)
                if stored_id is None:
                    journal.set_meta(BATCH_ID_META, attempt.batch_id)
                else:
                    attempt.batch_id = str(stored_id)
        results = stream(
            self.items(source, operation),
            attempt,
            plan.workers,
            ordered=spec.keep_order,
            rate_limiter=plan.rate_limiter,
            retry=plan.retry,
            halt=spec.halt or None,
            # http times the whole attempt in its sender, whose error names the URL
            timeout_s=None if spec.command == "http" else spec.timeout_s,
            journal=journal,
            retry_failed=spec.retry_failed,
            key=_item_key,
            item_id=_item_key,
            adaptive=plan.controller if plan.lanes is None else None,
            give_up_after_s=spec.give_up_after_s(),
            on_halt=self._on_halt,
            lanes=plan.lanes,
            # Costs (a --rate in tokens, or JSON Lines rows that carry "cost"): each item's
            # estimate, settled from the answer's usage.
            cost=_item_cost if costs else None,
            actual_cost=_usage_cost if costs else None,
            runner=runner,
            codec=operation.codec if runner is not None else None,
        )
        self._streaming = True
        try:
            async with contextlib.aclosing(cast(AsyncGenerator[Any, None], results)) as settled:
                async for result in settled:
                    # a bad row or a duplicate id fails without an attempt of ours
                    attempted = result.attempts > 0 and not _bad_row(result.exception)
                    if result.error_code is ErrorCode.QUOTA_EXHAUSTED:
                        self._note_exhausted(result.error)
                    metrics.settled(
                        failed=not result.success,
                        restored=result.restored,
                        attempted=attempted,
                        budget_exhausted=isinstance(result.exception, RetryBudgetExhausted),
                    )
                    if costs and result.success and not result.restored:
                        used = _usage_cost(result.result)
                        if used is not None:
                            metrics.used(dict(used))
                    if output is not None:
                        output.add(result)
        except asyncio.CancelledError:
            if not self.stopping:
                raise  # not our stop: let it through
            _uncancel()
            return "interrupted"
        except RateStoreUnavailable as exc:  # longer than the run allows: stop, resumable
            self.halt_reason = str(exc)
            self._log(f"paceline: {exc}; stopping (exit 3): run the command again to resume")
            return "store_unreachable"
        except QuotaExhausted as exc:  # the limiter: a process on the --rate-store key was told
            self.halt_reason = f"quota exhausted: {exc}"
            self._note_exhausted(str(exc))
            return "done"
        finally:
            self._streaming = False
        return "interrupted" if self.stopping else "done"

    def _note_start(self, journal: Journal, adaptive: bool) -> None:
        spec = self.spec
        self.run_number = 1 + sum(1 for s in journal.samples() if s.get("kind") == "start")
        journal.add_sample(
            {
                "kind": "start",
                "run": self.run_number,
                "t": time.time(),
                "command": spec.command,
                "concurrency": spec.concurrency,
                "rates": list(spec.rates),
                "adaptive": adaptive,
            }
        )

    def _open_view(self) -> Any:
        from paceline.cli.progress import ProgressView

        live = self.display.live
        if self.spec.out == "-" and sys.stdout.isatty():
            live = False  # results on the terminal: a redrawn bar would tear through them
        view = ProgressView(
            self.display.err,
            title=self.spec.label(),
            live=live,
            quiet=self.display.quiet,
        )
        self._view = view
        return view

    def _verdict(self, outcome: str, metrics: Metrics) -> tuple[int, str]:
        if self.output_error is not None:
            return EXIT_USAGE, "output_failed"
        if self.output_closed:
            return EXIT_OUTPUT_CLOSED, "output_closed"
        if outcome == "interrupted":
            return EXIT_INTERRUPTED, "interrupted"
        if outcome == "store_unreachable":
            return EXIT_HALTED, "halted"
        if self.bad_input is not None:
            return EXIT_USAGE, "bad_input"
        if self.exhausted or (
            self.halt_reason is not None and self.halt_reason.startswith("quota exhausted")
        ):
            return EXIT_HALTED, "exhausted"
        if self.halt_reason is not None and self.halt_reason.startswith("giving up"):
            return EXIT_HALTED, "gave_up"
        rules = [HaltRule.parse(r) for r in self.spec.halt]
        fired = any(
            r.triggered(failed=metrics.failed, succeeded=metrics.succeeded) for r in rules
        ) or (self.halt_reason or "").startswith("halt rule")
        if rules and (fired or not self.input_done):
            return EXIT_HALTED, "halted"
        if metrics.failed:
            return EXIT_FAILED, "failed"
        if metrics.settled_count == 0:
            return EXIT_OK, "empty"
        return EXIT_OK, "done"

    async def _tick(self, view: Any, metrics: Metrics, journal: Journal | None) -> None:
        next_sample = time.monotonic() + SAMPLE_S
        while True:
            await asyncio.sleep(TICK_S)
            snapshot = metrics.snapshot()
            view.update(snapshot)
            now = time.monotonic()
            if journal is not None and now >= next_sample:
                next_sample = now + SAMPLE_S
                sample = {"kind": "tick", "run": self.run_number, "t": time.time()}
                sample.update(snapshot.to_dict())
                with contextlib.suppress(JournalError):
                    journal.add_sample(sample)

    def _log(self, message: str) -> None:
        view = getattr(self, "_view", None)
        if view is not None:
            view.log(message)
        elif not self.display.quiet:
            self.display.err.write(message + "\n")

    def _summarise(self, code: int, reason: str, journal: Journal | None) -> None:
        err = self.display.err
        metrics = self.metrics
        assert metrics is not None
        if self.output_error is not None:
            hint = (
                f"; the journal has every outcome: {resume_hint(journal.path)}" if journal else ""
            )
            raise UsageError(f"{self.output_error}{hint}")
        if reason == "output_closed":  # like any Unix tool at the end of a pipe: one line at most
            if journal is not None:
                err.write(
                    f"paceline: the reader of the output went away after {metrics.settled_count} "
                    f"items; continue with: {resume_hint(journal.path)}\n"
                )
            return
        if self.bad_input is not None:
            kept = " and kept in the journal" if journal is not None else ""
            err.write(
                f"paceline: error: {self.bad_input.bad} (stopped there; the "
                f"{metrics.settled_count} items read before it ran{kept})\n"
            )
        if journal is not None and self.display.report and not self.display.quiet:
            from paceline.cli.report import build_report, render_text
            from paceline.stores.view import JournalView

            with JournalView.open(journal.path) as stored:
                err.write(render_text(build_report(stored)) + "\n")
        if journal is not None and self.display.html:
            write_html(journal.path, self.display.html)
            if not self.display.quiet:
                err.write(f"paceline: report written to {self.display.html}\n")
        stopped = ("failed", "halted", "gave_up", "interrupted", "exhausted")
        if not self.display.quiet or reason in stopped:
            line = {
                "done": f"every item succeeded ({metrics.settled_count})",
                "empty": "the input has no items: nothing to do",
                "failed": f"{metrics.failed} of {metrics.settled_count} items failed",
                "halted": f"halted by --halt {' '.join(self.spec.halt)}; "
                f"{metrics.failed} failed, {metrics.settled_count} settled",
                "interrupted": f"interrupted after {metrics.settled_count} items",
                "gave_up": f"{self.halt_reason} (--give-up-after); "
                f"{metrics.failed} failed, {metrics.settled_count} settled",
                "bad_input": "stopped at a bad input line",
                "exhausted": f"stopped: a quota is exhausted; {metrics.failed} failed, "
                f"{metrics.settled_count} settled; resume when the quota is back",
            }[reason]
            err.write(f"paceline: {line} (exit {code})\n")
            if metrics.budget_exhausted:
                err.write(budget_line(metrics.budget_exhausted) + "\n")
            if journal is not None and code != EXIT_OK:
                hint = resume_hint(journal.path, retry_failed=reason == "failed")
                raised = _raised_cap(self.halt_reason)
                if raised:  # a budget cap: resuming needs it raised (--halt replaces it)
                    hint += f" --halt {raised}"
                err.write(
                    f"paceline: journal {display_path(journal.path)} — continue with: {hint}\n"
                )


def _raised_cap(reason: str | None) -> str | None:
    """For a batch a budget cap stopped (``halt rule soon,tokens=3000: 3012 tokens used``),
    the rule with its cap doubled, to resume with; else ``None``.

    >>> _raised_cap("halt rule soon,tokens=3000: 3012 tokens used")
    'soon,tokens=6000'
    >>> _raised_cap("halt rule soon,fail=5: 5 failed, 1 succeeded") is None
    True
    """
    if not reason or not reason.startswith("halt rule "):
        return None
    rule = HaltRule.parse(reason[len("halt rule ") :].partition(":")[0])
    if not rule.budget:
        return None
    return f"{rule.when},{rule.kind}={int(2 * rule.threshold)}"


def budget_line(failed: int) -> str:
    """The summary's line for items the spent retry budget failed (the CLI's default budget).

    >>> budget_line(3).split(" (")[0]
    'paceline: the retry budget ran out: 3 items failed with retries left'
    >>> budget_line(3).split(" (")[1]
    'a batch retries at most 20 % of its first attempts + 10; throttles spend none of it)'
    """
    budget = RetryBudget()
    noun = "item" if failed == 1 else "items"
    return (
        f"paceline: the retry budget ran out: {failed:,} {noun} failed with retries left (a "
        f"batch retries at most {budget.ratio * 100:g} % of its first attempts + {budget.floor}; "
        "throttles spend none of it)"
    )


def _close_quietly(journal: Journal) -> None:
    """Close a journal while another error is on its way out (that one is reported)."""
    with contextlib.suppress(JournalError):
        journal.close()


def _silence_stdout() -> None:
    """The reader of stdout went away: send what is still buffered (and the interpreter's
    flush at exit) to /dev/null instead of a BrokenPipeError."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _uncancel() -> None:
    """Forget our own stop's cancel (Python 3.11+ counts them; later awaits must not see it)."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()


def start_where_we_left(controller: AdaptiveController, journal: Journal) -> None:
    """A resumed adaptive batch starts from the limits the last run had found (its last
    sample), instead of learning them again with a burst of 429s."""
    ticks = [s for s in journal.samples() if s.get("kind") == "tick"]
    if not ticks:
        return
    last = ticks[-1]
    rate, concurrency = last.get("rate_limit_per_s"), last.get("concurrency_limit")
    settings = controller.settings
    if isinstance(rate, (int, float)) and rate > 0:
        controller.rate_per_s = min(
            max(float(rate), settings.min_rate_per_s), settings.max_rate_per_s
        )
    if isinstance(concurrency, int) and concurrency > 0:
        controller.concurrency = float(
            min(max(concurrency, settings.min_concurrency), settings.max_concurrency)
        )


def _item_key(item: Item) -> str:
    return item.key


def unit_limits_now(plan: Plan) -> dict[str, float]:
    """The tightest limit per second of each unit other than requests: a --rate in tokens,
    else what the servers' token headers said (per minute; several servers add up).

    >>> from paceline import RateLimiter
    >>> plan = Plan(1, None, RateLimiter.from_rates("10/s", "tokens:90000/min"), None, None)
    >>> unit_limits_now(plan)
    {'tokens': 1500.0}
    """
    limits: dict[str, float] = {}
    if plan.limiter is not None:
        for limit in plan.limiter.limits:
            unit = limit.rate.unit
            if unit != "requests":
                per_s = limit.rate.max_requests * NS_PER_S / limit.rate.window_ns
                limits[unit] = min(per_s, limits.get(unit, per_s))
    learned: dict[str, float] = {}
    for _, server, _ in plan.lanes.servers() if plan.lanes is not None else ():
        for unit, per_min in server.unit_limits.items():
            learned[unit] = learned.get(unit, 0.0) + per_min / 60
    return {**learned, **limits}


def rate_limit_now(plan: Plan) -> float | None:
    """The tightest rate in force now (strict, learned from headers, or adaptive), per s.
    With several servers, each is paced on its own: their rates add up (``None`` while one of
    them has none)."""
    rates: list[float] = []
    if plan.limiter is not None:
        rates.extend(
            limit.rate.max_requests * NS_PER_S / limit.rate.window_ns
            for limit in plan.limiter.limits
            if limit.rate.unit == "requests"  # a tokens limit is shown beside (unit_limits_now)
        )
    servers = list(plan.lanes.servers()) if plan.lanes is not None else []
    if not servers:
        servers = [(None, None, plan.controller)]
    total = 0.0
    for _, limits, controller in servers:
        own: list[float] = []
        if limits is not None and limits.policy is not None:
            quota, window_s = limits.policy
            own.append(quota / window_s)
        shown = None if controller is None else controller.shown_rate_per_s
        if shown is not None:
            own.append(shown)
        if not own:
            break
        total += min(own)
    else:
        rates.append(total)
    return min(rates) if rates else None


def concurrency_now(plan: Plan) -> int | None:
    """The adaptive concurrency limit now: with several servers, the sum of theirs (within
    the workers)."""
    assert plan.controller is not None
    servers = list(plan.lanes.servers()) if plan.lanes is not None else []
    limits: list[int] = [c.concurrency_limit for _, _, c in servers if c is not None]
    if not limits:
        return plan.controller.concurrency_limit
    total = sum(limits)
    return total if plan.workers is None else min(total, plan.workers)


def pacing_hold(plan: Plan, now_ns: int) -> tuple[Any, Any]:
    """The controller and header limits whose hold holds the whole batch back now: with
    several servers, the one held the shortest when every server is held, else none (one
    server's pause holds only its own requests)."""
    if plan.lanes is None:
        return plan.controller, None
    held: tuple[int, Any, Any] | None = None
    for _, limits, controller in plan.lanes.servers():
        pause_ns = controller.pause_until_ns if controller is not None else 0
        until_ns = max(pause_ns, limits.hold_until_ns)
        if until_ns <= now_ns:
            return None, None
        if held is None or until_ns < held[0]:
            held = (until_ns, controller, limits)
    return (None, None) if held is None else (held[1], held[2])


def display_path(path: Path) -> str:
    """``path`` relative to the current directory when it is under it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def write_html(journal_path: Path, target: str) -> None:
    """Write the HTML report of a journal to ``target``."""
    from paceline.cli.report import build_report
    from paceline.cli.report_html import render_html
    from paceline.stores.view import JournalView

    refuse_same_file("--html", target, {"the journal": Path(journal_path)})
    with JournalView.open(journal_path) as stored:
        page = render_html(build_report(stored))
    try:
        write_private(target, page)
    except OSError as exc:
        raise UsageError(f"--html {target!r}: cannot write it ({exc.strerror})") from None


def run_spec(spec: RunSpec, display: Display, *, fresh: bool = False) -> int:
    """Run a batch to its exit code (130 after Ctrl-C, with the journal committed)."""
    try:
        return asyncio.run(Batch(spec, display, fresh=fresh).run())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
