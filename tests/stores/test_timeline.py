"""The run timeline in the journal (``add_sample``/``samples``) and the read-only JournalView."""

import hashlib
import json
import re
import sqlite3

import pytest

from paceline.stores import (
    Journal,
    JournalCorrupt,
    JournalError,
    StoredOutcome,
)
from paceline.stores.view import JournalView

FP = "0123456789abcdef"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "batch.journal"


def open_journal(path, **kwargs):
    kwargs.setdefault("fingerprint", FP)
    return Journal.open(path, **kwargs)


def tables(path):
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


START = {
    "kind": "start",
    "run": 1,
    "t": 1700000000.25,
    "command": "http",
    "concurrency": "auto",
    "rates": ["50/s"],
    "adaptive": True,
}
TICK = {"kind": "tick", "run": 1, "t": 1700000001.25, "elapsed_s": 1.0, "eta_s": None}


# -- Journal.add_sample / samples ----------------------------------------------------------


def test_samples_come_back_in_order_and_survive_reopening(path):
    with open_journal(path) as journal:
        assert journal.samples() == []
        journal.add_sample(START)
        for n in range(5):
            journal.add_sample({**TICK, "t": TICK["t"] + n, "settled": n})
        journal.add_sample({"kind": "end", "run": 1, "t": 1.5, "snapshot": {"settled": 4}})
        in_run = journal.samples()
    with open_journal(path) as journal:
        again = journal.samples()
    assert again == in_run
    assert again[0] == START
    assert [s.get("settled") for s in again[1:6]] == [0, 1, 2, 3, 4]
    assert again[-1] == {"kind": "end", "run": 1, "t": 1.5, "snapshot": {"settled": 4}}


def test_a_sample_is_committed_at_once(path):
    with open_journal(path) as journal:
        journal.add_sample(START)
        # Another connection sees it with the journal still open and nothing flushed.
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("SELECT sample FROM timeline").fetchall()
        finally:
            conn.close()
    assert [json.loads(text) for (text,) in rows] == [START]


def test_the_table_is_made_by_the_first_sample_only(path):
    with open_journal(path) as journal:
        journal.record("k", success=True, result=1)
        assert journal.samples() == []
    assert "timeline" not in tables(path)  # reading made nothing
    with open_journal(path) as journal:
        journal.add_sample(TICK)
    assert "timeline" in tables(path)


def test_a_journal_from_before_the_timeline_opens_and_gains_one(path):
    # A format-1 journal as written before the timeline existed: meta and items only.
    with open_journal(path, label="old") as journal:
        journal.record("a", success=True, result={"x": 1})
    assert tables(path) == {"meta", "items"}
    with open_journal(path) as journal:
        assert journal.lookup("a").result == {"x": 1}
        assert journal.samples() == []
        journal.add_sample(START)
    with open_journal(path) as journal:  # and with the table it still opens
        assert journal.samples() == [START]
        assert journal.get_meta("journal.format_version") == "1"
    with JournalView.open(path) as view:
        assert view.samples() == [START]


def test_samples_must_be_json_ready_mappings(path):
    with open_journal(path) as journal:
        with pytest.raises(TypeError, match="not JSON-ready"):
            journal.add_sample({"kind": "tick", "t": {1, 2}})
        with pytest.raises(TypeError, match="mapping"):
            journal.add_sample([("kind", "tick")])  # type: ignore[arg-type]
        assert journal.samples() == []


def test_a_closed_journal_refuses_samples(path):
    journal = open_journal(path)
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.add_sample(TICK)


def test_a_damaged_sample_is_reported_with_the_path(path):
    with open_journal(path) as journal:
        journal.add_sample(TICK)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE timeline SET sample = '{oops'")
    conn.commit()
    conn.close()
    with open_journal(path) as journal, pytest.raises(JournalCorrupt, match=re.escape(str(path))):
        journal.samples()
    with JournalView.open(path) as view, pytest.raises(JournalCorrupt, match="sample 1"):
        view.samples()


# -- JournalView ------------------------------------------------------------------------------


