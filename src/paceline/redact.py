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
import hashlib
import json
import re
from typing import Any

__all__ = [
    "REDACTED",
    "SENSITIVE_KEYS",
    "is_sensitive_key",
    "is_sensitive_name",
    "only_names_fields",
    "redact_argv",
    "redact_data",
    "redact_headers",
    "redact_text",
]

REDACTED = "[REDACTED]"

# Compared after lower-casing and dropping "-", "_" and ".", so "API-Key", "api_key", "apiKey"
# and "X_API_KEY" all match one entry.
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
# A key whose name ends like this is a credential wherever it turns up: in results, headers,
# query strings ("X-Auth-Token", "Private-Token", "db_password", "x-amz-signature"). Whole-word
# endings only, so "tokens_used", "secretary" and "max_tokens" stay readable in stored results.
_CREDENTIAL_ENDINGS = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "sessionkey",
    "sessionid",
    "signature",
    "credential",
    "credentials",
    "cookie",
    "authorization",
)
# Header and query-parameter names are wider: any *word* of the name (split at "-", "_", ".",
# and camelCase) among these ("X-Auth-User", "key", "X-Session", "sig" of an Azure SAS URL). Not
# for keys of result data, where "key" (S3 object names, Jira issue keys) and "session" are
# ordinary fields. Whole words, so "keyword", "monkey", "author" and "passage" are not secrets.
_CREDENTIAL_WORDS = frozenset(
    {
        "token",
        "key",
        "apikey",
        "secret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "session",
        "sessionid",
        "signature",
        "sig",
        "credential",
        "credentials",
        "cookie",
        "authorization",
    }
)
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def _normal(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(".", "")


def is_sensitive_key(name: str) -> bool:
    """True if a mapping key names a credential (case, ``-``, ``_`` and ``.`` do not matter):
    one of :data:`SENSITIVE_KEYS`, or a name ending in a credential word (``X-Auth-Token``,
    ``db_password``, ``x-amz-signature``).

    >>> is_sensitive_key("X-Api-Key"), is_sensitive_key("accessToken"), is_sensitive_key("user")
    (True, True, False)
    >>> is_sensitive_key("Private-Token"), is_sensitive_key("tokens_used"), is_sensitive_key("key")
    (True, False, False)
    """
    normal = _normal(name)
    return normal in SENSITIVE_KEYS or normal.endswith(_CREDENTIAL_ENDINGS)


def is_sensitive_name(name: str) -> bool:
    """True if a header or query-parameter name is a credential's: :func:`is_sensitive_key`,
    or any word of the name is one of token, key, secret, password, auth, session, signature,
    sig, credential(s), cookie (whole words: ``keyword`` and ``author`` are not).

    >>> [is_sensitive_name(n) for n in ("key", "X-Auth-User", "sessionId", "keyword", "author")]
    [True, True, True, False, False]
    """
    if is_sensitive_key(name):
        return True
    return any(word.lower() in _CREDENTIAL_WORDS for word in _WORDS.findall(name))


@functools.lru_cache(maxsize=1024)
def _sensitive_name(name: str) -> bool:
    return is_sensitive_name(name)


@functools.lru_cache(maxsize=1024)
def _sensitive_key(name: str) -> bool:
    return is_sensitive_key(name)


# ``{column}`` placeholders of a CLI template, optionally after an auth scheme ("Bearer {t}";
# the schemes of the IANA registry and common API ones, not any word: "hunter {x}" is a secret).
_PLACEHOLDERS = re.compile(
    r"\s*(?:(?:bearer|basic|token|digest|bot|oauth|apikey|key|negotiate)\s+)?"
    r"(?:\{[^{}\s]*\}\s*)+",
    re.IGNORECASE,
)


def only_names_fields(value: str) -> bool:
    """True if a template value holds nothing but ``{column}`` placeholders (after an optional
    auth scheme word): it names where the secret comes from, it is not one.

    >>> only_names_fields("{pw}"), only_names_fields("Bearer {token}"), only_names_fields("k{x}")
    (True, True, False)
    """
    return _PLACEHOLDERS.fullmatch(value) is not None


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
    Keys are credentials by :func:`is_sensitive_key` (``"key"`` or ``"session"`` alone are data).

    >>> redact_data([{"token": "t0k", "n": 1}, {"Set-Cookie": ["a=1", "b=2"]}])
    [{'token': '[REDACTED]', 'n': 1}, {'Set-Cookie': '[REDACTED]'}]
    """
    if isinstance(data, dict):
        return {
            key: REDACTED if isinstance(key, str) and _sensitive_key(key) else redact_data(value)
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
    r"(?!\[REDACTED\])([^\s\"'][^\r\n\"']*)",
    re.IGNORECASE,
)
# user:password@ in a URL.
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)@", re.IGNORECASE)
# Auth schemes that turn up without their header, e.g. in a repr or a log line.
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/-]+=*", re.IGNORECASE)
_BASIC = re.compile(r"\b(basic)\s+[A-Za-z0-9+/]{4,}={0,2}(?![A-Za-z0-9+/=])", re.IGNORECASE)
# name=value and name: value pairs: query strings, form bodies, JSON and dict reprs, argv words
# (--password=x). Any name, kept only if is_sensitive_name says so; the name may be quoted.
_NAME = re.compile(r"([\"']?)(?<![A-Za-z0-9_.])([A-Za-z][A-Za-z0-9_.-]*)\1(\s*[:=]\s*)")
# The value after a credential's name: quoted, it runs to its closing quote; bare, to the next
# separator ({column} placeholders count as part of it: "{a}rest" is one value).
_VALUE = re.compile(
    r"(?!\[REDACTED\])(?:([\"'])([^\"'\r\n]*)\1|((?:\{[^{}\s]*\}|[^\s&#\"',;}\]])+))"
)


_LINE = re.compile(r"[^\r\n\"']*")
# A command-line flag and its value as the next word: "--password hunter2", "--api-key 'k'".
_FLAG = re.compile(
    r"(?<![\w-])--([A-Za-z][A-Za-z0-9_-]*)(\s+)(?!\[REDACTED\])(?:([\"'])([^\"'\r\n]*)\3|([^\s\"'-]\S*))"
)


def _redact_flags(text: str, placeholders: bool) -> str:
    def flag(match: re.Match[str]) -> str:
        value = match.group(4) if match.group(3) else match.group(5)
        if not _sensitive_name(match.group(1)) or (placeholders and only_names_fields(value)):
            return match.group(0)
        quote = match.group(3) or ""
        return f"--{match.group(1)}{match.group(2)}{quote}{REDACTED}{quote}"

    return _FLAG.sub(flag, text)


def redact_argv(words: list[str], *, placeholders: bool = False) -> list[str]:
    """A command's words with credentials masked: each word as :func:`redact_text` does, and
    the word after a credential flag (``--password hunter2``).

    >>> redact_argv(["tool", "--token", "t0k", "--user", "ann", "--secret={s}"], placeholders=True)
    ['tool', '--token', '[REDACTED]', '--user', 'ann', '--secret={s}']
    """
    shown = [redact_text(word, placeholders=placeholders) for word in words]
    for index in range(1, len(words)):
        flag, word = words[index - 1], words[index]
        if (
            flag.startswith("--")
            and "=" not in flag
            and _sensitive_name(flag[2:])
            and not word.startswith("-")
            and not (placeholders and only_names_fields(word))
        ):
            shown[index] = REDACTED
    return shown


def _line_names_fields(text: str, start: int) -> bool:
    # A header-like value runs on past a space: "Authorization: Bearer {t}".
    line = _LINE.match(text, start)
    return line is not None and only_names_fields(line.group(0))


def _redact_pairs(text: str, placeholders: bool) -> str:
    parts: list[str] = []
    done = 0  # text[:done] is in parts
    for name in _NAME.finditer(text):
        if name.start() < done or not _sensitive_name(name.group(2)):
            continue
        value = _VALUE.match(text, name.end())
        if value is None:
            continue
        secret = value.group(2) if value.group(1) else value.group(3)
        if placeholders and (only_names_fields(secret) or _line_names_fields(text, value.start())):
            continue
        quote = value.group(1) or ""
        parts.append(text[done : name.end()])
        parts.append(f"{quote}{REDACTED}{quote}")
        done = value.end()
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def redact_text(text: str, *, placeholders: bool = False) -> str:
    """``text`` with credentials masked: ``Authorization:``/``Cookie:`` header values, ``Bearer``
    and ``Basic`` credentials, the values of credential-named pairs (:func:`is_sensitive_name`:
    ``api_key=``, ``X-Auth-Token:``, ``--password=``, ``"secret": "..."``), the value after a
    credential flag (``--token abc``) and passwords in URLs.

    ``placeholders=True`` is for templates: a value that only names where the secret comes from
    (``{"password": "{pw}"}``, ``api_key={key}``) is not one and stays as it is.

    >>> redact_text("GET https://bob:hunter2@api.example/x failed: Authorization: Bearer abc.def")
    'GET https://bob:[REDACTED]@api.example/x failed: Authorization: [REDACTED]'
    >>> redact_text("{'password': 'p w', 'user': 'ann'}")
    "{'password': '[REDACTED]', 'user': 'ann'}"
    >>> redact_text("/x?sig=abc&key={key}&auth_token=t{n}", placeholders=True)
    '/x?sig=[REDACTED]&key={key}&auth_token=[REDACTED]'

    Redacting twice changes nothing more than redacting once.
    """

    def header(match: re.Match[str]) -> str:
        if placeholders and only_names_fields(match.group(3)):
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{REDACTED}"

    def userinfo(match: re.Match[str]) -> str:
        if placeholders and only_names_fields(match.group(2)):
            return match.group(0)
        return f"{match.group(1)}{REDACTED}@"

    text = _HEADER.sub(header, text)
    text = _USERINFO.sub(userinfo, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _BASIC.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _redact_flags(text, placeholders)
    return _redact_pairs(text, placeholders)


def key_without_secrets(key: str, data: Any = None) -> str:
    """``key`` with its credentials masked (``api_key=``, ``user:pass@``, ``--password=``...:
    item keys are written to the journal, ``--out`` and ``--dry-run``) and, when something was
    masked, a digest of ``data`` (default: the key itself) appended, so two items that differ
    only in a secret stay two items and an item keeps its key from run to run. A caller whose
    ``data`` leaves out a credential written in a template lets it be rotated between a run
    and its resume.

    >>> key_without_secrets("GET https://h/items/1?api_key=k1", {"id": 1})
    'GET https://h/items/1?api_key=[REDACTED] #354aaef7a5f6'
    >>> key_without_secrets("GET https://h/items/1")
    'GET https://h/items/1'
    """
    shown = redact_text(key)
    if shown == key:
        return key
    return f"{shown} #{digest(key if data is None else data)[:12]}"


def digest(value: Any) -> str:
    """A short stable digest of a string or JSON-ready value (16 hex digits of SHA-256)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]
