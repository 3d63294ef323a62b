"""``{column}`` templates: how the CLI turns one input row into a URL, a header, a JSON body or
an argv word.

``{name}`` is replaced by the row's ``name`` value; ``{{`` and ``}}`` are literal braces.
A template is split once (:meth:`Template.parse`); rendering a row is a lookup per placeholder
and one ``str.join``. Values render as text: a string as is, None as the empty string, true and
false in lower case, a list or object as compact JSON, anything else with ``str()``.

>>> url = Template.parse("https://api.example.com/users/{id}?tenant={tenant}", label="--url")
>>> url.fields
('id', 'tenant')
>>> url.render({"id": 7, "tenant": "acme"})
'https://api.example.com/users/7?tenant=acme'
>>> body = '{"name": "{name}", "age": "{age}", "note": "{age} years"}'
>>> render_json(body, {"name": "Ada", "age": 36})
{'name': 'Ada', 'age': 36, 'note': '36 years'}
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from paceline.errors import PacelineError

__all__ = [
    "JsonTemplate",
    "MissingField",
    "Template",
    "TemplateError",
    "UnknownColumn",
    "check_fields",
    "escape",
    "render_argv",
    "render_json",
    "render_shell",
    "shell_quote",
    "text_of",
]

shell_quote = shlex.quote

# One token at a time: an escaped brace, a placeholder, or a brace that is neither (an error).
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_SHOWN_COLUMNS = 20  # a message lists at most this many of a row's keys


class TemplateError(PacelineError, ValueError):
    """A template's syntax is wrong (an unclosed ``{``, a lone ``}``, an empty ``{}``, a
    ``--json`` template that is not JSON). The message names the template and the fix."""


class MissingField(PacelineError, LookupError):
    """A row has no value for a template's placeholder.

    ``field`` is the missing name; ``available`` the row's keys; ``template`` the template's
    text and ``label`` its option (e.g. ``--url``), if known.
    """

    def __init__(
        self, field: str, available: Sequence[str], template: str, label: str | None = None
    ) -> None:
        super().__init__(field)
        self.field = field
        self.available = list(available)
        self.template = template
        self.label = label

    def __str__(self) -> str:
        return (
            f"no column {self.field!r} in this row "
            f"(it has: {_names(self.available)}{_suggestion(self.field, self.available)})"
            f" — check the template {_describe(self.template, self.label)}{_brace_hint(self.field)}"
        )


class UnknownColumn(PacelineError, ValueError):
    """A template names a column that the input's header lacks (found before the batch
    starts, by :func:`check_fields`)."""

    def __init__(
        self,
        field: str,
        columns: Sequence[str],
        template: str,
        label: str | None = None,
        source: str = "the input",
    ) -> None:
        self.field = field
        self.columns = list(columns)
        self.template = template
        self.label = label
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"{_describe(self.template, self.label)}: no column {self.field!r} in "
            f"{self.source} (columns: {_names(self.columns)}"
            f"{_suggestion(self.field, self.columns)}){_brace_hint(self.field)}"
        )


def _describe(text: str, label: str | None) -> str:
    return f"{label} {text!r}" if label else repr(text)


def _names(names: Sequence[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:_SHOWN_COLUMNS])
    if len(names) > _SHOWN_COLUMNS:
        shown += f", … ({len(names) - _SHOWN_COLUMNS} more)"
    return shown


def _suggestion(field: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(field, list(names), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _brace_hint(field: str) -> str:
    """For ``{print $1}`` and the like: braces meant literally."""
    if field != field.strip() or any(c in field for c in "\"':;$()=,"):
        return " (for a literal brace, write {{ or }})"
    return ""


def text_of(value: Any) -> str:
    """A row value as template text: str as is, None as "", bools as true/false, lists and
    dicts as compact JSON, anything else with ``str()``."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def escape(text: str) -> str:
    """``text`` with its braces doubled, so that a template of it renders ``text`` itself."""
    return text.replace("{", "{{").replace("}", "}}")


