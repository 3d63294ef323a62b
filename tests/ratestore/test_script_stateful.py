"""The script as a state machine, against its one promise: whatever several clients book, give
back, settle, replay or pause, no window of W ever holds more than N starts of the grants they
still hold, wherever in ``[slot, slot + its client's margin]`` each one starts.

Real ``redis-server``, injected clock (the script's ``now``) at one tick per "second" of the
script's tick scale, so a key's expiry (``PEXPIRE``, in real milliseconds) is seconds of ticks
away in real time and is played on the injected clock instead: a key whose expiry the clock
passed is deleted, as Redis would have (docs/design.md, 'Shared limit store').

The clients follow the client half's protocol (redis_store.py, _limiter.py): a late booking is
given back once, in the ``r`` that books its replacement; a call whose reply was lost is
retried without its give-back; a grant is settled (or returned) once. ``PACELINE_STATEFUL_
EXAMPLES`` runs it longer (the CI default is a few seconds).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from paceline._ratestore import RedisLimitStore
from paceline._ratestore.redis_store import SharedQuotaExhausted, key_prefix
from paceline.policy.limits import Limit
from paceline.policy.rate import Rate
from paceline.testing.redis import RedisServer

W = 100  # the window, in ticks
TPS = 1  # ticks per second: a key's TTL (real ms) is then ~1,000x the ticks it covers


@dataclass
class Client:
    """One process on the key: its measured margin, its prune window and coalescing."""

    margin: int
    prune: int  # at least W (the script's contract)
    coalesce: int
    fence: int  # 1: the fence is on (INFO server, run_id), 0: off

    def limit_args(self, n: int) -> list[int]:
        return [1, n, W, self.margin, self.prune, self.coalesce, 0, 0]


@dataclass
class Grant:
    client: int
    slot: int
    latest: int  # slot + the margin it was booked with
    reserved: int
    ids: list[int]
    weight: int  # what its start counts: reserved, or less once settled down
    held: bool = True  # False: given back (it never starts)
    settled: bool = False


@dataclass
class Run:
    n: int
    key: str
    store: RedisLimitStore
    raw: Any
    keys: list[str]
    clients: list[Client] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    deadlines: dict[str, int] = field(default_factory=dict)  # key -> tick it expires at
    calls: int = 0


class ScriptMachine(RuleBasedStateMachine):
    server: RedisServer  # set by the test

    def __init__(self) -> None:
        super().__init__()
        # today's microseconds (16 digits, as TIME reads them; Lua prints 14)
        self.now = 1_733_362_512_345_041
        self.run: Run | None = None

    # -- the set-up: N, and 2-3 clients with their own margins and settings -----------------

    @initialize(
        n=st.sampled_from([1, 2, 3, 5, 8]),
        clients=st.lists(
            st.builds(
                Client,
                margin=st.sampled_from([0, 1, 4, 13, 30]),
                prune=st.sampled_from([W, W + 7, W + 60]),
                coalesce=st.sampled_from([0, 0, 3, 25]),
                fence=st.sampled_from([0, 0, 1]),
            ),
            min_size=2,
            max_size=4,
        ),
    )
    def setup(self, n: int, clients: list[Client]) -> None:
        key = uuid.uuid4().hex
        store = RedisLimitStore(self.server.url, key, [Limit(Rate(n, 1))])
        prefix = key_prefix(key)
        self.run = Run(
            n,
            key,
            store,
            redis.Redis.from_url(self.server.url),
            [f"{prefix}:meta", f"{prefix}:z0", f"{prefix}:c0"],
            clients,
        )

    @property
    def r(self) -> Run:
        assert self.run is not None
        return self.run

    def script(self, client: int, op: str, *tail: Any) -> list[int]:
        c = self.r.clients[client]
        args = [op, self.now, TPS, c.fence, *c.limit_args(self.r.n), *tail]
        try:
            reply = self.r.store.run_raw(args)
        except SharedQuotaExhausted:
            reply = [-1, self.now]
        self.r.calls += 1
        pipe = self.r.raw.pipeline(transaction=False)
        for key in self.r.keys:
            pipe.pttl(key)
        for key, ttl_ms in zip(self.r.keys, pipe.execute(), strict=True):
            # the key's expiry, on the injected clock
            if ttl_ms >= 0:
                self.r.deadlines[key] = self.now + -(-ttl_ms // (1000 // TPS))
            else:
                self.r.deadlines.pop(key, None)
        return reply

    def book(self, client: int, amount: int, op: str, release: Grant | None) -> Grant | None:
        tail: list[int] = [amount]
        if release is not None:
            tail += [release.ids[0], release.reserved]
        reply = self.script(client, op, *tail)
        if release is not None:
            release.held = False  # given back, in this call, once
        if reply[0] == -1 or (op == "t" and reply[0] > 0):
            return None  # an exhausted mark, or a try that cannot go now: nothing booked
        slot = reply[1] + reply[0]
        grant = Grant(
            client, slot, slot + self.r.clients[client].margin, amount, reply[2:3], amount
        )
        return grant

    def held_of(self, client: int) -> list[Grant]:
        return [g for g in self.r.grants if g.client == client and g.held and not g.settled]

    # -- the rules ---------------------------------------------------------------------------

    @precondition(lambda self: self.run is not None)
    @rule(data=st.data(), op=st.sampled_from(["r", "r", "r", "t"]))
    def reserve(self, data: st.DataObject, op: str) -> None:
        client = data.draw(st.integers(0, len(self.r.clients) - 1), label="client")
        amount = data.draw(st.integers(1, self.r.n), label="amount")
        release = None
        mine = self.held_of(client)
        if op == "r" and mine and data.draw(st.booleans(), label="give back a late one"):
            release = data.draw(st.sampled_from(mine), label="late")
        grant = self.book(client, amount, op, release)
        if grant is not None:
            self.r.grants.append(grant)

    @precondition(lambda self: self.run is not None)
    @rule(data=st.data())
    def reply_lost(self, data: st.DataObject) -> None:
        """A booking (maybe with a late one to give back) ran but its reply was lost: the
        client retries without the give-back (RedisLimitStore.call's retry_args). The lost
        booking stays charged and never starts."""
        client = data.draw(st.integers(0, len(self.r.clients) - 1), label="client")
        amount = data.draw(st.integers(1, self.r.n), label="amount")
        mine = self.held_of(client)
        release = None
        if mine and data.draw(st.booleans(), label="with a give-back"):
            release = data.draw(st.sampled_from(mine), label="late")
        self.book(client, amount, "r", release)  # its reply is lost: not a grant
        grant = self.book(client, amount, "r", None)  # the retry
        if grant is not None:
            self.r.grants.append(grant)

    @precondition(lambda self: self.run is not None and any(g.held for g in self.r.grants))
    @rule(data=st.data(), how=st.sampled_from(["cancel", "less", "more", "same"]))
    def settle(self, data: st.DataObject, how: str) -> None:
        """Settle a grant once: returned (cancelled, never started), used less, or more."""
        open_ = [g for g in self.r.grants if g.held and not g.settled]
        if not open_:
            return
        grant = data.draw(st.sampled_from(open_), label="grant")
        if how == "cancel":
            actual = 0
        elif how == "less":
            actual = data.draw(st.integers(0, grant.reserved - 1), label="actual")
        elif how == "more":
            actual = grant.reserved + data.draw(st.integers(1, 2 * self.r.n), label="overrun")
        else:
            actual = grant.reserved
        self.script(grant.client, "s", grant.ids[0], grant.reserved, actual)
        grant.settled = True
        if actual == 0:
            grant.held = False
        else:
            # its start counts what it kept; an overrun is charged at a later slot, which
            # delays later grants (never a start of its own)
            grant.weight = min(actual, grant.reserved)

    @precondition(lambda self: self.run is not None)
    @rule(step=st.one_of(st.integers(1, 12), st.integers(W // 2, 4 * W)))
    def advance(self, step: int) -> None:
        """Time passes (small and large steps: pruning, keys expiring)."""
        self.now += step
        for key, deadline in list(self.r.deadlines.items()):
            if self.now >= deadline:
                self.r.raw.delete(key)
                del self.r.deadlines[key]

    @precondition(lambda self: self.run is not None)
    @rule(client=st.integers(0, 3), margin=st.sampled_from([0, 1, 2, 4, 13, 30]))
    def remeasure(self, client: int, margin: int) -> None:
        """A client's margin follows its lateness: later bookings use another one."""
        self.r.clients[client % len(self.r.clients)].margin = margin

    @precondition(lambda self: self.run is not None)
    @rule(client=st.integers(0, 3), length=st.integers(1, 2 * W))
    def pause(self, client: int, length: int) -> None:
        self.script(client % len(self.r.clients), "p", length)

    @precondition(lambda self: self.run is not None)
    @rule(client=st.integers(0, 3), length=st.integers(1, W))
    def exhausted(self, client: int, length: int) -> None:
        self.script(client % len(self.r.clients), "x", length, "told so")

    @precondition(lambda self: self.run is not None)
    @rule()
    def failover(self) -> None:
        """Another run_id on the server (a failover): a fenced client fences one window."""
        if self.r.raw.exists(self.r.keys[0]):
            self.r.raw.hset(self.r.keys[0], "run", "another-run-id")

    # -- the promise -------------------------------------------------------------------------

    @invariant()
    def at_most_n_starts_in_any_window(self) -> None:
        if self.run is None:
            return
        held = [g for g in self.r.grants if g.held]
        # The worst case: a window opening at some grant's latest start holds every grant
        # whose latest start is at or after it and whose slot is before its end.
        for first in held:
            inside = [g for g in held if g.latest >= first.latest and g.slot < first.latest + W]
            total = sum(g.weight for g in inside)
            assert total <= self.r.n, (
                f"{total} > {self.r.n} in [{first.latest}, {first.latest + W})",
                [(g.client, g.slot, g.latest, g.weight, g.ids) for g in inside],
            )

    def teardown(self) -> None:
        if self.run is not None:
            self.r.raw.delete(*self.r.keys)
            self.r.raw.close()
            self.r.store.close()


def test_no_window_holds_more_than_n_starts_whatever_the_clients_do(
    redis_server: RedisServer,
) -> None:
    ScriptMachine.server = redis_server
    examples = int(os.environ.get("PACELINE_STATEFUL_EXAMPLES", "25"))
    steps = int(os.environ.get("PACELINE_STATEFUL_STEPS", "50"))
    run_state_machine_as_test(
        ScriptMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
