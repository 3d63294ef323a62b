"""The Dask runner (issue 16): overhead, a shared limit, CPU-bound speed-up.

Three measurements, each against its local counterpart in the same run:

1. **Overhead**: 100,000 no-op items on a 2-worker ``LocalCluster`` (worker processes) vs the
   local async runner in this process: seconds per item, and the driver's peak RSS growth
   while the batch runs (sampled from ``/proc/self/statm`` every 20 ms; it includes the
   100,000 results ``batch_execute`` returns).
2. **A shared limit**: 20,000 items, each a 10 ms request to the test API (in its own
   process), at a shared ``RateLimiter("500/s")`` hosted on the cluster (2 workers x 2
   threads): the rate the server saw (accepted requests over the span from the first to the
   last arrival) as a fraction of 500/s, and the most arrivals in any 1 s window. Run with
   the limiter's default margin and with ``margin_s=0.02`` (the spread between an attempt's
   start and its arrival at the server).
3. **CPU-bound items**: 400 items of 20 ms of pure-Python work each; the 2-worker cluster
   (one thread per worker) vs one process's :class:`~paceline.BatchExecutor` with 2 threads.
   Target: >= 1.7x.

    PYTHONPATH=src .venv/bin/python benchmarks/dask_runner.py [--only overhead|limit|cpu]
        [--items 100000] [--io-items 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import importlib
import json
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dask
from distributed import Client, LocalCluster

from paceline import BatchExecutor, DaskRunner, RateLimiter, batch_execute
from paceline.cli.dask import LEAN_LOCAL_CLUSTER
from paceline.testing.api_server import ApiConfig, ApiServer

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


@contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """Sample this process's RSS every 20 ms; ``out["growth"]``: the peak over the start."""
    out = {"start": rss_bytes(), "peak": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            out["peak"] = max(out["peak"], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        done.set()
        sampler.join()
        out["peak"] = max(out["peak"], rss_bytes())
        out["growth"] = out["peak"] - out["start"]


@contextmanager
def cluster(threads_per_worker: int) -> Iterator[Client]:
    """A 2-worker LocalCluster with the settings of the CLI's ``--dask local:N``
    (``LEAN_LOCAL_CLUSTER``: no profiler, a slower tick and system monitor)."""
    with (
        dask.config.set(LEAN_LOCAL_CLUSTER),
        LocalCluster(
            n_workers=2,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0",
        ) as local,
        Client(local) as client,
    ):
        yield client


async def no_op(x: int) -> int:
    return x


def overhead(items: int) -> dict[str, Any]:
    started = time.perf_counter()
    local = asyncio.run(batch_execute(range(items), no_op, max_concurrent=10))
    local_s = time.perf_counter() - started
    assert len(local) == items
    del local
    with cluster(threads_per_worker=1) as client:
        with peak_rss() as memory:
            started = time.perf_counter()
            remote = asyncio.run(batch_execute(range(items), no_op, runner=DaskRunner(client)))
            dask_s = time.perf_counter() - started
        assert all(r.is_success for r in remote)
    return {
        "items": items,
        "local_async_us_per_item": local_s / items * 1e6,
        "dask_us_per_item": dask_s / items * 1e6,
        "driver_peak_rss_growth_mb": memory["growth"] / 2**20,
    }


def fetcher(url: str, keep_alive: bool = False) -> Callable[[str], Any]:
    """One request per item on asyncio streams (it leaves as the attempt starts); the value
    is the attempt's start (monotonic ns: one clock for every process on this machine).
    ``keep_alive``: each event loop keeps its connections open and reuses them (as an httpx
    client would), instead of a new connection per request."""
    host, port = url.removeprefix("http://").split(":")

    async def fetch(item_id: str) -> int:
        started_ns = time.monotonic_ns()
        # Per event loop (each chunk runs on its own): its idle connections, on the loop.
        loop: Any = asyncio.get_running_loop()
        if keep_alive and not hasattr(loop, "idle_connections"):
            loop.idle_connections = []
        pool: list[Any] | None = loop.idle_connections if keep_alive else None
        if pool:
            reader, writer = pool.pop()
        else:
            reader, writer = await asyncio.open_connection(host, int(port))
        kept = False
        try:
            request = f"GET /items/{item_id} HTTP/1.1\r\nHost: {host}\r\n"
            if not keep_alive:
                request += "Connection: close\r\n"
            writer.write(request.encode() + b"\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if pool is not None:
                pool.append((reader, writer))
                kept = True
        finally:
            if not kept:
                writer.close()
        status = int(head.split(None, 2)[1])
        if status != 200:
            raise OSError(f"status {status}")
        return started_ns

    return fetch


def most_in_window(times_s: list[float], window_s: float = 1.0) -> int:
    times = sorted(times_s)
    return max(
        (bisect.bisect_left(times, t + window_s, lo=i) - i for i, t in enumerate(times)),
        default=0,
    )


def shared_limit(
    io_items: int,
    margin_s: float | None,
    cluster_margin_s: float,
    concurrency: int,
    keep_alive: bool = False,
) -> dict[str, Any]:
    rate = 500
    config = ApiConfig(quota=None, base_latency_s=0.010)
    actor: dict[str, int] = {}

    def near_the_end(completed: int, total: int | None) -> None:
        # The actor's own account (booked, given back, margin) before the batch releases it.
        if not actor and total is not None and completed >= total - 200:
            for found in client.run(actor_stats).values():
                actor.update(found)

    with ApiServer.spawn(config) as server, cluster(threads_per_worker=2) as client:
        with peak_rss() as memory:
            started = time.perf_counter()
            results = asyncio.run(
                batch_execute(
                    [f"i{n}" for n in range(io_items)],
                    fetcher(server.url, keep_alive),
                    max_concurrent=concurrency,
                    rate_limiter=RateLimiter(f"{rate}/s", margin_s=margin_s),
                    runner=DaskRunner(client, limiter_margin_s=cluster_margin_s),
                    on_progress=near_the_end,
                )
            )
            elapsed_s = time.perf_counter() - started
        stats = server.stats(times=True)
    arrivals = stats["accepted_times_s"]
    span_s = max(arrivals) - min(arrivals)
    return {
        "items": io_items,
        "margin_s": margin_s,
        "cluster_margin_s": cluster_margin_s,
        "max_concurrent": concurrency,
        "keep_alive": keep_alive,
        "failed": sum(r.is_failure for r in results),
        "rate_fraction": (len(arrivals) - 1) / span_s / rate,
        "max_arrivals_in_any_1s": most_in_window(arrivals),
        "max_starts_in_any_1s": most_in_window([r.value / 1e9 for r in results if r.is_success]),
        "elapsed_s": elapsed_s,
        "driver_peak_rss_growth_mb": memory["growth"] / 2**20,
        "actor": actor,
        "load_1min": os.getloadavg()[0],
    }


def actor_stats(dask_worker: Any) -> dict[str, int]:
    """The stats of the limiter actor on this worker (``{}`` if it holds none)."""
    for held in dask_worker.state.actors.values():
        if hasattr(held, "booked_total"):
            return {
                "booked": held.booked_total,
                "given_back": held.returned_total,
                "margin_ms": held.margin_ns // 1_000_000,
            }
    return {}


def spin(x: int) -> int:
    """~20 ms of pure-Python work (calibrated below)."""
    total = 0
    for n in range(SPIN_LOOPS):
        total += n * x % 7
    return total


SPIN_LOOPS = 0


def calibrate(target_s: float = 0.020) -> int:
    loops = 10_000
    while True:
        started = time.perf_counter()
        total = 0
        for n in range(loops):
            total += n % 7
        took = time.perf_counter() - started
        if took > 0.005:
            return round(loops * target_s / took)
        loops *= 4


async def spin_async(x: int) -> int:
    return spin(x)


def cpu_s() -> float:
    """This process's CPU seconds (user + system), every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu(items: int = 400) -> dict[str, Any]:
    started, cpu_started = time.perf_counter(), cpu_s()
    executor = BatchExecutor(stop_on_error=True, max_workers=2)
    local = executor.execute_batch([lambda x=x: spin(x) for x in range(items)])
    local_s, local_cpu_s = time.perf_counter() - started, cpu_s() - cpu_started
    with cluster(threads_per_worker=1) as client:
        client.run(_set_loops, SPIN_LOOPS)
        # Warm, as the thread runner is: paceline's worker modules imported on each worker
        # (0.1-0.7 s of a first chunk on this machine; a long-lived cluster pays it once).
        client.run(importlib.import_module, "paceline.runners.dask_chunk")
        workers_before = client.run(cpu_s)
        started, cpu_started = time.perf_counter(), cpu_s()
        remote = asyncio.run(
            batch_execute(range(items), spin_async, max_concurrent=1, runner=DaskRunner(client))
        )
        dask_s, driver_cpu_s = time.perf_counter() - started, cpu_s() - cpu_started
        workers_after = client.run(cpu_s)
    assert local.all_successful
    assert [r.value for r in remote] == [item.result for item in local.items]
    workers_cpu_s = sum(workers_after[w] - workers_before[w] for w in workers_before)
    return {
        "items": items,
        "item_ms": 20,
        "threads_2_s": local_s,
        "dask_2_workers_s": dask_s,
        "speedup": local_s / dask_s,
        # Where the CPU went: the thread runner's process; the driver's process (the batch's
        # driver, Dask's client, and LocalCluster's scheduler and nannies) and the workers'.
        "threads_cpu_ms_per_item": local_cpu_s / items * 1e3,
        "driver_cpu_ms_per_item": driver_cpu_s / items * 1e3,
        "workers_cpu_ms_per_item": workers_cpu_s / items * 1e3,
        "load_1min": os.getloadavg()[0],
    }


def _set_loops(loops: int) -> None:
    global SPIN_LOOPS
    SPIN_LOOPS = loops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["overhead", "limit", "cpu"])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--io-items", type=int, default=20_000)
    parser.add_argument("--margins", default="none,0.02", help="the limiter's margin_s values")
    parser.add_argument("--cluster-margin", type=float, default=0.010, help="DaskRunner's J")
    parser.add_argument("--concurrency", type=int, default=48, help="items at once per chunk")
    parser.add_argument(
        "--keep-alive", action="store_true", help="reuse each event loop's connections"
    )
    args = parser.parse_args()
    _set_loops(calibrate())
    report: dict[str, Any] = {}
    if args.only in (None, "overhead"):
        report["overhead"] = overhead(args.items)
        print(json.dumps(report["overhead"]), flush=True)
    if args.only in (None, "limit"):
        for text in args.margins.split(","):
            margin_s = None if text == "none" else float(text)
            row = shared_limit(
                args.io_items, margin_s, args.cluster_margin, args.concurrency, args.keep_alive
            )
            report[f"limit_margin_{margin_s}"] = row
            print(json.dumps(row), flush=True)
    if args.only in (None, "cpu"):
        report["cpu"] = cpu()
        print(json.dumps(report["cpu"]), flush=True)


if __name__ == "__main__":
    main()
