"""Invariants over arbitrary schedules, checked with hypothesis."""

import bisect

from hypothesis import given, settings
from hypothesis import strategies as st

from paceline.policy.batch import BatchState
from paceline.policy.gcra import Gcra
from paceline.policy.limits import Limit, LimitPolicy, Reservation
from paceline.policy.rate import Rate


def max_in_any_window(starts: list[tuple[int, int]], window_ns: int) -> int:
    """Largest total weight of starts inside any half-open window [t, t + W)."""
    starts = sorted(starts)
    times = [t for t, _ in starts]
    prefix = [0]
    for _, w in starts:
        prefix.append(prefix[-1] + w)
    best = 0
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + window_ns)
        best = max(best, prefix[j] - prefix[i])
    return best


limits_st = st.lists(
    st.builds(
        lambda n, w, paced, b: Limit(Rate(n, w), burst=(max(1, min(b, n)) if paced else None)),
        st.integers(1, 12),
        st.integers(1, 5_000),
        st.booleans(),
        st.integers(1, 12),
    ),
    min_size=1,
    max_size=3,
)

step_st = st.tuples(
    st.integers(0, 3_000),  # time that passes before the request
    st.integers(1, 4),  # weight
    st.sampled_from(["wait", "give_up", "lease", "give_back"]),
    st.integers(0, 1_000),  # how long before the start a lease's permit is used, etc.
)


@settings(max_examples=300, deadline=None)
@given(limits=limits_st, steps=st.lists(step_st, max_size=60))
def test_no_window_of_any_limit_ever_holds_more_than_n(limits, steps):
    policy = LimitPolicy(limits)
    min_limit = min(lim.rate.max_requests for lim in limits)
    now = 0
    starts: list[tuple[int, int]] = []
    granted: list[tuple[int, int]] = []  # (stamp, weight) of grants that may be given back
    for advance, weight, action, extra in steps:
        now += advance
        weight = min(weight, min_limit)
        if action == "lease":
            hold = extra + 1
            count = policy.try_lease(now, weight, hold)
            # each leased permit starts somewhere in [now, now + hold]
            starts.extend((now + (extra * k) % (hold + 1), 1) for k in range(count))
            continue
        if action == "give_back" and granted:
            stamp, w = granted.pop()
            policy.give_back(stamp, w)
            starts.remove((stamp, w))  # it never started
            continue
        waited = False
        while True:
            wait = policy.try_grant(now, weight, waited)
            if wait == 0:
                starts.append((now, weight))
                granted.append((now, weight))
                break
            assert wait > 0
            if action == "give_up":
                break
            now += wait + (extra % 7)  # wake up on time or a little late
            waited = True
    for lim in limits:
        assert max_in_any_window(starts, lim.rate.window_ns) <= lim.rate.max_requests


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 50),
    lateness=st.lists(st.integers(0, 10_000), min_size=5, max_size=80),
)
def test_even_pacing_puts_at_most_k_plus_one_grants_in_k_intervals(n, lateness):
    window = 1_000_000
    g = Gcra.for_limit(n, window, burst=1)
    t_int = g.interval_ns
    now, grants = 0, []
    for late in lateness:
        wait = g.wait_ns(now, 1)
        waited = wait > 0
        now += wait + (late % t_int if waited else 0)  # sleepers wake up to T - 1 late
        g.record(now, 1, waited)
        grants.append(now)
    for k in (1, 2, 5):
        assert max_in_any_window([(t, 1) for t in grants], k * t_int) <= k + 1


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(list(range(30))),
    failures=st.sets(st.integers(0, 29)),
    ordered=st.booleans(),
)
def test_every_item_settles_exactly_once_and_ordered_streams_keep_input_order(
    order, failures, ordered
):
    state: BatchState[int] = BatchState(30, streaming=True, ordered=ordered)
    out: list[int] = []
    for index in order:
        state.settle(index, index, failed=index in failures)
        while state.ready:
            out.append(state.pop_ready())
    assert sorted(out) == list(range(30))
    if ordered:
        assert out == list(range(30))
    else:
        assert out == list(order)
    assert state.completed == 30
    assert state.failed == len(failures)
    assert state.waiting == 0


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(list(range(20))), fail_at=st.integers(0, 19))
def test_stop_on_error_stops_at_the_first_failure_and_keeps_collected_slots(order, fail_at):
    state: BatchState[str] = BatchState(20, stop_on_error=True)
    for position, index in enumerate(order):
        assert not state.stopped
        state.settle(index, f"r{index}", failed=position == fail_at)
        if state.stopped:
            assert position == fail_at
            assert state.first_failure == index
            break
    assert state.stopped
    assert [s for s in state.slots if s is not None] == [
        f"r{i}" for i in sorted(order[: fail_at + 1])
    ]


