"""A real redis-server per test module, on a free loopback port (docs/design.md, 'Shared limit
store': tested against real peers, no mocks)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paceline.testing.redis import RedisServer, redis_program


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if redis_program() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A server of the test's own, for tests that kill, restart or stop it."""
    if redis_program() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server
