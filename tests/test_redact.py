import pytest
from hypothesis import given
from hypothesis import strategies as st

from paceline.redact import REDACTED, is_sensitive_key, redact_data, redact_text

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
