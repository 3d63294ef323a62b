"""estimate_tokens: an OpenAI-style body's reservation, checked against the LLM mode's own
count (the test API charges prompt + max_tokens x n at admission)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from paceline.http import estimate_tokens
from paceline.testing._api.llm_bodies import read_call

texts = st.text(max_size=200)
messages = st.lists(
    st.builds(
        lambda role, text: {"role": role, "content": text},
        st.sampled_from(["user", "system", "assistant"]),
        texts,
    ),
    min_size=1,
    max_size=6,
)


@given(messages, st.integers(1, 4000), st.integers(1, 4))
def test_the_estimate_is_what_the_llm_mode_reserves(msgs, max_tokens, n):
    body = {"model": "t", "messages": msgs, "max_tokens": max_tokens, "n": n}
    call = read_call(json.dumps(body).encode(), "openai")
    assert estimate_tokens(body) == call.prompt_tokens + call.max_tokens * call.n


def test_content_parts_and_anthropic_system_count_like_the_llm_mode():
    body = {
        "model": "t",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
        "max_tokens": 64,
    }
    call = read_call(json.dumps(body).encode(), "anthropic")
    assert estimate_tokens(body) == call.prompt_tokens + call.max_tokens == 3 + 6 + 6 + 64


def test_without_max_tokens_or_messages_there_is_no_estimate():
    assert estimate_tokens({"messages": [{"role": "user", "content": "hi"}]}) is None
    assert estimate_tokens({"max_tokens": 5}) is None
    assert estimate_tokens("not a body") is None
    assert (
        estimate_tokens({"messages": [{"role": "user", "content": {"img": 1}}], "max_tokens": 5})
        is None
    )
