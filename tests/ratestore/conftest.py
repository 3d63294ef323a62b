"""A real redis-server per test module, on a free loopback port (docs/design.md, 'Shared limit
store': tested against real peers, no mocks)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from paceline.testing.redis import RedisServer, redis_program


def _missing() -> None:
    if "CI" in os.environ:
        pytest.fail("redis-server is not installed, and CI is set: apt-get install redis-server")
    pytest.skip("redis-server is not installed (with CI set, this fails instead)")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if redis_program() is None:
        _missing()
    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A server of the test's own, for tests that kill, restart or stop it."""
    if redis_program() is None:
        _missing()
    with RedisServer() as server:
        yield server
