import contextlib
import dataclasses
import datetime
import functools
import math
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paceline.errors import PacelineError
from paceline.redact import redact_data
from paceline.stores import (
    Journal,
    JournalCorrupt,
    JournalEncodeError,
    JournalError,
    JournalMismatch,
    JsonCodec,
    StoredOutcome,
    fingerprint_of,
    item_key,
)

FP = "0123456789abcdef"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "batch.journal"


def open_journal(path, **kwargs):
    kwargs.setdefault("fingerprint", FP)
    return Journal.open(path, **kwargs)


def writer_threads():
    return [t for t in threading.enumerate() if t.name.startswith("paceline-journal-writer")]


# -- round trips -------------------------------------------------------------------------

NATIVE_RESULTS = [
    None,
    True,
    False,
    0,
    -1,
    7,
    2**63 - 1,
    -(2**63),
    2**63,  # beyond SQLite's 64-bit integers: stored as JSON
    -(2**70),
    1.5,
    -0.0,
    1e300,
    float("inf"),
    float("-inf"),
    "",
    "plain",
    "héllo wörld ✓",
    "line\nbreak\x00nul",
    "\ud800 lone surrogate",  # not valid UTF-8: stored as JSON
]
JSON_RESULTS = [
    [],
    {},
    [1, "a", None, True, 2.5, [2**64]],
    {"id": 7, "tags": ["x", "y"], "nested": {"deep": [{"k": None}]}},
    {"ünïcode": "välue"},
]


@pytest.mark.parametrize("result", NATIVE_RESULTS + JSON_RESULTS, ids=lambda v: type(v).__name__)
def test_every_native_and_json_result_comes_back_equal_and_of_the_same_type(path, result):
    with open_journal(path) as journal:
        journal.record("k", success=True, result=result)
        here = journal.lookup("k")
    with open_journal(path) as journal:
        again = journal.lookup("k")
    for outcome in (here, again):
        assert outcome is not None
        assert outcome.result == result
        assert type(outcome.result) is type(result)
        if isinstance(result, float):
            assert math.copysign(1, outcome.result) == math.copysign(1, result)


def test_nan_comes_back_as_nan(path):
    with open_journal(path) as journal:
        journal.record("k", success=True, result=float("nan"))
    with open_journal(path) as journal:
        assert math.isnan(journal.lookup("k").result)


def test_an_outcome_keeps_attempts_duration_and_the_error(path):
    with open_journal(path) as journal:
        journal.record("ok", success=True, result=1, attempts=2, duration_s=0.25)
        journal.record("bad", success=False, error=TimeoutError("too slow"), attempts=3)
    with open_journal(path) as journal:
        assert journal.lookup("ok") == StoredOutcome("ok", True, 1, None, None, None, 2, 0.25)
        assert journal.lookup("bad") == StoredOutcome(
            "bad", False, None, "too slow", "TimeoutError", "timeout", 3, None
        )


def test_an_error_without_a_message_is_stored_under_its_class_name(path):
    with open_journal(path) as journal:
        journal.record("k", success=False, error=KeyError())
        assert journal.lookup("k").error == "KeyError"


def test_a_failure_may_carry_a_result(path):
    with open_journal(path) as journal:
        journal.record("k", success=False, result={"status": 500}, error=RuntimeError("x"))
    with open_journal(path) as journal:
        assert journal.lookup("k").result == {"status": 500}


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class PointCodec:
    def encode(self, value):
        return {"x": value.x, "y": value.y} if isinstance(value, Point) else value

    def decode(self, data):
        return Point(**data) if isinstance(data, dict) and set(data) == {"x", "y"} else data


def test_a_codec_stores_a_custom_type_and_decodes_it_on_resume(path):
    with open_journal(path, codec=PointCodec()) as journal:
        journal.record("p", success=True, result=Point(1, 2))
        journal.record("n", success=True, result=5)
        journal.record("none", success=True, result=None)
    with open_journal(path, codec=PointCodec()) as journal:
        assert journal.lookup("p").result == Point(1, 2)
        assert journal.lookup("n").result == 5
        assert journal.lookup("none").result is None
    with open_journal(path) as journal:  # without the codec: the JSON-ready data
        assert journal.lookup("p").result == {"x": 1, "y": 2}


