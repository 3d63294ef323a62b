"""Keep secrets out of what paceline writes down: journals, logs, exported results.

:func:`redact_text` masks credentials in free text (error messages, reprs of requests);
:func:`redact_data` replaces the values of credential-named keys in nested dicts and lists.

>>> redact_text("401 for GET /v1/items?api_key=s3cr3t&page=2")
'401 for GET /v1/items?api_key=[REDACTED]&page=2'
>>> redact_data({"user": "ann", "headers": {"Authorization": "Bearer abc"}})
{'user': 'ann', 'headers': {'Authorization': '[REDACTED]'}}

Both err towards masking too much: a message that reads "Basic [REDACTED] failed" is a smaller
problem than a token in a journal that gets attached to a bug report.
"""

from __future__ import annotations

import functools
import re
from typing import Any

__all__ = [
    "REDACTED",
    "SENSITIVE_KEYS",
    "is_sensitive_key",
    "redact_data",
    "redact_headers",
    "redact_text",
]

REDACTED = "[REDACTED]"

# Compared after lower-casing and dropping "-" and "_", so "API-Key", "api_key", "apiKey" and
# "X_API_KEY" all match one entry.
SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "proxyauthorization",
        "cookie",
        "setcookie",
        "xapikey",
        "apikey",
        "token",
        "accesstoken",
        "refreshtoken",
        "password",
        "secret",
        "clientsecret",
    }
)


def is_sensitive_key(name: str) -> bool:
    """True if a mapping key names a credential (case, ``-`` and ``_`` do not matter).

    >>> is_sensitive_key("X-Api-Key"), is_sensitive_key("accessToken"), is_sensitive_key("user")
    (True, True, False)
    """
    return name.lower().replace("-", "").replace("_", "") in SENSITIVE_KEYS


@functools.lru_cache(maxsize=1024)
def _sensitive_name(name: str) -> bool:
    return is_sensitive_key(name)


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    """Mask credential-named headers of a flat ``{name: value}`` dict in place and return it
    (the fast form of :func:`redact_data` for response headers: names repeat, so each name's
    verdict is cached).

    >>> redact_headers({"set-cookie": "s=1", "content-type": "text/plain"})
    {'set-cookie': '[REDACTED]', 'content-type': 'text/plain'}
    """
    for name in headers:
        if _sensitive_name(name):
            headers[name] = REDACTED
    return headers


def redact_data(data: Any) -> Any:
    """A copy of ``data`` with the value of every credential-named key replaced, at any depth.

    Dicts, lists and tuples are copied (tuples stay tuples); everything else is returned as is.
    Keys match :data:`SENSITIVE_KEYS` case-insensitively, ignoring ``-`` and ``_``.

    >>> redact_data([{"token": "t0k", "n": 1}, {"Set-Cookie": ["a=1", "b=2"]}])
    [{'token': '[REDACTED]', 'n': 1}, {'Set-Cookie': '[REDACTED]'}]
    """
    if isinstance(data, dict):
        return {
            key: REDACTED if isinstance(key, str) and _sensitive_name(key) else redact_data(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [redact_data(value) for value in data]
    if isinstance(data, tuple):
        return tuple(redact_data(value) for value in data)
    return data


# Header-like names whose value runs to the end of the line or the closing quote: credentials
# in these contain spaces ("Bearer x", "a=1; b=2"), so stopping at a space would leak the rest.
_HEADER = re.compile(
    r"(?<![A-Za-z0-9-])((?:proxy-)?authorization|(?:set-)?cookie|x-api-key)"
    r"([\"']?\s*[:=]\s*[\"']?)"
    r"(?!\[REDACTED\])[^\s\"'][^\r\n\"']*",
    re.IGNORECASE,
)
# user:password@ in a URL.
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.IGNORECASE)
# Auth schemes that turn up without their header, e.g. in a repr or a log line.
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/-]+=*", re.IGNORECASE)
_BASIC = re.compile(r"\b(basic)\s+[A-Za-z0-9+/]{4,}={0,2}(?![A-Za-z0-9+/=])", re.IGNORECASE)
# name=value and name: value pairs: query strings, form bodies, JSON and dict reprs. The name may
# be quoted; a quoted value runs to its closing quote, a bare one to the next separator.
_PAIR = re.compile(
    r"([\"']?)(?<![A-Za-z0-9])"
    r"(access[_-]?token|refresh[_-]?token|client[_-]?secret|(?:x[_-]?)?api[_-]?key"
    r"|token|password|secret)"
    r"\1(\s*[:=]\s*)"
    r"(?!\[REDACTED\])(?:([\"'])[^\"'\r\n]*\4|[^\s&#\"',;}\]]+)",
    re.IGNORECASE,
)


def _pair(match: re.Match[str]) -> str:
    quote = match.group(4) or ""
    return (
        f"{match.group(1)}{match.group(2)}{match.group(1)}{match.group(3)}{quote}{REDACTED}{quote}"
    )


def redact_text(text: str) -> str:
    """``text`` with credentials masked: ``Authorization:``/``Cookie:`` header values, ``Bearer``
    and ``Basic`` credentials, ``api_key=``/``token=``/``password=`` (and similar) values in
    query strings and key-value text, and passwords in URLs.

    >>> redact_text("GET https://bob:hunter2@api.example/x failed: Authorization: Bearer abc.def")
    'GET https://bob:[REDACTED]@api.example/x failed: Authorization: [REDACTED]'
    >>> redact_text("{'password': 'p w', 'user': 'ann'}")
    "{'password': '[REDACTED]', 'user': 'ann'}"

    Redacting twice changes nothing more than redacting once.
    """
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _BASIC.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _PAIR.sub(_pair, text)
