"""Degraded mode ("split") on a real redis-server: each process beats in the store's live set,
and while the store is unreachable runs at N/k (k = the processes last seen), then returns."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
import redis

from paceline import RateLimiter
from paceline._ratestore import key_prefix
from paceline.errors import InvalidArgument, RateStoreUnavailable
from paceline.testing.redis import RedisServer


def _key() -> str:
    return f"degraded-{uuid.uuid4().hex[:8]}"


def _pair(url: str, key: str, rate: str = "20/s") -> tuple[RateLimiter, RateLimiter]:
    """Two limiters ("processes") on one key, both seen by the store: k = 2."""
    a, b = (
        RateLimiter.from_rates(rate, store=url, key=key, store_degraded="split", margin_s=0.1)
        for _ in range(2)
    )
    a.acquire()  # waits out a fresh server's fence (one window)
    b.acquire()
    a.acquire()
    return a, b


def _wait_back_on_store(limiter: RateLimiter) -> None:
    """A grant after the probe interval starts a probe in the background: wait (at most 5 s)
    until the store answered it."""
    store = limiter.store
    assert store is not None
    deadline = time.monotonic() + 5
    while store.local_since_ns is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.local_since_ns is None


def test_k_counts_the_limiters_on_one_key(redis_server: RedisServer) -> None:
    key = _key()
    a, b = _pair(redis_server.url, key)
    assert a.store is not None
    assert b.store is not None
    assert (a.store.live_seen, b.store.live_seen) == (2, 2)
    other = RateLimiter.from_rates("20/s", store=redis_server.url, key=_key())
    other.acquire()  # another key: its own live set
    assert other.store is not None
    assert other.store.live_seen == 1
    assert a.store.status() is None  # the store answers


def test_degraded_needs_a_store_and_a_known_mode() -> None:
    with pytest.raises(InvalidArgument, match="store_degraded"):
        RateLimiter.from_rates("5/s", store_degraded="split")
    with pytest.raises(InvalidArgument, match="'hold'"):
        RateLimiter.from_rates("5/s", store="redis://127.0.0.1:1/0", store_degraded="open")


@pytest.mark.serial  # real time: the grace and the probe interval
def test_a_killed_redis_splits_the_limit_then_the_store_takes_over_again(
    fresh_redis: RedisServer,
) -> None:
    key = _key()
    a, _ = _pair(fresh_redis.url, key, "20/3s")  # a window outlasting the probe interval
    held = RateLimiter.from_rates("20/3s", store=fresh_redis.url, key=key, store_outage_s=0.5)
    held.acquire()
    store = a.store
    assert store is not None
    fresh_redis.kill()
    began = time.monotonic()
    # The default grants nothing during the outage: the deadline ends it instead.
    with pytest.raises(RateStoreUnavailable):
        held.try_acquire()
    # Split: after the 1 s grace, 20/3s over k = 2 is 10 in the window, exactly.
    granted = [a.try_acquire() for _ in range(11)]
    assert time.monotonic() - began < 3.0
    assert sum(g is not None for g in granted) == 10
    assert granted[-1] is None
    status = store.status()
    assert status is not None
    assert "running at 10/3s, 1/2 of the limit" in status
    assert store.hold_reason() == "rate store unreachable: running at 10/3s, 1/2 of the limit"
    fresh_redis.start()  # empty: its fence holds a window, the store decides again
    time.sleep(1.1)  # the next probe is due within 1 s
    assert a.try_acquire() is None  # still the local share (full); it starts the probe
    _wait_back_on_store(a)
    assert store.status() is None
    assert a.try_acquire() is None  # the store decides: fenced (it restarted empty)
    # The local grants still inside the window were charged to the store on the way back.
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        assert int(client.hget(f"{key_prefix(key)}:meta", "h1") or 0) == 10
    finally:
        client.close()


@pytest.mark.serial  # real time: Redis SIGSTOPped for a few seconds
def test_a_hung_redis_splits_the_limit_for_async_callers_too(fresh_redis: RedisServer) -> None:
    a, _ = _pair(fresh_redis.url, _key())
    store = a.store
    assert store is not None
    stopper = threading.Thread(target=fresh_redis.pause, args=(3.5,))
    stopper.start()
    time.sleep(0.05)

    async def ten() -> list[float]:
        began = time.monotonic()
        done = []
        for _ in range(10):
            await a.acquire_async()
            done.append(time.monotonic() - began)
        return done

    # The first call waits out the 2 s socket timeout (past the 1 s grace), then ten
    # (20/s over k = 2) go at once on the local share; the eleventh would wait.
    done = asyncio.run(ten())
    assert done[0] > 1.9
    assert done[-1] - done[0] < 0.5  # not paced: the whole share at once
    assert a.try_acquire() is None
    assert store.local_since_ns is not None
    stopper.join()
    time.sleep(1.1)  # the next probe is due within 1 s
    assert a.try_acquire() is not None  # the local share (its grants are a window old)
    _wait_back_on_store(a)
    trips = store.round_trips
    a.acquire()  # the store grants again
    assert store.round_trips > trips
    assert store.local_since_ns is None
