"""AdaptiveController.adopt_rate on a fake clock: a share of a rate found by several processes
(docs/design.md, 'Adaptive rate shared')."""

import random

import pytest

from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings, Outcome

MS = 1_000_000


def controller(settings: AdaptiveSettings) -> AdaptiveController:
    return AdaptiveController(settings, rng=random.Random(0))


def test_a_joining_process_starts_paced_at_its_share():
    c = controller(AdaptiveSettings(initial_concurrency=10))
    assert c.rate_per_s is None  # alone, it would learn from its first throttles
    c.adopt_rate(0, 25.0)
    assert c.rate_per_s == 25.0
    first = c.started(0, 0, False)
    assert first.pace_per_s == 25.0
    assert not c.decide(1 * MS, in_flight=1).go  # the next start waits for its 40 ms slot
    assert c.decide(40 * MS, in_flight=1).go


def test_an_adopted_cut_answers_the_congestion_event_of_attempts_sent_before_it():
    c = controller(AdaptiveSettings(initial_concurrency=100, initial_rate_per_s=100.0))
    early = [c.started(i * 10 * MS, i, True) for i in range(5)]
    c.adopt_rate(60 * MS, 40.0)  # another process cut for this congestion event
    for t in early:
        c.finished(61 * MS, t, Outcome.THROTTLE)  # sent before: the same event
    assert c.rate_per_s == 40.0
    assert c.cuts == 0
    assert (60 * MS, "shared rate", 40.0) in c.events
    # An attempt sent after the adoption that is throttled is a new event: a cut of its own.
    later = c.started(100 * MS, 0, True)
    c.finished(110 * MS, later, Outcome.THROTTLE)
    assert c.cuts == 1
    assert c.rate_per_s is not None
    assert c.rate_per_s < 40.0


def test_an_adopted_rate_is_kept_within_the_settings_bounds():
    c = controller(AdaptiveSettings(min_rate_per_s=1.0, max_rate_per_s=50.0))
    c.adopt_rate(0, 0.01)
    assert c.rate_per_s == 1.0
    c.adopt_rate(0, 500.0)
    assert c.rate_per_s == pytest.approx(50.0)
