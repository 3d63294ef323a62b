"""The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10) and their policies.

``RateLimit-Policy: "permin";q=50;w=60`` declares a quota ``q`` per window ``w`` seconds;
``RateLimit: "permin";r=12;t=30`` says ``r`` units remain and more come in ``t`` seconds. Both are
Structured Field Lists (RFC 8941), so one field may carry several policies.

Earlier drafts are read too, because servers still send them: draft-06's policy items are a bare
Integer quota (``RateLimit-Policy: 100;w=60``); draft-07's ``RateLimit`` was a Dictionary
(``limit=100, remaining=50, reset=30``); draft-08/09 allowed a Token as the policy name.

Malformed input never raises. A field that is not valid Structured Field syntax is ignored as a
whole (the draft: "Malformed RateLimit header fields MUST be ignored"); a syntactically valid
member whose parameters are wrong (no ``q``, ``w=0``, ``r=-1``) is dropped alone, which keeps
what the other members say.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from paceline._signals.sf import BareItem, Item, parse_dictionary, parse_list

__all__ = [
    "REQUEST_UNITS",
    "Policy",
    "Remaining",
    "most_restrictive",
    "parse_ratelimit",
    "parse_ratelimit_policy",
    "tightest",
]

# The draft's text says "requests", its IANA table "request"; both mean one request per unit.
# Other units ("content-bytes", "concurrent-requests", a vendor's "tokens") do not describe a
# rate of requests, so they never configure a request limiter.
REQUEST_UNITS = frozenset({"requests", "request"})


@dataclass(frozen=True, slots=True)
class Policy:
    """A quota policy: at most ``quota`` units per ``window_s`` seconds (``None``: unstated).

    ``partition_key`` is the decoded ``pk`` Byte Sequence (a String or Token, which some servers
    send, is kept as its UTF-8 bytes); ``quota_unit`` is ``qu`` (default ``"requests"``).
    """

    name: str
    quota: int
    window_s: float | None
    partition_key: bytes | None = None
    quota_unit: str = "requests"


@dataclass(frozen=True, slots=True)
class Remaining:
    """A service limit: ``remaining`` units left, more in ``reset_s`` s (``None``: unstated)."""

    name: str
    remaining: int
    reset_s: float | None
    partition_key: bytes | None = None


def _is_integer(value: BareItem) -> bool:
    return type(value) is int


def _is_number(value: BareItem) -> bool:
    return type(value) is int or type(value) is float


def _partition_key(params: dict[str, BareItem]) -> tuple[bool, bytes | None]:
    """(valid, key) for the ``pk`` parameter."""
    value = params.get("pk")
    if value is None:
        return True, None
    if isinstance(value, bytes):
        return True, value
    if isinstance(value, str):
        return True, value.encode()
    return False, None


def _policy(member: Item) -> Policy | None:
    params = member.params
    quota = params.get("q")
    if quota is None and _is_integer(member.value):
        name, quota = "", member.value  # draft-06: the item itself is the quota
    elif isinstance(member.value, str) and quota is not None and _is_integer(quota):
        name = str(member.value)
    else:
        return None
    assert isinstance(quota, int)
    if quota < 0:
        return None
    window = params.get("w")
    if window is not None and not (_is_number(window) and float(window) > 0):
        return None
    unit = params.get("qu", "requests")
    if not isinstance(unit, str):
        return None
    valid, key = _partition_key(params)
    if not valid:
        return None
    window_s = None if window is None else float(window)
    return Policy(name, quota, window_s, key, str(unit))


def parse_ratelimit_policy(value: str) -> list[Policy]:
    """The quota policies in a ``RateLimit-Policy`` field; ``[]`` if it is malformed.

    >>> a, b = parse_ratelimit_policy('"a";q=10;w=1, "b";q=500;w=60;pk=:cHsd:')
    >>> a
    Policy(name='a', quota=10, window_s=1.0, partition_key=None, quota_unit='requests')
    >>> b.quota, b.window_s, b.partition_key
    (500, 60.0, b'p{\\x1d')
    """
    members = parse_list(value)
    if members is None:
        return []
    policies = (_policy(member) for member in members if isinstance(member, Item))
    return [policy for policy in policies if policy is not None]


def _remaining(member: Item) -> Remaining | None:
    if not isinstance(member.value, str):
        return None
    left = member.params.get("r")
    if left is None or not _is_integer(left):
        return None
    assert isinstance(left, int)
    if left < 0:
        return None
    reset = member.params.get("t")
    if reset is not None and not (_is_number(reset) and float(reset) >= 0):
        return None
    valid, key = _partition_key(member.params)
    if not valid:
        return None
    return Remaining(str(member.value), left, None if reset is None else float(reset), key)


def parse_ratelimit(value: str) -> list[Remaining]:
    """The service limits in a ``RateLimit`` field; ``[]`` if it is malformed.

    >>> parse_ratelimit('"permin";r=12;t=30')
    [Remaining(name='permin', remaining=12, reset_s=30.0, partition_key=None)]
    >>> parse_ratelimit("limit=100, remaining=50, reset=30")   # draft-07 Dictionary
    [Remaining(name='', remaining=50, reset_s=30.0, partition_key=None)]
    """
    members = parse_list(value)
    if members is not None:
        limits = (_remaining(member) for member in members if isinstance(member, Item))
        return [limit for limit in limits if limit is not None]
    legacy = parse_dictionary(value)
    if legacy is None:
        return []
    left = legacy.get("remaining")
    reset = legacy.get("reset")
    if not isinstance(left, Item) or not _is_integer(left.value):
        return []
    params: dict[str, BareItem] = {"r": left.value}
    if isinstance(reset, Item):
        params["t"] = reset.value
    limit = _remaining(Item("", params))
    return [] if limit is None else [limit]


def most_restrictive(policies: Iterable[Policy]) -> Policy | None:
    """The request policy with the lowest long-run rate ``quota / window_s``.

    Ties go to the shorter window (less burst allowed). Policies with no window are only chosen
    when no policy has one (then the smallest quota). Units other than requests are skipped.
    """
    requests = [policy for policy in policies if policy.quota_unit in REQUEST_UNITS]
    windowed = [policy for policy in requests if policy.window_s is not None]
    if windowed:
        return min(windowed, key=lambda p: (p.quota / (p.window_s or 1.0), p.window_s))
    return min(requests, key=lambda p: p.quota, default=None)


def tightest(limits: Iterable[Remaining], policies: Iterable[Policy] = ()) -> Remaining | None:
    """The service limit with the fewest units left (ties: the one that refills last).

    A limit named after a policy whose unit is not requests is skipped; an unknown name counts
    as requests. An unstated ``reset_s`` loses a tie to a stated one, which says more.
    """
    other_units = {p.name for p in policies if p.quota_unit not in REQUEST_UNITS}
    candidates = [limit for limit in limits if limit.name not in other_units]
    return min(
        candidates,
        key=lambda r: (r.remaining, -(r.reset_s if r.reset_s is not None else -1.0)),
        default=None,
    )
