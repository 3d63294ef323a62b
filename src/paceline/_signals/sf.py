"""Structured Field Values for HTTP (RFC 8941, RFC 9651): the List and Dictionary parsers.

Only what the RateLimit headers need: Lists and Dictionaries of Items and Inner Lists, with
Parameters; bare Integers, Decimals, Strings, Tokens, Byte Sequences, Booleans and (RFC 9651)
Dates. Display Strings are not supported: a field holding one fails to parse, and is ignored.

The RFC's rule for failure is all or nothing: any syntax error fails the whole field (the caller
then ignores it), so a parsed field is never half of what the server sent.

>>> parse_list('"permin";q=50;w=60, perhr;q=1000')
[Item(value='permin', params={'q': 50, 'w': 60}), Item(value='perhr', params={'q': 1000})]
>>> parse_list('"a";q=') is None
True
"""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass

from paceline.errors import PacelineError

__all__ = ["BareItem", "InnerList", "Item", "Member", "Token", "parse_dictionary", "parse_list"]


class Token(str):
    """A Token (``foo``, unquoted), kept apart from a String (``"foo"``) for callers who care."""

    __slots__ = ()


# bool first: it is a subclass of int, so callers test ``type(v) is int`` for Integers.
BareItem = bool | int | float | str | bytes


@dataclass(frozen=True, slots=True)
class Item:
    """A bare item with its parameters (a later duplicate parameter overrides, per RFC 8941)."""

    value: BareItem
    params: dict[str, BareItem]


@dataclass(frozen=True, slots=True)
class InnerList:
    """``(a b c);p=1``: items in parentheses, with parameters on the list itself."""

    items: tuple[Item, ...]
    params: dict[str, BareItem]


Member = Item | InnerList

_DIGITS = frozenset(string.digits)
_ALPHA = frozenset(string.ascii_letters)
_LCALPHA = frozenset(string.ascii_lowercase)
_KEY_FIRST = _LCALPHA | {"*"}
_KEY_REST = _LCALPHA | _DIGITS | frozenset("_-.*")
_TCHAR = _ALPHA | _DIGITS | frozenset("!#$%&'*+-.^_`|~")
_TOKEN_REST = _TCHAR | frozenset(":/")
_BASE64 = _ALPHA | _DIGITS | frozenset("+/=")
# RFC 8941 §3.3.1/§3.3.2: at most 15 digits for an Integer (fits an IEEE double exactly), and
# 12 integer + 3 fraction digits for a Decimal. Longer numbers are errors, not rounding.
_MAX_INTEGER_DIGITS = 15
_MAX_DECIMAL_INT_DIGITS = 12
_MAX_DECIMAL_FRACTION_DIGITS = 3


class _Invalid(PacelineError):
    """Internal: the field is not valid; the public functions turn it into ``None``."""


def parse_list(text: str) -> list[Member] | None:
    """The members of a List field, or ``None`` if the field is not a valid List.

    >>> parse_list("")
    []
    >>> parse_list("(1 2);x, ?0")  # doctest: +NORMALIZE_WHITESPACE
    [InnerList(items=(Item(value=1, params={}), Item(value=2, params={})), params={'x': True}),
     Item(value=False, params={})]
    """
    parser = _Parser(text)
    try:
        return parser.list()
    except _Invalid:
        return None


def parse_dictionary(text: str) -> dict[str, Member] | None:
    """The members of a Dictionary field, or ``None`` if it is not a valid Dictionary.

    >>> parse_dictionary("limit=100, remaining=50;x")  # doctest: +NORMALIZE_WHITESPACE
    {'limit': Item(value=100, params={}),
     'remaining': Item(value=50, params={'x': True})}
    """
    parser = _Parser(text)
    try:
        return parser.dictionary()
    except _Invalid:
        return None


