"""ArrivalLimit: the server's count of arrivals stays within N per W whenever it counts."""

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline.policy.arrival import ArrivalLimit

S = 1_000_000_000
MS = 1_000_000


def test_requests_in_flight_hold_their_places_until_answered_and_then_one_window_more():
    limit = ArrivalLimit(2, S, margin_ns=0)
    assert limit.wait_ns(0, 1, in_flight=0) == 0
    assert limit.wait_ns(0, 1, in_flight=1) == 0
    assert limit.wait_ns(0, 1, in_flight=2) is None  # only an answer can make room
    limit.answered(100 * MS, 1)
    assert limit.wait_ns(100 * MS, 1, in_flight=1) == S  # free at 1.1 s, not at 1.0 s
    assert limit.wait_ns(S + 100 * MS - 1, 1, in_flight=1) == 1
    assert limit.wait_ns(S + 100 * MS, 1, in_flight=1) == 0
    assert limit.held(S + 100 * MS) == 0


def test_the_default_margin_lengthens_the_window_by_a_thousandth():
    limit = ArrivalLimit(1, S)
    assert limit.window_ns == S + MS
    limit.answered(0, 1)
    assert limit.wait_ns(0, 1, in_flight=0) == S + MS


def test_answers_from_before_the_limit_existed_count():
    limit = ArrivalLimit(3, S, margin_ns=0)
    limit.note_answered([10 * MS, 20 * MS])
    assert limit.held(30 * MS) == 2
    assert limit.wait_ns(30 * MS, 1, in_flight=0) == 0
    assert limit.wait_ns(30 * MS, 2, in_flight=0) == S - 20 * MS  # the first must leave


def test_weights_count_in_flight_and_answered():
    limit = ArrivalLimit(5, S, margin_ns=0)
    limit.answered(0, 3)
    assert limit.wait_ns(0, 2, in_flight=0) == 0
    assert limit.wait_ns(0, 2, in_flight=1) == S
    assert limit.wait_ns(0, 3, in_flight=3) is None
    with pytest.raises(ValueError, match="exceeds the limit of 5"):
        limit.wait_ns(0, 6, in_flight=0)
    with pytest.raises(ValueError, match="at least 1"):
        limit.wait_ns(0, 0, in_flight=0)


def simulate(limit: int, window: int, clients: int, trips: list[tuple[int, int]]) -> list[int]:
    """Clients send the given requests through the limit; request i reaches the server
    ``trips[i][0]`` after its grant and is answered ``trips[i][1]`` after that. Returns the
    arrival times; fails if some request was never sent (the limit must not deadlock)."""
    arrival_limit = ArrivalLimit(limit, window, margin_ns=0)
    events: list[tuple[int, int, str, int]] = [(0, c, "ask", c) for c in range(clients)]
    heapq.heapify(events)
    waiting_for_answer: list[int] = []
    in_flight = sent = seq = 0
    arrivals: list[int] = []
    while events:
        now, _, kind, client = heapq.heappop(events)
        seq += 1
        if kind == "answer":
            in_flight -= 1
            arrival_limit.answered(now, 1)
            for waiter in waiting_for_answer:
                heapq.heappush(events, (now, seq, "ask", waiter))
                seq += 1
            waiting_for_answer.clear()
            heapq.heappush(events, (now, seq, "ask", client))
            continue
        if sent == len(trips):
            continue
        wait = arrival_limit.wait_ns(now, 1, in_flight)
        if wait is None:
            waiting_for_answer.append(client)
        elif wait:
            heapq.heappush(events, (now + wait, seq, "ask", client))
        else:
            up, down = trips[sent]
            sent += 1
            in_flight += 1
            arrivals.append(now + up)
            heapq.heappush(events, (now + up + down, seq, "answer", client))
    assert sent == len(trips), "the limit stopped granting with requests left"
    return arrivals


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 6),
    window=st.integers(1, 50),
    clients=st.integers(1, 8),
    trips=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=60),
)
def test_never_more_than_n_arrivals_in_any_window_whatever_the_delays(
    limit: int, window: int, clients: int, trips: list[tuple[int, int]]
) -> None:
    arrivals = sorted(simulate(limit, window, clients, trips))
    for i, at in enumerate(arrivals):
        # The server's sliding log: arrivals in (at - W, at] count, this one included.
        in_window = sum(1 for other in arrivals[: i + 1] if other > at - window)
        assert in_window <= limit, (at, arrivals)


def test_the_rate_is_n_per_window_plus_the_round_trip():
    # 2 per 10 ns, every request 1 ns up and 1 ns down: a place turns over every 12 ns.
    arrivals = simulate(2, 10, clients=4, trips=[(1, 1)] * 8)
    assert arrivals == [1, 1, 13, 13, 25, 25, 37, 37]
