"""One client process of the shared-limit integration tests: ``calls`` GETs to the test API,
each after a grant from a limiter on the shared Redis store, from ``threads`` threads (or as
many tasks on one event loop with ``--async``). Prints one JSON line: what it did.

    python shared_client.py REDIS_URL KEY RATE API_URL CALLS THREADS [--async] [--outage S]
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from paceline import RateLimiter
from paceline.errors import RateStoreUnavailable


def main() -> int:
    url, key, rate, api, calls_s, threads_s, *rest = sys.argv[1:]
    calls, threads = int(calls_s), int(threads_s)
    outage = float(rest[rest.index("--outage") + 1]) if "--outage" in rest else None
    # The limit is promised on starts; the referee counts arrivals, which follow a start by
    # the client's own work (with a new urllib connection per call, from threads, on a loaded
    # 2-core machine, arrivals spread 30-60 ms past their starts at a load average of 8, and
    # one arrival in 210 went past 60 ms in a run of the whole suite). margin_s covers that, as
    # RateLimiter's docstring says to for network jitter; the measured margin covers only
    # slot -> start. Each thread keeps one connection alive (as any pooled client does), so a
    # start is one send away from its arrival.
    limiter = RateLimiter.from_rates(rate, store=url, key=key, store_outage_s=outage, margin_s=0.1)
    done: dict[str, Any] = {"ok": 0, "throttled": 0, "other": 0, "longest_outage_s": 0.0}
    starts: list[float] = []  # CLOCK_MONOTONIC: one clock for every process of the machine
    lock = threading.Lock()
    counter = iter(range(calls))
    where = urlsplit(api)
    local = threading.local()

    def get(i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(
                where.hostname or "127.0.0.1", where.port, timeout=10
            )
        try:
            conn.request("GET", f"/items/{key}-{i}")
            answer = conn.getresponse()
            answer.read()
            code = answer.status
        except OSError as exc:  # counted, and the thread goes on with a new connection
            conn.close()
            local.conn = None
            code = 0
            done.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
        with lock:
            done["ok" if code == 200 else "throttled" if code == 429 else "other"] += 1

    def watch() -> None:  # what a progress line would show
        store = limiter.store
        assert store is not None
        while not finished.is_set():
            down = store.outage_s_so_far()
            if down is not None:
                done["longest_outage_s"] = max(done["longest_outage_s"], down)
            time.sleep(0.1)

    finished = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        if "--async" in rest:

            async def worker() -> None:
                for i in counter:
                    await limiter.acquire_async()
                    starts.append(time.monotonic())
                    await asyncio.to_thread(get, i)

            async def run() -> None:
                await asyncio.gather(*(worker() for _ in range(threads)))

            asyncio.run(run())
        else:
            failures: list[RateStoreUnavailable] = []

            def thread_worker() -> None:
                try:
                    for i in counter:
                        limiter.acquire()
                        starts.append(time.monotonic())
                        get(i)
                except RateStoreUnavailable as exc:
                    failures.append(exc)

            pool = [threading.Thread(target=thread_worker) for _ in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            if failures:
                raise failures[0]
    except RateStoreUnavailable as exc:
        done["unavailable"] = str(exc)
        done["starts"] = starts
        print(json.dumps(done), flush=True)
        return 3
    finally:
        finished.set()
    store = limiter.store
    assert store is not None
    done["round_trips"] = store.round_trips
    done["starts"] = starts
    print(json.dumps(done), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
