"""The cluster limiter's two halves without a cluster: the actor's bookings on a fake clock,
and the worker's margin and give-back against a stand-in actor."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline import RateLimiter
from paceline.policy.limits import Limit
from paceline.policy.rate import NS_PER_S, Rate
from paceline.runners.dask_limiter import (
    ClockOffset,
    ClusterLimiter,
    LimitActor,
    LimiterLost,
    cluster_limits,
    fence_for,
    horizon_for,
)

W = NS_PER_S


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def actor(n: int = 2, *, fence_ns: int = 0, horizon_ns: int = W, clock: Clock | None = None):
    return LimitActor([Limit(Rate(n, W), margin_ns=0)], fence_ns, horizon_ns, clock or Clock())


def test_the_first_n_book_now_and_the_next_waits_for_the_window():
    limit = actor(2)
    assert [limit.book_now() for _ in range(3)] == [(True, 0, 0), (True, 0, 0), (True, W, 0)]


def test_slots_never_go_backwards_so_the_log_is_an_ordered_queue():
    clock = Clock()
    limit = actor(2, clock=clock)
    limit.book_now(), limit.book_now(), limit.book_now()  # the third at W
    clock.now = W // 2
    # Room at W/2 (a window from -W/2 holds the two at 0) would be before the third's slot:
    # the fourth goes at W, with the third (the two at 0 have left that window).
    assert limit.book_now() == (True, W, W // 2)


def test_a_booking_beyond_the_horizon_is_told_when_to_ask_again():
    limit = actor(1, horizon_ns=W // 2)
    assert limit.book_now() == (True, 0, 0)
    assert limit.book_now() == (True, W, 0)  # booked from a base within the horizon
    # The next one's base (W) is beyond the horizon of W/2: ask again at W/2, nothing booked.
    assert limit.book_now() == (False, W // 2, 0)
    assert limit.book_now() == (False, W // 2, 0)


def test_a_fenced_actor_grants_nothing_before_its_fence():
    clock = Clock()
    limit = actor(5, fence_ns=3 * W, clock=clock)
    assert limit.book_now() == (False, 2 * W, 0)
    clock.now = 2 * W
    assert limit.book_now() == (True, 3 * W, 2 * W)


def test_a_pause_holds_every_booking_until_it_ends():
    clock = Clock()
    limit = actor(5, horizon_ns=10 * W, clock=clock)
    asyncio.run(limit.pause(2.5))
    assert limit.book_now() == (True, 2_500_000_000, 0)


def test_a_slot_given_back_is_booked_again():
    limit = actor(2)
    limit.book_now(), limit.book_now()
    assert limit.book_now() == (True, W, 0)
    asyncio.run(limit.give_back(W))
    # The given-back slot is free again: the next booking takes it, the one after waits.
    assert limit.book_now() == (True, W, 0)
    assert limit.book_now() == (True, W, 0)  # the window from W holds two
    assert limit.book_now() == (True, 2 * W, 0)


def test_the_fence_outlasts_every_grant_a_dead_actor_can_have_made():
    window = W + 10_000_000
    # A slot at most horizon + W' after the death, its start the margin later, its window W.
    assert fence_for(window) >= horizon_for(window) + window + 10_000_000 + W
    assert horizon_for(3600 * W) == W  # a long window does not make the horizon an hour


def test_the_cluster_adds_its_margin_to_the_limiters_own():
    limits, margin_ns = cluster_limits(RateLimiter("15/s", margin_s=0.1), 0.01)
    assert (limits[0].window_ns, margin_ns) == (1_110_000_000, 10_000_000)
    with pytest.raises(ValueError, match="limiter_margin_s"):
        cluster_limits(RateLimiter("15/s"), -1)


def test_the_clock_offset_keeps_the_tightest_round_trip():
    offset = ClockOffset()
    offset.sample(sent_ns=100, actor_ns=1_050, received_ns=200)  # a slow trip: [850, 950]
    offset.sample(sent_ns=300, actor_ns=1_240, received_ns=310)  # a quick one: [930, 940]
    assert (offset.low_ns, offset.high_ns) == (930, 940)


def test_the_clock_offset_forgets_bounds_two_horizons_old():
    offset = ClockOffset()
    offset.sample(0, 1_000, 10)  # [990, 1000]
    later = ClockOffset.REFRESH_NS + 100
    offset.sample(later, later + 2_000, later + 500)  # a new horizon: [1500, 2000] and the old
    offset.sample(2 * later, 2 * later + 2_000, 2 * later + 500)  # the first one is gone
    assert (offset.low_ns, offset.high_ns) == (1_500, 2_000)


class Answer:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class StandIn:
    """An actor handle answering at once, in this process (the offset is then 0)."""

    def __init__(self, late_first_ns: int = 0) -> None:
        self.late_first_ns = late_first_ns
        self.hold_ns = 0  # the end of a server's pause, told with every answer
        self.ahead_ns = 0  # how far ahead of now the slots are booked
        self.given_back: list[tuple[int, int]] = []
        self.leads: list[int] = []
        self.calls: list[int] = []  # the requests each call carried
        self.booked = 0

    def book_many(
        self, weights: list[int], lead_ns: int, given_back: list[tuple[int, int]]
    ) -> Answer:
        self.leads.append(lead_ns)
        self.calls.append(len(weights))
        self.given_back.extend(given_back)
        now = time.monotonic_ns()
        slots = []
        for _weight in weights:
            self.booked += 1
            # The first slot is already in the past by late_first_ns (a reply that came late).
            slot = now - self.late_first_ns if self.booked == 1 else now + self.ahead_ns
            # A slot booked after a pause lies after it (the first may have been booked before).
            slots.append((True, slot if self.booked == 1 else max(slot, self.hold_ns)))
        return Answer((slots, now, 10_000_000, self.hold_ns))

    def pause(self, seconds: float) -> Answer:
        self.hold_ns = time.monotonic_ns() + round(seconds * NS_PER_S)
        return Answer(self.hold_ns)


def test_a_slot_that_cannot_start_within_the_margin_is_given_back_and_booked_again():
    stand_in = StandIn(late_first_ns=50_000_000)
    limiter = ClusterLimiter(stand_in, margin_ns=10_000_000, window_ns=W)
    limiter.acquire()
    assert (stand_in.booked, len(stand_in.given_back)) == (2, 1)


def test_the_async_acquire_gives_back_a_late_slot_too():
    stand_in = StandIn(late_first_ns=50_000_000)
    limiter = ClusterLimiter(stand_in, margin_ns=10_000_000, window_ns=W)
    asyncio.run(limiter.acquire_async())
    assert (stand_in.booked, len(stand_in.given_back)) == (2, 1)


def test_an_actor_that_does_not_answer_is_lost():
    class Dead:
        def book_many(self, *_args: Any) -> Answer:
            return Answer(TimeoutError("no answer"))

    with pytest.raises(LimiterLost, match="did not answer"):
        ClusterLimiter(Dead(), margin_ns=0, window_ns=W).acquire()


def test_a_worker_asks_for_its_slots_ahead_by_its_usual_round_trip():
    stand_in = StandIn()
    limiter = ClusterLimiter(stand_in, margin_ns=10_000_000, window_ns=W)
    for _ in range(3):
        limiter.acquire()
    assert stand_in.leads[0] == 0  # nothing measured yet
    assert all(0 < lead < 10_000_000 for lead in stand_in.leads[1:])


def test_the_actor_books_no_earlier_than_the_lead_asks():
    limit = actor(5)
    assert limit.book_now(1, lead_ns=3_000_000) == (True, 3_000_000, 0)


def test_the_requests_waiting_in_a_process_share_one_call():
    stand_in = StandIn()
    limiter = ClusterLimiter(stand_in, margin_ns=10_000_000, window_ns=W)

    async def many() -> None:
        await asyncio.gather(*(limiter.acquire_async() for _ in range(20)))

    asyncio.run(many())
    assert sum(stand_in.calls) == 20
    assert len(stand_in.calls) < 20


def test_the_margin_grows_when_slots_keep_coming_back_late():
    limit = LimitActor(
        [Limit(Rate(1000, W), margin_ns=10_000_000)],
        0,
        W,
        Clock(),
        margin_ns=10_000_000,
        max_margin_ns=50_000_000,
    )
    _answers, _now, margin = limit.book_many_now([1] * 200, 0, [])
    assert margin == 10_000_000
    # 20 of the 200 came back late (10 %, over the 5 % that makes a longer margin cheaper).
    _answers, _now, margin = limit.book_many_now([1], 0, [(0, 1)] * 20)
    assert margin == 15_000_000
    assert limit._policy._logs[0].window_ns == W + 15_000_000


def test_the_margin_stays_when_few_slots_come_back_late():
    limit = LimitActor(
        [Limit(Rate(1000, W), margin_ns=10_000_000)],
        0,
        W,
        Clock(),
        margin_ns=10_000_000,
        max_margin_ns=50_000_000,
    )
    limit.book_many_now([1] * 200, 0, [])
    assert limit.book_many_now([1], 0, [(0, 1)] * 5)[2] == 10_000_000


def paced(n: int, *, clock: Clock | None = None, horizon_ns: int = 10 * W) -> LimitActor:
    return LimitActor([Limit(Rate(n, W), margin_ns=0)], 0, horizon_ns, clock or Clock(), pace=True)


def test_a_limit_without_a_burst_is_paced_evenly_on_the_cluster():
    # The log alone would give all five at 0: each window's N starts bunched at the server.
    limit = paced(5)
    assert [limit.book_now()[1] for _ in range(6)] == [
        0,
        W // 5,
        2 * W // 5,
        3 * W // 5,
        4 * W // 5,
        W,
    ]


def test_a_limit_with_a_burst_keeps_its_own_pacer():
    def slots(pace: bool) -> list[int]:
        limits = [Limit(Rate(4, W), burst=2, margin_ns=0)]
        limit = LimitActor(limits, 0, 10 * W, Clock(), pace=pace)
        return [limit.book_now()[1] for _ in range(4)]

    assert slots(pace=True) == slots(pace=False)
    assert slots(pace=True)[:2] == [0, 0]  # the burst the user asked for


def test_a_given_back_slot_is_made_up_halfway_between_paced_ones():
    limit = paced(10)  # one slot every W/10
    assert [limit.book_now()[1] for _ in range(3)] == [0, W // 10, 2 * W // 10]
    answers, _now, _margin = limit.book_many_now([1, 1, 1], 0, [(W // 10, 1)])
    # The slot at W/10 came back: its place comes at double density, then the pace again.
    assert [slot for _booked, slot in answers] == [25 * W // 100, 3 * W // 10, 4 * W // 10]


def test_a_pause_in_demand_is_made_up_at_most_by_the_catch_up():
    clock = Clock()
    limit = paced(100, clock=clock)  # every 10 ms; the schedule may fall 2 slots behind (100 // 50)
    spacing = W // 100
    assert limit.book_now()[1] == 0
    clock.now = 50 * spacing  # nobody asked for 49 slots: only two of them are made up
    slots = [limit.book_now()[1] for _ in range(5)]
    # Two extra slots (at 50.5 and 51.5), then the pace again.
    assert slots == [
        50 * spacing,
        50 * spacing + spacing // 2,
        51 * spacing,
        51 * spacing + spacing // 2,
        52 * spacing,
    ]


def test_a_paced_margin_grows_only_when_half_of_1000_slots_come_back_late():
    def grown(late: int) -> int:
        limit = LimitActor(
            [Limit(Rate(2000, W), margin_ns=10_000_000)],
            0,
            W,
            Clock(),
            margin_ns=10_000_000,
            max_margin_ns=50_000_000,
            pace=True,
        )
        limit.book_many_now([1] * 1000, 0, [])
        return limit.book_many_now([1], 0, [(0, 1)] * late)[2]

    # A late slot's place is booked again (no rate lost), so 40 % late is not worth a margin.
    assert grown(400) == 10_000_000
    assert grown(600) == 15_000_000


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, W // 20), st.integers(1, 4), st.integers(0, 3)),
        min_size=1,
        max_size=60,
    )
)
def test_paced_slots_kept_never_exceed_n_in_any_window(steps: list[tuple[int, int, int]]):
    # Pacing, its catch-up and the give-backs only move slots: the log keeps N per W.
    clock = Clock()
    n = 5
    limit = paced(n, clock=clock, horizon_ns=3 * W)
    kept: list[int] = []
    for advance, wanted, returned in steps:
        clock.now += advance
        given_back = [(slot, 1) for slot in kept[-returned:]] if returned else []
        for slot, _weight in given_back:
            kept.remove(slot)
        answers, _now, _margin = limit.book_many_now([1] * wanted, 0, given_back)
        kept += [slot for booked, slot in answers if booked]
    kept.sort()
    assert all(kept[i + n] - kept[i] >= W for i in range(len(kept) - n))


def test_every_given_back_slot_is_made_up_not_only_the_catch_up():
    ms = W // 1000
    limit = paced(100)  # one slot every 10 ms; the schedule may fall 2 slots behind
    assert [limit.book_now()[1] for _ in range(3)] == [0, 10 * ms, 20 * ms]
    given_back = [(0, 1), (10 * ms, 1), (20 * ms, 1)]
    answers, _now, _margin = limit.book_many_now([1] * 5, 0, given_back)
    # The three places at double density (25, 30, 35), then the schedule, which had fallen
    # behind meanwhile (40, 45), then the pace.
    assert [slot for _booked, slot in answers] == [25 * ms, 30 * ms, 35 * ms, 40 * ms, 45 * ms]
    assert limit.book_now()[1] == 50 * ms


def test_a_pause_forgets_the_given_back_places():
    # After a server's Retry-After the schedule resumes at its pace, not at double density.
    limit = paced(100)
    ms = W // 1000
    assert [limit.book_now()[1] for _ in range(2)] == [0, 10 * ms]
    limit.book_many_now([], 0, [(0, 1), (10 * ms, 1)])
    asyncio.run(limit.pause(1.0))
    assert [limit.book_now()[1] for _ in range(3)] == [W, W + 10 * ms, W + 20 * ms]


def test_slots_inside_a_pause_are_given_back_and_the_pace_resumes_after_it():
    # Three slots booked ahead (0, 10, 20 ms); a 429 at 5 ms says Retry-After: 1. The two not
    # started fall inside the pause: given back, not made up (no double density), and the
    # schedule starts again at the pause's end, at its pace.
    clock = Clock()
    limit = paced(100, clock=clock)
    ms = W // 1000
    assert [limit.book_now()[1] for _ in range(3)] == [0, 10 * ms, 20 * ms]
    clock.now = 5 * ms
    assert asyncio.run(limit.pause(1.0)) == W + 5 * ms
    answers, now, _margin, hold = asyncio.run(
        limit.book_many([1, 1, 1], 0, [(10 * ms, 1), (20 * ms, 1)])
    )
    assert (now, hold) == (5 * ms, W + 5 * ms)
    assert answers == [(True, W + 5 * ms), (True, W + 15 * ms), (True, W + 25 * ms)]
    stats = asyncio.run(limit.stats())
    assert (stats["given_back"], stats["paused"]) == (2, 2)


def test_slots_given_back_inside_a_pause_leave_the_log():
    # Two of N = 2 booked ahead and dropped in a pause: the window after it has both slots.
    clock = Clock()
    limit = actor(2, horizon_ns=10 * W, clock=clock)
    assert [limit.book_now()[1] for _ in range(2)] == [0, 0]
    asyncio.run(limit.pause(0.5))
    limit.book_many_now([], 0, [(0, 1), (0, 1)])
    assert [limit.book_now()[1] for _ in range(3)] == [W // 2, W // 2, 3 * W // 2]


def test_every_booking_answer_tells_the_pause_even_when_none():
    clock = Clock()
    clock.now = 7
    limit = actor(2, clock=clock)
    assert asyncio.run(limit.book_many([1], 0, [])) == ([(True, 7)], 7, 0, 7)


def test_a_slot_booked_before_a_pause_heard_of_is_given_back_and_booked_after_it():
    # Another process paused the actor: the answer carries the pause's end, and the slot
    # booked earlier (the first) falls inside it.
    stand_in = StandIn()
    stand_in.hold_ns = time.monotonic_ns() + 30_000_000
    limiter = ClusterLimiter(stand_in, margin_ns=10_000_000, window_ns=W)
    slot = limiter.acquire()
    assert slot == stand_in.hold_ns
    assert time.monotonic_ns() >= stand_in.hold_ns
    assert stand_in.booked == 2
    assert len(stand_in.given_back) == 1


def test_a_pause_in_this_process_drops_the_slots_its_waiters_sleep_on():
    # A waiter sleeps on a slot 50 ms ahead; a 429 in the same process pauses for 100 ms: the
    # waiter does not start at 50 ms but gives the slot back and starts after the pause.
    stand_in = StandIn()
    stand_in.ahead_ns = 50_000_000
    limiter = ClusterLimiter(stand_in, margin_ns=10_000_000, window_ns=W)
    limiter.acquire()  # the first slot (now) is not the one under test

    async def scenario() -> int:
        waiter = asyncio.ensure_future(limiter.acquire_async())
        await asyncio.sleep(0.01)  # the waiter has its slot and sleeps
        await asyncio.to_thread(limiter.pause, 0.1)
        return await waiter

    slot = asyncio.run(scenario())
    assert slot == stand_in.hold_ns  # booked again, after the pause
    assert len(stand_in.given_back) == 1
    assert stand_in.given_back[0][0] < stand_in.hold_ns


def test_a_limit_paced_one_at_a_time_is_spaced_by_its_pace_plus_the_lateness_allowed():
    # 50/s with burst=1 (the CLI's --rate), J = 10 ms: W' = 1.01 s, W'/N = 20.2 ms; P is an
    # eighth of it. Slots S = W'/N + P apart, each started within P of it: two starts are
    # never closer than 20.2 ms (the margin J alone let them come 10.2 ms apart, and nginx's
    # limit_req without burst refused 19-21 % of them).
    j_ns = 10_000_000
    limits = [Limit(Rate(50, W), burst=1, margin_ns=j_ns)]
    limit = LimitActor(limits, 0, 10 * W, Clock(), margin_ns=j_ns)
    answers, _now, lateness = limit.book_many_now([1, 1, 1, 1], 0, [])
    assert lateness == 2_525_000
    assert [slot for _booked, slot in answers] == [0, 22_725_000, 45_450_000, 68_175_000]
    slots = [slot for _booked, slot in answers]
    # the closest two starts can come: the latest start of one slot, the earliest of the next
    assert min(b - (a + lateness) for a, b in itertools.pairwise(slots)) == 20_200_000
    # A late slot given back is not made up (that would put two starts closer), and the
    # margin does not grow with late slots: the lateness is P's, not J's.
    answers, _now, _lateness = limit.book_many_now([1] * 200, 0, [(22_725_000, 1)])
    assert answers[0][1] == 4 * 22_725_000
    # 60 of 204 late (29 %: a margin J would grow at 5 %)
    answers, _now, lateness = limit.book_many_now([1], 0, [(22_725_000, 1)] * 59)
    assert lateness == 2_525_000
    assert limit.margin_ns == j_ns
    assert answers[0][1] == 204 * 22_725_000


def test_a_fast_limit_or_one_with_a_burst_is_not_spaced():
    j_ns = 10_000_000
    for limit in (Limit(Rate(500, W), burst=1, margin_ns=j_ns), Limit(Rate(50, W), burst=2)):
        actor_ = LimitActor([limit], 0, 10 * W, Clock(), margin_ns=j_ns)
        _answers, _now, lateness = actor_.book_many_now([1], 0, [])
        assert lateness == j_ns  # P would be 0.25 ms at 500/s: the margin J, as before


def test_a_worker_on_the_actors_machine_reads_the_actors_clock_exactly():
    from paceline.runners.dask_limiter import clock_id

    here = ClusterLimiter(object(), margin_ns=0, window_ns=W, actor_clock_id=clock_id())
    elsewhere = ClusterLimiter(object(), margin_ns=0, window_ns=W, actor_clock_id="another")
    if clock_id() is None:
        pytest.skip("no boot id on this system")
    assert (here._offset.low_ns, here._offset.high_ns) == (0, 0)
    here._offset.sample(sent_ns=100, actor_ns=5_000, received_ns=110)  # no effect: exact
    assert (here._offset.low_ns, here._offset.high_ns) == (0, 0)
    assert elsewhere._offset.high_ns - elsewhere._offset.low_ns > W


def test_late_slots_are_told_once_when_over_5_percent_of_200_since_the_last_look():
    from paceline.runners.dask_runner import LateWatch

    now = [0]
    watch = LateWatch(clock_ns=lambda: now[0])
    assert watch.due()
    # 150 booked: too few to tell; the next look (due at once) counts from zero again.
    assert watch.look({"booked": 150, "given_back": 100, "paused": 0}, 10_000_000) is None
    assert watch.due()
    # 1,000 booked, 50 late (60 given back, 10 of them inside a pause): 5 %, not over it.
    assert watch.look({"booked": 1000, "given_back": 60, "paused": 10}, 10_000_000) is None
    assert not watch.due()
    now[0] = 4_999_999_999
    assert not watch.due()
    now[0] = 5_000_000_000
    assert watch.due()
    # Since then 1,000 booked and 120 late: 12 %.
    told = watch.look({"booked": 2000, "given_back": 180, "paused": 10}, 15_000_000)
    assert told == (
        "12 % of the cluster's slots came back late (not started within 15 ms of their slot): "
        "the workers' CPU is saturated; fewer items at once per worker, lighter items or more "
        "workers help"
    )
    now[0] = 20_000_000_000
    assert not watch.due()  # said once
    assert watch.look({"booked": 3000, "given_back": 900, "paused": 10}, 15_000_000) is None
