"""The token estimate of an OpenAI-style request body, for a cost when none is given.

An LLM API charges a call's tokens at admission: its prompt and everything the answer may use
(``max_tokens`` for each of ``n`` choices). The prompt is estimated without a tokenizer, by
OpenAI's rule of thumb of four characters a token, with the overhead OpenAI's cookbook counts
for chat models ("How to count tokens with tiktoken": 3 tokens per message, 3 to prime the
reply). How close it is (docs/units.md, 'Estimates'): exactly what the test API's LLM mode
charges (it counts the same way); against a real tokenizer, four characters a token is within
about 25 % for English prose and undercounts code, other scripts and numbers — the
``max_tokens`` part, usually most of the estimate, is exact, and settling corrects the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# OpenAI's rule of thumb: a token is about 4 characters of English text.
CHARS_PER_TOKEN = 4
# Chat models' overhead as OpenAI's cookbook counts it: 3 tokens a message, 3 for the reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def _chars(content: Any) -> int | None:
    if isinstance(content, str):
        return len(content)
    if content is None:
        return 0
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}]
        texts = [part.get("text") for part in content if isinstance(part, Mapping)]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return sum(len(t) for t in texts if isinstance(t, str))
    return None


def _tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def _whole(body: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def estimate_tokens(body: object) -> int | None:
    """The tokens an OpenAI-style body reserves: its prompt (characters / 4, rounded up, plus
    3 a message and 3 for the reply) and ``max_tokens`` (or ``max_completion_tokens``) times
    ``n``; Anthropic's ``system`` counts as a message. ``None`` when the body is not one (no
    ``messages`` or ``prompt``, no ``max_tokens``: the answer's size is then unbounded).

    >>> estimate_tokens({"messages": [{"role": "user", "content": "Say hello."}],
    ...                  "max_tokens": 100, "n": 2})
    209
    >>> estimate_tokens({"prompt": "Once upon a time", "max_tokens": 16}), estimate_tokens({})
    (20, None)
    """
    if not isinstance(body, Mapping):
        return None
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens, n = _whole(body, name, None), _whole(body, "n", 1)
    if max_tokens is None or n is None:
        return None
    messages = body.get("messages")
    if isinstance(messages, list):
        prompt = TOKENS_PER_REPLY
        parts = [m.get("content") if isinstance(m, Mapping) else object() for m in messages]
        if "system" in body:
            parts.append(body["system"])
        for part in parts:
            chars = _chars(part)
            if chars is None:
                return None
            prompt += TOKENS_PER_MESSAGE + _tokens(chars)
    elif isinstance(body.get("prompt"), str):
        prompt = _tokens(len(body["prompt"]))
    else:
        return None
    return prompt + max_tokens * n
