"""The journal through the faces: resume, retry failures, refusals, dry runs."""

import asyncio
import os
import stat

import pytest

from paceline import BatchExecutor, RateLimiter, batch_execute, dry_run, stream
from paceline.stores import JournalCorrupt, JournalEncodeError, JournalMismatch


class Calls:
    def __init__(self, fail: set[int] = frozenset()):  # type: ignore[assignment]
        self.seen: list[int] = []
        self.fail = set(fail)

    async def op(self, key: int) -> dict:
        self.seen.append(key)
        if key in self.fail:
            raise ValueError(f"bad {key}")
        return {"key": key, "double": key * 2}


def test_a_rerun_skips_settled_keys_and_returns_their_stored_results_in_place(tmp_path):
    path = tmp_path / "j.db"
    first = Calls(fail={2})
    results = asyncio.run(batch_execute(range(4), first.op, journal=path, journal_label="t"))
    assert first.seen == [0, 1, 2, 3]
    again = Calls()
    results2 = asyncio.run(batch_execute(range(6), again.op, journal=path, journal_label="t"))
    assert again.seen == [4, 5]  # neither successes nor failures ran again
    assert [r.is_success for r in results2] == [True, True, False, True, True, True]
    assert results2[1].value == results[1].value == {"key": 1, "double": 2}
    assert results2[2].message == "bad 2"
    assert results2[2].error.error_type == "ValueError"


def test_retry_failed_reruns_only_the_failures(tmp_path):
    path = tmp_path / "j.db"
    asyncio.run(batch_execute(range(5), Calls(fail={1, 3}).op, journal=path))
    rerun = Calls()
    results = asyncio.run(batch_execute(range(5), rerun.op, journal=path, retry_failed=True))
    assert rerun.seen == [1, 3]
    assert all(r.is_success for r in results)


def test_keys_not_positions_identify_items_so_a_reordered_input_resumes(tmp_path):
    path = tmp_path / "j.db"
    asyncio.run(batch_execute([10, 20, 30], Calls().op, journal=path))
    rerun = Calls()
    results = asyncio.run(batch_execute([30, 40, 10, 20], rerun.op, journal=path))
    assert rerun.seen == [40]
    assert [r.value["key"] for r in results] == [30, 40, 10, 20]


def test_a_key_function_identifies_dict_items(tmp_path):
    path = tmp_path / "j.db"
    rows = [{"id": i, "payload": [i]} for i in range(3)]
    seen: list[int] = []

    async def op(row):
        seen.append(row["id"])
        return row["id"]

    asyncio.run(batch_execute(rows, op, journal=path, key=lambda r: r["id"]))
    changed = [{"id": i, "payload": ["changed"]} for i in range(4)]
    asyncio.run(batch_execute(changed, op, journal=path, key=lambda r: r["id"]))
    assert seen == [0, 1, 2, 3]


def test_another_batchs_journal_is_refused_unless_reused(tmp_path):
    path = tmp_path / "j.db"
    asyncio.run(batch_execute(range(2), Calls().op, journal=path, journal_label="tenants"))
    with pytest.raises(JournalMismatch) as info:
        asyncio.run(batch_execute(range(2), Calls().op, journal=path, journal_label="reports"))
    assert "tenants" in str(info.value)
    assert "reports" in str(info.value)
    rerun = Calls()
    asyncio.run(
        batch_execute(range(3), rerun.op, journal=path, journal_label="reports", reuse_journal=True)
    )
    assert rerun.seen == [2]


def test_a_corrupt_journal_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "j.db"
    path.write_bytes(b"this is not a journal" * 100)
    with pytest.raises(JournalCorrupt) as info:
        asyncio.run(batch_execute(range(2), Calls().op, journal=path))
    assert str(path) in str(info.value)


def test_a_result_json_cannot_hold_stops_the_batch_with_a_clear_error_and_keeps_the_rest(
    tmp_path,
):
    path = tmp_path / "j.db"

    async def op(key):
        return object() if key == 3 else key

    with pytest.raises(JournalEncodeError) as info:
        asyncio.run(batch_execute(range(6), op, 1, journal=path))
    assert "codec" in str(info.value)
    assert "object" in str(info.value)
    seen: list[int] = []

    async def fixed(key):
        seen.append(key)
        return key

    asyncio.run(batch_execute(range(6), fixed, 1, journal=path, reuse_journal=True))
    assert 0 not in seen  # what was stored before the bad result is kept
    assert 3 in seen


