"""``POST /objects``: an endpoint that creates something, as a payments or provisioning API
does, and honours ``Idempotency-Key`` the way Stripe documents it.

A POST creates one object (a new id) from its JSON body. With a key the server has seen, it
creates nothing and answers the stored answer again (a "replay"). With ``post_drop_rate``
(:class:`~paceline.testing.api_server.ApiConfig`) a share of the POSTs, drawn from their own
generator seeded with ``seed``, are processed — the object created, the key stored — and the
connection is then closed without an answer: the client cannot tell whether it was done.

The counts show what a client did: ``created``, ``duplicates`` (objects whose body an earlier
object already had: the same thing created twice), ``replays`` and ``dropped_after_processing``.
Every request's key is logged in order, to check a resumed batch sent the same keys.

>>> store = ObjectStore(post_drop_rate=0.0, seed=0)
>>> store.create("k1", {"name": "acme"})[0]["id"], store.create("k1", {"name": "acme"})[1]
('obj-1', 'replay')
>>> store.create(None, {"name": "acme"})[0]["id"]
'obj-2'
>>> s = store.stats()
>>> s["created"], s["duplicates"], s["replays"]
(2, 1, 1)
"""

from __future__ import annotations

import json
import random
from typing import Any


def _canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


class ObjectStore:
    """The objects ``POST /objects`` created, the answers stored per idempotency key, and
    the counts (everything on the server's loop thread: nothing locked)."""

    def __init__(self, post_drop_rate: float, seed: int) -> None:
        self.post_drop_rate = post_drop_rate
        # Its own generator: the other failure draws run the same as without this mode.
        self._rng = random.Random(seed + 2)
        self.objects: list[dict[str, Any]] = []
        self._by_key: dict[str, dict[str, Any]] = {}
        self._bodies: set[str] = set()
        self.requests: list[dict[str, Any]] = []  # {"key", "body"} per POST, in arrival order
        self.duplicates = 0
        self.replays = 0
        self.dropped_after_processing = 0

    def create(self, key: str | None, body: Any) -> tuple[dict[str, Any], str]:
        """Process one POST: the answer's payload and what happened (``"created"`` or
        ``"replay"``)."""
        self.requests.append({"key": key, "body": body})
        if key is not None and key in self._by_key:
            self.replays += 1
            return self._by_key[key], "replay"
        canonical = _canonical(body)
        if canonical in self._bodies:
            self.duplicates += 1
        self._bodies.add(canonical)
        created = {"id": f"obj-{len(self.objects) + 1}", "body": body, "key": key}
        self.objects.append(created)
        if key is not None:
            self._by_key[key] = created
        return created, "created"

    def drop_now(self) -> bool:
        """Whether this processed POST's answer is dropped (one draw per POST)."""
        if self._rng.random() < self.post_drop_rate:
            self.dropped_after_processing += 1
            return True
        return False

    def stats(self) -> dict[str, int]:
        """The counts, JSON-ready."""
        return {
            "created": len(self.objects),
            "duplicates": self.duplicates,
            "replays": self.replays,
            "dropped_after_processing": self.dropped_after_processing,
            "requests": len(self.requests),
        }

    def listing(self) -> dict[str, Any]:
        """Every object and every request's key, for ``GET /objects``."""
        return {"objects": self.objects, "requests": self.requests}