def test_the_view_reads_a_journal_that_a_journal_holds_open(path):
    with open_journal(path, label="users") as journal:
        journal.set_meta("cli.command", "http")
        journal.record("a", success=True, result={"status_code": 200}, duration_s=0.5)
        journal.record("b", success=False, error=TimeoutError("slow"), attempts=3)
        journal.add_sample(START)
        journal.flush()
        with JournalView.open(path) as view:
            assert view.fingerprint == FP
            assert view.label == "users"
            assert view.meta["cli.command"] == "http"
            assert view.meta["journal.format_version"] == "1"
            assert view.counts() == {"succeeded": 1, "failed": 1}
            assert list(view.outcomes()) == [
                StoredOutcome("a", True, {"status_code": 200}, None, None, None, 1, 0.5),
                StoredOutcome("b", False, None, "slow", "TimeoutError", "timeout", 3, None),
            ]
            assert view.samples() == [START]
            # The batch goes on; the view sees what is committed after it opened.
            journal.record("c", success=True, result=3)
            journal.add_sample(TICK)
            journal.flush()
            assert view.counts() == {"succeeded": 2, "failed": 1}
            assert view.samples() == [START, TICK]
        # The journal is unaffected by the view coming and going.
        journal.record("d", success=True, result=4)
        journal.flush()
        assert journal.counts() == {"succeeded": 3, "failed": 1}


def test_the_view_takes_no_lock(path):
    open_journal(path).close()
    with JournalView.open(path) as view:
        with open_journal(path) as journal:  # a batch can start while a report reads
            journal.record("k", success=True, result=1)
        assert view.counts() == {"succeeded": 1, "failed": 0}


def test_the_view_needs_no_fingerprint_and_adopts_nothing(path):
    with open_journal(path, fingerprint="aaaa", label="mine") as journal:
        journal.record("k", success=True, result=1)
    before = digest(path)
    with JournalView.open(path) as view:
        assert view.fingerprint == "aaaa"
        (only,) = view.outcomes()
        assert only.result == 1
        assert view.samples() == []
    assert digest(path) == before  # the file itself is untouched
    assert "timeline" not in tables(path)
    with open_journal(path, fingerprint="aaaa") as journal:  # still that batch's journal
        assert journal.is_settled("k")


def test_the_view_decodes_results_like_the_journal(path):
    results = [None, True, False, 0, -(2**63), 2**70, 1.5, float("nan"), "", "é", [1, "a"]]
    results.append({"status_code": 201, "headers": {"a": "b"}, "body": {"id": 7}})
    with open_journal(path) as journal:
        for n, result in enumerate(results):
            journal.record(f"k{n}", success=True, result=result)
        expected = [(o.key, o.result) for o in journal.outcomes()]
    with JournalView.open(path) as view:
        got = [(o.key, o.result) for o in view.outcomes()]
    assert repr(got) == repr(expected)  # repr: nan != nan
    assert got[-1][1]["body"] == {"id": 7}


def test_the_view_pages_through_many_outcomes(path):
    with open_journal(path) as journal:
        for n in range(1234):
            journal.record(f"k{n}", success=n % 7 != 0, result=n, error=None)
    with JournalView.open(path) as view:
        keys = [o.key for o in view.outcomes()]
        assert keys == [f"k{n}" for n in range(1234)]
        assert view.counts() == {"succeeded": 1234 - 177, "failed": 177}


def test_a_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.journal"
    with pytest.raises(JournalError, match="does not exist") as caught:
        JournalView.open(missing)
    assert str(missing) in str(caught.value)
    assert "--journal" in str(caught.value)
    assert not missing.exists()  # nothing created


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"id,name\n1,ann\n", "not a SQLite database"),
        (b"SQLite format 3\x00" + b"\x00" * 20, "truncated"),
    ],
)
def test_a_file_that_is_not_a_journal_is_refused(tmp_path, content, match):
    target = tmp_path / "x.journal"
    target.write_bytes(content)
    with pytest.raises(JournalCorrupt, match=match) as caught:
        JournalView.open(target)
    assert str(target) in str(caught.value)


def test_another_sqlite_database_is_refused(tmp_path):
    target = tmp_path / "other.db"
    conn = sqlite3.connect(target)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(JournalCorrupt, match="not a paceline journal"):
        JournalView.open(target)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(JournalCorrupt, match="not a regular file"):
        JournalView.open(tmp_path)


def test_a_newer_format_is_refused(path):
    open_journal(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'journal.format_version'")
    conn.commit()
    conn.close()
    with pytest.raises(JournalCorrupt, match="newer paceline"):
        JournalView.open(path)


def test_a_closed_view_says_so(path):
    open_journal(path).close()
    view = JournalView.open(path)
    view.close()
    view.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        view.counts()


def test_views_are_made_by_open():
    with pytest.raises(TypeError, match=r"JournalView\.open"):
        JournalView()
