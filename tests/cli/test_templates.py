"""paceline.cli.templates: {column} templates for URLs, headers, JSON bodies and argv words."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paceline.cli.templates import (
    JsonTemplate,
    MissingField,
    Template,
    TemplateError,
    UnknownColumn,
    check_fields,
    escape,
    render_argv,
    render_json,
    render_shell,
    shell_quote,
    text_of,
)


def test_render_substitutes_columns():
    template = Template.parse("https://api/x/{id}/{kind}?again={id}", label="--url")
    assert template.fields == ("id", "kind")  # each once, in order
    assert template.text == "https://api/x/{id}/{kind}?again={id}"
    assert template.label == "--url"
    rendered = template.render({"id": "42", "kind": "a b", "other": 1})
    assert rendered == "https://api/x/42/a b?again=42"


def test_render_of_single_and_no_placeholder():
    assert Template.parse("{method}").render({"method": "PATCH"}) == "PATCH"
    assert Template.parse("{method}").is_single_field
    assert not Template.parse("x{method}").is_single_field
    assert Template.parse("GET").render({}) == "GET"
    assert Template.parse("").render({}) == ""


def test_doubled_braces_are_literal():
    template = Template.parse("{{literal}} {{{id}}} }}{{")
    assert template.fields == ("id",)
    assert template.render({"id": 7}) == "{literal} {7} }{"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("text", "text"),
        (None, ""),
        (True, "true"),
        (False, "false"),
        (12, "12"),
        (1.5, "1.5"),
        ({"a": [1, "é"]}, '{"a":[1,"é"]}'),
        ([1, None], "[1,null]"),
    ],
)
def test_values_render_as_text(value, text):
    assert text_of(value) == text
    assert Template.parse("<{v}>").render({"v": value}) == f"<{text}>"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "https://x/{id",
            "--url 'https://x/{id': the '{' at position 11 is not closed — write {column} for a "
            "value, or {{ for a literal brace",
        ),
        (
            "a}b",
            "--url 'a}b': the '}' at position 2 has no '{' — write }} for a literal brace",
        ),
        (
            "x/{}",
            "--url 'x/{}': empty placeholder {} at position 3 — put a column name inside, like "
            "{id}, or write {{}} for literal braces",
        ),
        (
            "{a{b}",
            "--url '{a{b}': the '{' at position 1 is not closed — write {column} for a value, "
            "or {{ for a literal brace",
        ),
    ],
)
def test_syntax_errors_name_the_template_and_the_fix(text, message):
    with pytest.raises(TemplateError) as info:
        Template.parse(text, label="--url")
    assert str(info.value) == message


def test_missing_field_message():
    template = Template.parse("https://x/{nmae}", label="--url")
    with pytest.raises(MissingField) as info:
        template.render({"id": 1, "name": "Ada"})
    error = info.value
    assert (error.field, error.available) == ("nmae", ["id", "name"])
    assert str(error) == (
        "no column 'nmae' in this row (it has: id, name; did you mean 'name'?) — check the "
        "template --url 'https://x/{nmae}'"
    )
    with pytest.raises(MissingField) as info:
        Template.parse("{zzz}").render({"id": 1})
    assert str(info.value) == (
        "no column 'zzz' in this row (it has: id) — check the template '{zzz}'"
    )


def test_missing_field_hints_at_literal_braces():
    with pytest.raises(MissingField) as info:
        Template.parse("{print $1}").render({"line": "x"})
    assert str(info.value).endswith("(for a literal brace, write {{ or }})")


def test_render_argv_gives_one_word_per_template():
    words = [Template.parse(w) for w in ["convert", "{src}", "--out={dst}"]]
    row = {"src": "my file; rm -rf /.png", "dst": "out dir/x.jpg"}
    assert render_argv(words, row) == ["convert", "my file; rm -rf /.png", "--out=out dir/x.jpg"]


def test_render_shell_quotes_each_value():
    row = {"src": "a b; rm -rf ~", "dst": "plain.jpg", "empty": None, "quote": "it's"}
    line = render_shell("convert {src} {dst} {empty} > {quote}.log 2>&1", row)
    assert line == "convert 'a b; rm -rf ~' plain.jpg '' > 'it'\"'\"'s'.log 2>&1"
    assert shlex.split(line)[:4] == ["convert", "a b; rm -rf ~", "plain.jpg", ""]
    assert render_shell(Template.parse("echo {x}"), {"x": "$HOME"}) == "echo '$HOME'"
    assert shell_quote("a b") == "'a b'"
    with pytest.raises(MissingField):
        render_shell("echo {y}", {"x": 1})


def test_render_json_keeps_types_of_whole_placeholders():
    template = '{"name": "{name}", "age": "{age}", "note": "{name} is {age}", "tags": "{tags}"}'
    row = {"name": "Ada", "age": 36, "tags": ["x", 1], "unused": True}
    assert render_json(template, row) == {
        "name": "Ada",
        "age": 36,
        "note": "Ada is 36",
        "tags": ["x", 1],
    }
    # CSV values are strings, and stay strings; None becomes null.
    assert render_json('{"age": "{age}"}', {"age": "36"}) == {"age": "36"}
    rendered = render_json('["{a}", "{{a}}", 1, null, true]', {"a": None})
    assert rendered == [None, "{a}", 1, None, True]


def test_render_json_keys_and_nesting():
    template = JsonTemplate.parse('{"{key}": {"list": ["{v}", "v={v}"], "k_{key}": 1}}')
    assert template.fields == ("key", "v")
    assert template.render({"key": 5, "v": 2.5}) == {"5": {"list": [2.5, "v=2.5"], "k_5": 1}}


def test_render_json_returns_fresh_values():
    template = JsonTemplate.parse('{"a": [1, {"b": 2}], "c": "{c}"}')
    first = template.render({"c": 1})
    first["a"][1]["b"] = "changed"
    assert template.render({"c": 1}) == {"a": [1, {"b": 2}], "c": 1}


def test_json_template_errors():
    with pytest.raises(TemplateError) as info:
        JsonTemplate.parse('{"age": {age}}', label="--json")
    assert str(info.value) == (
        "--json '{\"age\": {age}}' is not valid JSON (Expecting property name enclosed in "
        "double quotes: column 10) — write a JSON value with each placeholder inside a string, "
        'like {"age": "{age}"} (a string that is just the placeholder keeps the value\'s type)'
    )
    with pytest.raises(TemplateError) as info:
        JsonTemplate.parse('{"a": "{unclosed"}', label="--json")
    assert str(info.value).startswith("in --json '{\"a\": \"{unclosed\"}': '{unclosed': the '{'")
    with pytest.raises(MissingField) as info:
        render_json('{"a": "{nmae}"}', {"name": "x"})
    assert str(info.value) == (
        "no column 'nmae' in this row (it has: name; did you mean 'name'?) — check the "
        'template --json \'{"a": "{nmae}"}\''
    )


def test_check_fields_before_the_batch():
    url = Template.parse("https://x/{nmae}", label="--url")
    header = Template.parse("{tenant}", label="--header")
    check_fields([header], ["tenant", "id"], "input.csv")  # fine
    with pytest.raises(UnknownColumn) as info:
        check_fields([header, url], ["id", "name", "tenant"], "input.csv")
    assert str(info.value) == (
        "--url 'https://x/{nmae}': no column 'nmae' in input.csv "
        "(columns: id, name, tenant; did you mean 'name'?)"
    )
    assert (info.value.field, info.value.columns) == ("nmae", ["id", "name", "tenant"])
    # A mapping names each template's option; JSON templates are checked too.
    body = JsonTemplate.parse('{"who": "{user}"}')
    with pytest.raises(UnknownColumn) as info:
        check_fields({"--json": body}, ["id"], source="in.csv")
    assert str(info.value) == (
        """--json '{"who": "{user}"}': no column 'user' in in.csv (columns: id)"""
    )


def test_many_columns_are_shortened_in_messages():
    columns = [f"c{i}" for i in range(25)]
    with pytest.raises(UnknownColumn) as info:
        check_fields([Template.parse("{zz}")], columns)
    assert "c19, … (5 more))" in str(info.value)


@given(st.text())
def test_escaped_text_renders_as_itself(text):
    assert Template.parse(escape(text)).render({}) == text
    assert Template.parse(escape(text)).fields == ()


@given(st.text(), st.text(), st.text())
def test_placeholder_between_literal_texts(before, value, after):
    template = Template.parse(escape(before) + "{x}" + escape(after))
    assert template.render({"x": value}) == before + value + after