class Template:
    """A parsed ``{column}`` template. Make one with :meth:`parse`; render rows with
    :meth:`render` (one argv word, URL, header...) or :func:`render_shell`.

    ``text`` is the template as written, ``label`` the option it came from (for messages),
    ``fields`` the placeholder names in order of first appearance.
    """

    __slots__ = ("_literals", "_names", "fields", "label", "text")

    def __init__(
        self, text: str, literals: Sequence[str], names: Sequence[str], label: str | None
    ) -> None:
        """Internal: use :meth:`parse`."""
        self.text = text
        self.label = label
        self._literals = tuple(literals)  # one more than _names: text around the placeholders
        self._names = tuple(names)  # every placeholder, in order (repeats included)
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(names))

    @classmethod
    def parse(cls, text: str, *, label: str | None = None) -> Template:
        """Split ``text`` into literal text and placeholders, once.

        ``label`` names the option the template came from, e.g. ``--url``, in messages.
        Raises :class:`TemplateError` for an unclosed ``{``, a lone ``}`` or an empty ``{}``.
        """
        literals: list[str] = []
        names: list[str] = []
        current: list[str] = []
        pos = 0
        for match in _TOKEN.finditer(text):
            current.append(text[pos : match.start()])
            pos = match.end()
            token = match.group()
            if token == "{{":
                current.append("{")
            elif token == "}}":
                current.append("}")
            elif token == "{":
                raise TemplateError(
                    f"{_describe(text, label)}: the '{{' at position {match.start() + 1} is not "
                    "closed — write {column} for a value, or {{ for a literal brace"
                )
            elif token == "}":
                raise TemplateError(
                    f"{_describe(text, label)}: the '}}' at position {match.start() + 1} has no "
                    "'{' — write }} for a literal brace"
                )
            else:
                name = match.group(1)
                if not name:
                    raise TemplateError(
                        f"{_describe(text, label)}: empty placeholder {{}} at position "
                        f"{match.start() + 1} — put a column name inside, like {{id}}, "
                        "or write {{}} for literal braces"
                    )
                literals.append("".join(current))
                current = []
                names.append(name)
        current.append(text[pos:])
        literals.append("".join(current))
        return cls(text, literals, names, label)

    @property
    def is_single_field(self) -> bool:
        """True if the template is exactly one placeholder, like ``{id}``."""
        return len(self._names) == 1 and self._literals == ("", "")

    def render(self, row: Mapping[str, Any]) -> str:
        """The template with each placeholder replaced by the row's value, as text (one
        argv word: nothing is split or quoted). Raises :class:`MissingField`."""
        names = self._names
        literals = self._literals
        if not names:
            return literals[0]
        try:
            if len(names) == 1:
                value = row[names[0]]
                return literals[0] + (value if type(value) is str else text_of(value)) + literals[1]
            parts = [literals[0]]
            for name, literal in zip(names, literals[1:]):  # noqa: B905 (one longer, by design)
                value = row[name]
                parts.append(value if type(value) is str else text_of(value))
                parts.append(literal)
            return "".join(parts)
        except KeyError as exc:
            raise self._missing(exc, row) from None

    def render_shell(self, row: Mapping[str, Any]) -> str:
        """Like :meth:`render`, with each value quoted for a POSIX shell (``shlex.quote``);
        the template's own text is left as written."""
        parts = [self._literals[0]]
        try:
            for name, literal in zip(self._names, self._literals[1:]):  # noqa: B905
                parts.append(shlex.quote(text_of(row[name])))
                parts.append(literal)
        except KeyError as exc:
            raise self._missing(exc, row) from None
        return "".join(parts)

    def _missing(self, exc: KeyError, row: Mapping[str, Any]) -> MissingField:
        field = exc.args[0] if exc.args else ""
        return MissingField(str(field), [str(key) for key in row], self.text, self.label)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and (self.text, self.label) == (other.text, other.label)

    def __hash__(self) -> int:
        return hash((self.text, self.label))


