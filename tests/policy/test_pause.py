"""The server-wide pause on a fake clock: extended, never shortened, bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paceline.policy.pause import ServerPause

S = 1_000_000_000


def test_a_pause_is_extended_never_shortened():
    pause = ServerPause(max_pause_s=60)
    assert pause.ask(0, 10)
    assert not pause.ask(S, 5)  # ends at 6 s, within the 10 s already asked
    assert pause.wait_ns(S) == 9 * S
    assert pause.ask(8 * S, 5)
    assert pause.wait_ns(8 * S) == 5 * S
    assert pause.wait_ns(13 * S) == 0


@pytest.mark.parametrize("seconds", [60.001, 1e6, float("inf"), float("nan")])
def test_beyond_the_cap_is_refused_and_counted(seconds):
    pause = ServerPause(max_pause_s=60)
    assert not pause.ask(0, seconds)
    assert pause.until_ns == 0
    assert pause.refused == (0 if seconds != seconds else 1)  # NaN is no request at all


@pytest.mark.parametrize("seconds", [0, -3])
def test_zero_or_negative_is_no_pause(seconds):
    pause = ServerPause()
    assert not pause.ask(0, seconds)
    assert pause.until_ns == 0
    assert pause.refused == 0


def test_the_cap_is_checked():
    with pytest.raises(ValueError, match="max_pause_s"):
        ServerPause(max_pause_s=float("inf"))


@given(st.lists(st.tuples(st.integers(0, 10**12), st.floats(-10, 1e7)), max_size=30))
def test_never_paused_beyond_the_cap_from_any_request(asks):
    pause = ServerPause(max_pause_s=300)
    now = 0
    for step, seconds in asks:
        now += step
        pause.ask(now, seconds)
        assert pause.wait_ns(now) <= 300 * S
