"""Run the test API in a background thread (:class:`ApiServer`) or a child process
(:class:`SpawnedServer`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from paceline.errors import InvalidState
from paceline.testing._api.app import Service
from paceline.testing._api.config import ApiConfig

T = TypeVar("T")

# Starting takes milliseconds in a thread and ~0.1-0.3 s in a fresh interpreter; the limit only
# matters when something is broken, and then the error says so.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class ApiServer:
    """The test API on ``127.0.0.1``, served by an event loop in a background thread.

    >>> import json, urllib.request
    >>> with ApiServer(ApiConfig(quota=5, window_s=1.0, base_latency_s=0)) as server:
    ...     body = urllib.request.urlopen(server.url + "/items/a7").read()
    ...     json.loads(body), server.stats()["accepted"]
    ({'id': 'a7', 'n': 1}, 1)

    ``port=0`` picks a free port. For load tests, :meth:`spawn` runs the same server in its own
    process so that it does not share the client's GIL.
    """

    def __init__(self, config: ApiConfig | None = None, *, port: int = 0) -> None:
        self.config = config if config is not None else ApiConfig()
        self._requested_port = port
        self._service = Service(self.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._port: int | None = None
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def spawn(config: ApiConfig | None = None, *, port: int = 0) -> SpawnedServer:
        """A :class:`SpawnedServer` for ``config``; use it as a context manager to start it."""
        return SpawnedServer(config, port=port)

    @property
    def port(self) -> int:
        """The port the server listens on (after :meth:`start`)."""
        if self._port is None:
            raise InvalidState("the API server is not running; use it as `with ApiServer(...)`")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        """Start listening; return once the port is open."""
        if self._thread is not None:
            raise InvalidState("this ApiServer was already started; make a new one")
        self._thread = threading.Thread(target=self._run, name="paceline-api-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise InvalidState(f"the API server did not start within {START_TIMEOUT_S} s")
        failure, self._failure = self._failure, None
        if failure is not None:
            self._thread.join()
            raise InvalidState(f"the API server could not start: {failure}") from failure
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

    def _in_loop(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None or self._port is None or loop.is_closed():
            raise InvalidState("the API server is not running; use it as `with ApiServer(...)`")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return future.result(STOP_TIMEOUT_S)

    def stats(self, times: bool = False) -> dict[str, Any]:
        """What the server saw, as ``GET /stats`` reports it (``times=True``: arrival times)."""
        return self._in_loop(lambda: self._service.state.stats(times=times))

    def objects(self) -> dict[str, Any]:
        """What ``POST /objects`` created and each such request's key, as ``GET /objects``
        reports it."""
        return self._in_loop(lambda: self._service.state.objects.listing())

    def reset(self) -> None:
        """Forget counters, served ids and the quota log, as ``POST /reset`` does."""
        self._in_loop(lambda: self._service.state.reset(time.monotonic_ns()))

    def close(self) -> None:
        """Close every connection, stop the loop and join its thread. Safe to call twice."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            # The loop may close between the check and the call: then nothing is left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_TIMEOUT_S)
        self._port = None
        if thread.is_alive():
            raise InvalidState(f"the API server thread did not stop within {STOP_TIMEOUT_S} s")
        failure, self._failure = self._failure, None
        if failure is not None and self._ready.is_set():
            raise InvalidState(f"the API server failed while serving: {failure}") from failure

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _child_env() -> dict[str, str]:
    # The child must import this very paceline, installed or not: put its source root first.
    source_root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class SpawnedServer:
    """The test API in a child process (``python -m paceline.testing.api_server``).

    >>> with ApiServer.spawn(ApiConfig(quota=100, window_s=1.0)) as server:
    ...     server.url.startswith("http://127.0.0.1:"), server.stats()["quota"]
    (True, 100)

    Entering starts the process and waits for its ``listening on ...`` line; leaving terminates
    it and waits for it to exit (killing it if it does not).
    """

    def __init__(self, config: ApiConfig | None = None, *, port: int = 0) -> None:
        self.config = config if config is not None else ApiConfig()
        self.argv = [
            sys.executable,
            "-m",
            "paceline.testing.api_server",
            *self.config.to_argv(),
            "--port",
            str(port),
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The base URL the child printed, e.g. ``http://127.0.0.1:40123``."""
        if self._url is None:
            raise InvalidState("the API server process is not running; use `with ...spawn(...)`")
        return self._url

    def start(self) -> SpawnedServer:
        """Start the child and read its URL line."""
        if self.process is not None:
            raise InvalidState("this SpawnedServer was already started; spawn a new one")
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, env=_child_env())
        stdout = self.process.stdout
        assert stdout is not None
        lines: queue.Queue[bytes] = queue.Queue()
        reader = threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True)
        reader.start()
        try:
            line = lines.get(timeout=START_TIMEOUT_S).decode().strip()
        except queue.Empty:
            line = ""
        prefix = "listening on "
        if not line.startswith(prefix):
            self.close()  # also ends the reader: the pipe closes with the process
            reader.join(STOP_TIMEOUT_S)
            raise InvalidState(
                f"the API server process ({' '.join(self.argv[2:])}) did not say "
                f"{prefix!r} within {START_TIMEOUT_S} s; got {line!r}. Its stderr is above."
            )
        reader.join(STOP_TIMEOUT_S)
        self._url = line[len(prefix) :]
        return self

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=STOP_TIMEOUT_S) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def stats(self, times: bool = False) -> dict[str, Any]:
        """``GET /stats`` from the child (``times=True``: with accepted arrival times)."""
        return self._call("GET", "/stats?times=1" if times else "/stats")

    def objects(self) -> dict[str, Any]:
        """``GET /objects`` from the child."""
        return self._call("GET", "/objects")

    def reset(self) -> None:
        """``POST /reset`` to the child."""
        self._call("POST", "/reset")

    def close(self) -> None:
        """Terminate the child and wait for it; kill it if it does not exit. Safe to call twice."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        self._url = None

    def __enter__(self) -> SpawnedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
