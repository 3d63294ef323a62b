"""A connection pool split into small pools: httpcore's cost per request grows with its size.

httpcore 1.0's pool walks every connection, several times and polling each idle socket, on
every request it queues and every one it releases (encode/httpcore#1035, #929): a pool of 32
connections costs several times more CPU per request than a pool of 8, and at 100 the client,
not the server, sets the pace (measured on loopback with the test API: plain httpx at a
concurrency of 100 served 88 requests/s, the same requests over 25 pools of 4 served 1,490/s).
Requests here go to the small pool with the fewest in flight, so no request waits for a
connection while another pool has one free, and the connections in all pools together are at
least the concurrency asked for.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx

from paceline.errors import InvalidArgument

# Connections per small pool: 4 measured best (8 costs ~1.3x the CPU per request at 100).
CONNECTIONS_PER_POOL = 4


class _Released(httpx.AsyncByteStream):
    """A response body that calls ``done`` once when it is closed (the connection is free)."""

    __slots__ = ("_done", "_stream")

    def __init__(self, stream: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()


class ShardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over several small connection pools, at least ``size`` connections
    in all; each request goes to the pool with the fewest requests in flight. paceline's HTTP
    face uses it for the client it makes; pass it to a client of your own the same way:
    ``httpx.AsyncClient(transport=ShardedTransport(64), ...)`` (``transport_options`` go to
    each pool's ``httpx.AsyncHTTPTransport``: ``http2``, ``retries``, ``verify``...).

    >>> import asyncio
    >>> transport = ShardedTransport(32)
    >>> len(transport.pools), transport.connections
    (8, 32)
    >>> client = httpx.AsyncClient(transport=transport)
    >>> asyncio.run(client.aclose())
    """

    def __init__(
        self, size: int, per_pool: int = CONNECTIONS_PER_POOL, **transport_options: Any
    ) -> None:
        if size < 1 or per_pool < 1:
            raise InvalidArgument(f"size {size!r}, per_pool {per_pool!r}: both must be at least 1")
        count = math.ceil(size / per_pool)
        each = math.ceil(size / count)
        limits = httpx.Limits(max_connections=each, max_keepalive_connections=each)
        if "verify" not in transport_options:
            # One TLS context for all (loading the CA bundle takes tens of milliseconds).
            transport_options["verify"] = httpx.create_ssl_context()
        self.pools = [
            httpx.AsyncHTTPTransport(limits=limits, **transport_options) for _ in range(count)
        ]
        self.connections = each * count
        self.in_flight = [0] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        in_flight = self.in_flight
        index = in_flight.index(min(in_flight))
        in_flight[index] += 1
        try:
            response = await self.pools[index].handle_async_request(request)
        except BaseException:
            in_flight[index] -= 1
            raise

        def done() -> None:
            in_flight[index] -= 1

        # An AsyncHTTPTransport's response body is an AsyncByteStream.
        response.stream = _Released(cast(httpx.AsyncByteStream, response.stream), done)
        return response

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()
