"""Debian's ``redis-server`` on a free loopback port, for tests and benchmarks of the shared
limit store; and a TCP proxy that adds latency between clients and Redis.

The server runs in the foreground as the calling user with no persistence (``save ""``,
``appendonly no``: a restart comes back empty, as a cache-only Redis does), everything under a
temporary directory. :meth:`RedisServer.restart` kills it (SIGKILL) and starts it again on
the same port; :meth:`RedisServer.pause` stops it (SIGSTOP) for a while, like a hung host.

Needs ``redis-server`` (Debian: ``apt-get install redis-server``)::

    with RedisServer() as server:
        limiter = RateLimiter.from_rates("50/s", store=server.url, key="t")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from paceline.errors import InvalidState

__all__ = ["LatencyProxy", "RedisServer", "redis_program"]


def redis_program() -> str | None:
    """The path of ``redis-server``, or ``None`` when it is not installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1; ``url`` is its ``redis://`` URL."""

    def __init__(self, port: int | None = None) -> None:
        program = redis_program()
        if program is None:
            raise InvalidState("redis-server is not installed (apt-get install redis-server)")
        self.program = program
        self.port = port if port is not None else free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers (at most 10 s)."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="paceline-redis-")
        config = Path(self._dir.name, "redis.conf")
        # No persistence: a restart comes back empty, as a cache-only Redis does.
        config.write_text(
            f'port {self.port}\nbind 127.0.0.1\nsave ""\nappendonly no\n'
            f"dir {self._dir.name}\ndaemonize no\n"
        )
        self._proc = subprocess.Popen(
            [self.program, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        self.stop()
        raise InvalidState(f"redis-server did not answer on port {self.port} within 10 s")

    def kill(self) -> None:
        """SIGKILL the server (its data is lost: it has no persistence)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        self.kill()
        self.start()

    def pause(self, seconds: float) -> None:
        """Stop the server (SIGSTOP) for ``seconds``, then let it go on: a hung Redis."""
        proc = self._proc
        if proc is None:
            raise InvalidState("the redis server is not running")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self.kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 that delays every chunk by ``delay_s`` (+ up to ``jitter_s``)
    each way, in order: ``tc netem`` for one port, in user space.

    >>> proxy = LatencyProxy(6379, delay_s=0.001, jitter_s=0.004)  # doctest: +SKIP
    """

    def __init__(self, target_port: int, delay_s: float, jitter_s: float = 0.0) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.port = 0
        self.chunks = 0
        self.requests = 0  # chunks from clients to Redis: its round trips, without pipelining
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        """The proxy's ``redis://`` URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        import random

        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            last = 0.0
            while True:
                due, data = await queue.get()
                if not data:
                    break
                due = max(due, last)  # in order, as TCP delivers
                last = due
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(65536):
                self.chunks += 1
                self.requests += upstream
                due = loop.time() + self.delay_s + random.uniform(0, self.jitter_s)
                queue.put_nowait((due, data))
        except OSError:
            pass
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(OSError):
            await sender
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_w, True), self._pipe(up_r, writer, False))

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        self._server.close()
        loop.run_until_complete(self._server.wait_closed())
        for task in asyncio.all_tasks(loop):
            task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(
                asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True)
            )
        loop.close()

    def __enter__(self) -> LatencyProxy:
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
