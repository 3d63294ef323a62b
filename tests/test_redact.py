import pytest
from hypothesis import given
from hypothesis import strategies as st

from paceline.redact import (
    REDACTED,
    is_sensitive_key,
    is_sensitive_name,
    only_names_fields,
    redact_argv,
    redact_data,
    redact_text,
)

SECRET = "s3cr3t-T0ken_value.42"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {SECRET}", "Authorization: [REDACTED]"),
        (f"authorization:Basic {SECRET}\nnext line", "authorization:[REDACTED]\nnext line"),
        (f"Proxy-Authorization: Digest u={SECRET}, r=1", "Proxy-Authorization: [REDACTED]"),
        (
            f"headers={{'Authorization': 'Bearer {SECRET}', 'Accept': '*/*'}}",
            "headers={'Authorization': '[REDACTED]', 'Accept': '*/*'}",
        ),
        (
            f'{{"authorization": "Token {SECRET}"}}',
            '{"authorization": "[REDACTED]"}',
        ),
        (f"Cookie: session={SECRET}; theme=dark", "Cookie: [REDACTED]"),
        (f"Set-Cookie: id={SECRET}; Path=/; HttpOnly", "Set-Cookie: [REDACTED]"),
        (f"X-Api-Key: {SECRET}", "X-Api-Key: [REDACTED]"),
        (f"sent Bearer {SECRET} to the API", "sent Bearer [REDACTED] to the API"),
        ("login with Basic dXNlcjpwYXNzd29yZA== failed", "login with Basic [REDACTED] failed"),
        (
            f"GET /v1/items?page=2&api_key={SECRET}&limit=10",
            "GET /v1/items?page=2&api_key=[REDACTED]&limit=10",
        ),
        (f"/v1?token={SECRET}", "/v1?token=[REDACTED]"),
        (f"/v1?access_token={SECRET}#frag", "/v1?access_token=[REDACTED]#frag"),
        (f"refresh_token={SECRET} expired", "refresh_token=[REDACTED] expired"),
        (f"password={SECRET}", "password=[REDACTED]"),
        (f"DB_PASSWORD={SECRET}", "DB_PASSWORD=[REDACTED]"),
        (f"client_secret={SECRET}&grant=x", "client_secret=[REDACTED]&grant=x"),
        (f"apikey={SECRET}", "apikey=[REDACTED]"),
        (f"api-key: {SECRET}", "api-key: [REDACTED]"),
        (f"{{'password': 'with spaces {SECRET}'}}", "{'password': '[REDACTED]'}"),
        (f'{{"secret": "{SECRET}", "n": 1}}', '{"secret": "[REDACTED]", "n": 1}'),
        (
            f"fetch https://bob:{SECRET}@api.example/x failed",
            "fetch https://bob:[REDACTED]@api.example/x failed",
        ),
    ],
)
def test_redact_text_masks_credentials(text, expected):
    assert redact_text(text) == expected
    assert SECRET not in redact_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "connection reset by peer",
        "404 Not Found: /v1/users/7",
        "passwordless login is disabled",
        "token bucket empty",
        "the tokenizer failed at line 3",
        "timeout after 30.0 s (https://api.example/v1/items?page=2)",
        "",
    ],
)
def test_redact_text_leaves_ordinary_messages_alone(text):
    assert redact_text(text) == text


def test_redact_data_replaces_credential_values_at_any_depth():
    data = {
        "user": "ann",
        "Authorization": "Bearer x",
        "nested": [{"API-Key": "k", "ok": 1}, {"deeper": {"refresh_token": "r"}}],
        "pair": ("cookie", {"Set-Cookie": "a=1"}),
        "accessToken": {"not": "inspected"},
        "clientSecret": None,
        7: "int keys are left alone",
    }
    assert redact_data(data) == {
        "user": "ann",
        "Authorization": REDACTED,
        "nested": [{"API-Key": REDACTED, "ok": 1}, {"deeper": {"refresh_token": REDACTED}}],
        "pair": ("cookie", {"Set-Cookie": REDACTED}),
        "accessToken": REDACTED,
        "clientSecret": REDACTED,
        7: "int keys are left alone",
    }


def test_redact_data_copies_and_never_mutates():
    data = {"token": "t", "list": [{"password": "p"}]}
    redact_data(data)
    assert data == {"token": "t", "list": [{"password": "p"}]}


def test_redact_data_passes_scalars_through():
    for value in (None, 1, 2.5, "Bearer abc", True):
        assert redact_data(value) == value


def test_sensitive_key_names():
    for name in (
        "authorization",
        "Proxy-Authorization",
        "cookie",
        "SET-COOKIE",
        "x-api-key",
        "api-key",
        "api_key",
        "apikey",
        "token",
        "access_token",
        "refresh_token",
        "password",
        "secret",
        "client_secret",
    ):
        assert is_sensitive_key(name), name
    for name in ("user", "id", "tokens_used", "secretary", "passwords_changed_at"):
        assert not is_sensitive_key(name), name


token_chars = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~+/",
    min_size=12,
    max_size=40,
)
TEMPLATES = [
    "Authorization: Bearer {}",
    "request failed: {{'Authorization': 'Bearer {}'}}",
    "GET /x?api_key={}&page=1",
    "POST /token body: password={}",
    "Cookie: sid={}",
    "header Bearer {} rejected",
    "token={}",
    '{{"access_token": "{}"}}',
]


@given(secret=token_chars, template=st.sampled_from(TEMPLATES), before=st.text(max_size=30))
def test_no_generated_secret_survives_redaction(secret, template, before):
    text = before + " " + template.format(secret)
    assert secret not in redact_text(text).replace(before, "", 1)


