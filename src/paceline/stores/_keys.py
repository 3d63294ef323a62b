"""Identities: an item's key (what the journal files its outcome under) and a batch's
fingerprint (which operation the journal belongs to)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from paceline.errors import InvalidArgumentType

__all__ = ["fingerprint_of", "item_key"]

_FIX = "pass item_ids=... or key=... to name each item"


def item_key(item: Any, item_id: str | None = None, key: Callable[[Any], Any] | None = None) -> str:
    """The stable identity of an item: the same item gets the same key in every run, wherever it
    sits in the input (never its position: inputs get filtered, re-sorted and extended).

    ``item_id`` wins if given, then ``str(key(item))``. Otherwise a ``str`` item is its own key
    (prefixed ``s:``), an ``int`` is ``i:<n>``, and anything else is ``h:`` and the first 32 hex
    digits of the SHA-256 of its canonical JSON (sorted keys, no spaces), so equal dicts built
    in a different order get the same key.

    >>> item_key("user-7"), item_key(42), item_key(7, item_id="seven")
    ('s:user-7', 'i:42', 'seven')
    >>> item_key({"b": 2, "a": 1}) == item_key({"a": 1, "b": 2})
    True
    >>> item_key({"id": 3, "name": "x"}, key=lambda item: item["id"])
    '3'
    """
    if item_id is not None:
        return str(item_id)
    if key is not None:
        return str(key(item))
    if isinstance(item, str):
        text = str.__str__(item)
        if text.isascii() or _valid_utf8(text):
            return "s:" + text
    elif isinstance(item, int) and not isinstance(item, bool):
        return f"i:{int(item)}"
    try:
        canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidArgumentType(
            f"item of type {type(item).__qualname__!r} has no stable identity: its key is the "
            f"hash of its JSON, and it is not JSON-encodable ({exc}); {_FIX}"
        ) from None
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return "h:" + digest[:32]


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Default reprs embed a memory address that changes every run; without it the fingerprint of
# partial(f, session) would differ on resume and refuse the batch's own journal.
_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")


def _identity(operation: Callable[..., Any] | str) -> str:
    if isinstance(operation, str):
        return operation
    if isinstance(operation, functools.partial):
        args = ", ".join(
            [repr(arg) for arg in operation.args]
            + [f"{name}={value!r}" for name, value in sorted(operation.keywords.items())]
        )
        return f"{_identity(operation.func)}({_ADDRESS.sub('', args)})"
    qualname = getattr(operation, "__qualname__", None)
    module = getattr(operation, "__module__", None)
    if not isinstance(qualname, str):  # a callable object: identify it by its class
        qualname = type(operation).__qualname__
        module = type(operation).__module__
    return f"{module or '?'}:{qualname}"


def fingerprint_of(operation: Callable[..., Any] | str, label: str | None = None) -> str:
    """A 16-hex-digit fingerprint of an operation (and an optional label), for the journal to
    recognise its own batch on resume and refuse another's.

    A function, method or callable object is identified by ``module:qualname`` (a
    ``functools.partial`` by its function and the ``repr`` of its arguments); a string is its own
    identity. The label tells apart batches that run one operation over different inputs.

    >>> fingerprint_of("sync-users") == fingerprint_of("sync-users")
    True
    >>> fingerprint_of("sync-users") != fingerprint_of("sync-users", label="eu")
    True
    >>> len(fingerprint_of(len))
    16
    """
    identity = f"{_identity(operation)}\0{label or ''}"
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]
