"""Where a Dask-run request waits between its slot and the server's stamp (issue 16).

The shared-limit run of ``benchmarks/dask_runner.py`` (20,000 x 10 ms requests at a shared
500/s, 2 workers x 2 threads), with every request stamped along its way — one monotonic clock
for every process on this machine:

- ``slot``: the cluster limiter's grant (the actor's clock, which is this machine's);
- ``granted``: the limiter's ``acquire_async`` returned (the lateness check just passed);
- ``entered``: the item function was entered (what ``dask_runner.py`` calls the start);
- ``connected``: the connection is ready (a new one per request, or one taken from a pool);
- ``sent``: the request is written and drained;
- ``handler``: the server's connection task began reading the request (new connections);
- ``read``: the server has read the whole request;
- ``arrival``: the server's own stamp (what it counts against its window).

It prints each part's histogram and p50/p99/p99.9/max, and the run's rate, most arrivals and
most starts in any 1 s. ``--keep-alive``: each worker event loop keeps its connections open and
reuses them (HTTP/1.1 keep-alive) instead of a connection per request.

    PYTHONPATH=src .venv/bin/python benchmarks/dask_spread.py [--items 20000] [--keep-alive]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextvars
import gc
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dask
from distributed import Client, LocalCluster

import dask_runner  # benchmarks/ is this script's directory: the counts are the benchmark's
from paceline import DaskRunner, RateLimiter, batch_execute
from paceline.cli.dask import LEAN_LOCAL_CLUSTER

RATE = 500


# the server: the test API in a child process, stamping each request along its way ----------


def _serve(conn: Any, latency_s: float) -> None:
    """The child: the test API with its read and its accepted arrivals recorded per item."""
    from paceline.testing._api import app
    from paceline.testing._api.state import ServerState
    from paceline.testing.api_server import ApiConfig, ApiServer

    # Flat dicts of ints: the collector does not walk them (a dict of lists, 20,000 of them,
    # made the server's own full collections longer).
    begun_at: dict[str, int] = {}
    read_at: dict[str, int] = {}
    arrived_at: dict[str, int] = {}
    pauses: list[tuple[int, int, int]] = []  # the server's full collections: (gen, start, ns)
    original_read = app.read_request

    async def read_request(reader: asyncio.StreamReader) -> Any:
        begun = time.monotonic_ns()
        request = await original_read(reader)
        if request is not None:
            item_id = request.path.rsplit("/", 1)[-1]
            begun_at[item_id] = begun
            read_at[item_id] = time.monotonic_ns()
        return request

    original_record = ServerState.record_accepted

    def record_accepted(self: Any, arrived_ns: int, now_ns: int, ids: list[str]) -> Any:
        for item_id in ids:
            arrived_at[item_id] = arrived_ns
        return original_record(self, arrived_ns, now_ns, ids)

    collecting: list[int] = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.monotonic_ns()
        elif info["generation"] >= 1:
            took = time.monotonic_ns() - collecting[0]
            pauses.append((info["generation"], collecting[0], took))

    gc.callbacks.append(on_gc)
    app.read_request = read_request  # type: ignore[assignment]
    ServerState.record_accepted = record_accepted  # type: ignore[method-assign]
    with ApiServer(ApiConfig(quota=None, base_latency_s=latency_s)) as server:
        conn.send(server.url)
        conn.recv()  # the run is over
        stamps = {
            item_id: (begun_at.get(item_id, 0), read_at.get(item_id, 0), arrived)
            for item_id, arrived in arrived_at.items()
        }
        conn.send((stamps, pauses))


@contextmanager
def server(latency_s: float = 0.010) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, latency_s), daemon=True)
    process.start()
    url = parent.recv()

    def stamps() -> tuple[dict[str, Any], list[Any]]:
        parent.send("done")
        result: tuple[dict[str, Any], list[Any]] = parent.recv()
        return result

    try:
        yield url, stamps
    finally:
        process.terminate()
        process.join(5)


# the workers: the limiter's grant, and the request's own stamps ------------------------------


def _worker_collections() -> list[tuple[int, int, int]]:
    from paceline.runners import dask_limiter

    found: list[tuple[int, int, int]] = dask_limiter.__dict__.get("_BENCH_GC", [])
    return found


def _stamp_grants() -> bool:
    """On a worker: record each grant's slot and return time for the item that follows it
    (acquire_async and the attempt run in the same task)."""
    from paceline.runners import dask_limiter
    from paceline.runners.dask_limiter import ClusterLimiter

    original = ClusterLimiter.acquire_async
    if getattr(original, "stamped", False):
        return True
    # Kept on a module the worker has (this script's globals travel by value, once per use).
    slot_var: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("slot")
    dask_limiter.__dict__["_BENCH_SLOT"] = slot_var
    dask_limiter.__dict__["_BENCH_POOLS"] = {}
    pauses: list[tuple[int, int, int]] = []
    dask_limiter.__dict__["_BENCH_GC"] = pauses
    collecting = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.monotonic_ns()
        elif info["generation"] >= 1:
            pauses.append((info["generation"], collecting[0], time.monotonic_ns() - collecting[0]))

    gc.callbacks.append(on_gc)

    async def acquire_async(self: Any, weight: int = 1) -> int:
        slot: int = await original(self, weight)
        slot_var.set((slot, time.monotonic_ns()))
        return slot

    acquire_async.stamped = True  # type: ignore[attr-defined]
    ClusterLimiter.acquire_async = acquire_async  # type: ignore[method-assign]
    return True


def fetcher(url: str, keep_alive: bool) -> Callable[[str], Any]:
    host, port = url.removeprefix("http://").split(":")

    async def fetch(item_id: str) -> list[int]:
        entered = time.monotonic_ns()
        from paceline.runners import dask_limiter

        slot, granted = dask_limiter.__dict__["_BENCH_SLOT"].get((0, 0))
        pools = dask_limiter.__dict__["_BENCH_POOLS"]
        loop = asyncio.get_running_loop()
        pool = pools.setdefault(loop, []) if keep_alive else None
        loop_runs = pools.setdefault(("runs", loop), [0])
        if pool:
            reader, writer = pool.pop()
            reused = 1
        else:
            reader, writer = await asyncio.open_connection(host, int(port))
            reused = 0
        connected = time.monotonic_ns()
        keep = keep_alive
        try:
            request = f"GET /items/{item_id} HTTP/1.1\r\nHost: {host}\r\n"
            if not keep_alive:
                request += "Connection: close\r\n"
            writer.write(request.encode() + b"\r\n")
            await writer.drain()
            sent = time.monotonic_ns()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
        except BaseException:
            keep = False
            raise
        finally:
            if keep and pool is not None:
                pool.append((reader, writer))
            else:
                writer.close()
        status = int(head.split(None, 2)[1])
        if status != 200:
            raise OSError(f"status {status}")
        loop_runs[0] += 1
        return [
            slot,
            granted,
            entered,
            connected,
            sent,
            time.monotonic_ns(),
            reused,
            os.getpid(),
            threading.get_ident() % 1000,
            loop_runs[0],
        ]

    return fetch


@contextmanager
def cluster() -> Iterator[Client]:
    with (
        dask.config.set(LEAN_LOCAL_CLUSTER),
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
        ) as local,
        Client(local) as client,
    ):
        yield client


def most_in_window(times_ns: list[int]) -> int:
    """The most stamps (ns) in any 1 s window: dask_runner.py's count."""
    return dask_runner.most_in_window([t / 1e9 for t in times_ns])


