"""``paceline.current_item_key()``: one key per item, the same on every attempt and after a
resume from the journal, in async operations, on the executors' threads, and in a task the
operation leaves running."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

import paceline
from paceline import BatchExecutor, RetryPolicy, batch_execute_sync, current_item_key
from paceline.runners.identity import stable_key

# Retries of everything, at once (the backoff is not what these tests are about).
RETRY = RetryPolicy(attempts=3, base_s=0.0001, cap_s=0.001, retry_on=(ValueError,))


def test_there_is_no_key_outside_an_attempt() -> None:
    assert current_item_key() is None


def test_every_attempt_of_an_item_has_its_key_and_no_two_items_share_one() -> None:
    seen: dict[str, list[str | None]] = defaultdict(list)

    async def flaky(name: str) -> str:
        seen[name].append(current_item_key())
        await asyncio.sleep(int(name[1:]) % 3 / 1000)  # interleave the items
        if len(seen[name]) == 1:
            raise ValueError("first attempt fails")
        return name

    # 10 retries: within the batch's default retry budget (20 % of first attempts + 10).
    results = batch_execute_sync([f"t{i}" for i in range(10)], flaky, 4, retry=RETRY)
    assert all(r.is_success for r in results)
    assert all(len(keys) == 2 and keys[0] == keys[1] for keys in seen.values())
    firsts = [keys[0] for keys in seen.values()]
    assert len(set(firsts)) == 10
    assert all(uuid.UUID(str(key)).version == 5 for key in firsts)


def test_a_resume_from_the_journal_gives_the_same_keys(tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    seen: dict[str, list[str | None]] = defaultdict(list)
    failing = {"b"}

    async def create(name: str) -> str:
        seen[name].append(current_item_key())
        if name in failing:
            raise ValueError("not yet")
        return name

    batch_execute_sync(["a", "b", "c"], create, journal=journal)
    failing.clear()
    again = batch_execute_sync(["a", "b", "c"], create, journal=journal, retry_failed=True)
    assert [r.value for r in again] == ["a", "b", "c"]
    assert len(seen["b"]) == 2
    assert seen["b"][0] == seen["b"][1]
    # Another journal is another batch: other keys for the same items.
    batch_execute_sync(["b"], create, journal=tmp_path / "other.journal")
    assert seen["b"][2] != seen["b"][0]


def test_without_a_journal_each_run_is_a_new_batch() -> None:
    async def key(_name: str) -> str | None:
        return current_item_key()

    first = [r.value for r in batch_execute_sync(["a"], key)]
    second = [r.value for r in batch_execute_sync(["a"], key)]
    assert first != second


@pytest.mark.parametrize("workers", [None, 4])
def test_the_executors_threads_see_the_key_of_the_item_they_run(workers: int | None) -> None:
    seen: dict[int, list[str | None]] = defaultdict(list)

    def task(n: int) -> int:
        seen[n].append(current_item_key())
        if len(seen[n]) == 1:
            raise ValueError("first attempt fails")
        return n

    executor = BatchExecutor(stop_on_error=False, max_workers=workers, retry=RETRY)
    result = executor.execute_batch([lambda n=n: task(n) for n in range(10)])  # type: ignore[misc]
    assert result.all_successful
    assert all(len(keys) == 2 and keys[0] == keys[1] for keys in seen.values())
    assert len({keys[0] for keys in seen.values()}) == 10
    assert current_item_key() is None  # the sequential path ran in this thread: reset


def test_a_task_the_operation_leaves_running_keeps_its_items_key() -> None:
    later: list[asyncio.Task[str | None]] = []

    async def start(_name: str) -> str | None:
        async def read_later() -> str | None:
            await asyncio.sleep(0.01)  # after the worker moved on to other items
            return current_item_key()

        later.append(asyncio.ensure_future(read_later()))
        return current_item_key()

    async def main() -> tuple[list[str | None], list[str | None]]:
        results = await paceline.batch_execute([f"t{i}" for i in range(10)], start, 2)
        return [r.value for r in results], list(await asyncio.gather(*later))

    during, after = asyncio.run(main())
    assert sorted(during, key=str) == sorted(after, key=str)
    assert len(set(during)) == 10


def test_the_key_is_a_uuid5_of_the_batch_and_the_item() -> None:
    batch = "5b7e4a1c-9f0e-4c1a-8d5e-2f1b3c4d5e6f"
    assert stable_key(batch, "t1") == str(uuid.uuid5(uuid.UUID(batch), "t1"))
    assert stable_key("not-a-uuid", "t1") == stable_key("not-a-uuid", "t1")
