"""Halt rules in GNU parallel's vocabulary: ``now|soon,fail=N|fail=N%|success=N|done=N``,
and budget caps on a unit's total: ``soon,tokens=2000000``, ``now,cost=20``.

``soon`` starts nothing new and lets work in flight finish; ``now`` also cancels it (threads
cannot be cancelled: their calls finish, and their results are kept). ``stop_on_error=True``
is ``now,fail=1``.

A budget cap names a unit the batch's costs count (docs/units.md): it fires once the total of
that unit used by the items that succeeded (their settled cost: the actual usage, else the
estimate) reaches the cap. A resumed batch counts the items restored from its journal too, so
raising the cap and resuming goes on from where the first run stopped.

Percentages are of the items settled so far, and — as in GNU parallel — are only judged once
at least 3 items have settled, so one early failure does not read as "100 % failed".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from paceline.errors import InvalidArgument
from paceline.policy.rate import NS_PER_S, REQUESTS, unit_name

_RULE_RE = re.compile(
    r"^\s*(?:(?P<when>now|soon)\s*,\s*)?(?P<kind>[a-z][a-z0-9_]*)\s*=\s*"
    r"(?P<num>\d+(?:\.\d+)?)\s*(?P<pct>%)?\s*$",
    re.IGNORECASE,
)
_EXAMPLE = "e.g. 'soon,fail=5%', 'now,fail=1', 'soon,done=1000' or 'soon,tokens=2000000'"
_COUNTS = ("fail", "success", "done")
MIN_SETTLED_FOR_PERCENT = 3


@dataclass(frozen=True, slots=True)
class HaltRule:
    """Stop the batch when ``kind`` (fail/success/done, or a unit's total) reaches
    ``threshold``.

    >>> rule = HaltRule.parse("soon,fail=10%")
    >>> rule.triggered(failed=1, succeeded=9), rule.triggered(failed=1, succeeded=8)
    (True, True)
    >>> HaltRule.parse("now,fail=2").triggered(failed=1, succeeded=100)
    False
    >>> cap = HaltRule.parse("soon,tokens=2000")
    >>> cap.budget, cap.triggered(0, 5, {"tokens": 1999}), cap.triggered(0, 6, {"tokens": 2000})
    (True, False, True)
    """

    when: Literal["now", "soon"]
    kind: str  # fail, success, done, or the unit a budget cap counts (tokens, cost...)
    threshold: float
    percent: bool = False

    def __post_init__(self) -> None:
        if self.budget and self.percent:
            raise InvalidArgument(
                f"halt {self}: a budget cap is a total of {self.kind}, not a percentage, "
                "e.g. 'soon,tokens=2000000'"
            )
        if self.percent and not 0 < self.threshold <= 100:
            raise InvalidArgument(f"halt {self}: a percentage must be above 0 and at most 100")
        if not self.percent and (self.threshold < 1 or self.threshold != int(self.threshold)):
            raise InvalidArgument(f"halt {self}: a count must be a whole number of at least 1")

    @classmethod
    def parse(cls, text: str) -> HaltRule:
        """Read ``"soon,fail=5%"`` and the like; the error names the value and the fix."""
        match = _RULE_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidArgument(
                f"halt rule {text!r}: expected '[now|soon,](fail|success|done)=N[%]', {_EXAMPLE}"
            )
        when = (match["when"] or "soon").lower()
        kind = match["kind"].lower()
        if kind not in _COUNTS:
            kind = unit_name(kind)
            if kind == REQUESTS:  # every attempt is a request: "done" is what is meant
                raise InvalidArgument(
                    f"halt rule {text!r}: a cap on requests is a count of items, "
                    "e.g. 'soon,done=1000'"
                )
        return cls(
            when=when,  # type: ignore[arg-type]
            kind=kind,
            threshold=float(match["num"]),
            percent=bool(match["pct"]),
        )

    @classmethod
    def stop_on_error(cls) -> HaltRule:
        """The rule ``stop_on_error=True`` / ``fail_fast=True`` means: ``now,fail=1``."""
        return cls("now", "fail", 1)

    @property
    def budget(self) -> bool:
        """Whether this rule caps a unit's total (``tokens=2000000``) rather than a count."""
        return self.kind not in _COUNTS

    def triggered(
        self, failed: int, succeeded: int, totals: Mapping[str, int] | None = None
    ) -> bool:
        """Whether the rule fires given the items settled so far (and, for a budget cap, the
        ``totals`` used per unit)."""
        if self.budget:
            return totals is not None and totals.get(self.kind, 0) >= self.threshold
        done = failed + succeeded
        count = {"fail": failed, "success": succeeded, "done": done}[self.kind]
        if not self.percent:
            return count >= self.threshold
        if done < MIN_SETTLED_FOR_PERCENT or count == 0:
            return False
        return count * 100 >= self.threshold * done

    def __str__(self) -> str:
        number = f"{self.threshold:g}" + ("%" if self.percent else "")
        return f"{self.when},{self.kind}={number}"


DEFAULT_GIVE_UP_AFTER_S = 600.0
"""How long attempts may keep failing, with not one success, before the batch stops (10 min).
Twice the longest server pause obeyed (``DEFAULT_MAX_PAUSE_S``), so one pause followed by a
failure never stops a batch on its own; short enough that a server answering nothing but 429
(without Retry-After) or 500 does not hold a batch for hours with nothing to show."""


@dataclass(slots=True)
class GiveUp:
    """Stop a batch whose attempts keep failing: no success for ``after_ns`` since the first
    failure after the last success. Checked as each failed attempt ends (a batch waiting in a
    backoff or a pause meanwhile is not failing: it is told by its display).

    >>> S = 1_000_000_000
    >>> rule = GiveUp(after_ns=60 * S)
    >>> rule.failure(5 * S), rule.failure(35 * S), rule.failure(66 * S)
    (None, None, 'no attempt succeeded for 61 s (3 failed attempts in a row)')
    >>> rule.success(); rule.failure(200 * S) is None
    True
    """

    after_ns: int
    failing_since_ns: int | None = None
    failures: int = 0

    def success(self) -> None:
        """An attempt succeeded: the clock starts again at the next failure."""
        self.failing_since_ns = None
        self.failures = 0

    def failure(self, now_ns: int) -> str | None:
        """An attempt failed at ``now_ns``: the reason to stop, or ``None`` to go on."""
        self.failures += 1
        since = self.failing_since_ns
        if since is None:
            self.failing_since_ns = since = now_ns
        if now_ns - since < self.after_ns:
            return None
        return (
            f"no attempt succeeded for {(now_ns - since) / NS_PER_S:.0f} s "
            f"({self.failures} failed attempts in a row)"
        )
