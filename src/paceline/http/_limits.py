"""Limits the server announces in its headers, applied before each request."""

from __future__ import annotations

import asyncio
from collections import deque
from contextvars import ContextVar
from itertools import takewhile

from paceline._clock import SYSTEM_CLOCK, Clock
from paceline._limiter import Grant, RateLimiter
from paceline._ratestore.learned import Publication
from paceline.errors import InvalidArgument, InvalidArgumentType
from paceline.policy.adaptive import AdaptiveController
from paceline.policy.arrival import ArrivalLimit
from paceline.policy.cost import Cost, as_cost
from paceline.policy.rate import NS_PER_S, REQUESTS, unit_name
from paceline.policy.retry import RetryPolicy
from paceline.policy.server_bucket import ServerBucket
from paceline.signals import ServerSignals

# The weight of the request this task is sending: acquire sets it, the answer reads it back.
_WEIGHT: ContextVar[int] = ContextVar("paceline_http_weight", default=1)
# The units (other than requests) the request this task is sending reserved: the answer
# takes them out of what is in flight.
_UNITS: ContextVar[_ServerGrant | None] = ContextVar("paceline_http_units", default=None)

# A learned policy the shared store did not take (unreachable) is sent again with a later
# answer, at most once a second: an outage costs one failed round trip a second, not one per
# answer, and a store that is back holds it within a second of its next answer.
_SHARE_AGAIN_NS = NS_PER_S
# Answers remembered for a policy that may be announced later (its window is not known yet).
_ANSWERS_KEPT = 100_000

# The longest the server's word may hold every request: the retry policy's bound on one
# Retry-After (300 s by default), so that "remaining=0, reset in 28 years" (a broken or hostile
# server, or an epoch read as a delta) holds the batch no longer than one far Retry-After would.
DEFAULT_MAX_HOLD_S = RetryPolicy().max_retry_after_s


def _seconds(value: float) -> str:
    """``42``, ``0.25``, ``900000000``: whole seconds without a decimal point or exponent."""
    return str(int(value)) if value == int(value) else f"{value:.3f}".rstrip("0")


