"""Running one CLI batch: input -> items -> the async runner -> journal, output, progress.

Exit codes: 0 every item succeeded; 1 some failed; 2 usage or input error; 3 halted by a
``--halt`` rule; 130 interrupted (the journal keeps what finished; resume picks up the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

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
from paceline.cli.output import ResultWriter
from paceline.cli.spec import RunSpec, UsageError
from paceline.faces.batch import stream
from paceline.limiter import RateLimiter
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings
from paceline.policy.halt import HaltRule
from paceline.policy.rate import NS_PER_S
from paceline.policy.retry import RetryPolicy
from paceline.runners._common import auto_workers
from paceline.stores import Journal, JournalError, JournalMismatch, fingerprint_of

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HALTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SPEC_META = "cli.spec"
TICK_S = 0.2  # progress redraws
SAMPLE_S = 1.0  # timeline samples in the journal


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
    rate_limiter: Any  # what the runner takes tokens from (the limiter, or the HTTP wrapper)
    retry: RetryPolicy | None
    server_limits: Any = None


def plan_for(spec: RunSpec, total: int | None) -> Plan:
    """Concurrency, adaptive control, rate limits and retries for ``spec``."""
    fixed = spec.concurrency_limit()
    limiter = RateLimiter.from_rates(*spec.rates, burst=spec.burst) if spec.rates else None
    controller = None
    if fixed is None and spec.command == "exec":
        fixed = os.cpu_count() or 2  # like GNU parallel: one job per core
    if fixed is None:
        settings = AdaptiveSettings(initial_concurrency=auto_workers(total))
        controller = AdaptiveController(settings)
        workers: int | None = settings.max_concurrency
    else:
        workers = fixed
    retries = spec.retries
    if spec.command == "http":
        from paceline.http._face import DEFAULT_RETRY
        from paceline.http._limits import ServerLimits

        server_limits = ServerLimits(limiter, controller=controller)
        attempts = DEFAULT_RETRY.attempts if retries is None else retries + 1
        http_retry = RetryPolicy(
            attempts=attempts,
            base_s=DEFAULT_RETRY.base_s,
            cap_s=DEFAULT_RETRY.cap_s,
            retry_on=DEFAULT_RETRY.retry_on,
        )
        return Plan(workers, controller, limiter, server_limits, http_retry, server_limits)
    retry: RetryPolicy | None = None
    if retries is None and spec.command == "call":
        # Transient failures only (Throttled, TimeoutError, ConnectionError), like http.
        retry = RetryPolicy(attempts=5, base_s=0.2, cap_s=30.0)
    elif retries:
        retry = RetryPolicy(attempts=retries + 1, base_s=0.2, cap_s=30.0, retry_on=lambda e: True)
    return Plan(workers, controller, limiter, limiter, retry)


def make_operation(spec: RunSpec, plan: Plan) -> Operation:
    """The operation object for ``spec.command``."""
    if spec.command == "http":
        return HttpOperation(spec, plan.workers, plan.server_limits)
    if spec.command == "call":
        return CallOperation(spec, plan.workers or 32)
    return ExecOperation(spec)


def open_journal(spec: RunSpec, operation: Operation, fresh: bool) -> Journal | None:
    """The batch's journal (created, or reopened to resume); usage errors name the fix."""
    path = spec.journal_path()
    if path is None:
        return None
    if fresh:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(path) + suffix).unlink()
    try:
        journal = Journal.open(
            path,
            fingerprint=fingerprint_of(spec.fingerprint_text()),
            label=spec.label(),
            codec=operation.codec,
        )
    except JournalMismatch as exc:
        raise UsageError(
            f"{exc} — pass another --journal path, or --fresh to start this batch over in it"
        ) from None
    except JournalError as exc:
        raise UsageError(str(exc)) from None
    journal.set_meta(SPEC_META, spec.public().to_json())
    return journal


