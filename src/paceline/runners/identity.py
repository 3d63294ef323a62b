"""An item's stable key, for operations that must not be done twice (``Idempotency-Key``).

A retry of an attempt that may have reached the server (a timeout, a connection dropped after
the request was sent) can repeat a side effect: a POST that creates a tenant creates two. A
server that deduplicates by an idempotency key (Stripe, Adyen, PayPal, Square, the IETF draft
``Idempotency-Key`` header) stops that, if every attempt of one item carries the same key and
no two items share one.

The key is a UUID (version 5, name-based) of the batch's identity and the item's identity:

- the batch: a random UUID made when the batch's journal is created and kept in it (so a
  resume after a crash sends the same keys), or one made for the run when there is no journal
  (nothing resumes then, and a rerun is a new batch, whose keys must differ from the last);
- the item: its journal key (its ``id``, the request's "METHOD URL", the CLI's row id —
  credentials already masked there), or its position in the input when there is no journal.

Only the UUID leaves the process: neither identity can be read back from it.

>>> batch = "5b7e4a1c-9f0e-4c1a-8d5e-2f1b3c4d5e6f"
>>> stable_key(batch, "tenant-17") == stable_key(batch, "tenant-17")
True
>>> stable_key(batch, "tenant-17") != stable_key(batch, "tenant-18")
True
>>> len(stable_key(batch, "tenant-17"))
36
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import Protocol

__all__ = ["BATCH_ID_META", "CURRENT", "current_item_key", "new_batch_id", "stable_key"]

BATCH_ID_META = "batch_id"
"""The journal meta entry that keeps a batch's random identity across runs."""


class Attempting(Protocol):
    """What the runners put in :data:`CURRENT` for an attempt (their ``Job``)."""

    batch_id: str
    key: str | None
    index: int


CURRENT: ContextVar[Attempting | None] = ContextVar("paceline_item", default=None)
"""The item whose attempt runs in this context. A runner sets it right before it calls the
operation (0.1-0.2 us an attempt: a worker task or thread has a context of its own, so it is
not reset after, except where the caller's own context runs the attempt); the UUID is made
only when someone asks for it (most operations never do)."""


def new_batch_id() -> str:
    """A fresh random batch identity (a UUID4 string)."""
    return str(uuid.uuid4())


def stable_key(batch_id: str, item: str) -> str:
    """The item's idempotency key in that batch: a UUID5 of both (see the module)."""
    try:
        namespace = uuid.UUID(batch_id)
    except ValueError:  # a batch id someone wrote by hand: hashed into a namespace
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, "paceline-batch:" + batch_id)
    return str(uuid.uuid5(namespace, item))


def current_item_key() -> str | None:
    """The stable key of the item whose attempt is running here, or ``None`` outside one.

    Every attempt of an item gets the same key, also after a resume from the journal; two
    items of a batch never share one. Pass it to an API as its idempotency key, so a retry
    of something that may have been done already is not done twice:

    >>> import asyncio, paceline
    >>> async def create(name: str) -> str | None:
    ...     key = paceline.current_item_key()  # e.g. headers={"Idempotency-Key": key}
    ...     return key
    >>> keys = [r.value for r in paceline.batch_execute_sync(["a", "b", "a2"], create)]
    >>> len(set(keys)), len(keys[0])
    (3, 36)

    Works in async operations, in sync ones on the executors' threads, and in ``paceline
    call`` (``paceline exec`` gets it as ``{_key}`` and ``$PACELINE_ITEM_KEY``).
    """
    current = CURRENT.get()
    if current is None:
        return None
    return stable_key(current.batch_id, item_identity(current.key, current.index))


def item_identity(key: str | None, index: int) -> str:
    """An item's identity within its batch: its journal key, else its position."""
    return key if key is not None else f"#{index}"