@given(text=st.text(max_size=200))
def test_redacting_twice_is_redacting_once(text):
    once = redact_text(text)
    assert redact_text(once) == once


@given(
    text=st.lists(
        st.sampled_from(
            ["Authorization: Bearer a.b", "token=x", "'password': 'p'", " ", "\n", "?", "&"]
        )
        | st.text(max_size=8),
        max_size=12,
    ).map("".join)
)
def test_redacting_credential_heavy_text_twice_is_redacting_once(text):
    once = redact_text(text)
    assert redact_text(once) == once


# -- credential names: headers and query parameters are wider than keys of result data ----------


@pytest.mark.parametrize(
    "name",
    [
        "X-Auth-Token",
        "Private-Token",
        "X-Session-Key",
        "sessionId",
        "key",
        "sig",
        "X-Amz-Signature",
        "client_credentials",
        "auth",
        "X-Goog-Api-Key",
        "Ocp-Apim-Subscription-Key",
        "db.password",
        "APIKey",
    ],
)
def test_header_and_query_names_that_are_credentials(name):
    assert is_sensitive_name(name)


@pytest.mark.parametrize(
    "name",
    ["keyword", "author", "monkey", "hotkey", "tokens_used", "max_tokens", "passage", "Accept"],
)
def test_names_that_only_look_like_credentials(name):
    assert not is_sensitive_name(name)
    assert not is_sensitive_key(name)


def test_result_data_keeps_key_and_session_fields_but_masks_credential_endings():
    data = {"Key": "PROJ-1", "session": {"n": 2}, "X-Auth-Token": "t", "Private-Token": "p"}
    assert redact_data(data) == {
        "Key": "PROJ-1",
        "session": {"n": 2},
        "X-Auth-Token": REDACTED,
        "Private-Token": REDACTED,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"X-Auth-Token: {SECRET}", "X-Auth-Token: [REDACTED]"),
        (f"Private-Token: {SECRET}", "Private-Token: [REDACTED]"),
        (f"/x?sv=2&sig={SECRET}&se=1", "/x?sv=2&sig=[REDACTED]&se=1"),
        (f"/x?key={SECRET}", "/x?key=[REDACTED]"),
        (f"--password={SECRET}", "--password=[REDACTED]"),
        (f"'--password={SECRET}' --user ann", "'--password=[REDACTED]' --user ann"),
        # a credential inside the value of a name that is not one is still found
        (f"see=https://h/x?api_key={SECRET}", "see=https://h/x?api_key=[REDACTED]"),
        (f"GET https://h/x?page=2&access_token={SECRET}", None),
        ("keyword=python&author=ann", "keyword=python&author=ann"),
    ],
)
def test_redact_text_masks_widened_credential_names(text, expected):
    assert SECRET not in redact_text(text)
    if expected is not None:
        assert redact_text(text) == expected


@pytest.mark.parametrize(
    "template",
    [
        '{"password": "{pw}"}',
        "https://h/items/{id}?api_key={key}",
        "https://{user}:{pw}@h/x",
        "Authorization: Bearer {token}",
        "--password={pw}",
        "token={a}{b}",
    ],
)
def test_a_template_that_only_names_a_field_is_not_a_secret(template):
    assert redact_text(template, placeholders=True) == template
    assert REDACTED in redact_text(template)  # rendered text never gets that pass


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("https://h/{id}?api_key=k1{id}", "https://h/{id}?api_key=[REDACTED]"),
        ('{"password": "pre-{pw}"}', '{"password": "[REDACTED]"}'),
        ("--password=s3cr3t", "--password=[REDACTED]"),
        ("https://ann:pw{x}@h/", "https://ann:[REDACTED]@h/"),
    ],
)
def test_a_template_with_a_literal_secret_is_masked(template, expected):
    assert redact_text(template, placeholders=True) == expected


def test_only_names_fields():
    assert only_names_fields("{pw}")
    assert only_names_fields(" Bearer {token} ")
    assert only_names_fields("{a}{b}")
    assert not only_names_fields("")
    assert not only_names_fields("k{x}")
    assert not only_names_fields("Bearer abc")


@given(text=st.text(max_size=200))
def test_redacting_a_template_twice_is_redacting_it_once(text):
    once = redact_text(text, placeholders=True)
    assert redact_text(once, placeholders=True) == once


def test_a_word_before_a_placeholder_is_kept_only_when_it_is_an_auth_scheme():
    assert only_names_fields("Token {t}")
    assert not only_names_fields("hunter {x}")
    assert redact_text('{"password": "hunter {x}"}', placeholders=True) == (
        '{"password": "[REDACTED]"}'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"tool --password {SECRET} --user ann", "tool --password [REDACTED] --user ann"),
        (f"tool --api-key '{SECRET}' -v", "tool --api-key '[REDACTED]' -v"),
        ("tool --token --verbose", "tool --token --verbose"),  # a flag after a flag: no value
        ("tool --keyword python", "tool --keyword python"),
    ],
)
def test_the_value_after_a_credential_flag_is_masked(text, expected):
    assert redact_text(text) == expected


def test_redact_argv_masks_the_word_after_a_credential_flag():
    words = ["tool", "--password", SECRET, "--name", "ann", "--token", "{tok}"]
    assert redact_argv(words) == [
        "tool", "--password", REDACTED, "--name", "ann", "--token", REDACTED,
    ]  # fmt: skip
    assert redact_argv(words, placeholders=True)[-1] == "{tok}"