def test_a_codec_for_dates(path):
    class DateCodec:
        def encode(self, value):
            return value.isoformat()

        def decode(self, data):
            return datetime.date.fromisoformat(data)

    with open_journal(path, codec=DateCodec()) as journal:
        journal.record("d", success=True, result=datetime.date(2024, 2, 29))
    with open_journal(path, codec=DateCodec()) as journal:
        assert journal.lookup("d").result == datetime.date(2024, 2, 29)


@pytest.mark.parametrize(
    ("result", "type_name"),
    [
        (Point(1, 2), "test_journal.Point"),
        ({1, 2}, "set"),
        ((1, 2), "tuple"),
        ({"when": datetime.datetime(2024, 1, 1)}, "datetime.datetime"),
        (b"bytes", "bytes"),
    ],
)
def test_a_result_json_cannot_hold_is_refused_naming_its_type_and_the_codec_fix(
    path, result, type_name
):
    with open_journal(path) as journal:
        with pytest.raises(JournalEncodeError) as caught:
            journal.record("k", success=True, result=result)
        assert type_name in str(caught.value)
        assert "codec=" in str(caught.value)
        assert journal.lookup("k") is None  # nothing half-recorded
        journal.record("k", success=True, result=1)  # the journal is still usable
        assert journal.lookup("k").result == 1


def test_a_dict_with_non_str_keys_is_refused(path):
    with open_journal(path) as journal, pytest.raises(JournalEncodeError, match="key 1"):
        journal.record("k", success=True, result={1: "a"})


def test_an_explicit_json_codec_behaves_like_the_default(path):
    with open_journal(path, codec=JsonCodec()) as journal:
        journal.record("k", success=True, result={"a": 1})
        with pytest.raises(JournalEncodeError):
            journal.record("t", success=True, result=(1,))
        assert journal.lookup("k").result == {"a": 1}


def test_journal_errors_are_paceline_errors():
    for cls in (JournalMismatch, JournalCorrupt, JournalEncodeError):
        assert issubclass(cls, JournalError)
    assert issubclass(JournalError, PacelineError)


def test_a_key_must_be_a_valid_str(path):
    with open_journal(path) as journal:
        with pytest.raises(TypeError, match="keys are str"):
            journal.record(5, success=True)
        with pytest.raises(JournalEncodeError, match="surrogate"):
            journal.record("\udcff", success=True)
        journal.record("ключ", success=True, result="значение")
    with open_journal(path) as journal:
        assert journal.lookup("ключ").result == "значение"


# -- resume semantics ----------------------------------------------------------------------


def test_a_reopened_journal_sees_everything_recorded_before_close(path):
    with open_journal(path) as journal:
        for n in range(2500):
            journal.record(f"i:{n}", success=n % 10 != 0, result=n, error=None)
    with open_journal(path) as journal:
        assert journal.counts() == {"succeeded": 2250, "failed": 250}
        assert [o.key for o in journal.outcomes()] == [f"i:{n}" for n in range(2500)]
        assert journal.lookup("i:2499").result == 2499


def test_retry_failed_settles_successes_only(path):
    with open_journal(path) as journal:
        journal.record("good", success=True, result=1)
        journal.record("bad", success=False, error=ValueError("no"))
    with open_journal(path) as journal:
        assert journal.is_settled("good")
        assert journal.is_settled("bad")
        assert journal.is_settled("good", retry_failed=True)
        assert not journal.is_settled("bad", retry_failed=True)
        assert not journal.is_settled("never-seen")
        assert not journal.is_settled("never-seen", retry_failed=True)
        assert journal.failed_keys() == ["bad"]


def test_a_later_success_replaces_a_failure_and_keeps_its_place(path):
    with open_journal(path) as journal:
        for key in "abcde":
            journal.record(key, success=key != "b", error=None if key != "b" else OSError("x"))
    with open_journal(path) as journal:
        journal.record("b", success=True, result="second time lucky", attempts=2)
        journal.record("f", success=True)
        assert journal.lookup("b").result == "second time lucky"
    with open_journal(path) as journal:
        assert [o.key for o in journal.outcomes()] == list("abcdef")
        assert journal.lookup("b") == StoredOutcome(
            "b", True, "second time lucky", None, None, None, 2, None
        )
        assert journal.failed_keys() == []
        assert journal.counts() == {"succeeded": 6, "failed": 0}


