"""The sliding-window log: exact "never more than N grants in any window of W".

Grant iff the permits granted in the last ``W`` nanoseconds plus the new weight fit in ``N``;
otherwise the wait is until enough old grants leave the window. Integer nanoseconds throughout:
with floats, ``t + W - now`` and ``t <= now - W`` can disagree at the boundary and admit an
(N+1)-th grant (docs/design.md, 'Window log').

Windows are half-open: a grant at ``t`` occupies ``[t, t + W)``, so a new grant at exactly
``t + W`` is allowed.
"""

from __future__ import annotations

from collections import deque

from paceline.errors import InvalidArgument

# Above this many permits per window, grants that land within ``window / _MAX_ENTRIES`` of the
# previous entry share it and move its timestamp *forward* to the newest grant. Moving a
# timestamp later only makes it leave the window later, so the limit stays strict; the cost is
# at most W/_MAX_ENTRIES of lost capacity (0.1 %) and memory stays bounded for huge limits.
# At or below it (every limit a person types for an API), the log is exact.
_MAX_ENTRIES = 1024


class WindowLog:
    """Exact sliding-window log of grants for one limit (sans-I/O).

    >>> log = WindowLog(limit=2, window_ns=1_000_000_000)
    >>> log.wait_ns(0, 1), log.record(0, 1), log.record(0, 1)
    (0, True, True)
    >>> log.wait_ns(0, 1)  # the third waits for the window
    1000000000
    """

    __slots__ = ("_coalesce_ns", "_counts", "_firsts", "_held", "_times", "limit", "window_ns")

    def __init__(self, limit: int, window_ns: int) -> None:
        if limit < 1:
            raise InvalidArgument(f"limit {limit!r}: must be at least 1")
        if window_ns < 1:
            raise InvalidArgument(f"window_ns {window_ns!r}: must be at least 1")
        self.limit = limit
        self.window_ns = window_ns
        self._coalesce_ns = window_ns // _MAX_ENTRIES if limit > _MAX_ENTRIES else 0
        # One entry per grant (or per run of coalesced grants): its stamp (when its permits
        # count as started: the latest grant in it), the earliest grant in it, and its permits.
        # Entries are sorted and cover disjoint [first, stamp] spans.
        self._times: deque[int] = deque()
        self._firsts: deque[int] = deque()
        self._counts: deque[int] = deque()
        self._held = 0

    def held(self, now_ns: int) -> int:
        """How many permits are inside the window ending at ``now_ns``."""
        self._prune(now_ns)
        return self._held

    def _prune(self, now_ns: int) -> None:
        cutoff = now_ns - self.window_ns
        times = self._times
        while times and times[0] <= cutoff:
            times.popleft()
            self._firsts.popleft()
            self._held -= self._counts.popleft()

    def wait_ns(self, now_ns: int, weight: int) -> int:
        """Nanoseconds until ``weight`` permits fit (0: now). Changes nothing but pruning."""
        self._prune(now_ns)
        excess = self._held + weight - self.limit
        if excess <= 0:
            return 0
        if weight > self.limit:
            raise InvalidArgument(
                f"weight {weight} exceeds the limit of {self.limit} per window: it could never "
                "be granted; lower the weight or raise the limit"
            )
        freed = 0
        for t, count in zip(self._times, self._counts, strict=True):
            freed += count
            if freed >= excess:
                return t + self.window_ns - now_ns
        raise AssertionError("unreachable: weight <= limit frees enough")  # pragma: no cover

    def record(self, now_ns: int, weight: int) -> bool:
        """Record a grant of ``weight`` permits at ``now_ns`` (after ``wait_ns`` said 0).

        A stamp earlier than the newest entry (one stamped ahead by a lease) joins that entry:
        the log stays sorted and the grant's stamp only moves later, which is strict.
        Returns whether the grant got an entry of its own.
        """
        times = self._times
        if times and now_ns - times[-1] < self._coalesce_ns:
            if now_ns > times[-1]:
                times[-1] = now_ns
            self._counts[-1] += weight
            self._held += weight
            return False
        times.append(now_ns)
        self._firsts.append(now_ns)
        self._counts.append(weight)
        self._held += weight
        return True

    def record_lease(self, now_ns: int, stamp_ns: int, count: int) -> None:
        """Record ``count`` permits granted at ``now_ns`` for starts up to ``stamp_ns``."""
        if self.record(stamp_ns, count):
            self._firsts[-1] = now_ns  # the new entry covers grants from now on

    def give_back(self, granted_ns: int, weight: int) -> int:
        """Remove up to ``weight`` permits granted at ``granted_ns``; return how many were removed.

        The grant is in an entry whose ``[first, stamp]`` span holds it. Grants made at the
        same instant may sit in several such entries (one each when nothing coalesces them),
        and they cannot be told apart: the permits come out of those entries, the newest
        first, until ``weight`` is given back. (Taking them from the newest entry alone gave
        back 1 of 2 when a 1-permit grant's give-back had already emptied half of a 2-permit
        one's entry.) A grant that already left the window has no entry any more and nothing
        is given back.
        """
        times, firsts, counts = self._times, self._firsts, self._counts
        removed = 0
        for i in range(len(times) - 1, -1, -1):
            if times[i] < granted_ns or removed == weight:
                break
            if firsts[i] <= granted_ns:
                taken = min(weight - removed, counts[i])
                counts[i] -= taken
                removed += taken
                if counts[i] == 0:
                    del times[i]
                    del firsts[i]
                    del counts[i]
        self._held -= removed
        return removed
