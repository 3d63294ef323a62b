"""A server's window replayed from the client's side: at most N slots, each held from an
attempt's start until a window after its answer.

A server that counts N per window W at arrival frees an accepted request's slot W after it
arrived, and it arrived before its answer came back: so a slot freed here at ``answer + W``
is free at the server too, whatever the network's delay (docs/design.md, 'Window slots').
Refused attempts were not counted: their slot frees at the answer. Unlike even pacing at
``(1 - margin) N / W``, this takes each slot as soon as it is surely free, bursts included,
and needs no margin beyond the round trip and the slack added to W.

>>> slots = WindowSlots(quota=2, window_ns=1_000)
>>> slots.wait_ns(0), slots.start(), slots.wait_ns(0), slots.start()
(0, None, 0, None)
>>> slots.wait_ns(0) is None  # both in flight: wait for an answer
True
>>> slots.taken(answer_ns=10), slots.refused()
(None, None)
>>> slots.wait_ns(10), slots.start(), slots.wait_ns(20)  # the refused one's slot is free
(0, None, 990)
"""

from __future__ import annotations

from collections import deque

from paceline.errors import InvalidArgument


class WindowSlots:
    """N slots of a window of ``window_ns``, held from a start to its answer plus the window
    (taken) or to its answer (refused)."""

    __slots__ = ("_frees", "in_flight", "quota", "window_ns")

    def __init__(self, quota: int, window_ns: int, answers_ns: tuple[int, ...] = ()) -> None:
        if quota < 1 or window_ns < 1:
            raise InvalidArgument(
                f"quota {quota!r} per {window_ns!r} ns: both must be at least 1, e.g. 20 per 1e9"
            )
        self.quota = quota
        self.window_ns = window_ns
        self.in_flight = 0
        # when each taken slot frees, in answer order (answers come in time order)
        self._frees: deque[int] = deque(sorted(a + window_ns for a in answers_ns))

    def wait_ns(self, now_ns: int) -> int | None:
        """0: a slot is free now; > 0: the next one frees after that long; None: every slot
        is held by an attempt in flight (its answer says when it frees)."""
        frees = self._frees
        while frees and frees[0] <= now_ns:
            frees.popleft()
        if len(frees) + self.in_flight < self.quota:
            return 0
        return frees[0] - now_ns if frees else None

    def start(self) -> None:
        """An attempt starts: it holds a slot until its answer."""
        self.in_flight += 1

    def taken(self, answer_ns: int) -> None:
        """An attempt of ours was counted (answered at ``answer_ns``): its slot frees a window
        after its answer."""
        self.in_flight = max(0, self.in_flight - 1)
        self.counted(answer_ns)

    def counted(self, answer_ns: int) -> None:
        """An attempt started before the slots were kept was counted: it holds a slot too."""
        frees = self._frees
        free_ns = answer_ns + self.window_ns
        if frees and free_ns < frees[-1]:
            frees.append(free_ns)
            self._frees = deque(sorted(frees))
        else:
            frees.append(free_ns)

    def refused(self) -> None:
        """An attempt was not counted (refused): its slot frees now."""
        self.in_flight = max(0, self.in_flight - 1)
