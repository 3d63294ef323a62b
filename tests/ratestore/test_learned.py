"""Limits learned from a server's headers by one process, kept by every process on the key
(docs/design.md, 'Learned limits shared'): the script on an injected clock against the policy,
and the published limit read back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paceline._ratestore import RedisLimitStore
from paceline._ratestore.learned import share_server_limit, shared_server_limit
from paceline.errors import InvalidArgument
from paceline.policy.limits import Limit, LimitPolicy, Reservation
from paceline.policy.rate import Rate
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
    assert share_server_limit(store, 40, 2.0)
    assert shared_server_limit(store) == (40, 2.0)
    with pytest.raises(InvalidArgument, match="count >= 1"):
        share_server_limit(store, 0, 1.0)


def test_a_limiter_without_a_requests_limit_shares_no_learned_limit(
    redis_server: RedisServer,
) -> None:
    store = RedisLimitStore(
        redis_server.url, uuid.uuid4().hex, [Limit(Rate.parse("tokens:9000/min"))]
    )
    assert not share_server_limit(store, 40, 2.0)
    assert shared_server_limit(store) is None
