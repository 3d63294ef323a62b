"""Answers told apart, end to end: the HTTP face against the test API's GitHub-style secondary
limit and an account out of credit (issue 14; docs/design.md, 'Answers told apart')."""

from __future__ import annotations

import asyncio
import time

import pytest

from paceline import ErrorCode
from paceline.http import HttpResponse, Verdict, fetch_all
from paceline.testing.api_server import ApiConfig, ApiServer

pytestmark = pytest.mark.timeout(60)


def test_a_secondary_limit_403_is_a_throttle_and_every_item_succeeds() -> None:
    config = ApiConfig(quota=20, window_s=0.5, secondary_limit=True, base_latency_s=0.001)
    with ApiServer.spawn(config) as server:
        results = asyncio.run(fetch_all([f"{server.url}/items/{i}" for i in range(60)]))
        stats = server.stats()
    assert stats["throttled_429"] > 0  # the server did refuse, with its 403
    assert [r.is_success for r in results] == [True] * 60
    assert stats["max_accepted_in_any_window"] <= 20


def test_out_of_credit_stops_the_server_at_once_and_names_the_cause() -> None:
    with ApiServer.spawn(ApiConfig(credit=50, base_latency_s=0.001)) as server:
        started = time.monotonic()
        results = asyncio.run(
            fetch_all([f"{server.url}/items/{i}" for i in range(400)], max_concurrent=8)
        )
        elapsed_s = time.monotonic() - started
        stats = server.stats()
    assert sum(r.is_success for r in results) == 50
    failed = [r for r in results if r.is_failure]
    assert {r.error_code for r in failed} == {ErrorCode.QUOTA_EXHAUSTED}
    assert any(r.message.startswith("not sent: http://127.0.0.1:") for r in failed)
    assert all("You exceeded your current quota" in r.message for r in failed)
    # The first refusal, then at most what was in flight (8) and a worker past its gates.
    assert stats["credit_refused"] <= 8 + 2
    assert elapsed_s < 10


def test_the_journal_keeps_the_credit_and_a_resume_finishes(tmp_path: object) -> None:
    path = f"{tmp_path}/credit.journal"
    with ApiServer.spawn(ApiConfig(credit=30, base_latency_s=0.001)) as server:
        requests = [{"url": f"{server.url}/items/{i}", "id": str(i)} for i in range(100)]
        first = asyncio.run(fetch_all(requests, max_concurrent=4, journal=path))
        assert sum(r.is_success for r in first) == 30
        server.reset()  # the credit is back (30 more)
        second = asyncio.run(fetch_all(requests, max_concurrent=4, journal=path))
        assert sum(r.is_success for r in second) == 60  # 30 restored, 30 more
        server.reset()
        third = asyncio.run(fetch_all(requests, max_concurrent=4, journal=path))
        assert sum(r.is_success for r in third) == 90
        server.reset()
        last = asyncio.run(fetch_all(requests, max_concurrent=4, journal=path))
        stats = server.stats()
    assert all(r.is_success for r in last)
    assert stats["credit_used"] == 10  # only what the earlier runs had not done


def test_classify_overrides_the_default() -> None:
    def classify(response: HttpResponse) -> str | None:
        body = response.body
        if response.status_code == 403 and "secondary" in str(body):
            return "exhausted"  # the user's word: give up on this server
        return None

    config = ApiConfig(quota=5, window_s=1.0, secondary_limit=True, base_latency_s=0.001)
    with ApiServer.spawn(config) as server:
        results = asyncio.run(
            fetch_all(
                [f"{server.url}/items/{i}" for i in range(30)],
                max_concurrent=2,
                classify=classify,
            )
        )
    assert 5 <= sum(r.is_success for r in results) < 30
    assert {r.error_code for r in results if r.is_failure} == {ErrorCode.QUOTA_EXHAUSTED}
    assert Verdict("exhausted") is Verdict.EXHAUSTED