class Batch:
    """One run of a CLI batch."""

    def __init__(self, spec: RunSpec, display: Display, *, fresh: bool = False) -> None:
        self.spec = spec
        self.display = display
        self.fresh = fresh
        self.bad_input: Item | None = None
        self.halt_reason: str | None = None  # why the runner stopped early, if it did
        self.input_done = False
        self.metrics: Metrics | None = None
        self.run_number = 1
        # Ctrl-C (or SIGTERM): stop starting attempts, let those running finish and be
        # recorded (so nothing done is done again on resume), then stop. A second one abandons
        # the running attempts at once (they run again on resume).
        self.stopping = False
        self._main: asyncio.Task[Any] | None = None
        self._held: asyncio.Future[None] | None = None

    # -- the input ---------------------------------------------------------------------------

    async def items(self, source: RowSource, operation: Operation) -> AsyncIterator[Item]:
        stop_on_bad = self.spec.on_bad_input == "stop"
        async for row in source.aiter():
            if self.stopping:
                return
            item = to_item(operation, row, source.name)
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
                self._maybe_stop()
                raise
            metrics.attempt_ended(clock() - started, throttled=False, failed=False)
            self._maybe_stop()
            return value

        return attempt

    # -- stopping ----------------------------------------------------------------------------

    def _on_signal(self) -> None:
        if self.stopping:
            self._log("paceline: stopping now; the attempts still running will run again on resume")
            if self._main is not None:
                self._main.cancel()
            return
        self.stopping = True
        running = self.metrics.in_flight if self.metrics is not None else 0
        self._log(
            f"paceline: stopping — waiting for {running} running to finish "
            "(Ctrl-C again to stop at once)"
        )
        self._maybe_stop()

    def _maybe_stop(self) -> None:
        metrics = self.metrics
        main = self._main
        stop = self.stopping and metrics is not None and metrics.in_flight == 0
        if stop and main is not None and not main.done():
            main.cancel()

    def _install_signals(self) -> None:
        import signal

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Not on Windows or off the main thread: there, Ctrl-C cancels at once.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._on_signal)

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> int:
        spec = self.spec
        spec.check()
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
        operation = make_operation(spec, plan)
        try:
            operation.prepare(source)
            journal = open_journal(spec, operation, self.fresh)
            if journal is not None and plan.controller is not None:
                start_where_we_left(plan.controller, journal)
            try:
                return await self._run_with(source, operation, plan, journal)
            finally:
                if journal is not None:
                    journal.close()
        finally:
            await operation.close()

    async def _run_with(
        self, source: RowSource, operation: Operation, plan: Plan, journal: Journal | None
    ) -> int:
        from paceline.cli.progress import ProgressView

        spec = self.spec
        metrics = Metrics(source.total)
        self.metrics = metrics
        controller = plan.controller
        fixed = plan.workers if controller is None else None
        metrics.concurrency_limit = (
            (lambda: controller.concurrency_limit) if controller is not None else (lambda: fixed)
        )
        metrics.rate_limit_per_s = lambda: rate_limit_now(plan)

        def holds() -> None:  # what holds the batch back, shown on the progress line
            hold_from_pacing(metrics, plan.controller, plan.server_limits, time.monotonic_ns())
            metrics.hold(
                "stop", "stopping: waiting for the running attempts" if self.stopping else None
            )

        metrics.read_holds = holds
        if journal is not None:
            self.run_number = 1 + sum(1 for s in journal.samples() if s.get("kind") == "start")
            journal.add_sample(
                {
                    "kind": "start",
                    "run": self.run_number,
                    "t": time.time(),
                    "command": spec.command,
                    "concurrency": spec.concurrency,
                    "rates": list(spec.rates),
                    "adaptive": controller is not None,
                }
            )
        live = self.display.live
        if spec.out == "-" and sys.stdout.isatty():
            live = False  # results on the terminal: a redrawn bar would tear through them
        view = ProgressView(
            self.display.err,
            title=spec.label(),
            live=live,
            quiet=self.display.quiet,
        )
        self._view = view
        writer = ResultWriter.open(spec.out) if spec.out else None
        outcome = "done"
        view.start()
        ticker = asyncio.ensure_future(self._tick(view, metrics, journal))
        try:
            results = stream(
                self.items(source, operation),
                self.attempt_function(operation, metrics),
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
                adaptive=controller,
                give_up_after_s=spec.give_up_after_s(),
                on_halt=self._on_halt,
            )
            async with contextlib.aclosing(cast(AsyncGenerator[Any, None], results)) as settled:
                async for result in settled:
                    # a bad row or a duplicate id fails without an attempt of ours
                    attempted = result.attempts > 0 and not isinstance(
                        result.exception, BadInputRow
                    )
                    metrics.settled(
                        failed=not result.success, restored=result.restored, attempted=attempted
                    )
                    if writer is not None:
                        writer.write(result)
        except asyncio.CancelledError:
            outcome = "interrupted"
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if writer is not None:
                writer.close()
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
        if outcome == "interrupted":
            raise KeyboardInterrupt
        return code

    def _on_halt(self, reason: str) -> None:
        self.halt_reason = reason
        if reason.startswith("giving up"):
            self._log(f"paceline: {reason}; stopping (in flight: let finish)")

    def _verdict(self, outcome: str, metrics: Metrics) -> tuple[int, str]:
        if outcome == "interrupted":
            return EXIT_INTERRUPTED, "interrupted"
        if self.bad_input is not None:
            return EXIT_USAGE, "bad_input"
        if self.halt_reason is not None and self.halt_reason.startswith("giving up"):
            return EXIT_HALTED, "gave_up"
        rules = [HaltRule.parse(r) for r in self.spec.halt]
        fired = any(r.triggered(failed=metrics.failed, succeeded=metrics.succeeded) for r in rules)
        if rules and (fired or not self.input_done):
            return EXIT_HALTED, "halted"
        if metrics.failed:
            return EXIT_FAILED, "failed"
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
        if not self.display.quiet or reason in ("failed", "halted", "gave_up", "interrupted"):
            line = {
                "done": f"every item succeeded ({metrics.settled_count})",
                "failed": f"{metrics.failed} of {metrics.settled_count} items failed",
                "halted": f"halted by --halt {' '.join(self.spec.halt)}; "
                f"{metrics.failed} failed, {metrics.settled_count} settled",
                "interrupted": f"interrupted after {metrics.settled_count} items",
                "gave_up": f"{self.halt_reason} (--give-up-after); "
                f"{metrics.failed} failed, {metrics.settled_count} settled",
                "bad_input": "stopped at a bad input line",
            }[reason]
            err.write(f"paceline: {line} (exit {code})\n")
            if journal is not None and code != EXIT_OK:
                err.write(
                    f"paceline: journal {display_path(journal.path)} — continue with: "
                    f"paceline resume {display_path(journal.path)}"
                    + (" --retry-failed" if reason == "failed" else "")
                    + "\n"
                )


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


def rate_limit_now(plan: Plan) -> float | None:
    """The tightest rate in force now (strict, learned from headers, or adaptive), per s."""
    rates: list[float] = []
    if plan.limiter is not None:
        rates.extend(
            limit.rate.max_requests * NS_PER_S / limit.rate.window_ns
            for limit in plan.limiter.limits
        )
    server = plan.server_limits
    if server is not None and server.policy is not None:
        quota, window_s = server.policy
        rates.append(quota / window_s)
    controller = plan.controller
    if controller is not None and controller.rate_per_s is not None:
        rates.append(controller.rate_per_s)
    return min(rates) if rates else None


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

    with JournalView.open(journal_path) as stored:
        page = render_html(build_report(stored))
    try:
        Path(target).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--html {target!r}: cannot write it ({exc.strerror})") from None


def run_spec(spec: RunSpec, display: Display, *, fresh: bool = False) -> int:
    """Run a batch to its exit code (130 after Ctrl-C, with the journal committed)."""
    try:
        return asyncio.run(Batch(spec, display, fresh=fresh).run())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
