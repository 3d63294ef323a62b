"""Adaptive control against the real test API on loopback: the limit is found, not told."""

import asyncio

import httpx
import pytest

from paceline import RetryBudget, RetryPolicy, Throttled, batch_execute
from paceline.policy.adaptive import AdaptiveSettings
from paceline.testing.api_server import ApiConfig, ApiServer


class HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def operation_for(client: httpx.AsyncClient, url: str):
    async def fetch(i: int) -> dict:
        response = await client.get(f"{url}/items/{i}")
        if response.status_code == 429:
            raise Throttled(retry_after=float(response.headers.get("retry-after", 0) or 0))
        if response.status_code >= 400:
            raise HttpError(response.status_code)
        return response.json()

    return fetch


# Throttled fractions and windows of a real server in real time: alone (./dev test).
pytestmark = pytest.mark.serial


@pytest.mark.timeout(60)
@pytest.mark.parametrize("retry_after", [True, False])
def test_a_hidden_quota_is_found_and_every_item_gets_through(retry_after):
    config = ApiConfig(quota=40, window_s=0.5, retry_after=retry_after, base_latency_s=0.002)
    with ApiServer(config) as server:

        async def main():
            async with httpx.AsyncClient() as client:
                return await batch_execute(
                    range(300),
                    operation_for(client, server.url),
                    max_concurrent="auto",
                    retry=RetryPolicy(attempts=20, base_s=0.05, cap_s=1.0),
                    retry_budget=RetryBudget(ratio=1.0, floor=50),
                    adaptive=AdaptiveSettings(initial_concurrency=8),
                )

        results = asyncio.run(main())
        stats = server.stats()
    assert all(r.is_success for r in results), [r for r in results if r.is_failure][:3]
    assert [r.value["id"] for r in results] == [str(i) for i in range(300)]
    assert stats["items_served_more_than_once"] == 0
    assert stats["max_accepted_in_any_window"] <= 40
    # throttled answers stay a small share once the quota is found
    assert stats["throttled_429"] / stats["requests"] < 0.15


@pytest.mark.timeout(60)
def test_a_capacity_limit_is_found_from_503s_and_latency():
    config = ApiConfig(capacity=6, base_latency_s=0.01, load_factor=2.0)
    with ApiServer(config) as server:

        async def main():
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
                return await batch_execute(
                    range(300),
                    operation_for(client, server.url),
                    max_concurrent="auto",
                    retry=RetryPolicy(attempts=20, base_s=0.02, cap_s=0.5, retry_on=(HttpError,)),
                    retry_budget=RetryBudget(ratio=1.0, floor=50),
                    adaptive=AdaptiveSettings(initial_concurrency=32, max_concurrency=64),
                )

        results = asyncio.run(main())
        stats = server.stats()
    assert all(r.is_success for r in results)
    assert stats["max_in_flight"] <= 6
    assert stats["overloaded_503"] / stats["requests"] < 0.25


@pytest.mark.timeout(60)
def test_threads_with_max_workers_auto_find_a_hidden_quota_too():
    import json
    import urllib.error
    import urllib.request

    from paceline import BatchExecutor

    config = ApiConfig(quota=25, window_s=0.5, retry_after=False, base_latency_s=0.002)
    with ApiServer.spawn(config) as server:

        def fetch(i):
            try:
                with urllib.request.urlopen(f"{server.url}/items/{i}", timeout=10) as response:
                    return json.load(response)["id"]
            except urllib.error.HTTPError as exc:
                raise HttpError(exc.code) from None

        executor = BatchExecutor(
            stop_on_error=False,
            max_workers="auto",
            retry=RetryPolicy(attempts=30, base_s=0.05, cap_s=1.0, retry_on=(HttpError,)),
            retry_budget=RetryBudget(ratio=1.0, floor=50),
        )
        result = executor.execute_batch([lambda i=i: fetch(i) for i in range(150)])
        stats = server.stats()
    assert result.all_successful, result.failed_items[:3]
    assert result.results == [str(i) for i in range(150)]
    assert stats["max_accepted_in_any_window"] <= 25
    assert stats["throttled_429"] / stats["requests"] < 0.2