class JsonTemplate:
    """A ``--json`` body template: JSON whose strings (keys and values) are templates.

    A string that is exactly one placeholder, like ``"{age}"``, becomes the row's value with
    its type (a JSON Lines number stays a number; CSV values are strings; None is null).
    Placeholders in longer strings and in keys are substituted as text.
    """

    __slots__ = ("_build", "fields", "label", "text")

    def __init__(self, text: str, label: str | None = None) -> None:
        """Parse ``text`` (raises :class:`TemplateError` if it is not JSON, or a string in it
        is not a valid template)."""
        self.text = text
        self.label = label
        try:
            document = json.loads(text)
        except ValueError as exc:
            detail = (
                f"{exc.msg}: column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else exc
            )
            raise TemplateError(
                f"{_describe(text, label)} is not valid JSON ({detail}) — write a JSON value "
                'with each placeholder inside a string, like {"age": "{age}"} '
                "(a string that is just the placeholder keeps the value's type)"
            ) from None
        fields: dict[str, None] = {}
        try:
            self._build = self._compile(document, fields)
        except TemplateError as exc:
            raise TemplateError(f"in {_describe(text, label)}: {exc}") from None
        self.fields = tuple(fields)

    @classmethod
    def parse(cls, text: str, *, label: str | None = None) -> JsonTemplate:
        """The same as ``JsonTemplate(text, label)``."""
        return cls(text, label)

    def _compile(self, node: Any, fields: dict[str, None]) -> Callable[[Mapping[str, Any]], Any]:
        if isinstance(node, str):
            template = Template.parse(node)
            fields.update(dict.fromkeys(template.fields))
            if not template.fields:
                literal = template.render({})  # with {{ and }} undoubled
                return lambda row: literal
            if template.is_single_field:
                name = template.fields[0]
                return lambda row: row[name]
            return template.render
        if isinstance(node, dict):
            items = []
            for key, value in node.items():
                key_template = Template.parse(key)
                fields.update(dict.fromkeys(key_template.fields))
                items.append((key_template.render, self._compile(value, fields)))
            return lambda row: {key(row): value(row) for key, value in items}
        if isinstance(node, list):
            elements = [self._compile(value, fields) for value in node]
            return lambda row: [element(row) for element in elements]
        return lambda row: node  # a number, true, false or null: immutable

    def render(self, row: Mapping[str, Any]) -> Any:
        """A new JSON-ready value for ``row``. Raises :class:`MissingField`."""
        try:
            return self._build(row)
        except MissingField as exc:
            raise MissingField(exc.field, exc.available, self.text, self.label) from None
        except KeyError as exc:
            field = str(exc.args[0]) if exc.args else ""
            raise MissingField(field, [str(k) for k in row], self.text, self.label) from None

    def __repr__(self) -> str:
        return f"JsonTemplate({self.text!r})"


@functools.lru_cache(maxsize=64)
def _json_template(text: str) -> JsonTemplate:
    return JsonTemplate(text, "--json")


def render_json(template_text: str, row: Mapping[str, Any]) -> Any:
    """Render a ``--json`` template for ``row`` (parsed once per distinct text, then cached).
    See :class:`JsonTemplate`."""
    return _json_template(template_text).render(row)


def render_shell(template: Template | str, row: Mapping[str, Any]) -> str:
    """Render for ``--shell``: each substituted value is quoted with ``shlex.quote``."""
    if isinstance(template, str):
        template = Template.parse(template)
    return template.render_shell(row)


def render_argv(templates: Sequence[Template], row: Mapping[str, Any]) -> list[str]:
    """One argv word per template (for ``paceline exec``: no shell, no splitting)."""
    return [template.render(row) for template in templates]


def check_fields(
    templates: Mapping[str, Template | JsonTemplate] | Iterable[Template | JsonTemplate],
    columns: Sequence[str],
    source: str = "the input",
) -> None:
    """Raise :class:`UnknownColumn` for the first placeholder that names no column in
    ``columns`` (a CSV header); call it before the batch starts.

    ``templates`` is either a mapping from option name (``--url``) to template, or templates
    whose ``label`` names their option. ``source`` names the input, e.g. ``input.csv``.
    """
    known = set(columns)
    if isinstance(templates, Mapping):
        pairs: Iterable[tuple[str | None, Template | JsonTemplate]] = templates.items()
    else:
        pairs = ((template.label, template) for template in templates)
    for label, template in pairs:
        for field in template.fields:
            if field not in known:
                raise UnknownColumn(field, columns, template.text, label, source)