class ServerLimits:
    """A limiter that learns from responses: once a ``RateLimit-Policy`` (or an
    ``X-RateLimit-Limit`` with a window) arrives, the server's own count of arrivals never
    exceeds that quota in any window again — counting the requests already sent — and, while
    no policy is known, "``remaining`` r, reset in t" means no more than r requests (less those
    still in flight) before t: then every request is held until the reset.

    The limit needs no guess of when the server counts a request: each one holds its place from
    its grant until W after its answer (see :class:`~paceline.policy.arrival.ArrivalLimit`).
    Used as the ``rate_limiter`` of an HTTP batch, which calls :meth:`answered` when each
    request ends; ``user`` is a limiter of the caller's own, applied first. An adaptive
    ``controller`` is told when the quota is announced: its own rate gate then stands down.

    ``max_hold_s`` bounds what the server's word may impose on everyone (default: the retry
    policy's ``max_retry_after_s``, 300 s): a spent budget whose reset is further away than that
    is not a hold — requests go on and the server's own 429s (each bounded by the retry policy)
    pace them — and a policy whose window is longer is not learned. Holding instead would stop
    every item for as long as a broken header says (decades); failing the item that carried the
    header would lose an answer the server gave. What was not obeyed is in :attr:`ignored`.
    :attr:`hold_until_ns` and :meth:`hold_reason` say whether requests are held now, and why,
    for a progress line.

    >>> import asyncio
    >>> from paceline.signals import ServerSignals
    >>> limits = ServerLimits()
    >>> limits.observe(ServerSignals(quota=10, window_s=1.0))
    >>> limits.policy
    (10, 1.0)
    >>> _ = asyncio.run(limits.acquire_async()); limits.in_flight
    1
    """

    def __init__(
        self,
        user: RateLimiter | None = None,
        *,
        controller: AdaptiveController | None = None,
        clock: Clock | None = None,
        max_hold_s: float = DEFAULT_MAX_HOLD_S,
    ) -> None:
        if not isinstance(max_hold_s, (int, float)) or not 0 <= max_hold_s < float("inf"):
            raise InvalidArgument(f"max_hold_s={max_hold_s!r}: a finite number of seconds >= 0")
        self.user = user
        self.max_hold_s = float(max_hold_s)
        self._max_hold_ns = round(max_hold_s * NS_PER_S)
        self.ignored = ""  # the last server signal not obeyed because it was beyond max_hold_s
        self._said = ""  # what the server said that set the current budget
        self.controller = controller
        self.learned: ArrivalLimit | None = None
        self.policy: tuple[int, float] | None = None
        # The policy the user's shared store confirmed it holds for every process on its key
        # (None: not yet), and when it was last sent (a failed try is repeated on a later
        # answer, at most once per _SHARE_AGAIN_NS).
        self.shared_policy: tuple[int, float] | None = None
        self._shared_try_ns: int | None = None
        self.budget = 0  # requests the server still takes before ``budget_until_ns`` (no policy)
        self.budget_until_ns = 0
        self.in_flight = 0  # granted and not yet answered
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._now = self._clock.monotonic_ns
        self._answers: deque[int] = deque(maxlen=_ANSWERS_KEPT)
        self._gate: asyncio.Lock | None = None  # waiters for room queue here, first come first
        self._wake: asyncio.Future[None] | None = None  # the waiter that needs an answer
        # Units other than requests, learned from token headers (used when requests carry costs).
        self._buckets: dict[str, ServerBucket] = {}
        self._units_in_flight: dict[str, int] = {}
        self._units_gate: asyncio.Lock | None = None
        self._units_wake: asyncio.Future[None] | None = None

    async def acquire_async(self, weight: int = 1) -> int:
        """Wait until ``weight`` more requests may be sent; return the grant's time (ns)."""
        if self.user is not None:
            await self.user.acquire_async(weight)
        return await self._server_admits(weight)

    async def reserve_async(self, cost: int | Cost) -> _ServerGrant:
        """Reserve ``cost`` from the caller's limiter (tokens and all), then wait until the
        server's own limits admit it: its request limits (as :meth:`acquire_async`) and, for
        each other unit the cost names, what that unit's headers said is left (OpenAI's
        ``x-ratelimit-*-tokens``, Anthropic's ``anthropic-ratelimit-*-tokens-*``; see
        :class:`~paceline.policy.server_bucket.ServerBucket`). Return a grant to settle with
        the actual cost; cancelling the wait gives the reservation back."""
        estimate = as_cost(cost)
        units = {unit: amount for unit, amount in estimate.items() if unit != REQUESTS and amount}
        if not units and estimate.get(REQUESTS) == 1:
            # One plain request (a JSON Lines row without a cost): exactly the acquire path,
            # nothing to settle.
            await self.acquire_async(1)
            return _ServerGrant(self, None, units, estimate)
        grant = await self.user.reserve_async(cost) if self.user is not None else None
        taken = False
        try:
            if units:
                await self._units_admit(units)
                taken = True
            await self._server_admits(1)
        except BaseException:
            if taken:
                self._untake(units)
            if grant is not None:
                grant.give_back()
            raise
        held = _ServerGrant(self, grant, units, estimate)
        for unit, amount in units.items():
            self._units_in_flight[unit] = self._units_in_flight.get(unit, 0) + amount
        _UNITS.set(held)
        return held

    async def _units_admit(self, units: dict[str, int]) -> None:
        """Wait, first come first served, until every learned unit's bucket covers ``units``;
        then take them."""
        if self._units_gate is None:
            self._units_gate = asyncio.Lock()
        async with self._units_gate:
            while True:
                now = self._now()
                wait_ns = max(
                    (
                        self._buckets[u].wait_ns(now, a)
                        for u, a in units.items()
                        if u in self._buckets
                    ),
                    default=0,
                )
                if wait_ns > self._max_hold_ns:  # a broken header (limit=1): not obeyed
                    self.ignored = (
                        f"server's token headers would hold a request {wait_ns / NS_PER_S:.0f} s"
                        f", beyond max hold {_seconds(self.max_hold_s)} s: not held"
                    )
                    wait_ns = 0
                if wait_ns == 0:
                    for unit, amount in units.items():
                        if unit in self._buckets:
                            self._buckets[unit].take(now, amount)
                    return
                # An answer may bring more room than the refill alone: it wakes the wait.
                self._units_wake = asyncio.get_running_loop().create_future()
                sleep = asyncio.ensure_future(self._clock.sleep_async(wait_ns / NS_PER_S))
                try:
                    await asyncio.wait(
                        {sleep, self._units_wake}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    sleep.cancel()
                    self._units_wake = None

    def _untake(self, units: dict[str, int]) -> None:
        now = self._now()
        for unit, amount in units.items():
            if unit in self._buckets:
                self._buckets[unit].give_back(now, amount)

    def _release(self, held: _ServerGrant) -> None:
        """``held``'s request has ended (or never started): its units are no longer in flight."""
        for unit, amount in held.units.items():
            self._units_in_flight[unit] = self._units_in_flight.get(unit, 0) - amount

    @property
    def unit_limits(self) -> dict[str, int]:
        """What the server's headers said each unit other than requests allows per minute."""
        return {unit: bucket.limit for unit, bucket in self._buckets.items()}

    def reserve(self, cost: int | Cost) -> Grant:  # pragma: no cover - async face only
        raise InvalidArgumentType("ServerLimits is for the async HTTP face; use reserve_async")

    async def _server_admits(self, weight: int) -> int:
        now = self._now()
        if self.budget_until_ns:
            now = await self._spend_budget(now, weight)
        learned = self.learned
        if learned is not None and (
            (self._gate is not None and self._gate.locked())
            or learned.wait_ns(now, weight, self.in_flight) != 0
        ):
            now = await self._wait_for_room(weight)
        self.in_flight += weight
        if weight != 1 or _WEIGHT.get() != 1:
            _WEIGHT.set(weight)
        return now

    async def _spend_budget(self, now: int, weight: int) -> int:
        """Take ``weight`` from what the server said remains, or wait for its reset."""
        while self.budget_until_ns:
            if now >= self.budget_until_ns:
                self.budget_until_ns = 0  # a new window: no known budget until told again
            elif self.budget >= weight:
                self.budget -= weight
            elif self.budget_until_ns - now > self._max_hold_ns:
                self.ignored = f"{self._said}: not held, the reset is beyond max hold " + (
                    f"{_seconds(self.max_hold_s)} s"
                )
                self.budget_until_ns = 0
            else:
                await self._clock.sleep_async((self.budget_until_ns - now) / NS_PER_S)
                now = self._now()
                continue
            break
        return now

    async def _wait_for_room(self, weight: int) -> int:
        if self._gate is None:
            self._gate = asyncio.Lock()
        async with self._gate:
            while True:
                now = self._now()
                learned = self.learned
                if learned is None:
                    return now
                wait = learned.wait_ns(now, weight, self.in_flight)
                if wait == 0:
                    return now
                if wait is None:
                    self._wake = asyncio.get_running_loop().create_future()
                    try:
                        await self._wake
                    finally:
                        self._wake = None
                else:
                    await self._clock.sleep_async(wait / NS_PER_S)

    @property
    def hold_until_ns(self) -> int:
        """Until when (monotonic ns) the server's "remaining 0" holds every request; 0: no hold.

        >>> from paceline.signals import ServerSignals
        >>> limits = ServerLimits()
        >>> limits.hold_until_ns
        0
        >>> limits.observe(ServerSignals(remaining=0, reset_s=30.0, source="x-ratelimit"))
        >>> limits.hold_until_ns > 0, limits.hold_reason()
        (True, 'server said remaining=0, reset in 30 s (x-ratelimit)')
        """
        until = self.budget_until_ns
        if not until or self.budget > 0 or until <= self._now():
            return 0
        return until

    def hold_reason(self) -> str:
        """Why requests are held now (what the server said), or ``""`` when they are not."""
        return self._said if self.hold_until_ns else ""

    def acquire(self, weight: int = 1) -> int:  # pragma: no cover - the async face uses the above
        raise InvalidArgumentType("ServerLimits is for the async HTTP face; use acquire_async")

    def answered(self) -> None:
        """The request this task sent has ended: answered, failed or cancelled."""
        weight = _WEIGHT.get()
        self.in_flight -= weight
        held = _UNITS.get()
        if held is not None:
            _UNITS.set(None)
            held.release()
        now = self._now()
        answers = self._answers
        answers.append(now)
        if weight != 1:
            answers.extend([now] * (weight - 1))
        if self.learned is not None:
            self.learned.answered(now, weight)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def observe(self, signals: ServerSignals) -> None:
        """Learn from one response's signals."""
        if signals.service_limits:
            self._learn_units(signals)
        if signals.quota is not None and signals.quota >= 1 and signals.window_s:
            if signals.window_s > self.max_hold_s:
                window = _seconds(signals.window_s)
                self.ignored = (
                    f"server announced {signals.quota} requests per window {window} s, "
                    f"beyond max hold {_seconds(self.max_hold_s)} s: not applied"
                )
                return
            policy = (signals.quota, float(signals.window_s))
            if policy != self.policy:
                self.policy = policy
                self._shared_try_ns = None  # a new policy is published at once
                limit = ArrivalLimit(policy[0], round(policy[1] * NS_PER_S))
                # What was sent before the policy was known counts too: the requests in flight
                # (``in_flight``) and those answered within the window.
                horizon = self._now() - limit.window_ns
                recent = list(takewhile(lambda t: t > horizon, reversed(self._answers)))
                limit.note_answered(reversed(recent))
                self.learned = limit
                self.budget_until_ns = 0  # the policy supersedes the last answer's budget
                if self.controller is not None:
                    self.controller.quota_announced(self._now())
            self._share_policy()
        # With the policy known the limit already keeps to it; "0 remaining" is then the
        # expected state at a full window, and its reset is rounded to whole seconds.
        if self.learned is None:
            self._note_budget(signals)

    def _share_policy(self) -> None:
        """Publish the learned policy on the user's shared store (the key's quota: every
        process on it keeps it together) until the store confirms it; on an event loop the
        round trip goes as a task of the loop, which reports back when it is answered."""
        store = None if self.user is None else self.user.store
        policy = self.policy
        if store is None or policy is None or self.shared_policy == policy:
            return
        now = self._now()
        if self._shared_try_ns is not None and now - self._shared_try_ns < _SHARE_AGAIN_NS:
            return
        self._shared_try_ns = now

        def done(outcome: Publication) -> None:
            if outcome is Publication.UNREACHABLE:
                return  # this process keeps it alone; tried again on a later answer
            if self.policy == policy:  # published, or nothing to publish it on
                self.shared_policy = policy
                self._shared_try_ns = None

        store.share_server_limit(policy[0], policy[1], done)

    def _learn_units(self, signals: ServerSignals) -> None:
        """Token headers: each unit's limit and remaining count teach its bucket. A unit is
        a counter family named after its unit (``tokens``, ``input-tokens``); requests are
        never learned here, nor tokens in :meth:`_note_budget`."""
        limits = {
            p.name: p.quota
            for p in signals.policies
            if p.name == p.quota_unit and p.name not in ("", REQUESTS)
        }
        if not limits:
            return
        now = self._now()
        held = _UNITS.get()
        for counter in signals.service_limits:
            limit = limits.get(counter.name)
            if limit is None:
                continue
            unit = unit_name(counter.name.replace("-", "_"))
            bucket = self._buckets.get(unit)
            if bucket is None:
                bucket = self._buckets[unit] = ServerBucket()
            # In flight: every request sent and not answered, but the one that brought this.
            in_flight = self._units_in_flight.get(unit, 0)
            if held is not None and not held.released:
                in_flight -= held.units.get(unit, 0)
            bucket.learn(now, limit=limit, remaining=counter.remaining, in_flight=in_flight)
        wake = self._units_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _note_budget(self, signals: ServerSignals) -> None:
        """No policy: "``remaining`` r until ``reset_s``" allows r more requests before then,
        less those in flight now (sent, perhaps not yet counted in r)."""
        if signals.remaining is None or not signals.reset_s or signals.reset_s <= 0:
            return
        said = (
            f"server said remaining={signals.remaining}, reset in {_seconds(signals.reset_s)} s"
            + ("" if signals.source == "none" else f" ({signals.source})")
        )
        budget = max(0, signals.remaining - self.in_flight)
        if budget == 0 and signals.reset_s > self.max_hold_s:
            self.ignored = f"{said}: not held, beyond max hold {_seconds(self.max_hold_s)} s"
            return
        self._said = said
        self.budget = budget
        self.budget_until_ns = self._now() + round(signals.reset_s * NS_PER_S)


class _ServerGrant:
    """What :meth:`ServerLimits.reserve_async` took: the caller's grant (settled as usual) and
    the units counted in flight until the request ends."""

    __slots__ = ("_cost", "_grant", "_limits", "released", "units")

    def __init__(
        self, limits: ServerLimits, grant: Grant | None, units: dict[str, int], cost: dict[str, int]
    ) -> None:
        self._limits = limits
        self._grant = grant
        self._cost = cost
        self.units = units
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limits._release(self)

    def settle(self, actual: int | Cost) -> None:
        """Settle the caller's grant (the server's headers correct the units themselves)."""
        self._cost.update(as_cost(actual, fill_requests=False))
        if self._grant is not None:
            self._grant.settle(actual)

    def give_back(self) -> None:
        """The request was never sent: everything reserved comes back."""
        if not self.released:
            self._limits._untake(self.units)
        self.release()
        if self._grant is not None:
            self._grant.give_back()

    @property
    def cost(self) -> dict[str, int]:
        """The cost per unit: the estimate, or the actual cost once settled."""
        return dict(self._cost)