def test_a_key_recorded_twice_in_one_batch_keeps_the_last_outcome(path):
    with open_journal(path) as journal:
        journal.record("k", success=False, error=ValueError("1"))
        journal.record("x", success=True, result={"a": 1})
        journal.record("k", success=True, result=[1])
        journal.record("k", success=True, result=2)
    with open_journal(path) as journal:
        assert [(o.key, o.result) for o in journal.outcomes()] == [("k", 2), ("x", {"a": 1})]


def test_lookup_sees_what_this_run_recorded_before_it_is_committed(path):
    with open_journal(path, flush_interval_s=60, flush_rows=10**6) as journal:
        journal.record("k", success=True, result={"fresh": True})
        assert journal.lookup("k").result == {"fresh": True}
        assert journal.is_settled("k")
        assert journal.lookup("missing") is None


def test_meta_holds_strings_for_the_runner(path):
    with open_journal(path, label="sync users") as journal:
        journal.set_meta("total", "50000")
        assert journal.get_meta("journal.fingerprint") == FP
        assert journal.get_meta("journal.label") == "sync users"
        assert journal.get_meta("journal.format_version") == "1"
        assert journal.get_meta("nope") is None
        with pytest.raises(ValueError, match="reserved"):
            journal.set_meta("journal.fingerprint", "x")
    with open_journal(path) as journal:
        assert journal.get_meta("total") == "50000"


def test_outcomes_page_through_a_large_journal(path):
    with open_journal(path) as journal:
        for n in range(1234):
            journal.record(f"k{n}", success=True, result=n)
        seen = list(journal.outcomes())  # flushes first
        assert [o.result for o in seen] == list(range(1234))


# -- identity: fingerprint and mismatch ------------------------------------------------------


def test_a_journal_of_another_batch_is_refused_with_both_identities_and_the_fix(path):
    with open_journal(path, fingerprint="aaaa", label="sync users"):
        pass
    with pytest.raises(JournalMismatch) as caught:
        open_journal(path, fingerprint="bbbb", label="sync orders")
    message = str(caught.value)
    for part in (
        str(path),
        "aaaa",
        "sync users",
        "bbbb",
        "sync orders",
        "reuse_journal=True",
        "reuse=True",
    ):
        assert part in message
    assert writer_threads() == []


def test_reuse_adopts_a_journal_of_another_batch(path):
    with open_journal(path, fingerprint="aaaa") as journal:
        journal.record("k", success=True, result=1)
    with open_journal(path, fingerprint="bbbb", label="new", reuse=True) as journal:
        assert journal.is_settled("k")
        assert journal.get_meta("journal.fingerprint") == "bbbb"
    with open_journal(path, fingerprint="bbbb") as journal:  # adopted for good
        assert journal.lookup("k").result == 1


def test_reuse_with_the_same_fingerprint_changes_nothing(path):
    with open_journal(path, label="x", reuse=True) as journal:
        journal.record("k", success=True)
    with open_journal(path, reuse=True) as journal:
        assert journal.get_meta("journal.label") == "x"


def test_a_journal_open_elsewhere_is_refused(path):
    with open_journal(path), pytest.raises(JournalError, match="in use"):
        open_journal(path)
    with open_journal(path):  # released on close
        pass


# -- damage ----------------------------------------------------------------------------------


