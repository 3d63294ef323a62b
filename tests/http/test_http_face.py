"""paceline.http against the real test API on loopback."""

import asyncio

import pytest

from paceline import ErrorCode
from paceline.http import HttpResponse, HttpStatusError, fetch_all, fetch_all_sync, stream_requests
from paceline.testing.api_server import ApiConfig, ApiServer

pytestmark = pytest.mark.timeout(60)


def test_every_request_gets_its_response_in_input_order():
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        requests = [f"{server.url}/items/{i}" for i in range(50)]
        requests.append({"url": f"{server.url}/items/post-1", "method": "post", "json": {"a": 1}})
        results = asyncio.run(fetch_all(requests))
    assert all(r.is_success for r in results)
    assert [r.value.body["id"] for r in results[:50]] == [str(i) for i in range(50)]
    assert results[-1].value.body["echo"] == {"a": 1}
    assert isinstance(results[0].value, HttpResponse)


def test_a_ratelimit_policy_header_becomes_a_strict_limit_with_no_429_after_it():
    config = ApiConfig(quota=30, window_s=0.5, headers="ietf", base_latency_s=0.002)
    # The server in its own process, as a real one is: in-process it shares the client's GIL,
    # which delays arrivals by more than the margin now and then.
    with ApiServer.spawn(config) as server:
        results = asyncio.run(fetch_all([f"{server.url}/items/{i}" for i in range(150)]))
        stats = server.stats()
    assert all(r.is_success for r in results)
    assert stats["throttled_429"] == 0
    assert stats["max_accepted_in_any_window"] <= 30
    # 150 requests at 30 per 0.5 s need at least 2 s: the limit, not luck, spaced them


def test_429_with_retry_after_is_retried_until_every_item_succeeds():
    config = ApiConfig(quota=20, window_s=0.5, retry_after=True, base_latency_s=0.002)
    with ApiServer(config) as server:
        results = asyncio.run(fetch_all([f"{server.url}/items/{i}" for i in range(60)]))
        stats = server.stats()
    assert all(r.is_success for r in results)
    assert stats["items_served_more_than_once"] == 0
    assert stats["accepted"] == 60


def test_a_404_is_a_failure_that_is_not_retried():
    with ApiServer() as server:
        results = asyncio.run(fetch_all([f"{server.url}/nowhere", f"{server.url}/items/1"]))
        stats = server.stats()
    assert results[0].is_failure
    assert isinstance(results[0].error, HttpStatusError)
    assert results[0].error.status_code == 404
    assert results[1].is_success
    assert stats["requests"] == 1  # unknown routes are not counted; and 404 was sent once


def test_server_errors_are_retried_and_classified():
    config = ApiConfig(error_rate=0.3, seed=7, base_latency_s=0.001)
    with ApiServer(config) as server:
        results = asyncio.run(fetch_all([f"{server.url}/items/{i}" for i in range(40)]))
        stats = server.stats()
    assert stats["errors_500"] > 0
    assert sum(r.is_success for r in results) >= 38
    for r in results:
        if r.is_failure:
            assert r.error_code in (ErrorCode.UNKNOWN, ErrorCode.SERVER_ERROR)


def test_a_journaled_http_batch_resumes_with_responses_restored(tmp_path):
    journal = tmp_path / "http.journal"
    with ApiServer() as server:
        first = [f"{server.url}/items/{i}" for i in range(5)]
        asyncio.run(fetch_all(first, journal=journal))
        more = [*first, f"{server.url}/items/5"]
        results = asyncio.run(fetch_all(more, journal=journal))
        stats = server.stats()
    assert stats["accepted"] == 6  # the first five were not sent again
    assert all(isinstance(r.value, HttpResponse) for r in results)
    assert results[3].value.body["id"] == "3"


def test_credentials_never_reach_results_or_the_journal(tmp_path):
    journal = tmp_path / "http.journal"
    with ApiServer() as server:
        request = {
            "url": f"{server.url}/nowhere",
            "headers": {"Authorization": "Bearer sk-secret-999"},
        }
        results = asyncio.run(fetch_all([request], journal=journal))
    assert "sk-secret-999" not in repr(results[0].error)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"sk-secret-999" not in raw


def test_a_bad_request_description_is_a_clear_error():
    async def main():
        return await fetch_all([{"method": "GET"}])

    results = asyncio.run(main())
    assert results[0].is_failure
    assert "needs 'url'" in results[0].message


def test_the_sync_face_and_the_stream_work_too():
    with ApiServer(ApiConfig(base_latency_s=0.001)) as server:
        urls = [f"{server.url}/items/{i}" for i in range(10)]
        assert [r.value.status_code for r in fetch_all_sync(urls)] == [200] * 10

        async def main():
            return [r async for r in stream_requests(iter(urls))]

        streamed = asyncio.run(main())
    assert [r.result.body["id"] for r in streamed] == [str(i) for i in range(10)]
    assert streamed[0].item_id == f"GET {urls[0]}"
