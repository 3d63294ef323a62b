import pytest

from paceline.policy.window import WindowLog

S = 1_000_000_000


def grant(log: WindowLog, now: int, weight: int = 1) -> int:
    wait = log.wait_ns(now, weight)
    if wait == 0:
        log.record(now, weight)
    return wait


def test_third_call_waits_for_the_window():
    log = WindowLog(2, S)
    assert grant(log, 0) == 0
    assert grant(log, 0) == 0
    assert grant(log, 0) == S
    assert grant(log, S - 1) == 1
    assert grant(log, S) == 0


def test_windows_are_half_open_a_grant_exactly_one_window_later_is_allowed():
    log = WindowLog(1, 10)
    assert grant(log, 5) == 0
    assert grant(log, 14) == 1
    assert grant(log, 15) == 0


def test_wait_is_until_enough_weight_leaves_the_window():
    log = WindowLog(5, S)
    assert grant(log, 0, 3) == 0
    assert grant(log, S // 2, 2) == 0
    # 5 held; 3 more need the first grant (3 permits) to leave at t = 1 s
    assert grant(log, S // 2 + 1, 3) == S - (S // 2 + 1)
    # 4 more need both grants gone: the second leaves at 1.5 s
    assert log.wait_ns(S // 2 + 1, 4) == S - 1


def test_a_weight_above_the_limit_can_never_be_granted_and_says_so():
    log = WindowLog(2, S)
    grant(log, 0)
    with pytest.raises(ValueError, match="weight 3 exceeds the limit of 2"):
        log.wait_ns(0, 3)


def test_give_back_frees_the_place_at_once():
    log = WindowLog(2, S)
    grant(log, 0)
    grant(log, 7)
    assert grant(log, 8) == S - 8
    assert log.give_back(7, 1) == 1
    assert grant(log, 8) == 0
    assert log.held(8) == 2


def test_give_back_of_grants_made_at_one_instant_takes_every_permit_from_their_entries():
    # Found by hypothesis (test_properties, seed 5): grants of 1 and 2 permits at t=0 have an
    # entry each; giving back the 1 empties half of the newest entry, and giving back the 2
    # must then take its second permit from the older one.
    log = WindowLog(3, S)
    log.record(0, 1)
    log.record(0, 2)
    assert log.give_back(0, 1) == 1
    assert log.give_back(0, 2) == 2
    assert log.held(0) == 0
    assert list(log._counts) == []


def test_give_back_of_a_grant_that_left_the_window_removes_nothing():
    log = WindowLog(2, S)
    grant(log, 0)
    assert log.held(S) == 0
    assert log.give_back(0, 1) == 0


def test_a_stamp_earlier_than_the_newest_joins_it_and_keeps_the_log_sorted():
    log = WindowLog(10, S)
    log.record(100, 4)  # a lease stamped ahead
    log.record(50, 1)  # an ordinary grant before that stamp
    assert list(log._times) == [100]
    assert list(log._counts) == [5]
    assert log.held(100 + S - 1) == 5
    assert log.held(100 + S) == 0


def test_huge_limits_keep_bounded_memory_and_stay_strict():
    limit, window = 1_000_000, S
    log = WindowLog(limit, window)
    for i in range(50_000):
        assert grant(log, i * 1000) == 0  # one grant per microsecond
    assert len(log._times) <= 1100
    assert log.held(50_000 * 1000) == 50_000
