"""Limits learned from a server's headers by one process, kept by every process on the key
(docs/design.md, 'Learned limits shared'): the script on an injected clock against the policy,
and the published limit read back."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paceline import RateLimiter
from paceline._ratestore import RedisLimitStore
from paceline._ratestore.learned import (
    AdaptiveShare,
    Publication,
    share_server_limit,
    share_server_limit_async,
    shared_server_limit,
)
from paceline.errors import InvalidArgument
from paceline.http._limits import ServerLimits
from paceline.policy.limits import Limit, LimitPolicy, Reservation
from paceline.policy.rate import Rate
from paceline.signals import ServerSignals
from paceline.testing import FakeClock
from paceline.testing.redis import RedisServer
from tests.ratestore.test_script import Driver, _driver


def _learn(driver: Driver, now: int, quota: int, window: int, index: int = 1) -> None:
    args: list[Any] = ["l", now, 1_000_000, 0, *driver.limit_args(), quota, window, index]
    assert driver.store.run_raw(args) == [0, now]


def test_a_learned_limit_holds_every_process_on_the_key_together(
    redis_server: RedisServer,
) -> None:
    # The user's limit allows 10 per 100 ticks; a server announced 3 per 200 to process A.
    limits = [Limit(Rate(10, 100), margin_ns=0)]
    a = _driver(redis_server, limits)
    b = _driver(redis_server, limits, key=a.store.key)  # another process on the same key
    assert [a.reserve(1_000, (1,))[0] for _ in range(2)] == [0, 0]
    _learn(a, 1_000, 3, 200)
    # B has read no header: it is held with A's two grants counted, then 200 after each.
    assert [b.reserve(1_000, (1,))[0] for _ in range(4)] == [0, 200, 200, 200]
    assert a.reserve(1_000, (1,))[0] == 400


def test_a_learned_window_longer_than_the_users_keeps_its_entries(
    redis_server: RedisServer,
) -> None:
    # The user's window is 100 ticks; the server's 1,000: entries stay counted for 1,000.
    limits = [Limit(Rate(10, 100), margin_ns=0)]
    driver = _driver(redis_server, limits)
    _learn(driver, 5_000, 2, 1_000)
    assert [driver.reserve(5_000, (1,))[0] for _ in range(2)] == [0, 0]
    assert driver.reserve(5_500, (1,))[0] == 500  # the user's window alone would say 0
    assert driver.reserve(7_000, (1,))[0] == 0


def test_the_newest_announcement_wins(redis_server: RedisServer) -> None:
    driver = _driver(redis_server, [Limit(Rate(10, 100), margin_ns=0)])
    _learn(driver, 1_000, 1, 500)
    _learn(driver, 1_000, 4, 500)  # the server raised its quota
    assert [driver.reserve(1_000, (1,))[0] for _ in range(5)] == [0, 0, 0, 0, 500]


def test_a_learned_limit_counts_on_the_requests_log_not_the_tokens_one(
    redis_server: RedisServer,
) -> None:
    limits = [Limit(Rate(100, 100, "tokens"), margin_ns=0), Limit(Rate(10, 100), margin_ns=0)]
    driver = _driver(redis_server, limits)
    _learn(driver, 1_000, 2, 100, index=2)
    assert [driver.reserve(1_000, (30, 1))[0] for _ in range(3)] == [0, 0, 100]


reserve_op = st.tuples(st.integers(0, 60), st.integers(1, 3))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user=st.sampled_from([(5, 100), (3, 50), (2000, 1000)]),
    learned=st.sampled_from([(3, 100), (4, 300), (1, 40), (1500, 2000)]),
    ops=st.lists(reserve_op, min_size=1, max_size=40),
)
def test_the_script_with_a_learned_limit_agrees_with_the_policy_of_both_limits(
    redis_server: RedisServer,
    user: tuple[int, int],
    learned: tuple[int, int],
    ops: list[tuple[int, int]],
) -> None:
    # Once learned, the script grants exactly as the in-process policy with the learned limit
    # as a second limit on the same requests.
    user_limit = Limit(Rate(*user), margin_ns=0)
    learned_limit = Limit(Rate(*learned), margin_ns=0)
    driver = _driver(redis_server, [user_limit])
    both = LimitPolicy([user_limit, learned_limit])
    now = 1_000
    _learn(driver, now, *learned, index=1)
    smallest = min(user[0], learned[0])
    for dt, amount in ops:
        now += dt
        cost = min(amount * (40 if user[0] > 1024 else 1), smallest)
        expected = both.try_reserve(now, cost)
        reply = driver.reserve(now, (cost,))
        if isinstance(expected, int):
            assert reply[0] == expected, (now, cost)
            granted = both.try_reserve(now + expected, cost, waited=True)
            assert isinstance(granted, Reservation)
            now += expected
        else:
            assert reply[0] == 0, (now, cost)
        assert reply[1] == now - reply[0]
    # The states agree: tries later and later get the same answers.
    for step in range(6):
        now += 13 * step
        expected = both.try_reserve(now, 1)
        reply = driver.reserve(now, (1,), book=False)
        assert reply[0] == (expected if isinstance(expected, int) else 0), now


def test_share_server_limit_publishes_and_reads_back(redis_server: RedisServer) -> None:
    store = RedisLimitStore(redis_server.url, uuid.uuid4().hex, [Limit(Rate.parse("100/s"))])
    assert shared_server_limit(store) is None
    heard: list[Publication] = []
    assert share_server_limit(store, 40, 2.0, heard.append) is Publication.PUBLISHED
    assert heard == [Publication.PUBLISHED]
    assert shared_server_limit(store) == (40, 2.0)
    with pytest.raises(InvalidArgument, match="count >= 1"):
        share_server_limit(store, 0, 1.0)


def test_a_limiter_without_a_requests_limit_shares_no_learned_limit(
    redis_server: RedisServer,
) -> None:
    store = RedisLimitStore(
        redis_server.url, uuid.uuid4().hex, [Limit(Rate.parse("tokens:9000/min"))]
    )
    assert share_server_limit(store, 40, 2.0) is Publication.NOT_SHARED
    assert shared_server_limit(store) is None


def test_a_limit_the_store_did_not_take_is_reported_unreachable() -> None:
    from paceline.testing.redis import free_port

    store = RedisLimitStore(
        f"redis://127.0.0.1:{free_port()}/0", uuid.uuid4().hex, [Limit(Rate.parse("100/s"))]
    )
    heard: list[Publication] = []
    assert share_server_limit(store, 40, 2.0, heard.append) is Publication.UNREACHABLE
    assert heard == [Publication.UNREACHABLE]
    assert asyncio.run(share_server_limit_async(store, 40, 2.0)) is Publication.UNREACHABLE


def test_a_publication_on_an_event_loop_is_queued_and_its_outcome_reported_when_known(
    fresh_redis: RedisServer,
) -> None:
    # On a loop's thread the round trip is a task of the loop: the call says QUEUED (it was
    # not sent yet), and ``done`` hears what became of it once the task knows.
    key = uuid.uuid4().hex
    store = RedisLimitStore(fresh_redis.url, key, [Limit(Rate.parse("100/s"))])

    async def publish(quota: int) -> tuple[Publication, list[Publication], list[Publication]]:
        heard: list[Publication] = []
        returned = share_server_limit(store, quota, 2.0, heard.append)
        before = list(heard)
        for _ in range(200):
            if heard:
                break
            await asyncio.sleep(0.01)
        return returned, before, heard

    assert asyncio.run(publish(40)) == (Publication.QUEUED, [], [Publication.PUBLISHED])
    assert shared_server_limit(store) == (40, 2.0)
    # Awaited, the answer is the outcome itself.
    assert asyncio.run(share_server_limit_async(store, 30, 2.0)) is Publication.PUBLISHED
    assert shared_server_limit(store) == (30, 2.0)
    fresh_redis.kill()
    assert asyncio.run(publish(20)) == (Publication.QUEUED, [], [Publication.UNREACHABLE])


def test_server_limits_publish_a_policy_again_until_the_store_takes_it(
    fresh_redis: RedisServer,
) -> None:
    # A policy learned while the store is down is kept by this process alone and sent again
    # with a later answer (at most once a second), until the store has it.
    key = uuid.uuid4().hex
    user = RateLimiter.from_rates("100/s", store=fresh_redis.url, key=key)
    assert user.store is not None
    clock = FakeClock()
    limits = ServerLimits(user, clock=clock)
    fresh_redis.kill()
    limits.observe(ServerSignals(quota=40, window_s=2.0))
    assert (limits.policy, limits.shared_policy) == ((40, 2.0), None)
    fresh_redis.start()
    limits.observe(ServerSignals(quota=40, window_s=2.0))  # within the second: not sent
    assert limits.shared_policy is None
    assert shared_server_limit(user.store) is None
    clock.advance(1.0)
    limits.observe(ServerSignals(quota=40, window_s=2.0))
    assert limits.shared_policy == (40, 2.0)
    assert shared_server_limit(user.store) == (40, 2.0)
    # A new policy is published at once, and only once.
    limits.observe(ServerSignals(quota=25, window_s=1.0))
    assert (limits.shared_policy, shared_server_limit(user.store)) == ((25, 1.0), (25, 1.0))
    rounds = user.store.round_trips
    limits.observe(ServerSignals(quota=25, window_s=1.0))
    assert user.store.round_trips == rounds


def _two_processes(redis_server: RedisServer) -> tuple[AdaptiveShare, AdaptiveShare]:
    key = uuid.uuid4().hex
    limits = [Limit(Rate.parse("500/s"))]
    a = AdaptiveShare(RedisLimitStore(redis_server.url, key, limits), "http://api:80")
    b = AdaptiveShare(RedisLimitStore(redis_server.url, key, limits), "http://api:80")
    return a, b


def test_a_rate_found_by_one_process_is_the_others_share(redis_server: RedisServer) -> None:
    a, b = _two_processes(redis_server)
    assert a.apply(0, None, a.exchange("read", 0.0)) is None  # nothing learned yet
    assert b.apply(0, None, b.exchange("read", 0.0)) is None
    assert a.proposal(20.0) == ("grow", 20.0)
    reply = a.exchange("grow", 20.0)
    assert reply == (40.0, 0, 2)  # 20/s in each of the 2 processes the store sees
    assert a.apply(0, 20.0, reply) is None  # its own rate is its share
    assert b.apply(0, None, b.exchange("read", 0.0)) == 20.0  # b starts from it


def test_one_congestion_event_cuts_the_shared_rate_once(redis_server: RedisServer) -> None:
    a, b = _two_processes(redis_server)
    a.exchange("read", 0.0)
    b.exchange("read", 0.0)  # both seen: k = 2
    a.apply(0, 20.0, a.exchange("grow", 20.0))
    b.apply(0, None, b.exchange("read", 0.0))
    # Both are throttled in one event and cut on their own: a reports first.
    assert a.proposal(16.0) == ("cut", 16.0)
    assert a.exchange("cut", 16.0) == (32.0, 1, 2)
    assert b.proposal(15.0) == ("cut", 15.0)
    reply = b.exchange("cut", 15.0)  # cut from version 0: already answered
    assert reply == (32.0, 1, 2)  # not 0.8 x 0.8 of the rate
    assert b.apply(0, 15.0, reply) == 16.0
    # A later event (b has seen version 1) cuts again.
    assert b.exchange("cut", 12.0) == (24.0, 2, 2)


def test_growth_only_raises_the_shared_rate(redis_server: RedisServer) -> None:
    a, b = _two_processes(redis_server)
    a.exchange("read", 0.0)
    b.exchange("read", 0.0)  # both seen: k = 2
    a.apply(0, 20.0, a.exchange("grow", 20.0))
    b.apply(0, None, b.exchange("read", 0.0))
    assert b.exchange("grow", 10.0)[0] == 40.0
    assert b.exchange("grow", 22.0)[0] == 44.0


def test_an_exchange_is_due_once_a_second_or_at_once_after_a_local_cut(
    redis_server: RedisServer,
) -> None:
    a, _ = _two_processes(redis_server)
    assert a.due(0, None)
    a.apply(0, 20.0, a.exchange("grow", 20.0))
    assert not a.due(500 * 1_000_000, 20.0)
    assert a.due(500 * 1_000_000, 15.0)  # a cut goes at once
    assert a.due(1_000 * 1_000_000, 20.0)


def test_a_process_that_leaves_no_longer_counts_in_k(redis_server: RedisServer) -> None:
    a, b = _two_processes(redis_server)
    a.exchange("read", 0.0)
    assert b.exchange("read", 0.0)[2] == 2
    a.leave()
    assert b.exchange("read", 0.0)[2] == 1


def test_one_proposal_cuts_at_most_half_the_share_and_grows_at_most_a_tenth() -> None:
    share = AdaptiveShare.__new__(AdaptiveShare)
    share._init(None, "http://api:80")
    share.apply(0, None, (60.0, 0, 3))  # a joiner: its share is 20/s
    assert share.proposal(3.9) == ("cut", 10.0)  # its first second's view: not the key's
    assert share.proposal(15.0) == ("cut", 15.0)
    assert share.proposal(58.0) == ("grow", pytest.approx(22.0))  # a slow start's doubling
    assert share.proposal(20.1) == ("read", 0.0)  # the same rate
