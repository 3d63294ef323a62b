"""From a response's headers to one ``ServerSignals``: which header wins, and why.

Families of headers, in the order they are trusted (docs/design.md, 'Header precedence'):

1. ``retry-after``: ``retry-after-ms`` / ``x-ms-retry-after-ms`` (milliseconds, as OpenAI's and
   Azure's clients read them) before ``Retry-After``: when a server sends both, the finer one is
   the same wait without whole-second rounding. A malformed ms value falls back to Retry-After.
2. ``ietf``: ``RateLimit-Policy`` and ``RateLimit`` (draft-10, Structured Fields).
3. ``ietf-legacy``: ``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (drafts up to -06).
4. ``x-ratelimit``: ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (and ``-Reset-Ms``,
   ``-Reset-After``; Twitter's ``X-Rate-Limit-*``).
5. ``openai``: ``x-ratelimit-{limit,remaining,reset}-requests`` (and ``-tokens``).
6. ``anthropic``: ``anthropic-ratelimit-requests-{limit,remaining,reset}`` (and token kinds).

Quota and window come from the first family that states a quota; remaining and reset come as a
pair from the first family that states a remaining count (else the first that states a reset),
so a remaining count is never paired with another policy's reset. Only request quotas reach the
top-level fields: token and byte quotas are in ``policies`` / ``service_limits`` for callers that
meter them, but a limiter of requests must not take 150000 tokens/min for 150000 requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from paceline._signals.ietf import (
    Policy,
    Remaining,
    most_restrictive,
    parse_ratelimit,
    parse_ratelimit_policy,
    tightest,
)
from paceline._signals.sf import Item, parse_list
from paceline._signals.times import collapse_repeats, parse_number, parse_reset, parse_retry_after

__all__ = ["KNOWN_HEADERS", "ServerSignals", "parse_signals"]

_T = TypeVar("_T")

_RETRY_AFTER_MS = ("retry-after-ms", "x-ms-retry-after-ms")
# (source, unit, limit names, remaining names, reset names with the scale of a plain number).
# Within a tuple of names the first header present wins.
_Counters = tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[tuple[str, float], ...]]
_COUNTERS: tuple[_Counters, ...] = (
    (
        "ietf-legacy",
        "",
        ("ratelimit-limit",),
        ("ratelimit-remaining",),
        (("ratelimit-reset", 1.0),),
    ),
    (
        "x-ratelimit",
        "",
        ("x-ratelimit-limit", "x-rate-limit-limit"),
        ("x-ratelimit-remaining", "x-rate-limit-remaining"),
        (
            ("x-ratelimit-reset-ms", 0.001),
            ("x-ratelimit-reset-after", 1.0),  # Discord: a delta, with decimals
            ("x-ratelimit-reset", 1.0),
            ("x-rate-limit-reset", 1.0),
        ),
    ),
    *(
        (
            "openai",
            unit,
            (f"x-ratelimit-limit-{unit}",),
            (f"x-ratelimit-remaining-{unit}",),
            ((f"x-ratelimit-reset-{unit}", 1.0),),
        )
        for unit in ("requests", "tokens")
    ),
    *(
        (
            "anthropic",
            unit,
            (f"anthropic-ratelimit-{unit}-limit",),
            (f"anthropic-ratelimit-{unit}-remaining",),
            ((f"anthropic-ratelimit-{unit}-reset", 1.0),),
        )
        for unit in ("requests", "tokens", "input-tokens", "output-tokens")
    ),
)
KNOWN_HEADERS: frozenset[str] = frozenset(
    {"date", "retry-after", "ratelimit-policy", "ratelimit", *_RETRY_AFTER_MS}
    | {name for entry in _COUNTERS for names in entry[2:4] for name in names}
    | {name for entry in _COUNTERS for name, _ in entry[4]}
)


@dataclass(frozen=True, slots=True)
class ServerSignals:
    """What a response's headers say about pacing, in seconds and request counts.

    ``retry_after_s``: wait at least this long (Retry-After wins over ``reset_s``, per the draft).
    ``quota`` per ``window_s``: the most restrictive request policy (``window_s`` is ``None`` when
    the headers state no window, as ``X-RateLimit-*`` never do). ``remaining`` more requests
    before ``reset_s``. ``source``: the families the values came from, joined by ``+`` in
    precedence order (``"retry-after+ietf"``), or ``"none"``. ``policies`` /
    ``service_limits``: every policy and counter the headers described, chosen or not (other
    windows, token quotas).

    >>> s = parse_signals({"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999"})
    >>> s.quota, s.window_s, s.remaining, s.reset_s, s.source
    (5000, None, 4999, None, 'x-ratelimit')
    """

    retry_after_s: float | None = None
    quota: int | None = None
    window_s: float | None = None
    remaining: int | None = None
    reset_s: float | None = None
    source: str = "none"
    policies: tuple[Policy, ...] = ()
    service_limits: tuple[Remaining, ...] = ()


@dataclass(slots=True)
class _Family:
    source: str
    requests: bool  # its quota and counters are in requests (else tokens, bytes...)
    policies: list[Policy]
    limits: list[Remaining]
    policy: Policy | None
    limit: Remaining | None
    reset_s: float | None = None  # a reset stated without a remaining count


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):  # raw header lines, as h11 and httpcore give them
        return bytes(value).decode("latin-1")
    return None


NO_SIGNALS = ServerSignals()
"""What a response without any pacing header says: nothing."""
PACING_HEADERS = KNOWN_HEADERS - {"date"}
"""Lower-cased names of the headers that carry a pacing signal (``date`` only dates them)."""


# The longest pacing field read, in characters (repeated lines joined). Real ones are short: an
# IETF policy with a partition key is ~40 characters, Retry-After or a count under 30; 1024
# holds twenty policies. A longer one is ignored as malformed: parsing costs ~2 us a character
# (a 72 KB field took 45-150 ms of CPU per response), and a header that long is noise or an
# attack, not a pace to keep.
MAX_FIELD_CHARS = 1024


def _fields(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased names to values; repeated lines joined by ", " (RFC 9110 §5.3).

    Identical repeats are kept once (a proxy that duplicates a line changes nothing). A field
    longer than ``MAX_FIELD_CHARS`` is left out: it says nothing the parsers will read.
    """
    lines: dict[str, dict[str, None]] = {}
    pairs: Iterable[object] = headers.items() if isinstance(headers, Mapping) else headers
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            continue
        name, value = _text(pair[0]), _text(pair[1])
        if name is None or value is None:
            continue
        value = value.strip(" \t")
        if value:
            lines.setdefault(name.strip(" \t").lower(), {})[value] = None
    joined = {name: ", ".join(values) for name, values in lines.items()}
    return {name: value for name, value in joined.items() if len(value) <= MAX_FIELD_CHARS}


