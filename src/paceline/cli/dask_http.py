"""``paceline http --dask``: the requests sent from the workers (docs/design.md, "The CLI:
--dask").

The driver renders each row into its request as a local run does (templates, headers, the
item's key), so an item travels with everything it sends. What the workers add is the sending:
:class:`HttpOnWorker` carries a picklable description of the batch's settings
(:class:`HttpSettings`: base URL, the attempt timeout, the idempotency settings, the user's
``--throttle-on``/``--fail-on``/``--exhausted-on``/``--retry-on`` rules) and nothing secret:
``--header`` values are in the requests, never in the description, and a request's repr masks
them. Each attempt runs under the item's identity (the journal's batch id and the item's key),
so its ``Idempotency-Key`` is the one a local run of the batch sends.

**One client per worker process.** A chunk runs on an event loop of its own (one
``asyncio.run`` per chunk), and an httpx client's connections belong to the loop that opened
them. So the requests go through one long-lived loop per worker process, on a daemon thread
(:class:`_ClientLoop`), which keeps an httpx client per :class:`HttpSettings`: the connections
(and their TLS sessions) live from chunk to chunk instead of being opened again every ~2 s.
An attempt hops to that loop and back (~0.1 ms, against the milliseconds of a request);
cancelling it (a stop) cancels the request there. The thread lives as long as the worker
process, like the worker's own threads; at most :data:`MAX_CLIENTS` clients are kept (a
long-lived ``dask worker`` that serves many batches closes the oldest).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paceline.cli.dask import ItemIdentity
from paceline.cli.ops import BadInputRow, Item
from paceline.cli.spec import RunSpec
from paceline.policy.answers import AnswerRule
from paceline.redact import redact_text
from paceline.runners.identity import CURRENT, new_batch_id

# HTTP clients one worker process keeps (one per batch's settings): a `dask worker` that runs
# a few batches at once reuses each one's connections; more than a handful of batches with
# different settings at once on one worker is unusual, and the oldest is closed then.
MAX_CLIENTS = 4


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """What a worker needs to send a batch's requests, and nothing secret (hashable: the
    worker's clients are cached by it).

    >>> spec = RunSpec("http", "in.jsonl", timeout_s=5.0, throttle_on=["status=403"])
    >>> settings = HttpSettings.of(spec, connections=8)
    >>> settings.timeout_s, [rule.verdict.value for rule in settings.rules]
    (5.0, ['throttled'])
    """

    base_url: str | None
    timeout_s: float | None
    idempotency_header: str | None  # None: Idempotency-Key; "": none
    idempotency_methods: str | None  # None: POST,PATCH
    retry_unsafe: bool
    rules: tuple[AnswerRule, ...]
    connections: int  # each chunk's concurrency (the pool holds that many per worker thread)

    @classmethod
    def of(cls, spec: RunSpec, connections: int) -> HttpSettings:
        return cls(
            base_url=spec.base_url,
            timeout_s=spec.timeout_s,
            idempotency_header=spec.idempotency_header,
            idempotency_methods=spec.idempotency_methods,
            retry_unsafe=spec.retry_unsafe,
            rules=tuple(spec.answer_rules()),
            connections=connections,
        )

    def __repr__(self) -> str:
        base = None if self.base_url is None else redact_text(self.base_url)
        return f"HttpSettings(base_url={base!r}, timeout_s={self.timeout_s!r}, ...)"


@dataclass
class HttpOnWorker:
    """The operation of ``paceline http --dask`` as it travels to the workers: it sends each
    item's request from the worker's client loop under the item's identity. ``batch_id`` is
    the journal's (see :class:`~paceline.cli.dask.OnWorker`)."""

    settings: HttpSettings
    batch_id: str = field(default_factory=new_batch_id)

    async def __call__(self, item: Item) -> Any:
        if item.bad is not None:
            raise BadInputRow(item.bad)
        attempt = ItemIdentity(self.batch_id, item.key, item.line)
        return await _client_loop().send(self.settings, attempt, item.payload)


class _ClientLoop:
    """An event loop on a daemon thread holding this process's HTTP clients (see the module's
    docstring)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._senders: OrderedDict[HttpSettings, tuple[Any, Callable[[Any], Any]]] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="paceline-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Close the clients and the loop (a worker's live as long as its process; a test's
        are closed)."""

        async def closing() -> None:
            for client, _send in self._senders.values():
                await client.aclose()
            self._senders.clear()
            await asyncio.gather(*self._closing)

        asyncio.run_coroutine_threadsafe(closing(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def send(self, settings: HttpSettings, attempt: ItemIdentity, payload: Any) -> Any:
        """Send ``payload`` on the client loop as ``attempt``; its answer, or its error."""

        # Asked here, on the chunk's thread (Dask knows its worker there, not on ours).
        threads = 0 if settings in self._senders else _worker_threads()

        async def there() -> Any:
            CURRENT.set(attempt)  # this task's own context: current_item_key() is the item's
            return await self._sender(settings, threads)(payload)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(there(), self.loop))

    def _sender(self, settings: HttpSettings, threads: int) -> Callable[[Any], Any]:
        """The batch's sender (made on first use, with a pool for ``threads`` chunks at once;
        only ever called on the client loop)."""
        found = self._senders.get(settings)
        if found is not None:
            self._senders.move_to_end(settings)
            return found[1]
        from paceline.http import Idempotency, ServerLanes, client_for, rules_classifier, sender

        client = client_for(None, settings.connections * max(1, threads))
        header = settings.idempotency_header
        idempotency = Idempotency.of(
            "Idempotency-Key" if header is None else header,
            settings.idempotency_methods,
            settings.retry_unsafe,
        )
        rules = list(settings.rules)
        # No lanes here: the cluster's limiter paces (docs/design.md); the lanes' header
        # limits are learned per process and left unused.
        send = sender(
            client,
            ServerLanes(),
            settings.base_url,
            attempt_timeout_s=settings.timeout_s,
            idempotency=idempotency,
            classify=rules_classifier(rules) if rules else None,
        )
        self._senders[settings] = (client, send)
        while len(self._senders) > MAX_CLIENTS:
            _old, (old_client, _send) = self._senders.popitem(last=False)
            closing = self.loop.create_task(old_client.aclose())
            self._closing.add(closing)  # held until done (the loop keeps weak references)
            closing.add_done_callback(self._closing.discard)
        return send


_LOOP: _ClientLoop | None = None
_LOOP_LOCK = threading.Lock()


def _client_loop() -> _ClientLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = _ClientLoop()
        return _LOOP


def _worker_threads() -> int:
    """Threads of the Dask worker this process runs (each runs a chunk at once), else 1."""
    try:
        from distributed import get_worker

        worker: Any = get_worker()
        return max(1, int(worker.state.nthreads))
    except Exception:  # not on a worker (a test), or another distributed: one chunk at once
        return 1


__all__ = ["MAX_CLIENTS", "HttpOnWorker", "HttpSettings"]
