"""The client's half of a shared limit, on made-up clocks: where the server's clock stands
against ours (:class:`ServerClock`) and the margin that loses least (:func:`best_margin_ns`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from paceline._ratestore.redis_store import (
    MARGIN_FLOOR_NS,
    MAX_MARGIN_NS,
    START_MARGIN_NS,
    RedisLimitStore,
    ServerClock,
    best_margin_ns,
)
from paceline.policy.limits import Limit
from paceline.policy.rate import Rate

MS = 1_000_000
S = 1_000 * MS


def test_the_quickest_round_trip_bounds_the_offset() -> None:
    clock = ServerClock()
    clock.sample(sent_ns=0, server_ns=5 * S + 40 * MS, recv_ns=80 * MS)  # 80 ms: [4.96, 5.04] s
    clock.sample(sent_ns=100 * MS, server_ns=5 * S + 100 * MS + 50_000, recv_ns=100 * MS + 100_000)
    low, high = clock.bounds(100 * MS + 100_000)
    # the 100 us trip binds: within 100 us, plus 1 ns per us of its (tiny) age
    assert 5 * S - 50_000 - 100 <= low <= 5 * S - 50_000
    assert 5 * S + 50_000 <= high <= 5 * S + 50_000 + 100


def test_bounds_widen_with_age_so_a_drifting_clock_stays_inside() -> None:
    clock = ServerClock()
    clock.sample(sent_ns=0, server_ns=S, recv_ns=0)  # an exact reading: offset 1 s
    low, high = clock.bounds(10 * S)  # ten seconds later: +-10 ms at 1,000 ppm
    assert (low, high) == (S - 10 * MS, S + 10 * MS)


def test_a_step_of_the_servers_clock_restarts_from_the_newest_round_trip() -> None:
    clock = ServerClock()
    clock.sample(sent_ns=0, server_ns=S, recv_ns=1_000)
    clock.sample(sent_ns=2 * MS, server_ns=S + 2 * MS + 300 * MS, recv_ns=2 * MS + 1_000)
    low, high = clock.bounds(2 * MS + 1_000)
    assert S + 300 * MS - 1_000 <= low < high <= S + 300 * MS + 1_000


@given(
    offset_ns=st.integers(-(10**12), 10**12),
    drift_ppm=st.integers(-500, 500),
    trips=st.lists(
        st.tuples(st.integers(0, 50 * MS), st.integers(0, 30 * MS), st.integers(0, 30 * MS)),
        min_size=1,
        max_size=30,
    ),
)
def test_the_true_offset_is_always_inside_the_bounds(
    offset_ns: int, drift_ppm: int, trips: list[tuple[int, int, int]]
) -> None:
    # The server's clock runs at (1 + drift) of ours: NTP slews at most 500 ppm.
    def server(local_ns: int) -> int:
        return offset_ns + local_ns + local_ns * drift_ppm // 1_000_000

    clock = ServerClock()
    now = 0
    for pause, there, back in trips:
        sent = now + pause
        read = sent + there
        now = read + back
        clock.sample(sent, server(read), now)
        low, high = clock.bounds(now)
        true = server(now) - now
        assert low - 1 <= true <= high + 1


def test_the_margin_covers_the_lateness_worth_covering() -> None:
    # 95 grants 1 ms late, 4 at 3 ms, one at 200 ms: covering 3 ms costs 0.2 % of a 1 s window
    # and saves 4 % of grants; covering 200 ms would cost 20 % to save 1 %.
    lates = [1 * MS] * 95 + [3 * MS] * 4 + [200 * MS]
    assert best_margin_ns(lates, S) == MARGIN_FLOOR_NS + 3 * MS
    # In a 10 s window the same 200 ms costs 2 %: still not worth 1 % of the grants.
    assert best_margin_ns(lates, 10 * S) == MARGIN_FLOOR_NS + 3 * MS
    # ... in a 100 s window it costs 0.2 %: covered.
    assert best_margin_ns(lates, 100 * S) == MARGIN_FLOOR_NS + 200 * MS


def test_the_margin_is_the_floor_without_samples_and_never_above_the_cap() -> None:
    assert best_margin_ns([], S) == MARGIN_FLOOR_NS
    assert best_margin_ns([0] * 10, S) == MARGIN_FLOOR_NS
    assert best_margin_ns([900 * MS] * 10, 3_600 * S) == MAX_MARGIN_NS


def test_a_clients_first_64_grants_book_with_the_start_margin_then_the_measured_one() -> None:
    # No Redis needed: the margin is the client's own (connections are made on first use).
    store = RedisLimitStore("redis://127.0.0.1:1/0", "k", [Limit(Rate.parse("200/s"))])
    assert store.margin_ns == START_MARGIN_NS  # before any sample
    for _ in range(63):
        store.note_lateness(1 * MS)
    assert store.margin_ns == START_MARGIN_NS  # 63 samples of 1 ms: still the start margin
    store.note_lateness(1 * MS)
    assert store.margin_ns == MARGIN_FLOOR_NS + 1 * MS  # the 64th: what the samples justify
    # a late start beyond the start margin is still covered while it is worth it
    store = RedisLimitStore("redis://127.0.0.1:1/0", "k", [Limit(Rate.parse("200/s"))])
    for _ in range(10):
        store.note_lateness(40 * MS)
    assert store.margin_ns == MARGIN_FLOOR_NS + 40 * MS
