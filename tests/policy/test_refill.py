"""A token bucket's rate read from its refusals (``RefillCount``), and the controller's use of
it once the bucket-or-window test found a bucket (fake clock; simulated hidden buckets)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline.policy.adaptive import AdaptiveController, Outcome, Ticket
from paceline.policy.refill import MIN_SPAN_NS, RefillCount
from tests.policy.sim_adaptive import FixedWindowServer, TokenBucketServer, simulate
from tests.policy.test_adaptive import (
    MS,
    S,
    _first_burst_refused_with_retry_after,
    _run_test_stage,
    _send_until_refused,
    controller,
)

# -- RefillCount against a token bucket --------------------------------------------------


@dataclass(eq=False)
class _Attempt:
    sent_ns: int


def _sent(count: RefillCount, sent_ns: int, *, accepted: bool) -> None:
    """One attempt, started and answered."""
    attempt = _Attempt(sent_ns)
    count.started(attempt)
    count.finished(attempt, accepted=accepted)


class _Bucket:
    """A token bucket in integer ns of refill (as the sim's), that also tracks the tokens it
    lost to its cap (a full bucket's refill)."""

    def __init__(self, interval_ns: int, capacity: int) -> None:
        self.interval_ns, self.cap_ns = interval_ns, capacity * interval_ns
        self.level_ns, self.at_ns, self.lost_ns = self.cap_ns, 0, 0

    def admit(self, now_ns: int) -> bool:
        level = self.level_ns + now_ns - self.at_ns
        self.lost_ns += max(0, level - self.cap_ns)
        self.level_ns, self.at_ns = min(self.cap_ns, level), now_ns
        if self.level_ns < self.interval_ns:
            return False
        self.level_ns -= self.interval_ns
        return True


def _sends(interval_ns: int, stretches: list[tuple[float, float]]) -> list[int]:
    """Send gaps: a stretch with a factor under 1 (faster than the bucket) runs until its
    refill could not keep up (long enough to drain any bucket here); else it lasts so many
    seconds (a slower pace, a pause)."""
    gaps = []
    for factor, seconds in stretches:
        gap = max(1_000, round(interval_ns * factor, -3))
        n = 1 + round(seconds * S / gap) if factor >= 1 else round(31 / (1 - factor)) + 1
        gaps += [gap] * n
    return gaps


@settings(max_examples=150, deadline=None)
@given(
    rate_per_s=st.integers(5, 200),
    capacity=st.integers(1, 30),
    # stretches of sends at a multiple of the bucket's interval (under 1: faster than it)
    stretches=st.lists(
        st.tuples(st.one_of(st.floats(0.5, 0.99), st.floats(1.0, 3.0)), st.floats(0.05, 2.0)),
        min_size=2,
        max_size=6,
    ),
    rtt_us=st.integers(0, 40_000),
)
def test_between_two_refusals_the_count_is_the_rate_to_a_token_and_never_more(
    rate_per_s, capacity, stretches, rtt_us
):
    # Sends faster than the bucket, slower, paused, answered a round trip later. At each
    # refusal after the first: the count over the span is at most the refill over it (+ one
    # token, the refusals' fractions), and at least that less what the cap lost (- one).
    bucket = _Bucket(round(S / rate_per_s), capacity)
    count: RefillCount | None = None
    now = 0
    pending: list[_Attempt] = []  # accepted, in flight
    lost_at_mark = 0
    for gap_ns in _sends(bucket.interval_ns, stretches):
        now += gap_ns
        for attempt in [p for p in pending if p.sent_ns + rtt_us * 1_000 <= now]:
            pending.remove(attempt)
            if count is not None:
                count.finished(attempt, accepted=True)
        # started a little before it goes out, stamped again when it does (as the runner)
        attempt = _Attempt(now - 1_000)
        if count is not None:
            count.started(attempt)
        attempt.sent_ns = now
        if bucket.admit(now):
            pending.append(attempt)
            continue
        if count is None:
            count, lost_at_mark = RefillCount(now), bucket.lost_ns
            continue
        span_ns = now - count.mark_ns
        lost = (bucket.lost_ns - lost_at_mark) / bucket.interval_ns
        count.finished(attempt, accepted=False)
        rate = count.refused(now)
        lost_at_mark = bucket.lost_ns
        if span_ns < MIN_SPAN_NS:
            assert rate is None
            continue
        assert rate is not None
        made = span_ns / bucket.interval_ns  # tokens refilled over the span
        taken = rate * span_ns / S
        assert taken <= made + 1 + 1e-6
        assert taken >= made - lost - 1 - 1e-6


def test_a_moment_the_bucket_held_at_most_its_burst_bounds_the_rate_from_there():
    # Refused at 0, then a pause of 2 s (the bucket, 10 tokens at 20/s, full after 0.5 s:
    # 30 tokens lost to its cap), then 40 sent 25 ms apart from 2 s, all taken, refused at
    # 3 s: over the whole span 40 / 3 s = 13.3/s (a lower bound); from the pause's end,
    # (40 - 10) / 1 s = 30/s, the larger.
    count = RefillCount(0)
    count.full(2 * S, 10)
    for i in range(40):
        _sent(count, 2 * S + i * 25 * MS, accepted=True)
    assert count.refused(3 * S) == pytest.approx(30.0)
    assert count.mark_ns == 3 * S
    # the next span starts there, and without a new ``full`` counts over the whole of it
    for i in range(20):
        _sent(count, 3 * S + (i + 1) * 40 * MS, accepted=True)
    assert count.refused(4 * S) == pytest.approx(20.0)


def test_answers_that_cross_a_refusal_count_in_the_span_they_were_sent_in():
    count = RefillCount(0)
    first, six, seven = (_Attempt(t * MS) for t in (100, 600, 700))
    for attempt in (first, six, seven):
        count.started(attempt)
    count.finished(first, accepted=True)
    _sent(count, 1_000 * MS, accepted=False)  # the refused one
    _sent(count, 1_010 * MS, accepted=True)  # sent after it, answered before its answer
    # 600 and 700 ms are in flight: taken (sent before the bucket ran dry); 1,010 is not this
    # span's
    assert count.refused(1_000 * MS) == pytest.approx(3.0)
    count.finished(six, accepted=True)  # the last span's: ignored here
    count.finished(seven, accepted=True)
    _sent(count, 1_600 * MS, accepted=False)
    assert count.refused(1_600 * MS) == pytest.approx(1 / 0.6)


def test_an_attempt_stamped_again_when_it_really_goes_out_counts_once():
    # The runner stamps ``sent_ns`` again at the real send (after the controller's start).
    # Kept by its first stamp, an attempt stayed "in flight" for good and every later span
    # counted it again: through the CLI a bucket of 80/s was read as 161/s.
    count = RefillCount(0)
    for span in range(1, 4):
        for i in range(80):
            attempt = _Attempt((span - 1) * S + i * 12 * MS)
            count.started(attempt)
            attempt.sent_ns += MS // 2  # it went out half a millisecond later
            count.finished(attempt, accepted=True)
        assert count.refused(span * S) == pytest.approx(80.0)


# -- the controller: a learned bucket's refusals ------------------------------------------


def _bucket_found() -> tuple[AdaptiveController, Ticket, float, int]:
    """The test's case (test_adaptive.py): a bucket of burst 12 found at 29.36/s. Returns the
    controller, the test's refused attempt, the rate found, and when the batch resumes."""
    c = controller(initial_concurrency=8)
    _first_burst_refused_with_retry_after(c)
    refused = _run_test_stage(c, taken=30)
    return c, refused, c._ceilings[-1], c.pause_until_ns


def test_a_found_bucket_is_paced_at_its_rate_and_a_refusal_reads_it_from_the_count():
    c, test_refused, found, resumed_ns = _bucket_found()
    assert c.rate_per_s == pytest.approx(found)  # a lower bound: no margin
    tickets = _send_until_refused(c, taken=120)
    refused = tickets[-1]
    pace = refused.pace_per_s
    assert pace is not None
    assert pace > found  # it grew +0.5 %/s meanwhile
    # 120 taken since the test's refusal; the bucket held at most 12 when the batch resumed
    whole = 120 * S / (refused.sent_ns - test_refused.sent_ns)
    from_full = (120 - 12) * S / (refused.sent_ns - resumed_ns)
    measured = max(whole, from_full)
    assert measured < pace  # refused at that pace: the count is what binds
    rate = max(measured, 0.8 * pace)
    assert c._ceilings[-1] == pytest.approx(rate)
    assert c.rate_per_s == pytest.approx(rate * 0.99)
    assert c.cuts == 2
    events = [what for _, what, _ in c.events]
    assert events[-4:] == ["pause", "bucket refill", "rate", "resume"]
    # Its whole-second Retry-After is cut short: the bucket is full again 12 / rate after it
    # ran dry (the refused attempt's send), not 1 s after the answer.
    assert c.pause_until_ns == refused.sent_ns + round(12 * S / rate)
    assert c.pause_until_ns < refused.sent_ns + 10 * MS + S


def test_a_resume_after_a_refusal_that_comes_too_soon_waits_out_retry_after_from_then_on():
    c, _, _, _ = _bucket_found()
    refused = _send_until_refused(c, taken=120)[-1]
    answered = refused.sent_ns + 10 * MS
    cuts = c.cuts
    # the first attempt after the resume is refused: the Retry-After (1 s from the answer)
    # is waited out after all, no cut
    first = _send_until_refused(c, taken=0)[-1]
    assert first.sent_ns < answered + S
    assert c.pause_until_ns == answered + S
    assert c.cuts == cuts
    assert c._round_resume_failed
    # a later refusal is waited out in full too (its rate still read from the count)
    later = _send_until_refused(c, taken=100)[-1]
    assert c.cuts == cuts + 1
    assert [what for _, what, _ in c.events][-3:] == ["pause", "bucket refill", "rate"]
    assert c.pause_until_ns == later.sent_ns + 10 * MS + S


def test_a_bucket_dry_again_soon_after_a_resume_is_cut_no_deeper_than_usual():
    # (a client sharing the bucket took more of it): 5 taken after the resume, then refused.
    # The count over the span, the pause included, reads far under the pace (a lower bound:
    # the pause lost refill to the cap): one cut of the usual factor, no deeper; and the
    # resume was right (5 were taken), so it was no "resumed too soon".
    c, _, _, _ = _bucket_found()
    before = _send_until_refused(c, taken=120)[-1]
    quick = _send_until_refused(c, taken=5)[-1]
    assert c._refill is not None
    assert c._refill.mark_ns == quick.sent_ns
    measured = [value for _, what, value in c.events if what == "bucket refill"][-1]
    assert measured == pytest.approx(5 * S / (quick.sent_ns - before.sent_ns))
    pace = quick.pace_per_s
    assert pace is not None
    assert measured < 0.8 * pace
    assert c._ceilings[-1] == pytest.approx(0.8 * pace)
    assert not c._round_resume_failed
    assert c.pause_until_ns == quick.sent_ns + round(12 * S / (0.8 * pace))


def _taken_at_the_pace(c: AdaptiveController, n: int) -> int:
    """From the pause's end, ``n`` attempts taken as the controller lets; returns the time
    the next one may go."""
    now = c.pause_until_ns
    for _ in range(n):
        while not (decision := c.decide(now, 0)).go:
            now += decision.wait_ns
        c.finished(now + 10 * MS, c.started(now, 0, True), Outcome.SUCCESS)
        now += 10 * MS
    while not (decision := c.decide(now, 0)).go:
        now += decision.wait_ns
    return now


def test_a_refusal_that_asks_for_more_than_a_second_is_waited_out():
    # A found bucket refused with "Retry-After: 30" (another limit of the server ran out: a
    # bucket's next token comes within a second): the rate is read from the count as usual,
    # but the 30 s pause stands.
    c, _, _, _ = _bucket_found()
    refused = _send_until_refused(c, taken=120)[-1]  # with "Retry-After: 1": cut short
    assert c.pause_until_ns < refused.sent_ns + S
    cuts = c.cuts
    now = _taken_at_the_pace(c, 60)
    c.finished(now + 10 * MS, c.started(now, 0, True), Outcome.THROTTLE, retry_after_s=30.0)
    assert c.cuts == cuts + 1
    assert [what for _, what, _ in c.events][-3:] == ["pause", "bucket refill", "rate"]
    assert c.pause_until_ns == now + 10 * MS + 30 * S


def test_a_503_from_a_found_bucket_is_cut_as_usual_and_its_pause_stands():
    c, _, _, _ = _bucket_found()
    _send_until_refused(c, taken=60)
    now = _taken_at_the_pace(c, 20)
    cuts = c.cuts
    refills = [what for _, what, _ in c.events].count("bucket refill")
    c.finished(now + 10 * MS, c.started(now, 0, True), Outcome.OVERLOAD, retry_after_s=5.0)
    assert c.cuts == cuts + 1  # paced: the rate is what the server could not take
    assert [what for _, what, _ in c.events].count("bucket refill") == refills
    assert c.pause_until_ns == now + 10 * MS + 5 * S


# -- simulated hidden buckets ------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate_per_s", "burst", "least"),
    [(80, 10, 0.96), (20, 5, 0.95), (20, 10, 0.92), (200, 10, 0.93)],
    ids=str,
)
@pytest.mark.parametrize("latency_s", [0.004, 0.03])
def test_hidden_buckets_with_whole_second_retry_after_are_run_at_their_rate(
    rate_per_s, burst, least, latency_s
):
    # Issue 11's measure (25 s of the rate, its burst left out, from the first acceptance to
    # the last): 80/10 0.92-0.96 before the refusals were read, 0.97-0.98 now (this seed).
    # (stamped again 0.2 ms after the start, as the CLI's gate does: see the next test)
    server = TokenBucketServer(rate_per_s, burst, retry_after=True)
    result, c = simulate(server, 33, latency_s=latency_s, stamp_s=0.0002)
    accepted = server.accepted[: rate_per_s * 25]
    share = (len(accepted) - burst) / ((accepted[-1] - accepted[0]) / S) / rate_per_s
    assert share >= least
    assert result.throttled_fraction <= 0.02
    assert c._refill is not None


def test_a_long_batch_runs_into_the_bucket_every_few_seconds_and_holds_its_rate():
    # stamped again when it goes out, as through the CLI: counted by value, every span read
    # twice the rate (161/s) and the pace crept over it refusal after refusal
    server = TokenBucketServer(80, 10, retry_after=True)
    result, c = simulate(server, 120, latency_s=0.004, stamp_s=0.0002)
    steady = [t for t in server.accepted if t > 10 * S]
    assert (len(steady) - 1) / ((steady[-1] - steady[0]) / S) >= 0.99 * 80
    refills = [value for _, what, value in c.events if what == "bucket refill"]
    assert 5 <= len(refills) <= 30
    assert all(value == pytest.approx(80, rel=0.01) for value in refills)
    assert result.throttled_fraction <= 0.005


def test_a_fixed_window_the_test_took_for_a_bucket_keeps_the_margin_and_reads_no_count():
    # 250 per clock second, 30 ms away: the test ran across a turn of the window and took
    # more than 250; its stages read no more than the first ceiling: no refill measured.
    server = FixedWindowServer(250, 1.0, True, 0.3)
    result, c = simulate(server, 25, latency_s=0.03)
    bucket = [value for _, what, value in c.events if what == "bucket"]
    assert bucket == [pytest.approx(250.0)]
    assert c._refill is None
    assert result.accepted / (250 * 25) >= 0.9


def test_random_seeds_keep_a_bucket_s_refusals_within_the_budget():
    for seed in range(1, 6):
        server = TokenBucketServer(80, 10, retry_after=True)
        result, _ = simulate(
            server, 30, latency_s=random.Random(seed).choice([0.004, 0.01, 0.03]), seed=seed
        )
        assert result.throttled_fraction <= 0.01, seed
        assert result.accepted >= 0.93 * 80 * 30, seed
