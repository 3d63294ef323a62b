"""The Redis script against the in-process policy, on the same schedules and the same clock.

The script is driven with an injected time (its ``now`` argument, used only by tests), with the
fence off; the policy with the same integers. Every wait and every booked slot must agree
exactly (docs/design.md, 'Shared limit store')."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paceline._ratestore import RedisLimitStore
from paceline.policy.cost import as_cost
from paceline.policy.gcra import Gcra
from paceline.policy.limits import Limit, LimitPolicy, Reservation
from paceline.policy.rate import Rate
from paceline.testing.redis import RedisServer


@dataclass
class Driver:
    """The script on an injected clock: each limit's window and margin as the policy's (plus
    ``margin``: a client that measured a larger one), pruning at ``window + extra``."""

    store: RedisLimitStore
    limits: tuple[Limit, ...]
    extra: int
    margin: int = 0

    def limit_args(self) -> list[int]:
        args = [len(self.limits)]
        for lim in self.limits:
            n, w = lim.rate.max_requests, lim.window_ns
            co = w // 1024 if n > 1024 else 0
            iv = tol = 0
            if lim.burst is not None:
                g = Gcra.for_limit(n, w, lim.burst)
                iv, tol = g.interval_ns, g.tolerance_ns
            margin = w - lim.rate.window_ns + self.margin
            args += [n, lim.rate.window_ns, margin, w + self.extra, co, iv, tol]
        return args

    def reserve(self, now: int, amounts: tuple[int, ...], book: bool = True) -> list[int]:
        op = "r" if book else "t"
        return self.store.run_raw([op, now, 1_000_000, 0, *self.limit_args(), *amounts])

    def settle(self, now: int, ids: list[int], reserved: tuple[int, ...], used: list[int]) -> None:
        args: list[Any] = ["s", now, 1_000_000, 0, *self.limit_args()]
        for i, r, u in zip(ids, reserved, used, strict=True):
            args += [i, r, u]
        self.store.run_raw(args)


def _driver(
    redis_server: RedisServer, limits: list[Limit], extra: int = 0, key: str | None = None
) -> Driver:
    store = RedisLimitStore(redis_server.url, key or uuid.uuid4().hex, limits)
    return Driver(store, tuple(limits), extra)


# Today's clock in microseconds (16 digits, as the script's TIME reads): Lua formats numbers
# with 14, so a test on small times would miss every place a time goes through a string.
TODAY_US = 1_733_362_512_345_041

LIMIT_SETS = [
    [Limit(Rate(3, 100), margin_ns=0)],
    [Limit(Rate(5, 100), burst=2, margin_ns=0)],
    [Limit(Rate(4, 50), margin_ns=0), Limit(Rate(30, 400, "tokens"), margin_ns=0)],
    [Limit(Rate(2, 30), burst=1, margin_ns=0), Limit(Rate(6, 200), margin_ns=0)],
    [Limit(Rate(2000, 1000), margin_ns=0)],  # coalesced entries (N > 1024)
    [Limit(Rate(3, 100), margin_ns=20), Limit(Rate(5, 300), burst=2, margin_ns=7)],
]

reserve_op = st.tuples(
    st.just("reserve"), st.integers(0, 60), st.integers(1, 3), st.integers(0, 30)
)
settle_op = st.tuples(st.just("settle"), st.integers(0, 60), st.integers(0, 40), st.integers(0, 45))
give_back_op = st.tuples(st.just("give_back"), st.integers(0, 60), st.integers(0, 40), st.just(0))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    which=st.integers(0, len(LIMIT_SETS) - 1),
    extra=st.sampled_from([0, 7, 40]),
    ops=st.lists(st.one_of(reserve_op, settle_op, give_back_op), min_size=1, max_size=40),
)
def test_script_agrees_with_the_policy_on_every_schedule(
    redis_server: RedisServer, which: int, extra: int, ops: list[tuple[str, int, int, int]]
) -> None:
    limits = LIMIT_SETS[which]
    policy = LimitPolicy(limits)
    driver = _driver(redis_server, limits, extra)
    units = [lim.rate.unit for lim in limits]
    big = limits[0].rate.max_requests > 1024
    grants: list[tuple[Reservation, list[int], tuple[int, ...]]] = []
    now = TODAY_US
    for kind, dt, a, b in ops:
        now += dt
        if kind == "reserve":
            smallest = min(lim.rate.max_requests for lim in limits if lim.rate.unit == "requests")
            cost: dict[str, int] = {"requests": min(a * (40 if big else 1), smallest)}
            if "tokens" in units:
                cost["tokens"] = min(b, 30)
            amounts = policy.amounts(cost)
            reply = driver.reserve(now, amounts)
            expected = policy.try_reserve(now, cost)
            if isinstance(expected, int):
                assert reply[0] == expected, (now, cost)
                slot = now + expected
                granted = policy.try_reserve(slot, cost, waited=True)
                assert isinstance(granted, Reservation)
                now = slot
            else:
                assert reply[0] == 0, (now, cost)
                granted = expected
            assert reply[1] == now - reply[0]
            grants.append((granted, reply[2:], amounts))
        elif grants:
            reservation, ids, reserved = grants[a % len(grants)]
            if reservation.settled:
                continue
            actual = {units[-1]: b} if kind == "settle" else {u: 0 for u in reservation.cost}
            merged = dict(reservation.cost)
            merged.update(as_cost(actual, fill_requests=False))
            used = [merged.get(u, 0) for u in units]
            policy.settle(now, reservation, actual)
            driver.settle(now, ids, reserved, used)
    # The states agree: tries of each size, later and later, get the same answers.
    for step in range(6):
        probe = 1 + step % 2
        now += 13 * step
        expected = policy.try_reserve(now, probe)
        reply = driver.reserve(now, policy.amounts(probe), book=False)
        assert reply[0] == (expected if isinstance(expected, int) else 0), (now, probe)


def test_bookings_at_one_instant_fill_each_window_exactly(redis_server: RedisServer) -> None:
    driver = _driver(redis_server, [Limit(Rate(5, 1000), margin_ns=0)])
    waits = [driver.reserve(10_000, (1,))[0] for _ in range(17)]
    assert waits == [0] * 5 + [1000] * 5 + [2000] * 5 + [3000] * 2


def test_try_without_booking_charges_nothing(redis_server: RedisServer) -> None:
    driver = _driver(redis_server, [Limit(Rate(1, 1000), margin_ns=0)])
    assert driver.reserve(5_000, (1,))[0] == 0
    assert driver.reserve(5_100, (1,), book=False)[0] == 900
    assert driver.reserve(5_200, (1,), book=False)[0] == 800  # the try booked nothing


def test_the_server_clock_never_runs_backwards_for_the_script(redis_server: RedisServer) -> None:
    driver = _driver(redis_server, [Limit(Rate(1, 1000), margin_ns=0)])
    driver.reserve(50_000, (1,))
    reply = driver.reserve(10_000, (1,))  # an earlier "now" (a backward clock step)
    assert reply[1] == 50_000  # now = max(now, last now)
    assert reply[0] == 1000  # the window is as strict as it was


def test_a_forward_step_of_the_servers_clock_lets_at_most_n_more_into_one_real_window(
    redis_server: RedisServer,
) -> None:
    # What docs/design.md ('Clock steps of the Redis host') says a forward step can do: the
    # step moves every entry that far into the past, so they leave the window early. Five
    # grants at 10_000; then the server's clock reads 400 ahead at the same real moment.
    driver = _driver(redis_server, [Limit(Rate(5, 1000), margin_ns=0)])
    assert [driver.reserve(10_000, (1,))[0] for _ in range(5)] == [0] * 5
    waits = [driver.reserve(10_400, (1,))[0] for _ in range(6)]
    # Five more at server 11_000 = real 10_600: ten in the real window [10_000, 11_000).
    assert waits == [600] * 5 + [1600]
    # A step of a whole window or more: five more at once, 2N in one real window, no more.
    driver = _driver(redis_server, [Limit(Rate(5, 1000), margin_ns=0)])
    assert [driver.reserve(10_000, (1,))[0] for _ in range(5)] == [0] * 5
    assert [driver.reserve(13_000, (1,))[0] for _ in range(6)] == [0] * 5 + [1000]


def test_a_late_booking_is_returned_in_the_call_that_books_its_replacement(
    redis_server: RedisServer,
) -> None:
    driver = _driver(redis_server, [Limit(Rate(2, 1000), margin_ns=0)])
    assert driver.reserve(1_000, (1,))[0] == 0
    late = driver.reserve(1_000, (1,))
    args = ["r", 1_100, 1_000_000, 0, *driver.limit_args(), 1, late[2], 1]
    reply = driver.store.run_raw(args)
    assert reply[0] == 0  # the late one's permit came back first: room now
    assert driver.reserve(1_100, (1,))[0] == 900  # and only that one


def test_a_client_with_a_smaller_margin_counts_the_latest_start_of_anothers_grant(
    redis_server: RedisServer,
) -> None:
    # One per 100 ticks. A books slot 1000 with a margin of 50 (it may start up to 1050);
    # B, with no margin, must not start before 1150 (100 after A's latest start), not 1100.
    limits = [Limit(Rate(1, 100), margin_ns=0)]
    wide = _driver(redis_server, limits, extra=200)
    wide.margin = 50
    narrow = _driver(redis_server, limits, extra=200, key=wide.store.key)
    assert wide.reserve(1_000, (1,))[0] == 0
    assert narrow.reserve(1_000, (1,))[0] == 150
    # ... and the other way round: B's latest start is its slot, A's margin is its own.
    assert wide.reserve(1_000, (1,))[0] == 250  # 100 after B's slot at 1150


def _meta_keys(driver: Driver) -> list[str]:
    return list(driver.store._keys[:3])


def test_a_call_at_now_never_shortens_the_life_of_an_entry_booked_further_ahead(
    redis_server: RedisServer,
) -> None:
    # One per 100 ticks at one tick per second (so PEXPIRE's real milliseconds are long):
    # the second booking is slotted 100 ahead; a pause (or a settle, or a refused try) at now
    # used to set every key to expire one prune window after now, before that slot: the next
    # booking then found an empty log and went at once, beside the booked one.
    driver = _driver(redis_server, [Limit(Rate(1, 100), margin_ns=0)])
    raw = driver.store._sync_script().registered_client

    def args(op: str, now: int, *tail: int) -> list[Any]:
        return [op, now, 1, 0, *driver.limit_args(), *tail]

    assert driver.store.run_raw(args("r", 1_000, 1))[0] == 0
    assert driver.store.run_raw(args("r", 1_000, 1))[0] == 100  # slot 1100
    driver.store.run_raw(args("p", 1_000, 1))
    # the keys outlive the entry stamped 1100 by the prune window (100) at least
    assert all(raw.pttl(key) >= (1_100 + 100 - 1_000) * 1000 for key in _meta_keys(driver))


def test_a_give_back_of_an_id_from_before_the_keys_expired_takes_nothing(
    redis_server: RedisServer,
) -> None:
    driver = _driver(redis_server, [Limit(Rate(1, 100), margin_ns=0)])
    old = driver.reserve(1_000, (1,))
    raw = driver.store._sync_script().registered_client
    raw.delete(*_meta_keys(driver))  # expired (or a Redis restarted empty)
    new = driver.reserve(5_000, (1,))
    assert new[0] == 0
    assert new[2] != old[2]  # ids start again at now, above every earlier one
    driver.settle(5_010, [old[2]], (1,), [0])  # the old grant, returned late
    assert driver.reserve(5_020, (1,), book=False)[0] == 80  # the new one still counts


def test_a_window_edge_on_todays_clock_is_exact_to_the_tick(redis_server: RedisServer) -> None:
    # Microseconds since 1970 have 16 digits; Lua's tostring keeps 14. A window's edge written
    # into a ZRANGEBYSCORE bound with `..` was rounded to 100 us: rounded down, the search for
    # the entries to wait for began with one already out of the window, and the wait was one
    # entry short (cause B of issue 15's rare 201: the log counted one grant fewer).
    # (pruning 500 past the window, as every client does: the first entry is still kept)
    driver = _driver(redis_server, [Limit(Rate(1, 1000), margin_ns=0)], extra=500)
    now = 1_733_362_512_345_040  # a December 2024 morning, in microseconds
    assert driver.reserve(now, (1,))[0] == 0
    assert driver.reserve(now, (1,))[0] == 1000  # slot now + 1000
    # 1005 later: the first entry left the window 5 ticks ago, the second is in it
    assert driver.reserve(now + 1005, (1,), book=False)[0] == 995
