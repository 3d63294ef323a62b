"""Window slots kept from the client's side: a slot frees a window after its answer."""

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from paceline.policy.slots import WindowSlots

MS = 1_000_000
S = 1_000_000_000


def test_a_taken_slot_frees_a_window_after_its_answer_a_refused_one_at_once():
    slots = WindowSlots(quota=2, window_ns=S)
    slots.start()
    slots.start()
    assert slots.wait_ns(0) is None  # both in flight: an answer says more
    slots.taken(answer_ns=10 * MS)
    assert slots.wait_ns(10 * MS) == S  # held until 1,010 ms
    slots.refused()
    assert slots.wait_ns(11 * MS) == 0
    slots.start()
    assert slots.wait_ns(12 * MS) == S - 2 * MS
    assert slots.wait_ns(S + 10 * MS) == 0


def test_slots_start_from_the_answers_given_and_late_counts_keep_their_order():
    slots = WindowSlots(quota=2, window_ns=S, answers_ns=(30 * MS, 10 * MS))
    assert slots.wait_ns(0) == S + 10 * MS
    slots.counted(answer_ns=5 * MS)  # counted before the others: it frees first
    assert slots.wait_ns(S + 6 * MS) == 4 * MS


@settings(max_examples=80, deadline=None)
@given(
    quota=st.integers(1, 12),
    delays_ms=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.booleans()), min_size=1, max_size=80
    ),
)
def test_arrivals_never_exceed_the_quota_in_any_window(quota, delays_ms):
    # Whatever the delays to the server (to) and back (back): a request's arrival comes
    # before its answer, so a slot freed a window after the answer is free at the server.
    window_ns = 100 * MS
    slots = WindowSlots(quota, window_ns)
    now = 0
    in_flight: list[tuple[int, bool]] = []  # (answer time, taken)
    arrivals: list[int] = []
    for to_ms, back_ms, taken in delays_ms:
        while True:
            in_flight.sort()
            while in_flight and in_flight[0][0] <= now:
                answer, ok = in_flight.pop(0)
                if ok:
                    slots.taken(answer)
                else:
                    slots.refused()
            wait = slots.wait_ns(now)
            if wait == 0:
                break
            answers = [answer for answer, _ in in_flight]
            now = min(answers) if wait is None else min([now + wait, *answers])
        slots.start()
        arrival = now + to_ms * MS
        if taken:
            arrivals.append(arrival)
        in_flight.append((arrival + back_ms * MS, taken))
    arrivals.sort()
    window: deque[int] = deque()
    for t in arrivals:
        window.append(t)
        while window[0] <= t - window_ns:
            window.popleft()
        assert len(window) <= quota
