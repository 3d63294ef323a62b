"""One lane per server: each server's pause, adaptive controller and header limits are its own.

A batch whose requests go to several servers keeps, for each, what it learns from that server:
its ``Retry-After`` pauses only its own requests, its 429s cut only its own rate, its
``RateLimit-Policy`` limits only its own requests (issue 11: one pause and one controller per
batch served a fast server's 1,000 requests at 0.26 of its quota while a slow one paused).

A server is its scheme, host and port (the origin of RFC 6454 §4, userinfo and path left out),
lower-cased, with the default port written out: ``https://API.example/v1`` and
``https://api.example:443/v2`` share a lane, ``http://api.example`` is another. Several hosts
behind one quota (``a.api.example``, ``b.api.example``) are separate lanes here; a key of the
user's choosing is for later. The runner keeps a queue per lane inside its read-ahead (see
``runners/lanes.py``, where the memory each costs is stated).

A user's ``rate_limiter`` (``--rate``) stays one limit for the whole batch: every lane's
:class:`ServerLimits` takes its token first.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any

import httpx

from paceline._limiter import RateLimiter
from paceline.http._limits import DEFAULT_MAX_HOLD_S, ServerLimits
from paceline.http._messages import InvalidRequest, as_request, request_url
from paceline.policy.adaptive import AdaptiveController
from paceline.runners.lanes import LaneGates

_DEFAULT_PORTS = {"http": 80, "https": 443}

UNPLACED = ""
"""The lane of requests whose URL does not parse: they fail when sent, without a server."""


def server_key(url: httpx.URL) -> str:
    """The server a URL goes to: ``scheme://host:port``, lower-cased, default port written.

    >>> server_key(httpx.URL("HTTPS://API.Example/v1/items?page=2"))
    'https://api.example:443'
    >>> server_key(httpx.URL("http://user:secret@127.0.0.1:8080/")), server_key(httpx.URL("http://[::1]/"))
    ('http://127.0.0.1:8080', 'http://[::1]:80')
    """
    scheme = url.scheme.lower()
    host = url.host.lower()
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = url.port if url.port is not None else _DEFAULT_PORTS.get(scheme, 0)
    return f"{scheme}://{host}:{port}"


class ServerLanes:
    """The :class:`~paceline.runners.lanes.Lanes` of an HTTP batch: a lane per server, each
    with its own :class:`ServerLimits` and (with adaptive control) its own controller.

    ``controller`` is the template: the first server's lane uses it itself (so a caller that
    passed one, or a display that reads it, sees that server), every other server gets a new
    controller with the same settings. ``request_of`` finds the request in a batch's item
    (default: the item is one).

    >>> lanes = ServerLanes()
    >>> lanes.key_of("https://a.example/1"), lanes.key_of({"url": "http://b.example:81/2"})
    ('https://a.example:443', 'http://b.example:81')
    >>> lanes.open("https://a.example:443").limiter is lanes.limits_for("https://a.example:443")
    True
    """

    def __init__(
        self,
        user: RateLimiter | None = None,
        *,
        controller: AdaptiveController | None = None,
        max_hold_s: float = DEFAULT_MAX_HOLD_S,
        base_url: str | None = None,
        request_of: Callable[[Any], Any] | None = None,
    ) -> None:
        self.user = user
        self.controller = controller
        self.max_hold_s = max_hold_s
        self._base: httpx.URL | None = None
        if base_url is not None:
            try:
                self._base = request_url(base_url)
            except InvalidRequest:  # said by the sender, which refuses it the same way
                self._base = None
        self._request_of = request_of
        self._limits: dict[str, ServerLimits] = {}
        self._controllers: dict[str, AdaptiveController] = {}

    def key_of(self, item: Any) -> str:
        """The server ``item``'s request goes to; :data:`UNPLACED` when it has no valid URL."""
        try:
            request = as_request(item if self._request_of is None else self._request_of(item))
            return server_key(request_url(request.url, self._base))
        except Exception:  # the request fails when it is sent, with the reason
            return UNPLACED

    def open(self, key: Hashable) -> LaneGates:
        """The gates of server ``key``: its header limits and its controller."""
        assert isinstance(key, str)
        return LaneGates(self.limits_for(key), self._controllers.get(key))

    def limits_for(self, key: str) -> ServerLimits:
        """Server ``key``'s limits (made, with its controller, the first time it is asked)."""
        limits = self._limits.get(key)
        if limits is None:
            template = self.controller
            controller = None
            if template is not None:
                first = not self._controllers
                controller = template if first else AdaptiveController(template.settings)
                self._controllers[key] = controller
            limits = ServerLimits(self.user, controller=controller, max_hold_s=self.max_hold_s)
            self._limits[key] = limits
        return limits

    def servers(self) -> Iterator[tuple[str, ServerLimits, AdaptiveController | None]]:
        """Every server seen so far: its key, limits and controller."""
        for key, limits in list(self._limits.items()):
            yield key, limits, self._controllers.get(key)
