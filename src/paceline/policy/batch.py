"""The state of one batch: counters, result slots in input order, and the stop condition.

Shared by every runner. Sans-I/O: runners tell it what happened and ask what to do next.

Two ways to hold results:
- ``collect``: a slot per input position, filled as items settle, read once at the end.
- ``stream``: settled results wait in a buffer until they can be handed out — in input order
  (``ordered=True``: a result waits for every earlier one) or as they come.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

from paceline.policy.halt import HaltRule

R = TypeVar("R")


class BatchState(Generic[R]):
    """Counters, slots and the stop condition of one batch.

    >>> state = BatchState[str](total=2, stop_on_error=True)
    >>> state.settle(1, "b", failed=False); state.settle(0, "a", failed=True)
    >>> state.completed, state.failed, state.stopped, state.slots
    (2, 1, True, ['a', 'b'])
    """

    __slots__ = (
        "_buffer",
        "_next_out",
        "completed",
        "delivered",
        "failed",
        "first_failure",
        "halt_now",
        "halt_reason",
        "on_halt",
        "ordered",
        "ready",
        "restored",
        "rules",
        "slots",
        "stop_on_error",
        "stopped",
        "streaming",
        "total",
        "totals",
    )

    def __init__(
        self,
        total: int | None,
        stop_on_error: bool = False,
        *,
        streaming: bool = False,
        ordered: bool = True,
        rules: Sequence[HaltRule] = (),
    ) -> None:
        self.total = total
        self.stop_on_error = stop_on_error
        self.rules = tuple(rules)
        self.totals: dict[str, int] = {}  # per unit, what the items that succeeded used
        self.halt_reason: str | None = None
        self.halt_now = False
        self.on_halt: Callable[[str], None] | None = None  # told the first halt's reason
        self.restored = 0
        self.streaming = streaming
        self.ordered = ordered
        self.completed = 0
        self.failed = 0
        self.delivered = 0
        self.stopped = False
        self.first_failure: int | None = None
        # collect mode: one slot per position (grown on demand when the total is unknown)
        self.slots: list[R | None] = [None] * total if (total and not streaming) else []
        # stream mode: results ready to hand out, and (ordered) those waiting for earlier ones
        self.ready: deque[R] = deque()
        self._buffer: dict[int, R] = {}
        self._next_out = 0

    def settle(self, index: int, result: R, failed: bool) -> None:
        """Record the final outcome of the item at input position ``index``."""
        self.completed += 1
        if failed:
            self.failed += 1
            if self.first_failure is None:
                self.first_failure = index
            if self.stop_on_error and not self.stopped:
                self.halt("stop_on_error: item failed", now=True)
        if self.rules and not self.stopped:
            succeeded = self.completed - self.failed
            for rule in self.rules:
                if rule.budget:
                    continue  # judged by add_cost
                if rule.triggered(self.failed, succeeded):
                    self.halt(
                        f"halt rule {rule}: {self.failed} failed, {succeeded} succeeded",
                        now=rule.when == "now",
                    )
                    break
        if not self.streaming:
            slots = self.slots
            if index >= len(slots):
                slots.extend([None] * (index + 1 - len(slots)))
            slots[index] = result
        elif not self.ordered:
            self.ready.append(result)
        elif index == self._next_out:
            self.ready.append(result)
            self._next_out += 1
            buffer = self._buffer
            while buffer:
                nxt = buffer.pop(self._next_out, None)
                if nxt is None:
                    break
                self.ready.append(nxt)
                self._next_out += 1
        else:
            self._buffer[index] = result

    def add_cost(self, cost: Mapping[str, int]) -> None:
        """Count what an item that succeeded used, per unit; a budget cap it reaches halts
        the batch (``soon``: nothing new starts; ``now``: work in flight is cancelled too)."""
        totals = self.totals
        for unit, amount in cost.items():
            totals[unit] = totals.get(unit, 0) + amount
        if self.stopped:
            return
        for rule in self.rules:
            if rule.budget and rule.triggered(self.failed, 0, totals):
                self.halt(
                    f"halt rule {rule}: {totals.get(rule.kind, 0)} {rule.kind} used",
                    now=rule.when == "now",
                )
                break

    def stop(self) -> None:
        """Start nothing new (a caller's stop, or a rule's)."""
        self.stopped = True

    def halt(self, reason: str, now: bool) -> None:
        """Stop the batch for ``reason``; ``now``: also cancel work in flight. The first halt's
        reason is kept."""
        if self.halt_reason is None:
            self.halt_reason = reason
            if self.on_halt is not None:
                self.on_halt(reason)
        self.halt_now = self.halt_now or now
        self.stopped = True

    def pop_ready(self) -> R:
        """Hand out the next ready result (stream mode); ``IndexError`` if none is ready."""
        result = self.ready.popleft()
        self.delivered += 1
        return result

    @property
    def waiting(self) -> int:
        """Settled results held back until an earlier one settles (ordered stream mode)."""
        return len(self._buffer)
