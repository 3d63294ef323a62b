"""fetch_many: keys coalesced into bulk calls, answers mapped back per key in key order."""

import asyncio

import httpx
import pytest

from paceline import ErrorCode, RetryPolicy, fetch_many
from paceline.testing import FakeRateLimiter
from paceline.testing.api_server import ApiConfig, ApiServer


def test_keys_are_chunked_and_mapped_back_in_key_order():
    calls: list[list[int]] = []

    async def lookup(ids):
        calls.append(list(ids))
        return {i: i * 10 for i in ids}

    results = asyncio.run(fetch_many(range(7), lookup, chunk_size=3, max_concurrent=1))
    assert [r.value for r in results] == [0, 10, 20, 30, 40, 50, 60]
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]


def test_limits_apply_per_bulk_call():
    limiter = FakeRateLimiter()

    async def lookup(ids):
        return dict.fromkeys(ids, True)

    asyncio.run(fetch_many(range(250), lookup, chunk_size=100, rate_limiter=limiter))
    assert limiter.acquire_count == 3


def test_a_failed_chunk_fails_each_of_its_keys_and_no_other():
    async def lookup(ids):
        if 4 in ids:
            raise ValueError("bad chunk")
        return dict.fromkeys(ids, "ok")

    results = asyncio.run(fetch_many(range(6), lookup, chunk_size=2))
    assert [r.is_success for r in results] == [True, True, True, True, False, False]
    assert results[4].message == "bad chunk"


def test_a_non_mapping_answer_is_a_clear_error():
    async def lookup(ids):
        return list(ids)

    results = asyncio.run(fetch_many([1, 2], lookup))
    assert all(r.error_code == ErrorCode.INVALID_INPUT for r in results)
    assert "not a mapping" in results[0].message


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_chunk_size_must_be_a_positive_whole_number(size):
    async def lookup(ids):
        return {}

    with pytest.raises(ValueError, match="chunk_size"):
        asyncio.run(fetch_many([1], lookup, chunk_size=size))


@pytest.mark.timeout(30)
def test_against_the_test_apis_bulk_endpoint_missing_keys_are_not_found():
    with ApiServer(ApiConfig(quota=5, window_s=0.5, retry_after=False)) as server:

        async def main():
            async with httpx.AsyncClient() as client:

                async def bulk(ids):
                    response = await client.post(f"{server.url}/bulk", json={"ids": ids})
                    response.raise_for_status()
                    return response.json()["items"]

                keys = [f"k{i}" if i % 10 else f"missing-{i}" for i in range(40)]
                return keys, await fetch_many(
                    keys, bulk, chunk_size=8, retry=RetryPolicy(attempts=5, base_s=0.05)
                )

        keys, results = asyncio.run(main())
        stats = server.stats()
    assert stats["accepted"] == 5  # 40 keys, 5 bulk calls, one quota unit each
    for key, result in zip(keys, results, strict=True):
        if key.startswith("missing"):
            assert result.error_code == ErrorCode.NOT_FOUND
        else:
            assert result.value["id"] == key
