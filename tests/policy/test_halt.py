import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline.policy.halt import HaltRule


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("soon,fail=5%", HaltRule("soon", "fail", 5, percent=True)),
        ("now,fail=1", HaltRule("now", "fail", 1)),
        ("success=3", HaltRule("soon", "success", 3)),
        ("NOW, done=1000", HaltRule("now", "done", 1000)),
        ("soon,fail=2.5%", HaltRule("soon", "fail", 2.5, percent=True)),
    ],
)
def test_rules_read_like_gnu_parallel(text, rule):
    assert HaltRule.parse(text) == rule


@pytest.mark.parametrize(
    "text", ["later,fail=1", "fail", "fail=x", "now,fail=0", "soon,fail=150%", "fail=1.5"]
)
def test_bad_rules_name_the_value_and_an_example(text):
    with pytest.raises(ValueError, match="halt"):
        HaltRule.parse(text)


def test_stop_on_error_is_now_fail_one():
    assert str(HaltRule.stop_on_error()) == "now,fail=1"


def test_percent_rules_wait_for_three_settled_items():
    rule = HaltRule.parse("soon,fail=50%")
    assert not rule.triggered(failed=1, succeeded=0)
    assert not rule.triggered(failed=1, succeeded=1)
    assert rule.triggered(failed=2, succeeded=1)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["fail", "success", "done"]),
    threshold=st.integers(1, 50),
    outcomes=st.lists(st.booleans(), max_size=120),
)
def test_count_rules_trigger_at_exactly_the_threshold(kind, threshold, outcomes):
    rule = HaltRule("soon", kind, threshold)
    failed = succeeded = 0
    fired_at = None
    for i, ok in enumerate(outcomes):
        succeeded += ok
        failed += not ok
        if rule.triggered(failed, succeeded) and fired_at is None:
            fired_at = i
    counts = {"fail": failed, "success": succeeded, "done": failed + succeeded}
    if counts[kind] < threshold:
        assert fired_at is None
    else:
        # the first item that brought the count to the threshold fires it
        running = 0
        for i, ok in enumerate(outcomes):
            running += {"fail": not ok, "success": ok, "done": True}[kind]
            if running == threshold:
                assert fired_at == i
                break


@settings(max_examples=300, deadline=None)
@given(percent=st.integers(1, 100), outcomes=st.lists(st.booleans(), max_size=80))
def test_percent_rules_fire_exactly_when_the_share_reaches_the_threshold(percent, outcomes):
    rule = HaltRule("soon", "fail", percent, percent=True)
    failed = succeeded = 0
    for ok in outcomes:
        succeeded += ok
        failed += not ok
        done = failed + succeeded
        expected = done >= 3 and failed > 0 and failed * 100 >= percent * done
        assert rule.triggered(failed, succeeded) == expected


# -- budget caps on a unit's total (issue 13, item 5) -----------------------------------------


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("soon,tokens=2000000", HaltRule("soon", "tokens", 2_000_000)),
        ("now,cost=20", HaltRule("now", "cost", 20)),
        ("Input_Tokens=5", HaltRule("soon", "input_tokens", 5)),
    ],
)
def test_budget_caps_name_a_unit_and_a_total(text, rule):
    parsed = HaltRule.parse(text)
    assert parsed == rule
    assert parsed.budget


@pytest.mark.parametrize("text", ["soon,tokens=5%", "soon,requests=10", "soon,tokens=0"])
def test_bad_budget_caps_name_the_fix(text):
    with pytest.raises(ValueError, match="halt"):
        HaltRule.parse(text)


def test_a_budget_cap_fires_when_the_total_reaches_it_and_never_on_counts():
    cap = HaltRule.parse("soon,tokens=1000")
    assert not cap.triggered(failed=500, succeeded=500)  # counts alone never fire it
    assert not cap.triggered(0, 1, {"tokens": 999, "requests": 5000})
    assert cap.triggered(0, 1, {"tokens": 1000})


def test_the_batch_state_halts_soon_or_now_at_the_cap():
    from paceline.policy.batch import BatchState

    state: BatchState[int] = BatchState(10, rules=[HaltRule.parse("soon,tokens=100")])
    state.add_cost({"requests": 1, "tokens": 60})
    state.settle(0, 0, False)
    assert not state.stopped
    state.add_cost({"requests": 1, "tokens": 40})
    assert state.stopped
    assert not state.halt_now
    assert state.halt_reason == "halt rule soon,tokens=100: 100 tokens used"
    assert state.totals == {"requests": 2, "tokens": 100}
    now: BatchState[int] = BatchState(10, rules=[HaltRule.parse("now,cost=20")])
    now.add_cost({"cost": 25})
    assert now.stopped
    assert now.halt_now
