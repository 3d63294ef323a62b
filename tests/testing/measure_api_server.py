"""Measure the test API's throughput as a child process, not a test.

usage: python tests/testing/measure_api_server.py [SECONDS] [CONCURRENCY]

Two clients drive a spawned server over keep-alive connections: an asyncio raw-socket client
(the cheapest Python client there is, so the server is the likelier bottleneck) and a threaded
http.client client (what a plain synchronous user looks like). Each runs with no latency and
with the default 5 ms, and prints requests per second.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import threading
import time
import urllib.parse

from paceline.testing.api_server import ApiConfig, ApiServer


async def _async_worker(host: str, port: int, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET /items/x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    done = 0
    try:
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:40])
            done += 1
    finally:
        counts.append(done)
        writer.close()


async def async_client(url: str, seconds: float, concurrency: int) -> float:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    counts: list[int] = []
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(_async_worker(parts.hostname, parts.port, deadline, counts) for _ in range(concurrency))
    )
    return sum(counts) / (time.monotonic() - started)


def threaded_client(url: str, seconds: float, concurrency: int) -> float:
    parts = urllib.parse.urlsplit(url)
    counts: list[int] = []
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + seconds

    def work() -> None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        done = 0
        while time.monotonic() < deadline:
            conn.request("GET", "/items/x")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(response.status)
            done += 1
        conn.close()
        with lock:
            counts.append(done)

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc (Linux); ``None`` elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(seconds: float, concurrency: int) -> None:
    for latency_s in (0.0, 0.005):
        config = ApiConfig(base_latency_s=latency_s)
        for name in ("asyncio raw sockets", "threads + http.client"):
            with ApiServer.spawn(config) as server:
                assert server.process is not None
                cpu_before = cpu_seconds(server.process.pid)
                if name.startswith("asyncio"):
                    rate = asyncio.run(async_client(server.url, seconds, concurrency))
                else:
                    rate = threaded_client(server.url, seconds, concurrency)
                cpu_after = cpu_seconds(server.process.pid)
                stats = server.stats()
            busy = "?"
            if cpu_before is not None and cpu_after is not None:
                busy = f"{(cpu_after - cpu_before) / seconds:.0%}"
            print(
                f"latency {latency_s * 1000:.0f} ms, {name:22} x{concurrency}: "
                f"{rate:8.0f} req/s  (server CPU {busy}, p50 {stats['latency_p50_s'] * 1000:.2f} "
                f"ms, max in flight {stats['max_in_flight']})",
                flush=True,
            )


if __name__ == "__main__":
    import sys

    main(
        float(sys.argv[1]) if len(sys.argv) > 1 else 3.0,
        int(sys.argv[2]) if len(sys.argv) > 2 else 32,
    )