# --- limits in units: random costs, reservations and settlements (issue 13) -----------------

unit_limits_st = st.lists(
    st.builds(
        lambda unit, n, w, paced, b: Limit(
            Rate(n, w, unit), burst=(max(1, min(b, n)) if paced else None)
        ),
        st.sampled_from(["requests", "tokens"]),
        st.integers(1, 40),
        st.integers(1, 5_000),
        st.booleans(),
        st.integers(1, 40),
    ),
    min_size=1,
    max_size=3,
)

unit_step_st = st.tuples(
    st.integers(0, 3_000),  # time that passes before the step
    st.sampled_from(["reserve", "give_up", "settle", "cancel"]),
    st.integers(0, 3),  # requests reserved
    st.integers(0, 40),  # tokens reserved
    st.integers(0, 3),  # requests actually used
    st.integers(0, 100),  # tokens actually used (often more than any N: chunked overruns)
    st.integers(0, 1_000),  # lateness of a sleeper, choice of the grant to settle
)


def log_entries_fit(policy: LimitPolicy) -> None:
    """What is charged right now fits every limit in every window (entries are charges)."""
    for lim, log in zip(policy.limits, policy._logs, strict=True):
        entries = list(zip(log._times, log._counts, strict=True))
        assert max_in_any_window(entries, log.window_ns) <= lim.rate.max_requests


@settings(max_examples=300, deadline=None)
@given(limits=unit_limits_st, steps=st.lists(unit_step_st, max_size=60))
def test_no_window_of_any_limit_ever_holds_more_than_n_of_its_unit(limits, steps):
    """For random costs and settlements, what was charged never exceeds N in any window.

    Checked two ways: black box, the grants at their grant times with what they still hold
    (the estimate, less what a settlement gave back); and white box, after every step, every
    window over the log's entries (overruns included, wherever the policy stamped them). And
    no overrun is lost: a settlement raises what the limit holds by exactly the overrun.
    """
    policy = LimitPolicy(limits)
    most = {
        unit: min((lim.rate.max_requests for lim in limits if lim.rate.unit == unit), default=99)
        for unit in ("requests", "tokens")
    }
    now = 0
    grants: list[tuple[int, dict[str, int]]] = []  # (granted_ns, what it still holds at it)
    open_: list[tuple[Reservation, int]] = []  # unsettled reservations and their grant index
    for advance, action, req, tok, used_req, used_tok, extra in steps:
        now += advance
        if action in ("settle", "cancel") and open_:
            reservation, index = open_.pop(extra % len(open_))
            actual = (
                {"requests": used_req, "tokens": used_tok}
                if action == "settle"
                else {"requests": 0, "tokens": 0}
            )
            before = [log.held(now) for log in policy._logs]
            policy.settle(now, reservation, actual)
            for lim, log, held in zip(limits, policy._logs, before, strict=True):
                unit = lim.rate.unit
                delta = actual[unit] - grants[index][1][unit]
                change = log.held(now) - held
                if delta >= 0:
                    assert change == delta  # an overrun is charged in full
                else:
                    assert change in (0, delta)  # given back, unless already out of the window
                    if reservation.granted_ns > now - log.window_ns:
                        assert change == delta
            grants[index] = (
                grants[index][0],
                {u: min(grants[index][1][u], actual[u]) for u in ("requests", "tokens")},
            )
            log_entries_fit(policy)
            continue
        cost = {"requests": min(req, most["requests"]), "tokens": min(tok, most["tokens"])}
        waited = False
        for _ in range(10_000):
            result = policy.try_reserve(now, cost, waited)
            if isinstance(result, Reservation):
                open_.append((result, len(grants)))
                grants.append((now, dict(cost)))
                break
            assert result > 0
            if action == "give_up":
                break
            now += result + (extra % 7)  # wake up on time or a little late
            waited = True
        else:
            raise AssertionError("a reservation that fits every limit never got its turn")
        log_entries_fit(policy)
    for lim in limits:
        held_at_grant = [(t, cost[lim.rate.unit]) for t, cost in grants]
        assert max_in_any_window(held_at_grant, lim.rate.window_ns) <= lim.rate.max_requests