def _first(
    fields: Mapping[str, str], names: Iterable[str], parse: Callable[[str], _T | None]
) -> tuple[str, _T] | None:
    """The first of ``names`` present whose value parses, with its name."""
    for name in names:
        if name in fields:
            value = parse(fields[name])
            if value is not None:
                return name, value
    return None


def _count(text: str) -> int | None:
    """A non-negative integer count (``"4999"``); two different values are ambiguous: ``None``."""
    members = parse_list(collapse_repeats(text))
    if not members or len(members) > 1 or not isinstance(members[0], Item):
        return None
    count = members[0].value
    return count if type(count) is int and count >= 0 else None


def _limit(text: str) -> int | None:
    """A quota count; draft-03 may follow it with quota policies: ``"10, 10;w=1, 50;w=60"``."""
    members = parse_list(collapse_repeats(text))
    if not members or not all(isinstance(m, Item) and "w" in m.params for m in members[1:]):
        return None
    return _count(text.split(",", 1)[0])


def _window(text: str) -> float | None:
    """Draft-03's quota policies in the limit field (``"10, 10;w=1"``): the current one's ``w``."""
    members = parse_list(collapse_repeats(text)) or []
    current = members[0] if members else None
    for member in members:
        if not isinstance(member, Item) or not isinstance(current, Item):
            continue
        window = member.params.get("w")
        if member.value != current.value or isinstance(window, bool):
            continue
        if isinstance(window, (int, float)) and window > 0:
            return float(window)
    return None


