"""ShardedTransport against the real test API on loopback."""

import asyncio
import socket

import httpx
import pytest

from paceline.http._pool import ShardedTransport
from paceline.testing.api_server import ApiConfig, ApiServer

pytestmark = pytest.mark.timeout(60)


def test_pools_together_hold_at_least_the_size_asked_for():
    for size, pools, connections in [(1, 1, 1), (4, 1, 4), (10, 3, 12), (32, 8, 32), (33, 9, 36)]:
        transport = ShardedTransport(size)
        assert (len(transport.pools), transport.connections) == (pools, connections)
    with pytest.raises(ValueError, match="size 0"):
        ShardedTransport(0)


def test_requests_go_to_the_pool_with_the_fewest_in_flight_and_are_released():
    async def main(url: str) -> tuple[list[int], list[int], list[int]]:
        transport = ShardedTransport(8)
        async with httpx.AsyncClient(transport=transport) as client:
            tasks = [asyncio.create_task(client.get(f"{url}/items/{i}")) for i in range(8)]
            while sum(transport.in_flight) < 8:
                await asyncio.sleep(0.005)
            during = list(transport.in_flight)
            responses = await asyncio.gather(*tasks)
            return during, [r.status_code for r in responses], transport.in_flight

    with ApiServer(ApiConfig(base_latency_s=0.2)) as server:
        during, statuses, after = asyncio.run(main(server.url))
        stats = server.stats()
    assert during == [4, 4]
    assert statuses == [200] * 8
    assert after == [0, 0]
    assert stats["max_in_flight"] == 8


def test_never_more_connections_in_use_than_the_pools_hold():
    async def main(url: str) -> list[int]:
        async with httpx.AsyncClient(transport=ShardedTransport(6)) as client:
            responses = await asyncio.gather(*(client.get(f"{url}/items/{i}") for i in range(60)))
        return [r.status_code for r in responses]

    with ApiServer(ApiConfig(base_latency_s=0.01)) as server:
        statuses = asyncio.run(main(server.url))
        stats = server.stats()
    assert statuses == [200] * 60
    assert stats["max_in_flight"] == 6  # 2 pools of 3, both kept busy, never more


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_failed_request_a_cancelled_one_and_a_stream_all_give_their_place_back():
    async def main(url: str, dead: str) -> None:
        transport = ShardedTransport(4)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(dead)
            assert transport.in_flight == [0]
            slow = asyncio.create_task(client.get(f"{url}/items/slow"))
            while transport.in_flight == [0]:
                await asyncio.sleep(0.005)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert transport.in_flight == [0]
            async with client.stream("GET", f"{url}/items/streamed") as response:
                assert transport.in_flight == [1]
                assert b"streamed" in await response.aread()
            assert transport.in_flight == [0]

    with ApiServer(ApiConfig(base_latency_s=0.3)) as server:
        asyncio.run(main(server.url, f"http://127.0.0.1:{free_port()}/items/1"))
