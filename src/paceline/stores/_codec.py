"""How results become column values and back: native SQLite values for small scalars, JSON
text for the rest, and an optional user codec in front for types JSON cannot hold.

A stored result is a pair ``(kind, value)``:

====  ===========  =================================================================
kind  name         ``value`` column
====  ===========  =================================================================
0     ``NONE``     NULL; the result is ``None``
1     ``NATIVE``   the int (64-bit), finite float or str itself, as SQLite stores it
2     ``BOOL``     0 or 1 (SQLite has no boolean: without the tag, ``True`` reads as 1)
3     ``JSON``     JSON text: lists, dicts, ints beyond 64 bits, NaN, unencodable str
====  ===========  =================================================================

Scalars skip ``json.dumps``/``json.loads`` entirely, which is most of what makes
:meth:`Journal.record` cheap for typical results (ids, counts, status strings).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from paceline._results import error_code_for
from paceline.errors import InvalidArgumentType
from paceline.redact import redact_data, redact_text
from paceline.stores._errors import JournalCorrupt, JournalEncodeError

__all__ = [
    "Codec",
    "JsonCodec",
    "check_json_ready",
    "checked_key",
    "decode_result",
    "encode_result",
    "general_row",
]

KIND_NONE = 0
KIND_NATIVE = 1
KIND_BOOL = 2
KIND_JSON = 3

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

# Bound as a parameter, NaN is stored as NULL by SQLite. Binding it costs what binding any float
# costs, whereas binding None goes through the sqlite3 module's adapter lookup (~0.5 us each).
NULL_FLOAT = float("nan")

_FIX = (
    "pass codec=... to the journal (an object with encode(value) -> JSON-ready data and "
    "decode(data) -> value), or return JSON-ready results"
)


class Codec(Protocol):
    """Turns results into JSON-ready data for the journal, and back.

    ``encode`` must return ``None``, ``bool``, ``int``, ``float``, ``str``, or lists and dicts
    (with ``str`` keys) of those; ``decode`` receives exactly that data when a batch resumes.
    A ``None`` result is stored as is: the codec never sees it.

    >>> import datetime
    >>> class DateCodec:
    ...     def encode(self, value):
    ...         return value.isoformat()
    ...     def decode(self, data):
    ...         return datetime.date.fromisoformat(data)
    >>> DateCodec().decode(DateCodec().encode(datetime.date(2024, 5, 1)))
    datetime.date(2024, 5, 1)
    """

    def encode(self, value: Any) -> Any:
        """``value`` as JSON-ready data."""
        ...

    def decode(self, data: Any) -> Any:
        """The value that ``encode`` turned into ``data``."""
        ...


class JsonCodec:
    """The default codec: JSON-ready values pass through unchanged, anything else is refused.

    Refusing is deliberate: a tuple or a ``datetime`` would come back from a resumed batch as
    something else (a list, a string), and the caller would find out far from the cause.

    >>> JsonCodec().encode({"id": 7, "tags": ["a", "b"]})
    {'id': 7, 'tags': ['a', 'b']}
    >>> JsonCodec().encode((1, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.stores._errors.JournalEncodeError: result of type 'tuple' is not JSON-ready ...
    """

    __slots__ = ()

    def encode(self, value: Any) -> Any:
        """Check that ``value`` is JSON-ready and return it."""
        check_json_ready(value)
        return value

    def decode(self, data: Any) -> Any:
        """Return ``data``."""
        return data


def _type_name(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def check_json_ready(value: Any, what: str = "result") -> None:
    """Raise :class:`JournalEncodeError` unless ``value`` is JSON-ready, naming where and what.

    >>> check_json_ready({"a": [1, {"b": {1, 2}}]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.stores._errors.JournalEncodeError: result['a'][1]['b'] of type 'set' is not ...
    """
    try:
        if not _ready(value):
            _check(value, what)  # walk again, naming the place, to raise the error
    except RecursionError:
        raise JournalEncodeError(
            f"{what} is nested too deeply (or contains itself) to store as JSON; {_FIX}"
        ) from None


def _ready(value: Any) -> bool:
    """Whether ``value`` is JSON-ready: :func:`_check` without building a path per element
    (most results are fine; the path is only needed for the error)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(map(_ready, value))
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not _ready(item):
                return False
        return True
    return False


def _check(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise JournalEncodeError(
                    f"{where} has a key {key!r} of type {_type_name(key)!r}: JSON object keys "
                    f"are str, and this one would come back as {json.dumps(key)!r}; {_FIX}"
                )
            _check(item, f"{where}[{key!r}]")
        return
    hint = " (it would come back as a list)" if isinstance(value, tuple) else ""
    raise JournalEncodeError(
        f"{where} of type {_type_name(value)!r} is not JSON-ready{hint}: the journal stores "
        f"None, bool, int, float, str, and lists and dicts of those; {_FIX}"
    )


def _valid_utf8(text: str) -> bool:
    # Lone surrogates are legal in a Python str but not in SQLite text.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_result(value: Any, codec: Codec | None) -> tuple[int, Any]:
    """``(kind, column value)`` for ``value``; the general path behind the fast one in
    :meth:`Journal.record`. Dicts and lists are redacted (:func:`paceline.redact.redact_data`)."""
    if value is None:
        return KIND_NONE, NULL_FLOAT
    if codec is None:
        data, what = value, "result"
    else:
        data = codec.encode(value)
        what = f"{type(codec).__qualname__}.encode(result)"
    if data is None:
        return KIND_NONE, NULL_FLOAT
    if isinstance(data, bool):
        return KIND_BOOL, int(data)
    if isinstance(data, int):
        number = int(data)
        if I64_MIN <= number <= I64_MAX:
            return KIND_NATIVE, number
        return KIND_JSON, str(number)
    if isinstance(data, float):
        real = float(data)
        if real == real:
            return KIND_NATIVE, real
        return KIND_JSON, json.dumps(real)
    if isinstance(data, str):
        text = str.__str__(data)
        if _valid_utf8(text):
            return KIND_NATIVE, text
        return KIND_JSON, json.dumps(text)
    check_json_ready(data, what)
    text = json.dumps(redact_data(data), ensure_ascii=False, separators=(",", ":"))
    if not _valid_utf8(text):
        text = json.dumps(redact_data(data), separators=(",", ":"))
    return KIND_JSON, text


def decode_result(kind: int, value: Any, codec: Codec | None) -> Any:
    """The result stored as ``(kind, value)``, through ``codec.decode`` if there is a codec."""
    if kind == KIND_NONE:
        return None
    if kind == KIND_NATIVE:
        data = value
    elif kind == KIND_BOOL:
        data = bool(value)
    elif kind == KIND_JSON and isinstance(value, str):
        try:
            data = json.loads(value)
        except ValueError as exc:
            raise JournalCorrupt(f"a stored result is not valid JSON ({exc})") from exc
    else:
        raise JournalCorrupt(f"a stored result has an unknown kind {kind!r} / {type(value)}")
    return data if codec is None else codec.decode(data)


def checked_key(key: object) -> str:
    """``key`` as a plain ``str`` that SQLite can store, or a clear error."""
    if not isinstance(key, str):
        raise InvalidArgumentType(f"journal key {key!r} is a {type(key).__name__}; keys are str")
    if not _valid_utf8(key):
        raise JournalEncodeError(
            f"journal key {key!r} is not valid Unicode (it has a lone surrogate); pass "
            f"item_ids=... or key=... to name the items"
        )
    return str.__str__(key)


def general_row(
    seq: int,
    key: str,
    success: bool,
    result: Any,
    error: BaseException | None,
    attempts: int,
    duration_s: float | None,
    codec: Codec | None,
) -> tuple[Any, ...]:
    """The row of an outcome off the fast path: a success whose result needs a kind tag, or a
    failure (the writer tells the shapes apart by length). Error messages are redacted."""
    kind, value = encode_result(result, codec)
    if success and error is None:
        return (seq, key, kind, value, attempts, NULL_FLOAT if duration_s is None else duration_s)
    message = error_type = error_code = None
    if error is not None:
        try:
            text = str(error)
        except Exception:  # a broken __str__ must not lose the outcome
            text = ""
        text = redact_text(text or type(error).__name__)
        message = text.encode("utf-8", "replace").decode("utf-8")
        error_type = type(error).__name__
        error_code = error_code_for(error).value
    return (
        seq,
        key,
        1 if success else 0,
        kind,
        value,
        message,
        error_type,
        error_code,
        attempts,
        duration_s,
    )
