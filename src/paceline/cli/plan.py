"""``--dry-run``: what a batch would do — the first items rendered, the limits, the journal —
without running anything."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
from collections.abc import Sequence
from typing import Any, TextIO

from paceline import RateLimiter
from paceline.cli.inputs import InputError, open_rows
from paceline.cli.ops import HttpOperation, to_item
from paceline.cli.run import display_path, make_operation, plan_for
from paceline.cli.spec import RunSpec, UsageError
from paceline.faces.plan import least_time_text
from paceline.policy.rate import NS_PER_S
from paceline.policy.schedule import min_duration_for_costs_ns, min_duration_ns
from paceline.redact import redact_data, redact_text
from paceline.stores import JournalError
from paceline.stores.view import JournalView

SHOWN = 5


def _shown(payload: Any) -> str:
    # redact_text over the JSON too: it masks credentials inside values (the URL's api_key=,
    # user:pass@) and under header names redact_data leaves to data (X-Session: ...).
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        data = {k: v for k, v in dataclasses.asdict(payload).items() if v not in (None, {}, "")}
        return redact_text(json.dumps(redact_data(data), default=str))
    if isinstance(payload, str):
        return redact_text(payload)
    return redact_text(json.dumps(redact_data(payload), default=str))


def _rates(typed: Sequence[str], limiter: RateLimiter | None, burst_given: bool = True) -> str:
    """The rate limits as typed, with their bursts: ``10/s, burst 5``."""
    if limiter is None:
        return "no limit of ours (the server sets it)"
    limits = limiter.limits
    names = list(typed) if len(typed) == len(limits) else [str(lim.rate) for lim in limits]
    shown = [
        f"{name}, burst {lim.rate.max_requests if lim.burst is None else lim.burst}"
        for name, lim in zip(names, limits, strict=True)
    ]
    if not burst_given:  # the CLI's default: --rate paces evenly (cli/run.py plan_for)
        return "; ".join(shown) + " (evenly paced; --burst N allows bursts)"
    whole = all(lim.burst is None for lim in limiter.limits)
    return "; ".join(shown) + (" (the whole window; --burst)" if whole else "")


def _least_time(limiter: RateLimiter | None, items: int | None) -> str:
    """What the rate limits alone allow for ``items`` first attempts (as
    :func:`paceline.dry_run` says it; retries and a slower server only add to it)."""
    if limiter is None:
        return "no rate limit of ours: as fast as the server answers"
    if items is None:
        return "unknown (a stream: the number of items is not known)"
    if items == 0:
        return "none: no item is left to run"
    ns, exact = min_duration_ns(limiter.limits, items)
    return f"{least_time_text(ns / NS_PER_S, exact)} for {items} items"


DEFAULT_ANSWERS = (
    "429, 503, 529 and a 400/403 saying rate limit -> throttled; "
    "insufficient_quota, billing or daily limit -> exhausted; 408, 5xx -> retried; "
    "other 4xx -> failed"
)


def _least_time_for_costs(limiter: RateLimiter, costs: list[dict[str, int]], items: int) -> str:
    """What the rate limits allow for these items' estimates (never settled: a batch that
    settles to less can go faster, by up to estimate/actual)."""
    if items == 0:
        return "none: no item is left to run"
    ns, exact = min_duration_for_costs_ns(limiter.limits, costs)
    return f"{least_time_text(ns / NS_PER_S, exact)} for {items} items at their estimated costs"


def _costs_of(spec: RunSpec, operation: Any, skip: int) -> list[dict[str, int]] | None:
    """Every good row's estimated cost (after the first ``skip``, which a journal holds), or
    ``None`` when the rows carry none or the input cannot be read twice (stdin)."""
    if spec.input == "-" or not (spec.counts_costs() or getattr(operation, "row_costs", False)):
        return None
    costs = []
    with contextlib.closing(open_rows(spec.input, spec.format)) as again:
        for row in itertools.islice(again, skip, None):
            if not row.ok:
                continue
            try:
                cost = operation.item(row).cost
            except (ValueError, TypeError):
                continue  # a bad row never runs
            if cost is not None:
                costs.append(cost)
    return costs


def _on_dask(spec: RunSpec) -> str:
    """What --dask changes, for the dry run: no adaptive control, per-chunk concurrency."""
    auto = spec.concurrency_limit() is None and spec.command in ("call", "http")
    return (
        (
            "no adaptive control (-j auto runs a fixed count per chunk; give -j N to choose it), "
            if auto
            else ""
        )
        + "the concurrency applies per chunk on each worker, --rate to the whole cluster"
        + (
            " (to every host at once: no per-server lanes or limits from headers)"
            if spec.command == "http"
            else ""
        )
    )


def _cluster_cost(limiter: RateLimiter) -> str:
    """What the limiter hosted on the cluster costs of the rate, and why, for the dry run."""
    from paceline.runners.dask_limiter import DEFAULT_MARGIN_S, cluster_limits, cluster_share

    share, spaced = cluster_share(limiter)
    limits, _ = cluster_limits(limiter, DEFAULT_MARGIN_S)
    longer_ms = max(lim.window_ns - lim.rate.window_ns for lim in limits) / 1e6
    windows = f"each window is {longer_ms:g} ms longer (a worker's start reaches the server later)"
    if spaced:
        return (
            f"at most {share:.3f} of the rate (0.84 measured at 50/s against nginx): starts "
            "stay 1/rate apart, as a server without burst counts them (nginx limit_req), so "
            "slots are 1/rate + 1/8 apart (a worker starts within 1/8 of its slot or gives it "
            f"back) and {windows}"
        )
    evenly = any(lim.burst == 1 for lim in limiter.limits)
    return f"at most {share:.3f} of the rate: {windows}" + (
        "; above 125/s not spaced: starts 1/rate apart on average, up to "
        f"{DEFAULT_MARGIN_S * 1e3:g} ms closer"
        if evenly
        else ""
    )


def show_plan(spec: RunSpec, out: TextIO) -> int:
    """Print the plan for ``spec``; 0, or a :class:`UsageError` for what would not run."""
    spec.check()
    try:
        source = open_rows(spec.input, spec.format)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    plan = plan_for(spec, source.total)
    operation = make_operation(spec, plan)
    try:
        if spec.dask is not None:
            from paceline.cli.dask import check_dask

            check_dask(spec, operation)
        operation.prepare(source)
        write = out.write
        write(f"dry run of {spec.label()}\n")
        total = "unknown (a stream)" if source.total is None else str(source.total)
        write(f"  input:       {source.name} ({source.format}), items: {total}\n")
        concurrency = (
            f"{plan.workers} at most in flight"
            if plan.controller is None
            else f"auto (adaptive, starting at {plan.controller.concurrency_limit})"
        )
        write(f"  concurrency: {concurrency}\n")
        if spec.dask is not None:
            write(f"  cluster:     Dask {spec.dask}; {_on_dask(spec)}\n")
        write(f"  rate:        {_rates(spec.rates, plan.limiter, spec.burst is not None)}\n")
        store = None if plan.limiter is None else plan.limiter.store
        if spec.dask is not None and plan.limiter is not None and store is None:
            write(f"  on cluster:  {_cluster_cost(plan.limiter)}\n")
        if store is not None:
            margin_ms = max(lim.window_ns - lim.rate.window_ns for lim in store.limits) / 1e6
            first = "grant" if store.first_grants == 1 else f"{store.first_grants} grants"
            write(
                f"  shared:      on {redact_text(store.url)}, key {store.key!r}, margin "
                f"{margin_ms:g} ms (--rate-margin) + the lateness each process measures"
                + (
                    f"; its first {first} +{store.first_margin_ns / 1e6:g} ms (new connections)\n"
                    if store.first_grants and store.first_margin_ns
                    else "\n"
                )
            )
        attempts = plan.retry.attempts if plan.retry is not None else 1
        write(f"  attempts:    up to {attempts} per item\n")
        if isinstance(operation, HttpOperation):
            write(f"  idempotency: {operation.idempotency.describe()}\n")
        if spec.halt:
            write(f"  halt:        {' '.join(spec.halt)}\n")
        if spec.command == "http":
            rules = spec.answer_rules()
            for rule in rules:
                write(f"  answers:     {rule.text!r} -> {rule.verdict.value}\n")
            write(f"  answers:     {'then the defaults: ' if rules else ''}{DEFAULT_ANSWERS}\n")
        path = spec.journal_path()
        counts = None
        if path is not None and path.exists():
            try:
                with JournalView.open(path) as stored:
                    counts = stored.counts()
            except JournalError as exc:
                raise UsageError(str(exc)) from None
        skipped = 0
        if counts is not None:
            skipped = counts["succeeded"] + (0 if spec.retry_failed else counts["failed"])
        to_run = None if source.total is None else max(0, source.total - skipped)
        in_units = plan.limiter is not None and any(
            lim.rate.unit != "requests" for lim in plan.limiter.limits
        )
        costs = _costs_of(spec, operation, skipped) if in_units else None
        if costs is not None and plan.limiter is not None and to_run is not None:
            write(f"  time:        {_least_time_for_costs(plan.limiter, costs, to_run)}\n")
        else:
            write(f"  time:        {_least_time(plan.limiter, to_run)}\n")
        if path is None:
            write("  journal:     none (not resumable)\n")
        elif counts is not None:
            write(
                f"  journal:     {display_path(path)} holds {counts['succeeded']} succeeded and "
                f"{counts['failed']} failed items: they would be skipped"
                + (" (failed ones rerun: --retry-failed)" if spec.retry_failed else "")
                + "\n"
            )
        else:
            write(f"  journal:     {display_path(path)} (new)\n")
        write(f"first {SHOWN} items:\n")
        rows = iter(source)
        for _ in range(SHOWN):
            row = next(rows, None)
            if row is None:
                break
            item = to_item(operation, row, source.name)
            if item.bad is not None:
                write(f"  line {item.line}: BAD INPUT — {item.bad}\n")
            else:
                write(
                    f"  line {item.line}: {redact_text(item.key)}\n      {_shown(item.payload)}\n"
                )
        return 0
    finally:
        source.close()
        asyncio.run(operation.close())