class _Parser:
    """A cursor over one field value; each method consumes what it parses or raises."""

    __slots__ = ("i", "s")

    def __init__(self, text: str) -> None:
        # RFC 8941 §4.2 discards leading and trailing SP; HTTP already trimmed OWS (SP and HTAB).
        self.s = text.strip(" \t")
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise _Invalid
        self.i += 1
        return char

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.i += 1

    def after_member(self) -> bool:
        """Consume the separator after a member; ``True`` at the end of the field."""
        self.skip(" \t")
        if self.i >= len(self.s):
            return True
        if self.take() != ",":
            raise _Invalid
        self.skip(" \t")
        if self.i >= len(self.s):  # a trailing comma is an error
            raise _Invalid
        return False

    def list(self) -> list[Member]:
        members: list[Member] = []
        if not self.s:
            return members
        while True:
            members.append(self.member())
            if self.after_member():
                return members

    def dictionary(self) -> dict[str, Member]:
        members: dict[str, Member] = {}
        if not self.s:
            return members
        while True:
            key = self.key()
            if self.peek() == "=":
                self.i += 1
                members[key] = self.member()
            else:
                members[key] = Item(True, self.params())
            if self.after_member():
                return members

    def member(self) -> Member:
        if self.peek() != "(":
            return self.item()
        self.i += 1
        items: list[Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                return InnerList(tuple(items), self.params())
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise _Invalid

    def item(self) -> Item:
        value = self.bare_item()
        return Item(value, self.params())

    def params(self) -> dict[str, BareItem]:
        params: dict[str, BareItem] = {}
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            key = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.i += 1
                value = self.bare_item()
            params[key] = value
        return params

    def key(self) -> str:
        start = self.i
        if self.peek() not in _KEY_FIRST or not self.peek():
            raise _Invalid
        self.i += 1
        while self.peek() and self.peek() in _KEY_REST:
            self.i += 1
        return self.s[start : self.i]

    def bare_item(self) -> BareItem:
        char = self.peek()
        if not char:
            raise _Invalid
        if char == "-" or char in _DIGITS:
            return self.number()
        if char == '"':
            return self.string()
        if char == "*" or char in _ALPHA:
            return self.token()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            self.i += 1
            flag = self.take()
            if flag not in ("0", "1"):
                raise _Invalid
            return flag == "1"
        if char == "@":  # RFC 9651 Date: an Integer of epoch seconds
            self.i += 1
            value = self.number()
            if type(value) is not int:
                raise _Invalid
            return value
        raise _Invalid

    def number(self) -> int | float:
        sign = 1
        if self.peek() == "-":
            self.i += 1
            sign = -1
        if self.peek() not in _DIGITS or not self.peek():
            raise _Invalid
        start = self.i
        point = -1
        while self.peek():
            char = self.peek()
            if char in _DIGITS:
                self.i += 1
            elif char == "." and point < 0:
                if self.i - start > _MAX_DECIMAL_INT_DIGITS:
                    raise _Invalid
                point = self.i
                self.i += 1
            else:
                break
        text = self.s[start : self.i]
        if point < 0:
            if len(text) > _MAX_INTEGER_DIGITS:
                raise _Invalid
            return sign * int(text)
        fraction = self.i - point - 1
        if not 1 <= fraction <= _MAX_DECIMAL_FRACTION_DIGITS:
            raise _Invalid
        return sign * float(text)

    def string(self) -> str:
        self.i += 1
        chars: list[str] = []
        while True:
            char = self.take()
            if char == "\\":
                escaped = self.take()
                if escaped not in ('"', "\\"):
                    raise _Invalid
                chars.append(escaped)
            elif char == '"':
                return "".join(chars)
            elif not " " <= char <= "~":
                raise _Invalid
            else:
                chars.append(char)

    def token(self) -> Token:
        start = self.i
        self.i += 1
        while self.peek() and self.peek() in _TOKEN_REST:
            self.i += 1
        return Token(self.s[start : self.i])

    def byte_sequence(self) -> bytes:
        self.i += 1
        end = self.s.find(":", self.i)
        if end < 0:
            raise _Invalid
        encoded = self.s[self.i : end]
        self.i = end + 1
        if not all(char in _BASE64 for char in encoded):
            raise _Invalid
        # RFC 8941 §4.2.7: parsers SHOULD NOT fail when "=" padding is missing; restore it.
        bare = encoded.rstrip("=")
        try:
            return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
        except binascii.Error:
            raise _Invalid from None