def _milliseconds(text: str) -> float | None:
    value = parse_number(collapse_repeats(text))
    return None if value is None else value / 1000.0


def _ietf(fields: Mapping[str, str]) -> _Family:
    policies = parse_ratelimit_policy(fields.get("ratelimit-policy", ""))
    limits = parse_ratelimit(fields.get("ratelimit", ""))
    policy, limit = most_restrictive(policies), tightest(limits, policies)
    return _Family("ietf", True, policies, limits, policy, limit)


def _counters(entry: _Counters, fields: Mapping[str, str], date: str | None, now: float) -> _Family:
    source, unit, limit_names, remaining_names, reset_names = entry
    quota_unit = unit if unit and unit != "requests" else "requests"
    reset_s = None
    for reset_name, scale in reset_names:
        if reset_name in fields:
            reset_s = parse_reset(fields[reset_name], now_epoch_s=now, date=date, scale_s=scale)
            if reset_s is not None:
                break
    policy = limit = None
    stated = _first(fields, limit_names, _limit)
    if stated is not None:
        header, quota = stated
        policy = Policy(unit, quota, _window(fields[header]), None, quota_unit)
    left = _first(fields, remaining_names, _count)
    if left is not None:
        limit = Remaining(unit, left[1], reset_s)
    return _Family(
        source,
        quota_unit == "requests",
        [policy] if policy else [],
        [limit] if limit else [],
        policy,
        limit,
        reset_s,
    )


def parse_signals(
    headers: Mapping[str, str] | Iterable[tuple[str, str]], *, now_epoch_s: float | None = None
) -> ServerSignals:
    """Read every pacing signal in a response's headers; never raises on malformed values.

    ``headers``: a mapping (``httpx.Headers``, a dict) or ``(name, value)`` pairs, names in any
    case, ``str`` or raw ``bytes``; repeated lines are joined by ``", "``. ``now_epoch_s``
    (default ``time.time()``) measures absolute times when the response has no ``Date``. A
    malformed field is ignored: the attributes it would have set stay ``None``, the others are
    unaffected.

    >>> s = parse_signals([("RateLimit-Policy", '"a";q=10;w=1'),
    ...                    ("ratelimit-policy", '"b";q=500;w=60'),
    ...                    ("RateLimit", '"a";r=3;t=1, "b";r=40;t=30')])
    >>> s.quota, s.window_s, s.remaining, s.reset_s, s.source
    (500, 60.0, 3, 1.0, 'ietf')
    """
    fields = _fields(headers)
    if PACING_HEADERS.isdisjoint(fields):  # most responses: nothing to read (saves ~2/3)
        return NO_SIGNALS
    now = time.time() if now_epoch_s is None else now_epoch_s
    date = fields.get("date")

    found = _first(fields, _RETRY_AFTER_MS, _milliseconds)
    retry_after = None if found is None else found[1]
    if retry_after is None and "retry-after" in fields:
        retry_after = parse_retry_after(fields["retry-after"], date=date, now_epoch_s=now)

    families = [_ietf(fields), *(_counters(entry, fields, date, now) for entry in _COUNTERS)]
    requests = [family for family in families if family.requests]
    by_quota = next((f for f in requests if f.policy is not None), None)
    by_count = next((f for f in requests if f.limit is not None), None) or next(
        (f for f in requests if f.reset_s is not None), None
    )

    sources = ["retry-after"] if retry_after is not None else []
    for family in (by_quota, by_count):
        if family is not None and family.source not in sources:
            sources.append(family.source)
    policy = by_quota.policy if by_quota else None
    limit = by_count.limit if by_count else None
    return ServerSignals(
        retry_after_s=retry_after,
        quota=policy.quota if policy else None,
        window_s=policy.window_s if policy else None,
        remaining=limit.remaining if limit else None,
        reset_s=limit.reset_s if limit else (by_count.reset_s if by_count else None),
        source="+".join(sources) or "none",
        policies=tuple(p for family in families for p in family.policies),
        service_limits=tuple(r for family in families for r in family.limits),
    )
