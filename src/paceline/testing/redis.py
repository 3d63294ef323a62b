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

__all__ = ["LatencyProxy", "RedisClusterServers", "RedisServer", "redis_program"]


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

    def __init__(self, port: int | None = None, extra_config: str = "") -> None:
        program = redis_program()
        if program is None:
            raise InvalidState("redis-server is not installed (apt-get install redis-server)")
        self.program = program
        self.port = port if port is not None else free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra_config = extra_config
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
            f"dir {self._dir.name}\ndaemonize no\n{self.extra_config}"
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


class RedisClusterServers:
    """A Redis Cluster of ``masters`` (3 by default) ``redis-server`` masters on free loopback
    ports, each with ``replicas`` replicas (none by default), the 16,384 slots split evenly
    among the masters.
    ``url`` is the ``redis+cluster://`` URL of its first node (a client learns the others
    from it); ``nodes`` are the servers (the masters first), ``ports`` their ports.
    :meth:`failover` promotes a replica in place of its master, as ``CLUSTER FAILOVER`` does
    in production.

    Needs ``redis-server`` and ``redis-cli`` (Debian: ``apt-get install redis-server``)::

        with RedisClusterServers() as cluster:
            limiter = RateLimiter.from_rates("50/s", store=cluster.url, key="t")
    """

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        # 3 masters: the fewest a Redis Cluster is usually built with (and what the tests
        # need: a key's slot on one node, MOVED answers from the others).
        self.masters = masters
        count = masters * (1 + replicas)
        self.bus_ports = [free_port() for _ in range(count)]
        self.nodes = [
            RedisServer(
                extra_config=(
                    "cluster-enabled yes\ncluster-config-file nodes.conf\n"
                    # The bus on a free port of its own (by default port + 10000: maybe
                    # taken, or past 65535).
                    f"cluster-port {bus}\n"
                    # 2 s: a node that stops answering is marked failed quickly in a test,
                    # far above any loopback round trip.
                    "cluster-node-timeout 2000\n"
                    # A replica's first sync at once (Redis waits 5 s by default for more
                    # replicas to share one transfer).
                    "repl-diskless-sync-delay 0\n"
                )
            )
            for bus in self.bus_ports
        ]
        self.ports = [node.port for node in self.nodes]
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def cli(self, port: int, *args: str) -> str:
        """Run ``redis-cli -p port args...`` and return its output."""
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        return subprocess.run(
            [cli, "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout

    def start(self) -> RedisClusterServers:
        """Start the nodes, join them into one cluster (what ``redis-cli`` does to create one:
        each master takes a range of slots, the first meets the others, each replica follows
        its master) and wait until every node reports ``cluster_state:ok`` and every replica
        is in sync (at most 20 s)."""
        run = self.cli
        try:
            for node in self.nodes:
                node.start()
            slots = 16384
            masters = self.ports[: self.masters]
            for i, port in enumerate(masters):
                lo, hi = i * slots // len(masters), (i + 1) * slots // len(masters) - 1
                run(port, "cluster", "addslotsrange", str(lo), str(hi))
            for port, bus in zip(self.ports[1:], self.bus_ports[1:], strict=True):
                run(self.ports[0], "cluster", "meet", "127.0.0.1", str(port), str(bus))
            deadline = time.monotonic() + 20
            ids = {port: run(port, "cluster", "myid").strip() for port in masters}
            for i, port in enumerate(self.ports[self.masters :]):
                master = masters[i % self.masters]
                # A replica must know its master first (the MEET spreads by gossip).
                while ids[master] not in run(port, "cluster", "nodes"):
                    if time.monotonic() > deadline:
                        raise InvalidState(f"node {port} did not learn of {master} within 20 s")
                    time.sleep(0.05)
                run(port, "cluster", "replicate", ids[master])
            while time.monotonic() < deadline:
                if all(self._ready(p) for p in self.ports):
                    return self
                time.sleep(0.05)
            raise InvalidState("the redis cluster did not reach cluster_state:ok within 20 s")
        except BaseException:
            self.stop()
            raise

    def _ready(self, port: int) -> bool:
        if "cluster_state:ok" not in self.cli(port, "cluster", "info"):
            return False
        replication = self.cli(port, "info", "replication")
        return "role:master" in replication or "master_link_status:up" in replication

    def _seen_as_master(self, port: int, node_port: int) -> bool:
        """Whether the node on ``port`` sees the one on ``node_port`` as a master."""
        for row in self.cli(port, "cluster", "nodes").splitlines():
            fields = row.split(" ")
            if fields[1].split("@")[0].endswith(f":{node_port}"):
                return "master" in fields[2]
        return False

    def master_of(self, slot: int) -> int:
        """The port of the master that serves ``slot`` now."""
        for row in self.cli(self.ports[0], "cluster", "nodes").splitlines():
            _, addr, flags, *_, ranges = row.split(" ", 8)
            for part in ranges.split():
                lo, _, hi = part.partition("-")
                if "master" in flags and lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(addr.split(":")[1].split("@")[0])
        raise InvalidState(f"no master serves slot {slot}")

    def replicas_of(self, master_port: int) -> list[int]:
        """The ports of ``master_port``'s replicas."""
        master_id = self.cli(master_port, "cluster", "myid").strip()
        return [
            int(row.split(" ")[1].split(":")[1].split("@")[0])
            for row in self.cli(master_port, "cluster", "nodes").splitlines()
            if row.split(" ")[3] == master_id and "slave" in row.split(" ")[2]
        ]

    def failover(self, replica_port: int, timeout_s: float = 10.0) -> None:
        """``CLUSTER FAILOVER`` on a replica: it catches up with its master, which pauses its
        clients meanwhile, and takes its slots (the master becomes its replica). Returns when
        every node sees the replica as a master and the cluster is ok again."""
        self.cli(replica_port, "cluster", "failover")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "role:master" in self.cli(replica_port, "info", "replication") and all(
                self._ready(p) and self._seen_as_master(p, replica_port) for p in self.ports
            ):
                return
            time.sleep(0.02)
        raise InvalidState(f"the failover to {replica_port} did not finish in {timeout_s:g} s")

    def stop(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServers:
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
