"""Several limits at once: an attempt needs every one of them (sans-I/O).

The whole check-then-grant runs under one caller-held lock, so "all must agree" is atomic: no
limit is charged unless every limit allows the grant now, and nothing has to be given back.

Each limit counts one unit (``requests`` unless its rate names another, such as ``tokens``) and a
grant has a cost per unit (:mod:`paceline.policy.cost`): each limit is charged the grant's
amount in its own unit, all of them or none. A cost known only afterwards is *reserved* (an
estimate, :meth:`LimitPolicy.try_reserve`) and *settled* when the answer is known
(:meth:`LimitPolicy.settle`); docs/units.md says why the rules are what they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from paceline.errors import AlreadySettled, InvalidArgument
from paceline.policy.cost import Cost, as_cost
from paceline.policy.gcra import Gcra
from paceline.policy.rate import REQUESTS, Rate
from paceline.policy.window import WindowLog

# A grant and the start it allows are a few microseconds apart (a thread handoff: up to a GIL
# switch). Two grants exactly W apart can then be two starts slightly *less* than W apart, and a
# window of W measured on starts holds N + 1. Each window is therefore lengthened by this much
# (W' = W + J, docs/design.md, 'Window margin'): 0.1 % of W, at most 1 ms — 0.1 % of the rate.
DEFAULT_MARGIN_FRACTION = 1000
DEFAULT_MARGIN_MAX_NS = 1_000_000


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: ``rate`` (N per W), an optional ``burst`` (``None``: the log alone) and
    ``margin_ns`` added to the window for the spread between a grant and its start (``None``:
    W/1000, at most 1 ms; 0 for the bare promise on grants)."""

    rate: Rate
    burst: int | None = None
    margin_ns: int | None = None

    @property
    def window_ns(self) -> int:
        """The window the limiter enforces: W plus the margin."""
        if self.margin_ns is None:
            margin = min(self.rate.window_ns // DEFAULT_MARGIN_FRACTION, DEFAULT_MARGIN_MAX_NS)
        else:
            margin = self.margin_ns
        return self.rate.window_ns + margin

    def __post_init__(self) -> None:
        if self.margin_ns is not None and self.margin_ns < 0:
            raise InvalidArgument(f"margin {self.margin_ns!r} ns: must not be negative")
        if self.burst is not None and (
            isinstance(self.burst, bool)
            or not isinstance(self.burst, int)
            or not 1 <= self.burst <= self.rate.max_requests
        ):
            raise InvalidArgument(
                f"burst {self.burst!r}: must be a whole number from 1 (evenly paced) to "
                f"{self.rate.max_requests} (the whole limit at once) for the limit {self.rate}"
            )


@dataclass(slots=True, eq=False)
class Reservation:
    """A grant whose cost is an estimate until it is settled (see :meth:`LimitPolicy.settle`).

    ``granted_ns`` is when it was granted; ``cost`` what it is charged per unit (the estimate,
    then the actual usage once settled); ``settled`` whether :meth:`LimitPolicy.settle` ran.
    The reserved amounts sit in each limit's window entry of the grant, which is how a settle
    finds what to give back.
    """

    granted_ns: int
    cost: dict[str, int]
    settled: bool = field(default=False)


class LimitPolicy:
    """Decide grants for a set of limits on integer nanoseconds.

    >>> p = LimitPolicy([Limit(Rate(2, 1_000_000_000), margin_ns=0)])
    >>> p.try_grant(0, 1), p.try_grant(0, 1), p.try_grant(0, 1)
    (0, 0, 1000000000)

    A cost in several units is charged to every limit in its own unit, all at once or not at
    all; a unit that no limit counts is ignored:

    >>> p = LimitPolicy([Limit(Rate(90_000, 60_000_000_000, "tokens"), margin_ns=0)])
    >>> first = p.try_reserve(0, {"tokens": 60_000})
    >>> p.try_grant(0, {"tokens": 40_000})  # waits for the first to leave the window
    60000000000
    >>> p.settle(1, first, {"tokens": 20_000})  # it used less: the rest comes back now
    >>> p.try_grant(1, {"tokens": 40_000})
    0
    """

    __slots__ = (
        "_any_shapers",
        "_logs",
        "_requests_only",
        "_shapers",
        "_smallest",
        "_units",
        "limits",
    )

    def __init__(self, limits: Sequence[Limit]) -> None:
        if not limits:
            raise InvalidArgument("at least one limit is needed, e.g. Rate.parse('10/s')")
        self.limits = tuple(limits)
        self._units = tuple(lim.rate.unit for lim in limits)
        self._requests_only = all(unit == REQUESTS for unit in self._units)
        self._logs = tuple(WindowLog(lim.rate.max_requests, lim.window_ns) for lim in limits)
        # One per limit, in the order of ``limits``: None where the limit has no pacer.
        self._shapers = tuple(
            None
            if lim.burst is None
            else Gcra.for_limit(lim.rate.max_requests, lim.window_ns, lim.burst)
            for lim in limits
        )
        # For the hot path (a plain weight, every limit in requests): the pacers alone, and
        # the smallest N (a weight above it goes the slow way to its error).
        self._any_shapers = tuple(shaper for shaper in self._shapers if shaper is not None)
        self._smallest = min(lim.rate.max_requests for lim in limits)

    def _amounts(self, cost: int | Cost) -> tuple[int, ...]:
        """What ``cost`` charges each limit, in the order of :attr:`limits`; checks each fits."""
        units = as_cost(cost)
        amounts = tuple(units.get(unit, 0) for unit in self._units)
        for lim, amount in zip(self.limits, amounts, strict=True):
            if amount > lim.rate.max_requests:
                raise InvalidArgument(
                    f"a cost of {amount} {lim.rate.unit} exceeds the limit {lim.rate} "
                    f"({lim.rate.max_requests} {lim.rate.unit} per window): it could never be "
                    "granted; lower the cost (split the work into smaller parts) or raise the limit"
                )
        return amounts

    def amounts(self, cost: int | Cost) -> tuple[int, ...]:
        """What ``cost`` charges each limit, in the order of :attr:`limits` (each checked to
        fit in its limit's N): what a store outside this process is asked to charge."""
        return self._amounts(cost)

    def _wait(self, now_ns: int, amounts: tuple[int, ...]) -> int:
        wait = 0
        for amount, shaper, log in zip(amounts, self._shapers, self._logs, strict=True):
            if not amount:
                continue  # a limit charged nothing never holds a grant back
            if shaper is not None:
                w = shaper.wait_ns(now_ns, amount)
                if w > wait:
                    wait = w
            w = log.wait_ns(now_ns, amount)
            if w > wait:
                wait = w
        return wait

    def _charge(self, now_ns: int, amounts: tuple[int, ...], waited: bool) -> None:
        for amount, shaper, log in zip(amounts, self._shapers, self._logs, strict=True):
            if amount:
                if shaper is not None:
                    shaper.record(now_ns, amount, waited)
                log.record(now_ns, amount)

    def wait_ns(self, now_ns: int, weight: int | Cost) -> int:
        """Nanoseconds until a grant of ``weight`` (requests, or a cost per unit) is allowed by
        every limit (0: now)."""
        return self._wait(now_ns, self._amounts(weight))

    def try_grant(self, now_ns: int, weight: int | Cost = 1, waited: bool = False) -> int:
        """Grant ``weight`` (requests, or a cost per unit) at ``now_ns`` if every limit agrees
        and return 0; otherwise change nothing and return the nanoseconds to wait before asking
        again."""
        if self._requests_only and type(weight) is int and 1 <= weight <= self._smallest:
            # The hot path (every acquire): the same decision without building a cost.
            wait = 0
            for shaper in self._any_shapers:
                w = shaper.wait_ns(now_ns, weight)
                if w > wait:
                    wait = w
            for log in self._logs:
                w = log.wait_ns(now_ns, weight)
                if w > wait:
                    wait = w
            if wait:
                return wait
            for shaper in self._any_shapers:
                shaper.record(now_ns, weight, waited)
            for log in self._logs:
                log.record(now_ns, weight)
            return 0
        amounts = self._amounts(weight)
        wait = self._wait(now_ns, amounts)
        if wait:
            return wait
        self._charge(now_ns, amounts, waited)
        return 0

    def try_reserve(self, now_ns: int, cost: int | Cost, waited: bool = False) -> Reservation | int:
        """Like :meth:`try_grant` for a cost that is an estimate: return a :class:`Reservation`
        to :meth:`settle` later, or (granting nothing) the nanoseconds to wait (an int > 0)."""
        units = as_cost(cost)
        amounts = self._amounts(units)
        wait = self._wait(now_ns, amounts)
        if wait:
            return wait
        self._charge(now_ns, amounts, waited)
        return Reservation(now_ns, units)

    def settle(self, now_ns: int, reservation: Reservation, actual: int | Cost) -> None:
        """Correct a reservation to its ``actual`` cost, known at ``now_ns``.

        Units ``actual`` leaves out stay as reserved (``{"tokens": 900}`` keeps the request).
        For each limit:

        - **Less than reserved**: the difference leaves the grant's window entry at once, so a
          waiting grant may go now. If the grant already left the window there is nothing to
          give back. The even-pacing schedule is never rewound (that would let a burst through).
        - **More than reserved** (an overrun): the extra is charged as of ``now_ns`` if the
          window ending then has room for it, otherwise as of the first moment it has (a stamp
          in the future, like a lease's). It is never added to the grant's own past entry:
          that window may already hold N, and what was *charged* must never exceed N in any
          window, or every later grant decision would start from a false count. Charged from
          the first moment it fits, the overrun delays later grants by exactly the time it
          needs a window of its own: the server has seen the usage, and the next window pays
          for it. An overrun larger than N is charged N per window, one window after another.
          A pacer (``burst``) is pushed back by the extra as by a grant of that size.

        A reservation is settled once; a second settle raises
        :class:`~paceline.errors.AlreadySettled` (a ``RuntimeError``).
        """
        if reservation.settled:
            raise AlreadySettled(
                f"the reservation granted at {reservation.granted_ns} ns was already settled "
                f"to {reservation.cost}; settle each grant once"
            )
        merged = dict(reservation.cost)
        merged.update(as_cost(actual, fill_requests=False))
        for unit, shaper, log in zip(self._units, self._shapers, self._logs, strict=True):
            delta = merged.get(unit, 0) - reservation.cost.get(unit, 0)
            if delta < 0:
                log.give_back(reservation.granted_ns, -delta)
            elif delta > 0:
                if shaper is not None:
                    shaper.record(now_ns, delta, waited=False)
                left = delta
                while left:
                    chunk = min(left, log.limit)
                    log.record_lease(now_ns, now_ns + log.wait_ns(now_ns, chunk), chunk)
                    left -= chunk
        reservation.cost = merged
        reservation.settled = True

    def try_lease(self, now_ns: int, count: int, hold_ns: int) -> int:
        """Grant ``count`` unit permits at once for starts in ``[now_ns, now_ns + hold_ns]``;
        return ``count``, or 0 (granting nothing) unless every limit has room for all of them.

        The permits are recorded at ``now_ns + hold_ns``, the *latest* moment any of them may
        start. A log entry stamped no earlier than its start keeps the limit strict: at every
        grant decision, each earlier start inside the window still has its entry counted. The
        holder must not start a leased permit after that moment (give unused ones back). Only
        for plain logs: with a pacer, a lease would be a burst the pacer exists to prevent.
        Leased permits are requests (one each); limits of other units are not charged.
        """
        if count < 1 or any(
            shaper is not None and unit == REQUESTS
            for unit, shaper in zip(self._units, self._shapers, strict=True)
        ):
            return 0
        logs = [log for unit, log in zip(self._units, self._logs, strict=True) if unit == REQUESTS]
        for log in logs:
            if log.held(now_ns) + count > log.limit:
                return 0
        stamp = now_ns + hold_ns
        for log in logs:
            log.record_lease(now_ns, stamp, count)
        return count

    def lengthen_windows(self, extra_ns: int) -> None:
        """Lengthen every limit's window by ``extra_ns`` (>= 0) from now on: a larger margin
        for grants whose starts turned out to lag more (the Dask runner's limiter). Only ever
        longer: every grant then stays counted at least as long as before, which is strict.

        >>> p = LimitPolicy([Limit(Rate(1, 1_000), margin_ns=0)])
        >>> p.try_grant(0, 1); p.lengthen_windows(500); p.try_grant(1_000, 1)
        0
        500
        """
        if extra_ns < 0:
            raise InvalidArgument(f"extra_ns={extra_ns}: windows only grow (a margin >= 0)")
        for log in self._logs:
            log.window_ns += extra_ns

    def give_back(self, granted_ns: int, weight: int | Cost = 1) -> None:
        """Return ``weight`` (requests, or a cost per unit) granted at ``granted_ns`` and never
        used (the shaper's schedule is never rewound: that would let a burst through)."""
        for amount, log in zip(self._amounts(weight), self._logs, strict=True):
            if amount:
                log.give_back(granted_ns, amount)