def assert_corrupt(path, *words):
    with pytest.raises(JournalCorrupt) as caught:
        open_journal(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert writer_threads() == []
    return message


def test_random_bytes_are_not_a_journal(path):
    path.write_bytes(os.urandom(8192))
    assert_corrupt(path, "not a SQLite database")


def test_an_empty_file_is_not_a_journal(path):
    path.write_bytes(b"")
    assert_corrupt(path, "empty")


def test_a_text_file_is_not_a_journal(path):
    path.write_text("key,value\n1,2\n")
    assert_corrupt(path, "not a SQLite database")


def test_a_truncated_journal_is_reported_as_truncated(path, tmp_path):
    with open_journal(path) as journal:
        for n in range(3000):
            journal.record(f"k{n}", success=True, result={"n": n, "pad": "x" * 100})
    data = path.read_bytes()
    cut = tmp_path / "cut.journal"
    cut.write_bytes(data[: len(data) // 2])
    assert_corrupt(cut, "truncated", "backup")


def test_a_journal_with_damaged_pages_is_reported_without_a_raw_sqlite_error(path, tmp_path):
    with open_journal(path) as journal:
        for n in range(3000):
            journal.record(f"k{n}", success=True, result={"n": n, "pad": "x" * 100})
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(page_size * 2, len(data), page_size):  # wreck every page after the 2nd
        data[offset : offset + 64] = os.urandom(64)
    damaged = tmp_path / "damaged.journal"
    damaged.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as caught, open_journal(damaged) as journal:
        list(journal.outcomes())
    assert str(damaged) in str(caught.value)


def test_a_sqlite_database_without_our_tables_is_not_a_journal(path):
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    message = assert_corrupt(path, "not a paceline journal")
    assert "customers" in message
    with contextlib.closing(sqlite3.connect(path)) as conn:  # left untouched
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("customers",)]


def test_a_journal_from_a_newer_paceline_is_refused_with_the_fix(path):
    with open_journal(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'journal.format_version'")
    conn.commit()
    conn.close()
    assert_corrupt(path, "newer paceline", "format 2", "Upgrade paceline")


def test_a_directory_is_not_a_journal(tmp_path):
    assert_corrupt(tmp_path, "not a regular file")


# -- files and permissions -------------------------------------------------------------------


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_journal_and_its_side_files_are_owner_only_even_with_a_lax_umask(tmp_path):
    path = tmp_path / "new" / "dir" / "batch.journal"
    old_umask = os.umask(0)
    try:
        with open_journal(path) as journal:
            journal.record("k", success=True, result=1)
            journal.flush()
            assert mode(path) == 0o600
            for suffix in ("-wal", "-shm"):
                side = Path(f"{path}{suffix}")
                assert side.exists()
                assert mode(side) == 0o600
            assert mode(path.parent) == 0o700
            assert mode(path.parent.parent) == 0o700  # every directory it made
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["batch.journal"]


def test_opening_a_missing_journal_creates_it_and_its_directory(tmp_path):
    path = tmp_path / "a" / "b" / "j.journal"
    with open_journal(path) as journal:
        assert journal.path == path
        assert journal.fingerprint == FP
    assert path.is_file()


def test_a_journal_opens_from_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_journal("rel.journal") as journal:
        journal.record("k", success=True)
        assert journal.path == tmp_path / "rel.journal"


# -- redaction -------------------------------------------------------------------------------


def test_secrets_never_reach_the_file(path):
    secret = "sk-live-7Hq2ZpX9"
    with open_journal(path) as journal:
        journal.record(
            "e",
            success=False,
            error=RuntimeError(f"401 from https://api.example/v1?api_key={secret}"),
        )
        journal.record(
            "h",
            success=False,
            error=PermissionError(
                f"denied; request headers: {{'Authorization': 'Bearer {secret}'}}"
            ),
        )
        journal.record(
            "r",
            success=True,
            result={"user": "ann", "auth": {"Access_Token": secret, "password": secret}},
        )
        journal.record("l", success=True, result=[{"headers": {"Cookie": secret}}])
        assert "[REDACTED]" in journal.lookup("e").error
        assert journal.lookup("r").result == {
            "user": "ann",
            "auth": {"Access_Token": "[REDACTED]", "password": "[REDACTED]"},
        }
        assert journal.lookup("l").result == [{"headers": {"Cookie": "[REDACTED]"}}]
    for name in os.listdir(path.parent):
        assert secret.encode() not in (path.parent / name).read_bytes()


# -- the writer thread -----------------------------------------------------------------------


def test_close_is_idempotent_and_leaves_no_thread(path):
    journal = open_journal(path)
    assert len(writer_threads()) == 1
    journal.record("k", success=True)
    journal.close()
    journal.close()
    assert writer_threads() == []
    with pytest.raises(JournalError, match="closed"):
        journal.record("k2", success=True)
    with pytest.raises(JournalError, match="closed"):
        journal.flush()
    assert journal.is_settled("k")  # the in-memory index still answers


def test_a_journal_dropped_without_close_still_commits_and_stops_its_thread(path):
    journal = open_journal(path, flush_interval_s=60)
    journal.record("k", success=True, result=1)
    del journal
    import gc

    gc.collect()
    assert writer_threads() == []
    with open_journal(path) as again:
        assert again.lookup("k").result == 1


def test_commits_happen_on_their_own_every_flush_interval(path):
    with open_journal(path, flush_interval_s=0.02, flush_rows=10**6) as journal:
        journal.record("k", success=True, result=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.closing(sqlite3.connect(path)) as other:
                if other.execute("SELECT count(*) FROM items").fetchone()[0] == 1:
                    break
            time.sleep(0.01)
        else:
            pytest.fail("the writer never committed on its own")


def test_a_failed_commit_is_raised_by_the_next_call_never_lost(path):
    journal = open_journal(path)
    journal.record("first", success=True)
    journal.flush()
    other = sqlite3.connect(path)
    other.execute("DROP TABLE items")  # the file is damaged under the running batch
    other.close()
    journal.record("second", success=True)
    with pytest.raises(JournalError, match="committing outcomes failed") as caught:
        journal.flush()
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    with pytest.raises(JournalError, match="committing outcomes failed"):
        journal.record("third", success=True)
    with pytest.raises(JournalError, match="committing outcomes failed"):
        journal.close()
    journal.close()  # once raised, closing again is quiet
    assert writer_threads() == []


def test_a_full_disk_is_raised_by_close(path):
    journal = open_journal(path, flush_interval_s=60, flush_rows=10**6)
    (pages,) = journal._writer._conn.execute("PRAGMA page_count").fetchone()
    journal._writer._conn.execute(f"PRAGMA max_page_count = {pages}")  # "disk full" at once
    for n in range(500):
        journal.record(f"k{n}", success=True, result="x" * 200)
    with pytest.raises(JournalError) as caught:
        journal.close()
    assert "full" in str(caught.value.__cause__)
    assert writer_threads() == []


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are 3.11+")
def test_a_failure_while_leaving_a_with_block_is_attached_to_the_exception_in_flight(path):
    def batch():
        with open_journal(path) as journal:
            other = sqlite3.connect(path)
            other.execute("DROP TABLE items")
            other.close()
            journal.record("k", success=True)
            raise KeyError("the batch's own error")

    with pytest.raises(KeyError) as caught:
        batch()
    assert any("closing the journal failed" in note for note in caught.value.__notes__)


def test_record_blocks_while_the_writer_is_far_behind(path):
    journal = open_journal(path, flush_rows=10)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer cannot commit until this ends
    done = threading.Event()

    def produce():
        for n in range(300):
            journal.record(f"k{n}", success=True, result=n)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert not done.wait(0.5)  # held back at ~10 batches, not buffering all 300
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    producer.join(30)
    assert done.is_set()
    journal.flush()
    assert journal.counts() == {"succeeded": 300, "failed": 0}
    journal.close()
    with open_journal(path) as again:
        assert len(list(again.outcomes())) == 300


def test_flush_and_close_may_come_from_another_thread(path):
    journal = open_journal(path, flush_rows=50)
    stop = threading.Event()
    flushes = []

    def flusher():
        while not stop.is_set():
            journal.flush()
            flushes.append(1)

    thread = threading.Thread(target=flusher)
    thread.start()
    for n in range(5000):
        journal.record(f"k{n}", success=n % 7 != 0, result=n)
    stop.set()
    thread.join()
    closer = threading.Thread(target=journal.close)
    closer.start()
    closer.join()
    assert flushes
    with open_journal(path) as again:
        assert again.counts() == {"succeeded": 5000 - 715, "failed": 715}


CHILD = textwrap.dedent(
    """
    import sys, time
    from paceline.stores import Journal
    journal = Journal.open(sys.argv[1], fingerprint="kill-test")
    for n in range(2000):
        journal.record(f"i:{n}", success=n % 3 != 0, result={"n": n} if n % 2 else n,
                       error=None if n % 3 else ValueError(f"item {n}"))
        if n == 999:
            journal.flush()
            print("flushed 1000", flush=True)
        if n >= 1000:
            time.sleep(0.0005)
    time.sleep(60)
    """
)


def test_a_batch_killed_with_sigkill_keeps_everything_it_flushed(path):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "flushed 1000"
        time.sleep(0.2)  # let it record (and maybe commit) some of the rest
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with Journal.open(path, fingerprint="kill-test") as journal:
        outcomes = list(journal.outcomes())
        assert len(outcomes) >= 1000
        keys = [o.key for o in outcomes]
        assert keys == [f"i:{n}" for n in range(len(outcomes))]  # a prefix, in order
        for n, outcome in enumerate(outcomes):
            assert outcome.success == (n % 3 != 0)
            assert outcome.result == ({"n": n} if n % 2 else n)
        counts = journal.counts()
        assert counts["succeeded"] + counts["failed"] == len(outcomes)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


EXITING_CHILD = textwrap.dedent(
    """
    import sys
    from paceline.stores import Journal
    journal = Journal.open(sys.argv[1], fingerprint="exit-test", flush_interval_s=60)
    for n in range(500):
        journal.record(f"i:{n}", success=True, result=n)
    if sys.argv[2] == "ctrl-c":
        raise KeyboardInterrupt
    """
)


@pytest.mark.parametrize("how", ["exit", "ctrl-c"])
def test_a_batch_that_exits_without_closing_still_commits_what_it_recorded(path, how):
    child = subprocess.run(
        [sys.executable, "-c", EXITING_CHILD, str(path), how],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # An uncaught KeyboardInterrupt ends Python by SIGINT, after running its exit handlers.
    assert child.returncode == (0 if how == "exit" else -signal.SIGINT), child.stderr
    with Journal.open(path, fingerprint="exit-test") as journal:
        assert journal.counts() == {"succeeded": 500, "failed": 0}


# -- item_key and fingerprint_of ---------------------------------------------------------------


def test_item_key_of_strings_and_ints_is_readable():
    assert item_key("user-7") == "s:user-7"
    assert item_key(42) == "i:42"
    assert item_key(-3) == "i:-3"
    assert item_key("42") != item_key(42)


def test_item_key_of_equal_dicts_is_equal_whatever_their_order():
    a = {"id": 1, "name": "ann", "tags": ["x", "y"], "meta": {"b": 2, "a": 1}}
    b = {"meta": {"a": 1, "b": 2}, "tags": ["x", "y"], "name": "ann", "id": 1}
    assert item_key(a) == item_key(b)
    assert item_key(a).startswith("h:")
    assert len(item_key(a)) == 2 + 32
    assert item_key(a) != item_key({**a, "id": 2})


def test_item_key_of_lists_and_other_json_items():
    assert item_key([1, 2]) == item_key([1, 2])
    assert item_key([1, 2]) != item_key([2, 1])
    assert item_key(None).startswith("h:")
    assert item_key(True) != item_key(1)
    assert item_key(1.5).startswith("h:")


def test_item_key_is_stable_across_processes():
    code = "from paceline.stores import item_key; print(item_key({'b': [1, 'é'], 'a': None}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == item_key({"a": None, "b": [1, "é"]})


def test_item_key_prefers_the_id_then_the_key_function():
    assert item_key({"id": 3}, item_id="three") == "three"
    assert item_key({"id": 3}, key=lambda item: item["id"]) == "3"
    assert item_key(lambda: 0, item_id="fn") == "fn"


def test_item_key_of_an_unencodable_item_says_how_to_name_it():
    with pytest.raises(TypeError) as caught:
        item_key(lambda: 0)
    assert "function" in str(caught.value)
    assert "item_ids=" in str(caught.value)
    assert "key=" in str(caught.value)
    with pytest.raises(TypeError, match="item_ids="):
        item_key({"when": datetime.date(2024, 1, 1)})


def module_level_operation(x):
    return x


class Client:
    def fetch(self, x):
        return x

    def __call__(self, x):
        return x


def test_fingerprint_of_functions_methods_and_callables():
    fp = fingerprint_of(module_level_operation)
    assert len(fp) == 16
    assert int(fp, 16) >= 0
    assert fp == fingerprint_of(module_level_operation)
    assert fp != fingerprint_of(module_level_operation, label="eu")
    assert fingerprint_of(Client().fetch) == fingerprint_of(Client().fetch)
    assert fingerprint_of(Client().fetch) != fingerprint_of(Client.__call__)
    assert fingerprint_of(Client()) == fingerprint_of(Client())
    assert fingerprint_of(Client()) != fingerprint_of(Client().fetch)


def test_fingerprint_of_a_string_is_the_string_identity():
    import hashlib

    assert fingerprint_of("sync-users") == hashlib.sha256(b"sync-users\0").hexdigest()[:16]
    assert fingerprint_of("sync-users", "eu") == hashlib.sha256(b"sync-users\0eu").hexdigest()[:16]
    assert fingerprint_of("sync-users") != fingerprint_of("sync-orders")


def test_fingerprint_of_a_partial_includes_its_arguments_but_not_addresses():
    same = fingerprint_of(functools.partial(module_level_operation, region="eu"))
    assert same == fingerprint_of(functools.partial(module_level_operation, region="eu"))
    assert same != fingerprint_of(functools.partial(module_level_operation, region="us"))
    assert same != fingerprint_of(module_level_operation)
    # An argument whose repr holds a memory address gets the same fingerprint in every run.
    assert fingerprint_of(functools.partial(module_level_operation, object())) == fingerprint_of(
        functools.partial(module_level_operation, object())
    )


def test_fingerprint_of_lambdas_uses_their_qualname():
    first = lambda x: x  # noqa: E731
    second = lambda x: x  # noqa: E731
    assert fingerprint_of(first) == fingerprint_of(second)  # both test_...<locals>.<lambda>
    import hashlib

    identity = f"{__name__}:{first.__qualname__}\0".encode()
    assert "<lambda>" in first.__qualname__
    assert fingerprint_of(first) == hashlib.sha256(identity).hexdigest()[:16]


# -- property: the journal holds exactly the last outcome of each key -------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("record"),
            st.sampled_from(["a", "b", "c", "ключ", "d" * 40, "e"]),
            st.booleans(),
            json_values,
            st.integers(min_value=1, max_value=5),
        ),
        st.tuples(st.just("flush")),
        st.tuples(st.just("reopen")),
    ),
    max_size=30,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=operations, flush_rows=st.sampled_from([1, 3, 1000]))
def test_any_sequence_of_records_flushes_and_reopens_leaves_the_last_outcome_per_key(
    ops, flush_rows
):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.journal"
        expected: dict[str, tuple[bool, object, int]] = {}
        order: list[str] = []
        journal = open_journal(path, flush_rows=flush_rows)
        try:
            for op in ops:
                if op[0] == "record":
                    _, key, success, result, attempts = op
                    error = None if success else ValueError(f"failed {key}")
                    journal.record(
                        key, success=success, result=result, error=error, attempts=attempts
                    )
                    expected[key] = (success, redact_data(result), attempts)
                    if key not in order:
                        order.append(key)
                elif op[0] == "flush":
                    journal.flush()
                else:
                    journal.close()
                    journal = open_journal(path, flush_rows=flush_rows)
            journal.close()
            journal = open_journal(path)
            stored = list(journal.outcomes())
            assert [o.key for o in stored] == order
            for outcome in stored:
                success, result, attempts = expected[outcome.key]
                assert (outcome.success, outcome.result, outcome.attempts) == (
                    success,
                    result,
                    attempts,
                )
                assert outcome.error == (None if success else f"failed {outcome.key}")
                assert journal.is_settled(outcome.key, retry_failed=True) == success
            succeeded = sum(1 for s, _, _ in expected.values() if s)
            assert journal.counts() == {
                "succeeded": succeeded,
                "failed": len(expected) - succeeded,
            }
        finally:
            journal.close()


def test_copying_a_closed_journal_copies_everything(path, tmp_path):
    with open_journal(path) as journal:
        journal.record("k", success=True, result=[1, 2])
    copy = tmp_path / "copy.journal"
    shutil.copy(path, copy)
    with open_journal(copy) as journal:
        assert journal.lookup("k").result == [1, 2]


@pytest.mark.parametrize("bound", [1, 8, 20])
def test_recording_waits_while_max_uncommitted_rows_wait_for_their_commit(tmp_path, bound):
    # Issue 10: what a kill loses beyond the attempts in flight is at most this many outcomes
    # (a busy writer let 78 rows wait when the CLI's commit batch is 64).
    with Journal.open(
        tmp_path / "j.journal",
        fingerprint="f",
        flush_interval_s=60.0,  # never by time: only the row count and the bound commit
        flush_rows=8,
        max_uncommitted_rows=bound,
    ) as journal:
        worst = 0
        for i in range(200):
            journal.record(f"i:{i}", success=True, result=i)
            worst = max(worst, journal.commit_mark() - journal.committed_mark())
        assert worst <= bound
    with Journal.open(tmp_path / "j.journal", fingerprint="f") as journal:
        assert len(list(journal.outcomes())) == 200


def test_max_uncommitted_rows_is_checked(tmp_path):
    with pytest.raises(ValueError, match="max_uncommitted_rows=0"):
        Journal.open(tmp_path / "j.journal", fingerprint="f", max_uncommitted_rows=0)