def test_the_journal_file_is_owner_only(tmp_path):
    path = tmp_path / "sub" / "j.db"
    asyncio.run(batch_execute(range(2), Calls().op, journal=path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_secrets_never_reach_the_journal(tmp_path):
    path = tmp_path / "j.db"

    async def op(key):
        if key:
            raise RuntimeError("401 for header Authorization: Bearer sk-live-123")
        return {"token": "sk-live-456", "ok": True}

    asyncio.run(batch_execute(range(2), op, journal=path))
    raw = path.read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("j.db-")
    )
    assert b"sk-live-123" not in raw
    assert b"sk-live-456" not in raw


def test_the_thread_executor_resumes_by_item_ids(tmp_path):
    path = tmp_path / "j.db"
    ran: list[str] = []

    def task(name):
        def run():
            ran.append(name)
            return name.upper()

        return run

    executor = BatchExecutor(stop_on_error=False, max_workers=3)
    executor.execute_batch([task(n) for n in "abc"], item_ids=list("abc"), journal=path)
    result = executor.execute_batch([task(n) for n in "abcd"], item_ids=list("abcd"), journal=path)
    assert ran == ["a", "b", "c", "d"] or sorted(ran) == ["a", "b", "c", "d"]
    assert [item.restored for item in result] == [True, True, True, False]
    assert result.results == ["A", "B", "C", "D"]


def test_a_journal_without_item_ids_is_refused_for_callables(tmp_path):
    with pytest.raises(ValueError, match="journal= needs item_ids"):
        BatchExecutor().execute_batch([lambda: 1], journal=tmp_path / "j.db")


def test_stream_marks_restored_items(tmp_path):
    path = tmp_path / "j.db"
    asyncio.run(batch_execute(range(2), Calls().op, journal=path))

    async def main():
        return [r async for r in stream(range(3), Calls().op, journal=path)]

    out = asyncio.run(main())
    assert [r.restored for r in out] == [True, True, False]


def test_dry_run_counts_what_the_journal_settled_and_the_time_the_limit_needs(tmp_path):
    path = tmp_path / "j.db"
    calls = Calls(fail={1})
    asyncio.run(batch_execute(range(4), calls.op, journal=path))
    report = dry_run(range(10), rate_limiter=RateLimiter(2, 1.0), journal=path, operation=calls.op)
    assert (report.items, report.settled_succeeded, report.settled_failed) == (10, 3, 1)
    assert report.to_run == 6
    assert report.min_duration_s == 2.002  # 2 windows of 1 s, each 1 ms longer by default
    assert "6 would run" in str(report)
    retry = dry_run(range(10), journal=path, operation=calls.op, retry_failed=True)
    assert retry.to_run == 7
    missing = tmp_path / "never.db"
    assert dry_run(range(3), journal=missing).to_run == 3
    assert not missing.exists()


def test_the_rate_limited_executor_resumes_too(tmp_path):
    from paceline import RateLimitedExecutor
    from paceline.testing import FakeRateLimiter

    path = tmp_path / "j.db"
    limiter = FakeRateLimiter()
    executor = RateLimitedExecutor(limiter, stop_on_error=False)

    def bad():
        raise ValueError("bad b")

    first = executor.execute_batch([lambda: 1, bad], item_ids=["a", "b"], journal=path)
    assert first[0] == 1
    assert isinstance(first[1], ValueError)
    again = executor.execute_batch(
        [lambda: 1, bad, lambda: 3], item_ids=["a", "b", "c"], journal=path
    )
    assert again[0] == 1
    assert str(again[1]) == "bad b"
    assert again[2] == 3
    assert limiter.acquire_count == 3  # a and b were not run again


class SlowCalls(Calls):
    """Slow enough that at a concurrency of 8 the first of two equal keys is still running
    when the second is read."""

    async def op(self, key: int) -> dict:
        result = await super().op(key)
        await asyncio.sleep(0.02)
        return result


@pytest.mark.parametrize("workers", [1, 8])
def test_a_repeated_key_fails_as_a_duplicate_and_runs_once(tmp_path, workers):
    from paceline._results import ErrorCode

    path = tmp_path / "j.db"
    first = SlowCalls()
    results = asyncio.run(batch_execute([1, 2, 1, 3], first.op, workers, journal=path))
    assert sorted(first.seen) == [1, 2, 3]
    assert [r.is_success for r in results] == [True, True, False, True]
    assert results[2].error_code is ErrorCode.INVALID_INPUT
    assert isinstance(results[2].error, ValueError)
    assert "duplicate key 'i:1' at position 2" in results[2].message
    # the journal holds the first item's outcome, not the duplicate's failure
    assert results[0].value == {"key": 1, "double": 2}
    again = SlowCalls()
    rerun = asyncio.run(batch_execute([1, 2, 1, 3], again.op, workers, journal=path))
    assert again.seen == []  # what the first run settled is restored
    assert [r.is_success for r in rerun] == [True, True, False, True]
    assert "duplicate key 'i:1' at position 2" in rerun[2].message


def test_a_repeated_key_fails_fast_under_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="duplicate key 's:x' at position 1"):
        asyncio.run(
            batch_execute(
                ["x", "x", "y"], SlowCalls().op, 1, fail_fast=True, journal=tmp_path / "j"
            )
        )


def test_stream_fails_a_repeated_key_function_value(tmp_path):
    rows = [{"id": 1, "v": "a"}, {"id": 1, "v": "b"}]
    seen: list[str] = []

    async def op(row):
        seen.append(row["v"])
        return row["v"]

    async def main():
        return [
            r async for r in stream(rows, op, 8, key=lambda row: row["id"], journal=tmp_path / "j")
        ]

    out = asyncio.run(main())
    assert seen == ["a"]
    assert [(r.success, r.restored) for r in out] == [(True, False), (False, False)]
    assert "duplicate key '1' at position 1" in out[1].error
    assert out[1].attempts == 0  # never attempted


@pytest.mark.parametrize("workers", [None, 4])
def test_the_thread_executor_fails_a_repeated_item_id(tmp_path, workers):
    ran: list[str] = []

    def task(name):
        def run():
            ran.append(name)
            return name

        return run

    executor = BatchExecutor(stop_on_error=False, max_workers=workers)
    names = ["a", "b", "a2"]
    result = executor.execute_batch(
        [task(n) for n in names], item_ids=["a", "b", "a"], journal=tmp_path / "j"
    )
    assert sorted(ran) == ["a", "b"]
    assert [item.success for item in result] == [True, True, False]
    assert "duplicate key 'a' at position 2" in result[2].error
    with pytest.raises(ValueError, match="duplicate key 'a' at position 2"):
        BatchExecutor(max_workers=workers).execute_batch(
            [task(n) for n in names], item_ids=["a", "b", "a"], journal=tmp_path / "j2"
        )


def test_without_a_journal_equal_keys_simply_run(tmp_path):
    calls = Calls()
    results = asyncio.run(batch_execute([1, 1], calls.op))
    assert calls.seen == [1, 1]
    assert all(r.is_success for r in results)
