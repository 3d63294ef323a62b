"""Pieces of the CLI's run that are policy: plans, resumed adaptive limits, verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from paceline.cli.run import plan_for, rate_limit_now, start_where_we_left
from paceline.cli.spec import RunSpec, UsageError
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings
from paceline.stores import Journal


def test_resumed_adaptive_batch_starts_from_the_last_found_limits(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.journal", fingerprint="f") as journal:
        journal.add_sample({"kind": "start", "run": 1, "t": 0.0})
        journal.add_sample(
            {"kind": "tick", "run": 1, "t": 1.0, "rate_limit_per_s": 9.0, "concurrency_limit": 3}
        )
        journal.add_sample(
            {"kind": "tick", "run": 1, "t": 2.0, "rate_limit_per_s": 18.5, "concurrency_limit": 5}
        )
        controller = AdaptiveController(AdaptiveSettings(initial_concurrency=8))
        start_where_we_left(controller, journal)
    assert controller.rate_per_s == 18.5
    assert controller.concurrency_limit == 5


def test_a_fresh_journal_leaves_the_controller_as_it_was(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.journal", fingerprint="f") as journal:
        controller = AdaptiveController(AdaptiveSettings(initial_concurrency=8))
        start_where_we_left(controller, journal)
    assert controller.rate_per_s is None
    assert controller.concurrency_limit == 8


def test_plans() -> None:
    http = plan_for(RunSpec(command="http", input="x.jsonl", rates=["10/s", "100/min"]), 50)
    assert http.controller is not None  # -j auto: adaptive
    assert http.retry is not None
    assert http.retry.attempts == 5
    assert rate_limit_now(http) == pytest.approx(100 / 60)
    fixed = plan_for(RunSpec(command="exec", input="x.csv", concurrency="3"), None)
    assert (fixed.workers, fixed.controller, fixed.retry) == (3, None, None)
    retried = plan_for(RunSpec(command="exec", input="x.csv", retries=2), None)
    assert retried.retry is not None
    assert retried.retry.attempts == 3
    assert retried.controller is None  # exec -j auto: one per core, like GNU parallel
    with pytest.raises(UsageError, match="'zero'"):
        plan_for(RunSpec(command="call", input="x.csv", concurrency="zero"), None)


def test_an_http_label_does_not_claim_a_method_the_rows_choose() -> None:
    assert RunSpec(command="http", input="r.jsonl").label() == (
        "paceline http (requests from the input)"
    )
    assert RunSpec(command="http", input="r.jsonl", method="POST").label() == (
        "paceline http POST (urls from the input)"
    )
    assert RunSpec(command="http", input="r.csv", url="https://a.test/{id}").label() == (
        "paceline http GET https://a.test/{id}"
    )
