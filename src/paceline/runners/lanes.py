"""Lanes: one set of gates per server, so a paused or slow server holds up only its own items.

A batch that mixes servers (URLs of A and of B) must not pace B by A's answers: a
``Retry-After`` from A pauses A only, A's throttles cut A's rate only, and a quota learned from
A's headers limits A only. A *lane* is everything the runner keeps per server: its adaptive
controller (and through it the pause), its own ``Retry-After`` pause when there is no
controller, its limiter (for HTTP, the :class:`~paceline.http.ServerLimits` learned from its
headers) and a queue of its items that are ready to start.

Decisions (issue 11, item 4):

- **Who names the lane.** The face: :class:`Lanes` maps an item to a key and a key to its
  gates. The HTTP face keys by scheme + host + port (``paceline.http.server_key``); a face
  over plain callables gives no :class:`Lanes` and the batch runs as one lane, exactly as
  before (same code path, same read-ahead of 2x the concurrency).
- **How a lane waits.** At most one worker waits at a lane's gates at a time; the others take
  items of lanes whose gates are free, or read more input. So a lane that is paused, throttling
  or at its concurrency limit holds one worker and its own queue, nothing else. Lanes take
  turns in the order they became ready (first come, first served across servers).
- **How far ahead.** Items of a blocked lane queue up while the others' run, inside a bounded
  read-ahead: at most ``read_ahead`` items read and not yet handed out (stream) or settled
  (collect), parked retries included. With lanes the default is :data:`DEFAULT_LANE_READ_AHEAD`
  (or 2x the concurrency when that is more). When it is full, input is read again only as
  results go out: a server that stays blocked for longer than the others need to fill the
  read-ahead slows the batch to its pace again (bounded memory wins over throughput there).
- **What a lane costs.** A queued item costs its job and its queue slot (~0.2 KB) besides the
  item itself (an HTTP request: its URL, ~0.1-0.3 KB): 4,096 queued requests are ~2 MB. Its
  result, once settled, is held until handed out, as without lanes: with ordered output behind
  a paused server's item, up to ``read_ahead`` results wait (4,096 answers of 4 KiB: 16 MB; the
  HTTP face's body cap of 4 MiB bounds the worst case). A lane itself (controller, limits,
  queue) is a few KB and lives as long as the batch: an input spread over 100,000 hosts holds
  100,000 lanes.
- **Token leases.** A lane's limiter is asked for one token at a time: the lease fast path of a
  single :class:`~paceline.RateLimiter` is used only without lanes.
- **Threads.** The thread runner keeps one lane (its faces run callables, not HTTP).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from paceline.policy.adaptive import AdaptiveController
from paceline.policy.pause import ServerPause
from paceline.runners.adaptive_gate import AdaptiveGate
from paceline.runners.gates import CostReserver

K = TypeVar("K")

DEFAULT_LANE_READ_AHEAD = 4096
"""Items read ahead of what is handed out when a batch has lanes (2x the concurrency when that
is more). Sized to let a server run at its pace while another is paused: at 50/s, 4,096 items
are ~80 s of one server's work while the other's items queue (issue 11: a 5 s pause at every
throttle). Memory: see the module's docstring (~2 MB of queued requests, plus the results held
for ordered output)."""


@dataclass(frozen=True, slots=True)
class LaneGates:
    """One lane's gates: a limiter (anything with ``acquire_async(weight)``/``acquire``) and
    an adaptive controller (``None``: a fixed concurrency, the runner keeps the lane's own
    ``Retry-After`` pause)."""

    limiter: object | None = None
    controller: AdaptiveController | None = None


class Lanes(Protocol):
    """How a face splits its items into lanes: ``key_of(item)`` names the item's lane (it must
    not raise: an item it cannot place goes to a lane of its own choosing), ``open(key)``
    builds that lane's gates the first time the key is seen (once per key per batch).

    >>> class ByFirstLetter:
    ...     def key_of(self, item: str) -> str:
    ...         return item[:1]
    ...     def open(self, key: str) -> LaneGates:
    ...         return LaneGates()
    >>> ByFirstLetter().key_of("apple")
    'a'
    """

    def key_of(self, item: Any) -> Hashable: ...

    def open(self, key: Hashable) -> LaneGates: ...


class Lane(Generic[K]):
    """The runner's side of one lane: its gates and the queue of its ready jobs."""

    __slots__ = (
        "acquire",
        "adaptive",
        "busy",
        "closed",
        "key",
        "listed",
        "pause",
        "queue",
        "reserver",
        "try_now",
    )

    def __init__(
        self,
        key: Hashable,
        adaptive: AdaptiveGate | None,
        pause: ServerPause | None,
        try_now: Callable[[int], Any] | None,
        acquire: Callable[[int], Any] | None,
        reserver: CostReserver | None = None,
    ) -> None:
        self.key = key
        self.reserver = reserver  # the limiter to reserve per-item costs from, with costs
        self.adaptive = adaptive
        self.pause = pause
        self.try_now = try_now
        self.acquire = acquire
        self.queue: deque[K] = deque()  # jobs ready to start (retries that fell due first)
        self.busy = False  # a worker is at this lane's gates
        self.listed = False  # in the runner's list of lanes a worker may take a job from
        # The answer that said this server's quota is exhausted: nothing more is sent to it,
        # its jobs fail unsent (docs/design.md, 'Answers told apart').
        self.closed: BaseException | None = None

    def __repr__(self) -> str:
        return f"Lane({self.key!r}, queued={len(self.queue)}, busy={self.busy})"
