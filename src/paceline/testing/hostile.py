"""A hostile HTTP server on loopback: the answers a real API gives on its worst day.

Each mode is one way a server can make a client hang, freeze, spin or write too much:

======================  =========================================================================
``error``               every answer 500
``flaky``               half the answers 500, drawn from a generator seeded with ``seed``
``far-retry-after``     the first request gets 429 with ``Retry-After: 1000000``, then all is well
``far-reset``           every answer 200 with ``X-RateLimit-Remaining: 0`` and a reset 28 years away
``throttle``            every answer 429, without ``Retry-After``
``silent``              the connection is accepted, the request read, and nothing ever answered
``trickle``             a 200 answer written one byte every ``trickle_interval_s`` (0.5 s)
``huge-body``           every answer 200 with a body of ``body_bytes`` (10 MiB)
``cut-body``            a 200 whose connection closes half-way through the body
``huge-header``         every answer 200 with a 72 KiB ``RateLimit-Policy``
``bad-header``          every answer 200 with malformed pacing headers
======================  =========================================================================

Any path is a route; a 200 answers ``{"id": "<last path segment>", "n": <times served>}``. The
server counts, per path, the requests that arrived, the 200 answers handed whole to the
connection (``served``) and the other answers handed whole (``refused``), so a test can check
that every item was asked for and nothing was served twice.

>>> import urllib.request, urllib.error
>>> with HostileServer("far-retry-after") as server:
...     try:
...         urllib.request.urlopen(server.url + "/items/1")
...     except urllib.error.HTTPError as exc:
...         first = exc.code, exc.headers["Retry-After"]
...     second = urllib.request.urlopen(server.url + "/items/1").status
...     counts = server.counts()
>>> first, second, counts.requests["/items/1"], counts.served_twice()
((429, '1000000'), 200, 2, [])

From the command line (``--port 0`` picks a free port; the first stdout line gives the URL)::

    paceline serve-test --hostile trickle --port 0
    listening on http://127.0.0.1:40123
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, get_args

from paceline.errors import InvalidArgument, InvalidState
from paceline.testing._api.http import HttpError, Request, encode_response, read_request

__all__ = ["MODES", "HostileCounts", "HostileServer", "Mode", "main"]

Mode = Literal[
    "error",
    "flaky",
    "far-retry-after",
    "far-reset",
    "throttle",
    "silent",
    "trickle",
    "huge-body",
    "cut-body",
    "huge-header",
    "bad-header",
]
MODES: tuple[Mode, ...] = get_args(Mode)

# 1 000 000 s is 11.6 days: the value that froze a whole batch (issue 10, defect 3).
FAR_RETRY_AFTER_S = 1_000_000
# 900 000 000 s read as a delta is 28.5 years (as an epoch it is 1998): issue 10, defect 4.
FAR_RESET = 900_000_000
# 72 KiB: the pacing header that cost ~45 ms of CPU per response (issue 10). It stays under
# httpcore's 100 KiB limit on a response head, so a client reads it rather than refusing it.
HUGE_HEADER_BYTES = 72 * 1024
# 10 MiB bodies made a 210 MB journal and 1.26 GB of memory at -j 64 (issue 10).
HUGE_BODY_BYTES = 10 * 1024 * 1024
# A byte every 0.5 s held the first Ctrl-C for 14 minutes (issue 10): no read timeout fires.
TRICKLE_INTERVAL_S = 0.5
STOP_TIMEOUT_S = 5.0

# Each value is wrong in its own way: a word for a number, NaN, an empty parameter, broken
# structured fields, a negative limit, an overflow to infinity, and a number with more digits
# than Python's int() accepts by default (4300).
BAD_HEADERS: tuple[tuple[str, str], ...] = (
    ("Retry-After", "soon"),
    ("Retry-After-Ms", "NaN"),
    ("RateLimit-Policy", '"default";q=;w=abc, ;;;'),
    ("RateLimit", '"default";r=-3;t="x", ("unclosed'),
    ("X-RateLimit-Limit", "-1"),
    ("X-RateLimit-Remaining", "1e309"),
    ("X-RateLimit-Reset", "9" * 5000),
)


def _huge_policy(size: int) -> str:
    """A valid ``RateLimit-Policy`` list of ``size`` bytes, every quota generous."""
    parts: list[str] = []
    length = 0
    while length < size:
        part = f'"p{len(parts)}";q=1000000;w=1'
        parts.append(part)
        length += len(part) + 2
    return ", ".join(parts)[:size].rstrip(", ;")


@dataclass(frozen=True, slots=True)
class HostileCounts:
    """What the server saw, per path: requests that arrived, 200s and other answers handed whole
    to the connection."""

    requests: Counter[str]
    served: Counter[str]
    refused: Counter[str]

    def served_twice(self) -> list[str]:
        """The paths answered 200 more than once, sorted."""
        return sorted(path for path, n in self.served.items() if n > 1)


class _Service:
    """The hostile behaviour on one event loop; the counters are read under a lock."""

    def __init__(
        self, mode: Mode, *, seed: int, trickle_interval_s: float, body_bytes: int
    ) -> None:
        if mode not in MODES:
            raise InvalidArgument(f"hostile mode {mode!r}: choose one of {', '.join(MODES)}")
        self.mode = mode
        self.trickle_interval_s = trickle_interval_s
        self.body_bytes = body_bytes
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._served: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._far_sent = False
        self._connections: set[asyncio.Task[Any]] = set()
        self._huge_policy = _huge_policy(HUGE_HEADER_BYTES)

    def counts(self) -> HostileCounts:
        with self._lock:
            return HostileCounts(
                Counter(self._requests), Counter(self._served), Counter(self._refused)
            )

    def _count(self, counter: Counter[str], path: str) -> None:
        with self._lock:
            counter[path] += 1

    def _ok_body(self, path: str) -> bytes:
        with self._lock:
            n = self._served[path] + 1
        payload: dict[str, Any] = {"id": path.rstrip("/").rpartition("/")[2], "n": n}
        if self.mode == "huge-body":
            # The padding makes the whole JSON document body_bytes long.
            fixed = len(json.dumps({**payload, "pad": ""}, separators=(",", ":")))
            payload["pad"] = "x" * max(0, self.body_bytes - fixed)
        return json.dumps(payload, separators=(",", ":")).encode()

    def _answer(self, path: str) -> tuple[int, list[tuple[str, str]]] | None:
        """The status and extra headers for this request; ``None``: never answer."""
        mode = self.mode
        if mode == "error":
            return 500, []
        if mode == "flaky":
            return (500 if self._rng.random() < 0.5 else 200), []
        if mode == "far-retry-after":
            with self._lock:
                first, self._far_sent = not self._far_sent, True
            return (429, [("Retry-After", str(FAR_RETRY_AFTER_S))]) if first else (200, [])
        if mode == "far-reset":
            return 200, [
                ("X-RateLimit-Limit", "10"),
                ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", str(FAR_RESET)),
            ]
        if mode == "throttle":
            return 429, []
        if mode == "silent":
            return None
        if mode == "huge-header":
            return 200, [("RateLimit-Policy", self._huge_policy)]
        if mode == "bad-header":
            return 200, list(BAD_HEADERS)
        return 200, []  # trickle, huge-body, cut-body: the harm is in the writing

    async def _respond(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; ``False``: the connection is done."""
        path = request.path
        self._count(self._requests, path)
        answer = self._answer(path)
        if answer is None:
            return False
        status, headers = answer
        body = self._ok_body(path) if status == 200 else b'{"error":"hostile"}'
        data = encode_response(status, body, headers, keep_alive=request.keep_alive)
        if self.mode == "cut-body":
            writer.write(data[: len(data) - len(body) // 2])
            await writer.drain()
            return False
        if self.mode == "trickle":
            for i in range(len(data) - 1):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(self.trickle_interval_s)
            data = data[-1:]
        # Counted as the last bytes are handed over, so that a client holding the whole answer
        # always finds it counted.
        self._count(self._served if status == 200 else self._refused, path)
        writer.write(data)
        await writer.drain()
        return request.keep_alive

    async def _hold(self, reader: asyncio.StreamReader) -> None:
        """Say nothing until the client gives up and closes."""
        while await reader.read(65536):
            pass

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                if not await self._respond(request, writer):
                    if self.mode == "silent":
                        await self._hold(reader)
                    break
        except (HttpError, ConnectionError, OSError):
            pass  # a client that sent garbage or went away: nothing to answer
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def run(self, port: int, on_ready: Callable[[int], None], stop: asyncio.Event) -> None:
        """Listen on ``127.0.0.1:port`` until ``stop`` is set, then close every connection."""
        server = await asyncio.start_server(self.connection, "127.0.0.1", port, backlog=1024)
        try:
            on_ready(server.sockets[0].getsockname()[1])
            await stop.wait()
        finally:
            server.close()
            tasks = list(self._connections)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()


class HostileServer:
    """One hostile :data:`Mode` on ``127.0.0.1``, served by an event loop in a background thread.

    ``port=0`` picks a free port; ``seed`` fixes the ``flaky`` draws; ``trickle_interval_s`` and
    ``body_bytes`` tune ``trickle`` and ``huge-body``. :meth:`counts` says what was served.

    >>> import urllib.request, urllib.error
    >>> with HostileServer("error") as server:
    ...     try:
    ...         urllib.request.urlopen(server.url + "/items/a")
    ...     except urllib.error.HTTPError as exc:
    ...         status = exc.code
    ...     counts = server.counts()
    >>> status, counts.refused["/items/a"], counts.served["/items/a"]
    (500, 1, 0)
    """

    def __init__(
        self,
        mode: Mode,
        *,
        port: int = 0,
        seed: int = 0,
        trickle_interval_s: float = TRICKLE_INTERVAL_S,
        body_bytes: int = HUGE_BODY_BYTES,
    ) -> None:
        self.mode = mode
        self._service = _Service(
            mode, seed=seed, trickle_interval_s=trickle_interval_s, body_bytes=body_bytes
        )
        self._requested_port = port
        self._port: int | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        if self._port is None:
            raise InvalidState("the hostile server is not running; use `with HostileServer(...)`")
        return f"http://127.0.0.1:{self._port}"

    def counts(self) -> HostileCounts:
        """A snapshot of the per-path counters."""
        return self._service.counts()

    def start(self) -> HostileServer:
        """Start listening; return once the port is open."""
        if self._thread is not None:
            raise InvalidState("this HostileServer was already started; make a new one")
        self._thread = threading.Thread(target=self._run, name="paceline-hostile", daemon=True)
        self._thread.start()
        if not self._ready.wait(STOP_TIMEOUT_S) or self._port is None:
            raise InvalidState(f"the hostile server did not start: {self._failure!r}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        def ready(port: int) -> None:
            self._port = port
            self._ready.set()

        await self._service.run(self._requested_port, ready, self._stop)

    def close(self) -> None:
        """Close every connection, stop the loop and join its thread. Safe to call twice."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_TIMEOUT_S)
        self._port = None
        if thread.is_alive():
            raise InvalidState(f"the hostile server did not stop within {STOP_TIMEOUT_S} s")

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paceline serve-test --hostile",
        description="Serve one hostile mode on 127.0.0.1 until terminated.",
    )
    add = parser.add_argument
    add("mode", choices=MODES, help="how to misbehave")
    add("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    add("--seed", type=int, default=0, help="seed for the flaky draws")
    add("--trickle-interval-s", type=float, default=TRICKLE_INTERVAL_S, help="trickle's pace")
    add("--body-bytes", type=int, default=HUGE_BODY_BYTES, help="huge-body's size")
    return parser


async def _serve(service: _Service, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no such handlers
            loop.add_signal_handler(signum, stop.set)

    def ready(bound: int) -> None:
        print(f"listening on http://127.0.0.1:{bound}", flush=True)

    await service.run(port, ready, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one hostile mode until terminated (SIGTERM or Ctrl-C); return the exit status."""
    args = _parser().parse_args(argv)
    service = _Service(
        args.mode,
        seed=args.seed,
        trickle_interval_s=args.trickle_interval_s,
        body_bytes=args.body_bytes,
    )
    try:
        asyncio.run(_serve(service, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"hostile server: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