def quantiles(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1e6

    return {"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999), "max": ordered[-1] / 1e6}


EDGES_MS = [0, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 100]


def histogram(values: list[int]) -> list[int]:
    counts = [0] * (len(EDGES_MS) + 1)
    for value in values:
        counts[bisect.bisect_right(EDGES_MS, value / 1e6)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--keep-alive", action="store_true")
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--dump", help="write every request's stamps here (JSON)")
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() on each worker first")
    parser.add_argument("--switch-ms", type=float, help="sys.setswitchinterval on each worker")
    parser.add_argument("--j", type=float, default=0.010, help="DaskRunner's limiter_margin_s")
    parser.add_argument("--m", type=float, help="the limiter's margin_s (None: the cluster's)")
    args = parser.parse_args()
    with server() as (url, server_stamps), cluster() as client:
        client.run(_stamp_grants)
        if args.freeze:
            client.run(gc.freeze)
        if args.switch_ms is not None:
            client.run(sys.setswitchinterval, args.switch_ms / 1000)
        ids = [f"i{n}" for n in range(args.items)]
        results = asyncio.run(
            batch_execute(
                ids,
                fetcher(url, args.keep_alive),
                max_concurrent=args.concurrency,
                rate_limiter=RateLimiter(f"{RATE}/s", margin_s=args.m),
                runner=DaskRunner(client, limiter_margin_s=args.j),
            )
        )
        seen, pauses = server_stamps()
        worker_pauses = client.run(_worker_collections)
    rows = []
    for item_id, result in zip(ids, results, strict=True):
        stamps = seen.get(item_id)
        if not result.is_success or stamps is None:
            continue
        slot, granted, entered, connected, sent, _done, reused, pid, thread, runs = result.value
        begun, read, arrival = stamps
        rows.append(
            (
                slot,
                granted,
                entered,
                connected,
                sent,
                begun,
                read,
                arrival,
                reused,
                pid,
                thread,
                runs,
            )
        )
    parts = {
        "slot->granted (lateness)": [r[1] - r[0] for r in rows],
        "granted->entered (runner)": [r[2] - r[1] for r in rows],
        "entered->connected": [r[3] - r[2] for r in rows],
        "connected->sent": [r[4] - r[3] for r in rows],
        "sent->read (server)": [r[6] - r[4] for r in rows],
        "read->arrival (server)": [r[7] - r[6] for r in rows],
        "entered->arrival": [r[7] - r[2] for r in rows],
        "slot->arrival": [r[7] - r[0] for r in rows],
    }
    if not args.keep_alive:
        parts["connected->handler (server accept)"] = [r[5] - r[3] for r in rows]
    arrivals = sorted(r[7] for r in rows)
    first = min(r[0] for r in rows)
    report: dict[str, Any] = {
        "items": args.items,
        "keep_alive": args.keep_alive,
        "freeze": args.freeze,
        "switch_ms": args.switch_ms,
        "j": args.j,
        "m": args.m,
        "measured": len(rows),
        "reused": sum(r[8] for r in rows),
        "rate_fraction": (len(arrivals) - 1) / ((arrivals[-1] - arrivals[0]) / 1e9) / RATE,
        "max_arrivals_in_any_1s": most_in_window(arrivals),
        "max_starts_in_any_1s": most_in_window([r[2] for r in rows]),
        "max_slots_in_any_1s": most_in_window([r[0] for r in rows]),
        "load_1min": os.getloadavg()[0],
        "server_collections_over_1ms": [
            (gen, round((start - first) / 1e9, 3), round(ns / 1e6, 1))
            for gen, start, ns in pauses
            if ns > 1_000_000
        ],
        "worker_collections_over_1ms": {
            worker[-5:]: [
                (gen, round((start - first) / 1e9, 3), round(ns / 1e6, 1))
                for gen, start, ns in found
                if ns > 1_000_000
            ]
            for worker, found in worker_pauses.items()
        },
        "edges_ms": EDGES_MS,
    }
    print(json.dumps(report))
    for name, values in parts.items():
        print(json.dumps({"part": name, **quantiles(values), "histogram": histogram(values)}))
    if args.dump:
        with open(args.dump, "w") as out:
            json.dump(
                {"rows": rows, "server_collections": pauses, "worker_collections": worker_pauses},
                out,
            )


if __name__ == "__main__":
    main()
