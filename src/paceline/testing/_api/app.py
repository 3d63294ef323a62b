"""The routes of the test API and the asyncio loop that serves them over one listening socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from paceline.testing._api.config import ApiConfig
from paceline.testing._api.http import (
    MAX_HEADER_BYTES,
    HttpError,
    Request,
    encode_response,
    read_request,
)
from paceline.testing._api.llm_bodies import BadCall, Call, answer, error, read_call
from paceline.testing._api.llm_state import Admission
from paceline.testing._api.state import Fate, ServerState

Response = tuple[int, bytes, list[tuple[str, str]]]

# The kernel's accept queue: a burst of connects beyond it loses SYNs, and clients retry after
# a second, which looks like a 1 s network delay (socketserver's default of 5 does exactly that).
BACKLOG = 1024


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return status, _json({"error": message}), headers or []


# GitHub's answer to a secondary rate limit (with 403 and Retry-After), and OpenAI's to an
# account out of credit (429): the shapes docs/design.md, 'Answers told apart' is about.
SECONDARY_LIMIT = {
    "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you "
    "try again.",
    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
    "#about-secondary-rate-limits",
}
OUT_OF_CREDIT = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}


class Service:
    """The test API's behaviour on one event loop: routes, quota, capacity, failures, stats."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.state = ServerState(config)
        self._connections: set[asyncio.Task[Any]] = set()

    # -- routes ------------------------------------------------------------------------------

    async def respond(self, request: Request) -> Response | None:
        """Answer one request; ``None`` means drop the connection without an answer."""
        path, method = request.path, request.method
        if path.startswith("/items/") and len(path) > len("/items/"):
            if method not in ("GET", "POST"):
                return _error(405, f"{method} {path}: use GET or POST", [("Allow", "GET, POST")])
            return await self._api(request, path[len("/items/") :])
        if path == "/bulk":
            if method != "POST":
                return _error(405, f"{method} /bulk: use POST", [("Allow", "POST")])
            return await self._api(request, None)
        llm = self.config.llm
        if llm is not None and path == llm.path:
            if method != "POST":
                return _error(405, f"{method} {path}: use POST", [("Allow", "POST")])
            return await self._chat(request)
        if path == "/objects":
            if method == "GET":
                return 200, _json(self.state.objects.listing()), []
            if method != "POST":
                return _error(405, f"{method} /objects: use POST or GET", [("Allow", "GET, POST")])
            return await self._create(request)
        if path == "/stats" and method == "GET":
            times = "times=1" in request.query.split("&")
            return 200, _json(self.state.stats(times=times)), []
        if path == "/reset" and method == "POST":
            self.state.reset(time.monotonic_ns())
            return 200, _json({"reset": True}), []
        return _error(404, f"no route {method} {path}; try GET /items/<id>, POST /bulk, GET /stats")

    async def _api(self, request: Request, item_id: str | None) -> Response | None:
        """One quota-counted call: ``item_id`` for ``/items/<id>``, ``None`` for ``/bulk``."""
        state, config = self.state, self.config
        if config.network_delay_s:
            await asyncio.sleep(state.network_delay_s())
        arrived_ns = time.monotonic_ns()
        if config.credit is not None and not state.spend_credit():
            state.requests += 1
            return 429, _json(OUT_OF_CREDIT), [("x-should-retry", "false")]
        if not state.admit(arrived_ns):
            headers = state.rate_headers(arrived_ns)
            if config.secondary_limit:
                headers.append(("Retry-After", str(state.retry_after_s(arrived_ns))))
                return 403, _json(SECONDARY_LIMIT), headers
            if config.retry_after:
                headers.append(("Retry-After", str(state.retry_after_s(arrived_ns))))
            return _error(429, "rate limited", headers)
        headers = state.rate_headers(arrived_ns)
        if not state.enter():
            return _error(503, "over capacity", headers)
        try:
            return await self._serve(request, item_id, arrived_ns, headers)
        finally:
            state.leave()

    async def _serve(
        self, request: Request, item_id: str | None, arrived_ns: int, headers: list[tuple[str, str]]
    ) -> Response | None:
        state = self.state
        echo: Any = None
        if request.body or item_id is None:
            try:
                echo = json.loads(request.body) if request.body else None
            except (ValueError, UnicodeDecodeError):
                state.bad_requests += 1
                return _error(400, "the body is not JSON", headers)
        ids: list[str] = []
        if item_id is None:
            given = echo.get("ids") if isinstance(echo, dict) else None
            if not isinstance(given, list) or not all(isinstance(i, str) for i in given):
                state.bad_requests += 1
                return _error(400, 'POST /bulk wants {"ids": ["a", "b", ...]}', headers)
            ids = given
        fate, extra_s = state.draw()
        latency_s = self.config.latency_s(state.in_flight) + extra_s
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        if fate is Fate.DROP:
            return None
        headers.append(("Server-Timing", f"app;dur={latency_s * 1000:.3f}"))
        if fate is Fate.ERROR:
            return _error(500, "injected failure", headers)
        now_ns = time.monotonic_ns()
        if item_id is None:
            wanted = [i for i in ids if not i.startswith("missing")]
            counts = state.record_accepted(arrived_ns, now_ns, wanted)
            items = {i: {"id": i, "n": counts[i]} for i in wanted}
            return 200, _json({"items": items}), headers
        n = state.record_accepted(arrived_ns, now_ns, [item_id])[item_id]
        payload: dict[str, Any] = {"id": item_id, "n": n}
        if request.method == "POST":
            payload["echo"] = echo
        return 200, _json(payload), headers

    async def _create(self, request: Request) -> Response | None:
        """``POST /objects``: create an object, or replay the answer stored for its
        ``Idempotency-Key``; a share is dropped after processing (``post_drop_rate``)."""
        state = self.state
        arrived_ns = time.monotonic_ns()
        if not state.admit(arrived_ns):
            return _error(429, "rate limited", state.rate_headers(arrived_ns))
        try:
            body = json.loads(request.body) if request.body else None
        except (ValueError, UnicodeDecodeError):
            state.bad_requests += 1
            return _error(400, "the body is not JSON")
        if not state.enter():
            return _error(503, "over capacity")
        try:
            latency_s = self.config.latency_s(state.in_flight)
            if latency_s > 0:
                await asyncio.sleep(latency_s)
            created, what = state.objects.create(request.headers.get("idempotency-key"), body)
            if state.objects.drop_now():
                return None  # processed, and the answer lost
            state.record_accepted(arrived_ns, time.monotonic_ns(), [])
            status = 201 if what == "created" else 200
            return status, _json(created), [("Idempotent-Replayed", str(what == "replay").lower())]
        finally:
            state.leave()

    async def _chat(self, request: Request) -> Response | None:
        """One LLM call: charged to the requests and tokens buckets, answered with its usage,
        its unused completion tokens refunded (see :class:`LlmConfig`)."""
        state, config = self.state, self.config
        llm = state.llm
        assert llm is not None  # the route exists only in LLM mode
        flavour = llm.config.flavour
        try:
            call = read_call(request.body, flavour)
        except BadCall as exc:
            state.bad_requests += 1
            return 400, error(flavour, "invalid_request_error", exc.message, exc.param), []
        if config.network_delay_s:
            await asyncio.sleep(state.network_delay_s())
        arrived_ns = time.monotonic_ns()
        state.requests += 1
        admission = llm.admit(arrived_ns, call.prompt_tokens, call.max_tokens, call.n)
        if admission.limit is not None:
            state.throttled_429 += 1
            headers = llm.headers(arrived_ns, time.time())
            headers += llm.retry_headers(admission, flavour)
            return 429, error(flavour, admission.limit, llm.refusal(admission)), headers
        failed = "server_error" if flavour == "openai" else "api_error"
        if not state.enter():
            llm.finish(arrived_ns, admission, served=False)
            body = error(flavour, failed, "over capacity")
            return 503, body, llm.headers(arrived_ns, time.time())
        response: Response | None = None
        try:
            response = await self._generate(call, admission, failed, arrived_ns)
        finally:
            llm.finish(
                time.monotonic_ns(), admission, served=response is not None and response[0] == 200
            )
            state.leave()
        if response is None:
            return None
        # The answer tells the buckets as they are once the refund is made.
        status, body, headers = response
        return status, body, llm.headers(time.monotonic_ns(), time.time()) + headers

    async def _generate(
        self, call: Call, admission: Admission, failed: str, arrived_ns: int
    ) -> Response | None:
        state = self.state
        llm = state.llm
        assert llm is not None
        flavour = llm.config.flavour
        fate, extra_s = state.draw()
        latency_s = self.config.latency_s(state.in_flight) + extra_s
        latency_s += llm.config.output_token_s * max(admission.completions)
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        if fate is Fate.DROP:
            return None
        timing = ("Server-Timing", f"app;dur={latency_s * 1000:.3f}")
        if fate is Fate.ERROR:
            return 500, error(flavour, failed, "injected failure"), [timing]
        state.record_accepted(arrived_ns, time.monotonic_ns(), [])
        body = answer(call, admission.completions, flavour, admission.index + 1, time.time())
        return 200, body, [timing]

    # -- connections -------------------------------------------------------------------------

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection, in order, until either side closes it."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                try:
                    request = await read_request(reader)
                except HttpError as exc:
                    self.state.malformed += 1
                    body = _json({"error": exc.message})
                    writer.write(encode_response(exc.status, body, [], keep_alive=False))
                    await writer.drain()
                    break
                if request is None:
                    break
                response = await self.respond(request)
                if response is None:
                    break
                status, body, headers = response
                writer.write(encode_response(status, body, headers, keep_alive=request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    break
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            pass  # the server is stopping (run() cancels every connection): end quietly
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def run(self, port: int, on_ready: Callable[[int], None], stop: asyncio.Event) -> None:
        """Listen on ``127.0.0.1:port`` until ``stop`` is set, then close every connection."""
        server = await asyncio.start_server(
            self.connection, "127.0.0.1", port, limit=MAX_HEADER_BYTES, backlog=BACKLOG
        )
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
