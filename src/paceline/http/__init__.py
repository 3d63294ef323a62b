"""paceline.http: batches of HTTP requests with httpx, within the server's limits.

Needs the ``http`` extra: ``pip install 'paceline[http]'``.

>>> import asyncio
>>> from paceline.http import fetch_all
>>> from paceline.testing.api_server import ApiServer
>>> with ApiServer() as server:
...     results = asyncio.run(fetch_all([f"{server.url}/items/{i}" for i in range(3)]))
>>> [r.value.status_code for r in results]
[200, 200, 200]
"""

try:
    import httpx as _httpx  # noqa: F401 - only to fail early with a clear message
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "paceline.http needs httpx: install it with pip install 'paceline[http]'"
    ) from exc

from paceline.http._face import fetch_all, fetch_all_sync, stream_requests
from paceline.http._idempotency import MaybeProcessed
from paceline.http._limits import ServerLimits
from paceline.http._messages import (
    HttpRequest,
    HttpResponse,
    HttpResponseCodec,
    HttpStatusError,
    HttpTimeout,
    HttpTransportError,
    InvalidRequest,
    ServerUnreachable,
    as_request,
    usage_at,
    usage_cost,
    validate_request,
)
from paceline.http._pool import ShardedTransport
from paceline.policy.answers import Verdict, classify_answer

__all__ = [
    "HttpRequest",
    "HttpResponse",
    "HttpResponseCodec",
    "HttpStatusError",
    "HttpTimeout",
    "HttpTransportError",
    "InvalidRequest",
    "MaybeProcessed",
    "ServerLimits",
    "ServerUnreachable",
    "ShardedTransport",
    "Verdict",
    "as_request",
    "classify_answer",
    "fetch_all",
    "fetch_all_sync",
    "stream_requests",
    "usage_at",
    "usage_cost",
    "validate_request",
]

# For paceline's command line, which sends its rows with the face's own sender and retries:
# reachable by name, but not part of the public API (not in __all__), so they may change.
from paceline.http._face import DEFAULT_RETRY as DEFAULT_RETRY
from paceline.http._face import client_for as client_for
from paceline.http._face import http_retry as http_retry
from paceline.http._face import rules_classifier as rules_classifier
from paceline.http._face import sender as sender
from paceline.http._idempotency import Idempotency as Idempotency
from paceline.http._servers import ServerLanes as ServerLanes
