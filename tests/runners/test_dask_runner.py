"""The Dask runner on a real cluster: two worker processes (LocalCluster), the test API as the
referee of the shared limit, a journal on the driver."""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The dask extra (in dev): with CI set a missing one fails the run instead of skipping it.
distributed = (
    importlib.import_module("distributed")
    if "CI" in os.environ
    else pytest.importorskip("distributed")
)

from paceline import (  # noqa: E402
    DaskRunner,
    ErrorCode,
    QuotaExhausted,
    RateLimiter,
    Throttled,
    batch_execute,
)
from paceline.runners import dask_chunk  # noqa: E402
from paceline.runners.dask_chunk import freeze_worker_heap  # noqa: E402
from paceline.runners.dask_runner import ChunkNotSerializable, ItemAttempts  # noqa: E402
from paceline.stores import Journal, item_key  # noqa: E402
from paceline.testing.api_server import ApiConfig, ApiServer  # noqa: E402


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture(scope="module")
def fragile() -> Iterator[Any]:
    """A cluster whose workers the tests kill: one thread each, so a killed worker had one
    chunk running (its nanny starts a new one)."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


async def double(x: int) -> int:
    return 2 * x


async def fails_on_threes(x: int) -> int:
    if x % 3 == 0:
        raise KeyError(f"no {x}")
    return x


def fetcher(url: str) -> Any:
    """An operation calling the test API: the item's id -> how many times it was served.

    Plain HTTP/1.1 on asyncio streams: the request leaves as soon as the attempt starts (a
    thread pool would queue it behind others, and the server would count a late arrival).
    """
    host, port = url.removeprefix("http://").split(":")

    async def fetch(item_id: str) -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            request = f"GET /items/{item_id} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            head, _, body = (await reader.read()).partition(b"\r\n\r\n")
        finally:
            writer.close()
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        if status == 429:
            raise Throttled(retry_after=float(headers.get("retry-after", 0)) or None)
        if status != 200:
            raise OSError(f"status {status}")
        return int(json.loads(body)["n"])

    return fetch


def test_results_come_back_in_input_order_with_failures_as_values(client):
    seen: list[int] = []
    results = asyncio.run(
        batch_execute(
            range(300),
            fails_on_threes,
            runner=DaskRunner(client),
            on_progress=lambda done, total: seen.append(done),
        )
    )
    assert [r.value for r in results if r.is_success] == [x for x in range(300) if x % 3]
    failure = results[3]
    assert failure.is_failure
    assert type(failure.error).__name__ == "KeyError"
    assert "no 3" in str(failure.error)
    assert seen == list(range(1, 301))


def test_each_worker_process_freezes_its_heap_once_at_its_first_chunk(client):
    # A worker's full collections walk what it held before its first chunk no more (they
    # stalled every event loop of the process 23-42 ms: docs/design.md, "Dask runner").
    # 8 first chunks of 8 items go out at once: both workers run some.
    asyncio.run(batch_execute(range(64), double, runner=DaskRunner(client)))
    frozen = client.run(gc.get_freeze_count)
    assert len(frozen) == 2
    assert all(count > 10_000 for count in frozen.values()), frozen
    again = client.run(freeze_worker_heap, lambda: None)
    assert set(again.values()) == {False}  # once per process


def test_freeze_worker_heap_freezes_once_per_process(monkeypatch):
    monkeypatch.setattr(dask_chunk, "_FROZEN", threading.Event())
    calls: list[int] = []
    assert dask_chunk.freeze_worker_heap(lambda: calls.append(1)) is True
    assert dask_chunk.freeze_worker_heap(lambda: calls.append(2)) is False
    assert calls == [1]


async def hogs_its_loop(x: int) -> int:
    time.sleep(0.03)  # blocks the chunk's event loop: the items waiting for a slot wake late
    return x


def test_slots_that_keep_coming_back_late_are_told_once(client):
    with pytest.warns(RuntimeWarning, match=r"% of the cluster's slots came back late") as seen:
        results = asyncio.run(
            batch_execute(
                range(300),
                hogs_its_loop,
                max_concurrent=8,
                rate_limiter=RateLimiter("400/s"),
                runner=DaskRunner(client),
            )
        )
    assert all(r.is_success for r in results)
    told = [w for w in seen if "came back late" in str(w.message)]
    assert len(told) == 1, [str(w.message) for w in told]


def test_a_failed_item_is_journaled_with_its_original_type(client, tmp_path: Path):
    path = tmp_path / "batch.journal"
    asyncio.run(batch_execute(range(9), fails_on_threes, runner=DaskRunner(client), journal=path))
    with Journal.open(path, fingerprint="read", reuse=True) as journal:
        outcomes = {o.key: o for o in journal.outcomes()}
    assert len(outcomes) == 9
    three, four = outcomes[item_key(3)], outcomes[item_key(4)]
    assert (three.success, three.error_type) == (False, "KeyError")
    assert four.result == 4


def test_the_shared_limit_holds_across_workers_at_the_server(client):
    # 45 calls at 15/s from two worker processes: the server refuses anything over 15 in a
    # 1 s window, so a single 429 would mean the shared limit let one through. The margin
    # covers the time from an attempt's start to its arrival, which on a busy 2-core machine
    # (two workers, a scheduler, the driver and the server) reached tens of ms.
    with ApiServer(ApiConfig(quota=15, window_s=1, base_latency_s=0)) as server:
        started = time.monotonic()
        results = asyncio.run(
            batch_execute(
                [f"i{n}" for n in range(45)],
                fetcher(server.url),
                rate_limiter=RateLimiter("15/s", margin_s=0.1),
                runner=DaskRunner(client),
            )
        )
        elapsed = time.monotonic() - started
        stats = server.stats()
    assert all(r.is_success for r in results), [r for r in results if r.is_failure][:3]
    assert (stats["accepted"], stats["throttled_429"]) == (45, 0)
    assert elapsed >= 2.0  # three windows' worth: the limit was binding


def test_a_retry_after_pauses_every_worker_sharing_the_limit(client):
    # The server allows 5 per 2 s and says when to come back; the client's limit is much
    # higher. After the first 429s the cluster's limiter holds every worker for the
    # Retry-After, so the batch does not keep hammering the server.
    config = ApiConfig(quota=5, window_s=2, retry_after=True, base_latency_s=0)
    told: list[ItemAttempts] = []
    with ApiServer(config) as server:
        results = asyncio.run(
            batch_execute(
                [f"p{n}" for n in range(15)],
                fetcher(server.url),
                rate_limiter=RateLimiter("100/s"),
                retry=10,
                runner=DaskRunner(client, on_attempts=told.append),
            )
        )
        stats = server.stats()
    assert all(r.is_success for r in results)
    assert stats["accepted"] == 15
    # each item's throttled attempts came back with it: every 429 the server sent, once
    assert sorted(t.index for t in told) == list(range(15))
    assert sum(t.throttled for t in told) == stats["throttled_429"]
    assert sum(t.attempts for t in told) == 15 + stats["throttled_429"]
    # Without the shared pause each of the ~10 held items retried on its own backoff; with it
    # a window's 429s are those in flight when the first one came back.
    assert stats["throttled_429"] <= 15


def test_an_exhausted_quota_stops_the_batch_and_leaves_its_items_for_the_resume(
    client, tmp_path: Path
):
    async def spend(x: int) -> int:
        if x >= 3:
            raise QuotaExhausted("insufficient_quota: the credit is gone")
        return x

    path = tmp_path / "quota.journal"
    runner = DaskRunner(client, chunk_items=10, chunks_in_flight=1)
    results = asyncio.run(batch_execute(range(50), spend, runner=runner, journal=path))
    assert [r.value for r in results[:3]] == [0, 1, 2]
    assert results[3].is_failure
    assert results[3].error_code is ErrorCode.QUOTA_EXHAUSTED
    assert not any(r.is_success for r in results[3:])  # the chunks after it never went out
    with Journal.open(path, fingerprint="read", reuse=True) as journal:
        assert sorted(o.key for o in journal.outcomes()) == [item_key(n) for n in range(3)]


async def throttled_then_exhausted(x: str) -> str:
    if x == "waits":  # told to come back in 2 s: waiting for its retry when the quota ends
        raise Throttled(retry_after=2.0)
    await asyncio.sleep(0.2)
    raise QuotaExhausted("insufficient_quota: the credit is gone")


def test_an_item_waiting_for_its_retry_when_the_quota_ends_is_left_for_the_resume(
    client, tmp_path: Path
):
    path = tmp_path / "waited.journal"
    runner = DaskRunner(client, chunk_items=2)
    results = asyncio.run(
        batch_execute(
            ["waits", "spends"], throttled_then_exhausted, runner=runner, retry=3, journal=path
        )
    )
    assert type(results[0].error).__name__ == "Throttled"  # settled with its last error
    assert results[1].error_code is ErrorCode.QUOTA_EXHAUSTED
    with Journal.open(path, fingerprint="read", reuse=True) as journal:
        assert list(journal.outcomes()) == []  # as a local run: both run again on resume


def test_a_batch_resumes_from_its_journal_on_the_cluster_and_locally(client, tmp_path: Path):
    path = tmp_path / "resume.journal"
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        fetch = fetcher(server.url)
        ids = [f"r{n}" for n in range(40)]
        # A first run on the cluster stops early (a halt rule), a second one on the cluster
        # finishes it, a third (local) finds everything settled.
        asyncio.run(
            batch_execute(ids[:25], fetch, runner=DaskRunner(client, chunk_items=5), journal=path)
        )
        second = asyncio.run(batch_execute(ids, fetch, runner=DaskRunner(client), journal=path))
        third = asyncio.run(batch_execute(ids, fetch, journal=path))
        stats = server.stats()
    assert [r.value for r in second] == [1] * 40
    assert [r.value for r in third] == [1] * 40
    assert (stats["accepted"], stats["items_served_more_than_once"]) == (40, 0)


def test_a_local_batch_resumes_on_the_cluster(client, tmp_path: Path):
    path = tmp_path / "local-first.journal"
    asyncio.run(batch_execute(range(10), fails_on_threes, journal=path))

    async def always(x: int) -> int:
        return x

    results = asyncio.run(
        batch_execute(
            range(10),
            always,
            runner=DaskRunner(client),
            journal=path,
            retry_failed=True,
            reuse_journal=True,
        )
    )
    assert [r.value for r in results] == list(range(10))


def test_an_item_that_does_not_pickle_is_named(client):
    items = [1, 2, threading.Lock(), 4]
    with pytest.raises(ChunkNotSerializable, match="item #2"):
        asyncio.run(batch_execute(items, double, runner=DaskRunner(client)))


def test_a_result_that_is_not_json_ready_fails_its_item_naming_it(client):
    async def a_set(x: int) -> set[int]:
        return {x}

    results = asyncio.run(batch_execute([7], a_set, runner=DaskRunner(client)))
    assert results[0].is_failure
    assert "item #0" in str(results[0].error)


def test_a_halt_rule_stops_sending_chunks(client):
    results = asyncio.run(
        batch_execute(
            range(2_000),
            fails_on_threes,
            runner=DaskRunner(client, chunk_items=10, chunks_in_flight=2),
            halt="now,fail=5",
        )
    )
    assert sum(r.is_success for r in results) < 1_000
    assert results[-1].is_failure


def test_a_worker_killed_mid_run_reruns_at_most_its_chunks(fragile, tmp_path: Path):
    path = tmp_path / "killed.journal"
    dask_client = fragile
    dask_client.wait_for_workers(2, timeout=30)
    with ApiServer(ApiConfig(base_latency_s=0.02)) as server:
        pids = dask_client.run(os.getpid)
        victim = next(iter(pids.values()))
        done = threading.Event()

        def progress(completed: int, _total: int | None) -> None:
            if completed >= 40 and not done.is_set():
                done.set()
                os.kill(victim, signal.SIGKILL)

        ids = [f"k{n}" for n in range(160)]
        results = asyncio.run(
            batch_execute(
                ids,
                fetcher(server.url),
                max_concurrent=2,
                runner=DaskRunner(dask_client, chunk_items=10),
                journal=path,
                on_progress=progress,
            )
        )
        stats = server.stats()
    assert done.is_set()
    assert all(r.is_success for r in results)
    with Journal.open(path, fingerprint="read", reuse=True) as journal:
        keys = [o.key for o in journal.outcomes()]
    assert sorted(keys) == sorted(item_key(i) for i in ids)  # each item's outcome once
    # Only the chunk running on the killed worker runs again: the driver fetches each result
    # as soon as its chunk ends (a finished chunk's result left on the worker would be lost
    # with it, and Dask would run that chunk again too).
    assert stats["items_served_more_than_once"] <= 10  # one chunk


def test_the_worker_holding_the_limiter_killed_mid_run(fragile, tmp_path: Path):
    # The driver hosts a new limiter, fenced, and sends the items whose chunks could not book
    # again; the limit still holds at the server.
    path = tmp_path / "actor.journal"
    dask_client = fragile
    dask_client.wait_for_workers(2, timeout=30)
    with ApiServer(ApiConfig(quota=20, window_s=1, base_latency_s=0)) as server:
        pids = dask_client.run(os.getpid)
        killed = threading.Event()

        def progress(completed: int, _total: int | None) -> None:
            if completed >= 15 and not killed.is_set():
                killed.set()
                actors = dask_client.run(lambda dask_worker: len(dask_worker.state.actors))
                holder = next(address for address, count in actors.items() if count)
                os.kill(pids[holder], signal.SIGKILL)

        started = time.monotonic()
        ids = [f"a{n}" for n in range(60)]
        results = asyncio.run(
            batch_execute(
                ids,
                fetcher(server.url),
                rate_limiter=RateLimiter("20/s", margin_s=0.1),
                runner=DaskRunner(dask_client, chunk_items=5, limiter_timeout_s=1),
                journal=path,
                on_progress=progress,
            )
        )
        elapsed = time.monotonic() - started
        stats = server.stats()
    assert killed.is_set()
    assert all(r.is_success for r in results), [r for r in results if r.is_failure][:3]
    assert stats["throttled_429"] == 0
    assert elapsed < 20  # the lost limiter was noticed (1 s) and replaced (3 s of fence)


def test_chunks_cancelled_by_the_cluster_are_sent_again(client):
    # The batch's scattered spec lost with the workers holding it (a limiter's worker killed
    # twice could do it): the scheduler cancels the chunks that needed it. The driver scatters
    # the spec again and sends their items again (it once stopped with FutureCancelledError,
    # "the Dask cluster went away", though the cluster was fine).
    cancelled: list[str] = []

    def progress(completed: int, _total: int | None) -> None:
        if completed >= 20 and not cancelled:
            specs = [key for key in client.futures if str(key).startswith("ChunkSpec")]
            client.cancel([distributed.Future(key, client) for key in specs])
            cancelled.extend(specs)

    results = asyncio.run(
        batch_execute(
            range(80),
            slow_double,
            max_concurrent=2,
            runner=DaskRunner(client, chunk_items=4),
            on_progress=progress,
        )
    )
    assert cancelled
    assert [r.value for r in results] == [2 * x for x in range(80)]


async def slow_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


def _listen_for_a_pause(limiter: Any, wait_s: float) -> tuple[int, float]:
    """On a worker: book one slot (the process now listens), then wait for a pause without
    booking again; the end heard (actor's ns, or -1) and how long after the wait began."""
    limiter.acquire()
    before = limiter._hold_ns  # the actor's start (no pause yet), from the booking's answer
    started = time.monotonic()
    while time.monotonic() - started < wait_s:
        hold_ns = limiter._hold_ns
        if hold_ns > before:
            return hold_ns, time.monotonic() - started
        time.sleep(0.001)
    return -1, wait_s


def _pause(limiter: Any, seconds: float) -> int:
    limiter.pause(seconds)
    return int(limiter._hold_ns)


def test_a_pause_is_pushed_to_the_other_worker_processes_at_once(client):
    # Before, a worker process heard of a pause with its next booking's answer, and the slots it
    # held that fell inside the pause started meanwhile (about 2x the 429s of a local run). Now
    # the pause goes out on a Dask event topic: the other process has it within ms, unasked.
    from paceline.runners.dask_limiter import host_limiter

    limiter = host_limiter(client, RateLimiter("1000/s"))
    a, b = sorted(client.scheduler_info()["workers"])
    listening = client.submit(_listen_for_a_pause, limiter, 5.0, workers=[b], pure=False)
    time.sleep(0.5)  # b has booked (and subscribed) and waits
    paused = client.submit(_pause, limiter, 3.0, workers=[a], pure=False).result(timeout=10)
    heard, after_s = listening.result(timeout=10)
    # pushed (b never booked again in its 5 s of waiting): first the estimate a made before
    # the actor's round trip, never later than the actor's own end of the pause
    assert 0 <= paused - heard < 1_000_000_000, (heard, paused)
    assert after_s < 2.0


def _pause_handlers(dask_worker: Any) -> dict[str, str]:
    """A worker's handlers of the batches' pause topics, by name (what each keeps alive)."""
    return {
        topic: getattr(handler, "__qualname__", type(handler).__name__)
        for topic, handler in dask_worker.client._event_handlers.items()
        if topic.startswith("paceline-pause-")
    }


def _pause_subscribers(dask_scheduler: Any) -> dict[str, int]:
    return {
        name: len(topic.subscribers)
        for name, topic in dask_scheduler._broker._topics.items()
        if name.startswith("paceline-pause-")
    }


def test_workers_stop_listening_for_a_batchs_pauses_when_it_ends(client):
    # Each worker process subscribed to every batch's pause topic for good: a handler, the
    # batch's limiter behind it, and the scheduler pushing that topic to it, per batch.
    before = set(client.run_on_scheduler(_pause_subscribers))  # other tests' own limiters
    for _ in range(2):
        results = asyncio.run(
            batch_execute(
                range(40), double, rate_limiter=RateLimiter("200/s"), runner=DaskRunner(client)
            )
        )
        assert [r.value for r in results] == [2 * x for x in range(40)]
    deadline = time.monotonic() + 10
    while True:  # the end goes out as an event: each worker hears it within ms
        handlers = {
            worker: {topic: name for topic, name in each.items() if topic not in before}
            for worker, each in client.run(_pause_handlers).items()
        }
        subscribers = client.run_on_scheduler(_pause_subscribers)
        assert len(set(subscribers) - before) == 2  # the two batches' topics
        listening = [n for topic, n in subscribers.items() if n and topic not in before] + [
            name for each in handlers.values() for name in each.values() if name != "_ignore_event"
        ]
        if not listening or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert listening == []
    # at most the last batch's topic is left, with a bare function that drops a late event
    assert [len(each) <= 1 for each in handlers.values()] == [True] * len(handlers)
