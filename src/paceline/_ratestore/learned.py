"""Limits learned by one process, shared with every process on a store's key.

A server's ``RateLimit-Policy`` (or ``X-RateLimit-Limit`` with a window) is the quota of the API
key, not of the process that read it. Published here, it becomes a limit of the *key*: the
script (:mod:`paceline._ratestore.script`, op ``"l"``) keeps it in the key's meta hash and every
later booking of any process on the key also keeps N per W, counted on the same log as the
user's requests limit. So k processes keep N per W together, not k x N, and a process that
joins later is held to it from its first grant, before it has read a header itself.

docs/design.md, 'Learned limits shared', says why it is a limit in the script rather than a
rate each process adopts.

>>> from paceline.policy.limits import Limit
>>> from paceline.policy.rate import Rate
>>> requests_limit_index([Limit(Rate.parse("tokens:9000/min")), Limit(Rate.parse("100/s"))])
1
>>> requests_limit_index([Limit(Rate.parse("tokens:9000/min"))]) is None
True
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Sequence
from typing import Any

from paceline._ratestore.redis_store import TICKS_PER_S, RedisLimitStore
from paceline.errors import InvalidArgument
from paceline.policy.limits import Limit
from paceline.policy.rate import REQUESTS


def requests_limit_index(limits: Sequence[Limit]) -> int | None:
    """The index of the first limit counted in requests (its log counts a learned limit);
    ``None`` when every limit is in another unit (a learned limit is then not shared)."""
    for i, lim in enumerate(limits):
        if lim.rate.unit == REQUESTS:
            return i
    return None


class Publication(enum.Enum):
    """What became of a learned limit given to :func:`share_server_limit`.

    >>> Publication.QUEUED.value
    'queued'
    """

    # The store has it: every later booking of any process on the key keeps it.
    PUBLISHED = "published"
    # On an event loop's thread: a task of that loop sends it (the caller's ``done`` hears
    # PUBLISHED or UNREACHABLE when it has been answered or failed).
    QUEUED = "queued"
    # The limiter has no limit counted in requests: there is no log to count it on.
    NOT_SHARED = "not shared"
    # The store did not answer at once: this process keeps the limit alone (as without a
    # store) until it is published again.
    UNREACHABLE = "unreachable"


def _learned_args(store: RedisLimitStore, quota: int, window_s: float) -> list[Any] | None:
    """The script's arguments publishing ``quota`` per ``window_s`` (``None``: the limiter
    has no requests limit to count it on)."""
    if not isinstance(quota, int) or quota < 1 or not window_s > 0:
        raise InvalidArgument(
            f"learned limit {quota!r} per {window_s!r} s: give a count >= 1 and a window > 0 s"
        )
    index = requests_limit_index(store.limits)
    if index is None:
        return None
    window_ticks = -(-round(window_s * 1e9) // (1_000_000_000 // TICKS_PER_S))  # rounded up
    return [
        "l",
        "",
        TICKS_PER_S,
        0,
        *store._limit_args(store._margin_ns),
        quota,
        window_ticks,
        index + 1,
    ]


def share_server_limit(
    store: RedisLimitStore,
    quota: int,
    window_s: float,
    done: Callable[[Publication], object] | None = None,
) -> Publication:
    """Publish a server's announced ``quota`` requests per ``window_s`` under ``store``'s key:
    from the next booking on, every process on the key keeps it, together. Never waits for an
    unreachable store: each process still keeps the limit alone, as without a store.

    Returns :attr:`Publication.PUBLISHED` once the store has it, ``UNREACHABLE`` when it did
    not answer at once (publish it again later), ``NOT_SHARED`` when the limiter has no
    requests limit. On an event loop's thread the round trip would hold every task of the
    loop, so it is sent by a task of that loop and ``QUEUED`` is returned at once; ``done``
    (if given) is then called with ``PUBLISHED`` or ``UNREACHABLE`` when the task knows
    (never, if the loop closes first). ``done`` hears every other outcome at once too.
    Awaiting callers use :func:`share_server_limit_async`, which never returns ``QUEUED``.

    The newest announcement wins (a server that changes its policy is believed).

    >>> from paceline.policy.rate import Rate
    >>> store = RedisLimitStore("redis://127.0.0.1:1/0", "api",
    ...                         [Limit(Rate.parse("tokens:9000/min"))])
    >>> share_server_limit(store, 40, 2.0)   # no requests limit: no round trip either
    <Publication.NOT_SHARED: 'not shared'>
    """
    args = _learned_args(store, quota, window_s)
    outcome = Publication.NOT_SHARED
    if args is not None:
        told = None if done is None else (lambda answered: done(_answered(answered)))
        if store._off_the_loop(args, told):  # on an event loop's thread: sent by a task
            return Publication.QUEUED
        outcome = Publication.UNREACHABLE
        with contextlib.suppress(*store._transient()):
            store.call(args, retry=False)
            outcome = Publication.PUBLISHED
    if done is not None:
        done(outcome)
    return outcome


async def share_server_limit_async(
    store: RedisLimitStore, quota: int, window_s: float
) -> Publication:
    """:func:`share_server_limit` awaited on the running event loop: ``PUBLISHED``,
    ``UNREACHABLE`` or ``NOT_SHARED``, never ``QUEUED``."""
    args = _learned_args(store, quota, window_s)
    if args is None:
        return Publication.NOT_SHARED
    with contextlib.suppress(*store._transient()):
        await store.call_async(args, retry=False)
        return Publication.PUBLISHED
    return Publication.UNREACHABLE


def _answered(answered: bool) -> Publication:
    return Publication.PUBLISHED if answered else Publication.UNREACHABLE


def shared_server_limit(store: RedisLimitStore) -> tuple[int, float] | None:
    """The limit a server announced to some process on ``store``'s key, as ``(quota,
    window_s)``, or ``None`` (none learned, or the key's state has expired)."""
    client = store._sync_script().registered_client
    quota, window = client.hmget(store._keys[0], "ln", "lw")
    if quota is None or window is None:
        return None
    return int(quota), int(window) / TICKS_PER_S


# The adaptive rate's exchange: one small script, at most once a second per process and server
# (and at once after a local cut), never per grant. Fields of the key's meta hash, per server:
# ``ar:<server>`` the aggregate rate (requests/s, all processes together), ``av:<server>`` its
# version, bumped by each cut. A cut applies only if the caller had seen the newest version (a
# process that cut for a congestion event another already answered adopts that answer instead);
# growth applies only upward. A process proposes its own rate; the script multiplies it by k,
# the processes it sees now (the heartbeat puts the caller in the live set: k counts it).
_EXCHANGE_LUA = r"""
local meta, live = KEYS[1], KEYS[2]
local field, kind, seen, mine = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', live, now, ARGV[5])
if redis.call('PTTL', live) < 0 then redis.call('PEXPIRE', live, ARGV[6]) end
local k = redis.call('ZCOUNT', live, now - tonumber(ARGV[7]), '+inf')
local proposed = mine * k
local r = tonumber(redis.call('HGET', meta, 'ar:' .. field) or '0')
local v = tonumber(redis.call('HGET', meta, 'av:' .. field) or '0')
if seen == v and ((kind == 'cut' and proposed > 0) or (kind == 'grow' and proposed > r)) then
  if kind == 'cut' then v = v + 1 end
  r = proposed
  redis.call('HSET', meta, 'ar:' .. field, tostring(r), 'av:' .. field, v)
  if redis.call('PTTL', meta) < 0 then redis.call('PEXPIRE', meta, ARGV[6]) end
end
return {tostring(r), v, k}
"""
# How often a process exchanges its rate when nothing was cut: the brief's bound (no round trip
# per grant; a second is 1 of 50-200 grants at the rates this is for). A cut goes at once.
SHARE_EVERY_S = 1.0
# The live set's horizon for k and the keys' expiry if this script made them: 10 s, as the
# booking script's heartbeat (a process that just finished still counts for that long: its
# share is given to the others only after it, which errs on the strict side).
_LIVE_HORIZON_S = 10.0
# Rates within this fraction are the same rate (no adoption: a pacer is not restarted for noise).
_SAME_RATE = 0.01
# The bounds of one proposal against this process's share. A controller that just joined cuts
# from the rate it saw accepted in its first second (a few requests: far below its share), and
# slow-starts (doubling every 0.5 s) where the others have learned the quota: times k, either
# moved everyone's rate (a hand run: a joiner cut the key to 3.9/s a process, then doubled it to
# 58/s). A cut goes at most to half the share (a doubling's overshoot in one cut); growth at
# most +10 % an exchange (the controller's own growth with a pacer but no ceiling).
_DEEPEST_CUT = 0.5
_MOST_GROWTH = 0.1


class AdaptiveShare:
    """One adaptive controller's rate shared on a store's key, for one server: every process
    runs at ``R / k`` where R is the aggregate rate the processes found together and k the
    processes the store saw lately. A local change of the rate is proposed as ``rate x k``:
    a cut (it needs the newest version: a congestion event is cut for once, by the first
    process that reports it), or growth (only upward). Sans-I/O but for :meth:`exchange`,
    which the caller runs off its event loop.

    >>> share = AdaptiveShare.__new__(AdaptiveShare)
    >>> share._init(None, "http://api:80")
    >>> share.proposal(None), share.proposal(20.0)   # nothing learned yet; then a first rate
    (('read', 0.0), ('grow', 20.0))
    """

    def __init__(self, store: RedisLimitStore, server: str) -> None:
        self._init(store, server)

    def _init(self, store: RedisLimitStore | None, server: str) -> None:
        self.store = store
        self.server = server
        self.version = 0
        self.k = 1
        self.shared_rate_per_s: float | None = None  # R, all processes together
        self._mine: float | None = None  # this process's rate at the last exchange
        self._next_ns = 0

    def proposal(self, rate_per_s: float | None) -> tuple[str, float]:
        """What to tell the store for a controller at ``rate_per_s``: ``("cut", rate)``,
        ``("grow", rate)`` or ``("read", 0)`` (the store makes ``rate x k`` of it)."""
        mine = self._mine
        if rate_per_s is None:
            return "read", 0.0
        if mine is not None and rate_per_s < mine * (1 - _SAME_RATE):
            return "cut", max(rate_per_s, mine * _DEEPEST_CUT)
        if mine is None:
            return "grow", rate_per_s
        if rate_per_s > mine * (1 + _SAME_RATE):
            return "grow", min(rate_per_s, mine * (1 + _MOST_GROWTH))
        return "read", 0.0

    def due(self, now_ns: int, rate_per_s: float | None) -> bool:
        """Whether to exchange now: a second since the last, or a local cut since."""
        return now_ns >= self._next_ns or self.proposal(rate_per_s)[0] == "cut"

    def exchange(self, kind: str, proposed: float) -> tuple[float, int, int]:
        """One round trip: propose, and read back ``(R, version, k)``. Blocking: call it from
        a thread. Raises the store's transient errors (the caller tries again later)."""
        store = self.store
        assert store is not None
        client = store._sync_script().registered_client
        script = client.register_script(_EXCHANGE_LUA)
        horizon_us = round(_LIVE_HORIZON_S * TICKS_PER_S)
        reply = script(
            keys=[store._keys[0], store._keys[-1]],
            args=[
                self.server,
                kind,
                self.version,
                repr(proposed),
                store._me,
                round(_LIVE_HORIZON_S * 1000),
                horizon_us,
            ],
        )
        return float(reply[0]), int(reply[1]), max(1, int(reply[2]))

    def leave(self) -> None:
        """This process is done: it no longer counts in k (the others take its share at their
        next exchange instead of 10 s later). Never waits for an unreachable store."""
        store = self.store
        assert store is not None
        with contextlib.suppress(*store._transient()):
            store._sync_script().registered_client.zrem(store._keys[-1], store._me)

    def apply(
        self, now_ns: int, rate_per_s: float | None, reply: tuple[float, int, int]
    ) -> float | None:
        """Take the store's answer; return the rate this process should adopt (its share),
        or ``None`` to keep its own."""
        shared, version, k = reply
        self.version, self.k = version, k
        self._next_ns = now_ns + round(SHARE_EVERY_S * 1e9)
        if shared <= 0:
            self._mine = rate_per_s
            return None
        self.shared_rate_per_s = shared
        share = shared / k
        self._mine = share
        if rate_per_s is not None and abs(share - rate_per_s) <= _SAME_RATE * rate_per_s:
            return None
        return share
