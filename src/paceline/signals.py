"""Server signals: what a response's headers say about pacing. Sans-I/O.

Header values in, seconds and counts out; nothing here sends, sleeps or (unless you leave
``now_epoch_s`` out) reads a clock. Malformed values never raise: they are ignored.

>>> from paceline.signals import parse_signals
>>> s = parse_signals({"Retry-After": "120", "RateLimit-Policy": '"permin";q=50;w=60',
...                    "RateLimit": '"permin";r=0;t=30'})
>>> s.retry_after_s, s.quota, s.window_s, s.remaining, s.reset_s, s.source
(120.0, 50, 60.0, 0, 30.0, 'retry-after+ietf')

What the caller does with them (docs/design.md, 'What each signal does'): ``retry_after_s``
pauses the whole limiter key; it and ``remaining``/``reset_s`` are applied apart, so whichever
ends later holds the requests (nothing ranks one above the other); ``quota`` per
``window_s`` configures the strict limiter; ``remaining`` / ``reset_s`` mean never more than
``remaining`` before ``reset_s``; nothing at all (``source == "none"``) leaves the pace to
adaptive control.

The rules decided here, each with its reason, are in the docstrings of ``parse_signals`` (which
header family wins), ``parse_reset`` (how a bare number is read) and ``parse_retry_after``.
The work is split by layer in ``paceline._signals``: ``sf`` (RFC 8941 syntax), ``times``
(durations and dates), ``ietf`` (the draft's fields) and ``headers`` (the precedence).
"""

from __future__ import annotations

from paceline._signals.headers import KNOWN_HEADERS, ServerSignals, parse_signals
from paceline._signals.ietf import Policy, Remaining, parse_ratelimit, parse_ratelimit_policy
from paceline._signals.times import parse_reset, parse_retry_after

__all__ = [
    "KNOWN_HEADERS",
    "Policy",
    "Remaining",
    "ServerSignals",
    "parse_ratelimit",
    "parse_ratelimit_policy",
    "parse_reset",
    "parse_retry_after",
    "parse_signals",
]
