import pytest

from paceline.policy.gcra import Gcra


def test_burst_one_paces_evenly_at_window_over_n():
    g = Gcra.for_limit(limit=4, window_ns=1000, burst=1)
    assert (g.interval_ns, g.tolerance_ns) == (250, 0)
    times = []
    now = 0
    for _ in range(5):
        wait = g.wait_ns(now, 1)
        now += wait
        g.record(now, 1, waited=wait > 0)
        times.append(now)
    assert times == [0, 250, 500, 750, 1000]


def test_burst_b_allows_b_at_once_then_paces_at_the_full_rate():
    # N = 4, B = 2: T = W / N = 250, tau = (B - 1) T = 250. The burst does not lower the rate
    # (it did: T = W / (N - B + 1) = 334, and B = N meant one grant per window after the first).
    g = Gcra.for_limit(limit=4, window_ns=1000, burst=2)
    assert (g.interval_ns, g.tolerance_ns) == (250, 250)
    assert g.wait_ns(0, 1) == 0
    g.record(0, 1, waited=False)
    assert g.wait_ns(0, 1) == 0
    g.record(0, 1, waited=False)
    assert g.wait_ns(0, 1) == 250


def test_burst_n_is_a_token_bucket_of_n_at_the_rate():
    g = Gcra.for_limit(limit=200, window_ns=1_000_000, burst=200)  # T = 5,000, tau = 199 T
    for _ in range(200):
        assert g.wait_ns(0, 1) == 0
        g.record(0, 1, waited=False)
    assert g.wait_ns(0, 1) == 5_000  # then one per W / N, not one per W


def test_a_late_waker_keeps_the_schedule_instead_of_losing_its_lateness():
    g = Gcra.for_limit(limit=10, window_ns=1000, burst=1)  # T = 100
    g.record(0, 1, waited=False)
    assert g.wait_ns(0, 1) == 100
    g.record(130, 1, waited=True)  # woke 30 ns late
    assert g.wait_ns(130, 1) == 70  # next slot is 200, not 230


def test_lateness_is_forgiven_by_less_than_one_interval():
    g = Gcra.for_limit(limit=10, window_ns=1000, burst=1)  # T = 100
    g.record(0, 1, waited=False)
    g.record(1000, 1, waited=True)  # woke 900 ns late: at most T - 1 forgiven
    assert g.wait_ns(1000, 1) == 1


def test_an_arrival_after_idle_is_not_treated_as_late():
    g = Gcra.for_limit(limit=10, window_ns=1000, burst=1)
    g.record(0, 1, waited=False)
    g.record(5000, 1, waited=False)
    assert g.wait_ns(5000, 1) == 100


def test_weights_advance_the_schedule_by_weight_intervals():
    g = Gcra.for_limit(limit=10, window_ns=1000, burst=1)
    g.record(0, 3, waited=False)
    assert g.wait_ns(0, 1) == 300


@pytest.mark.parametrize("burst", [0, 11])
def test_burst_must_be_between_one_and_the_limit(burst):
    with pytest.raises(ValueError, match="burst"):
        Gcra.for_limit(limit=10, window_ns=1000, burst=burst)
