"""The LLM mode's bodies: an OpenAI- or Anthropic-style request read, an answer and errors
written, without I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from paceline.errors import PacelineError
from paceline.testing._api.llm_config import DEFAULT_MAX_TOKENS, estimate_prompt_tokens

__all__ = ["BadCall", "Call", "answer", "error", "read_call"]

# Each completion token is written as this word: 4 characters, one token by the estimate.
_WORD = "tok "


@dataclass(frozen=True, slots=True)
class Call:
    """What a chat call asks for: the model, the prompt's estimated tokens, ``max_tokens``,
    ``n``."""

    model: str
    prompt_tokens: int
    max_tokens: int
    n: int


class BadCall(PacelineError, ValueError):
    """A body the API cannot serve: its message says what is wrong, for a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(t for t in texts if isinstance(t, str))
    raise BadCall(f"{where}: must be a string or a list of {{'type': 'text', 'text': ...}}", where)


def _whole(body: dict[str, Any], name: str, default: int | None) -> int:
    value = body.get(name, default)
    if value is None:
        raise BadCall(f"{name}: required, a whole number such as 256", name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadCall(f"{name} {value!r}: must be a whole number, at least 1", name)
    return value


def read_call(raw: bytes, flavour: str) -> Call:
    """Read a chat call's body; :class:`BadCall` when it is not one.

    ``max_tokens`` (OpenAI also reads ``max_completion_tokens``) defaults to
    ``DEFAULT_MAX_TOKENS`` for OpenAI and is required by Anthropic, as by the real APIs.

    >>> body = b'{"model": "m", "messages": [{"role": "user", "content": "Hi"}], "n": 2}'
    >>> read_call(body, "openai")
    Call(model='m', prompt_tokens=7, max_tokens=256, n=2)
    """
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise BadCall("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadCall('the body must be a JSON object: {"model": ..., "messages": [...]}')
    model = body.get("model", "paceline-test")
    if not isinstance(model, str):
        raise BadCall(f"model {model!r}: must be a string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadCall('messages: required, a list such as [{"role": "user", "content": "Hi"}]')
    texts = []
    if flavour == "anthropic" and "system" in body:
        texts.append(_text(body["system"], "system"))
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadCall(f"messages[{i}]: must be an object with a role and a content")
        texts.append(_text(message.get("content"), f"messages[{i}].content"))
    if flavour == "openai":
        name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        max_tokens = _whole(body, name, DEFAULT_MAX_TOKENS)
        n = _whole(body, "n", 1)
    else:
        max_tokens, n = _whole(body, "max_tokens", None), 1
    return Call(model, estimate_prompt_tokens(texts), max_tokens, n)


def answer(call: Call, completions: list[int], flavour: str, serial: int, now_s: float) -> bytes:
    """The body of a served call: one choice per drawn completion length, and its usage."""
    completion = sum(completions)
    if flavour == "openai":
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{serial}",
            "object": "chat.completion",
            "created": int(now_s),
            "model": call.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": (_WORD * used).rstrip()},
                    "finish_reason": "length" if used >= call.max_tokens else "stop",
                }
                for i, used in enumerate(completions)
            ],
            "usage": {
                "prompt_tokens": call.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": call.prompt_tokens + completion,
            },
        }
    else:
        payload = {
            "id": f"msg_{serial}",
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": [{"type": "text", "text": (_WORD * completion).rstrip()}],
            "stop_reason": "max_tokens" if completion >= call.max_tokens else "end_turn",
            "usage": {"input_tokens": call.prompt_tokens, "output_tokens": completion},
        }
    return json.dumps(payload, separators=(",", ":")).encode()


def error(flavour: str, kind: str, message: str, param: str | None = None) -> bytes:
    """An error body in the flavour's shape. ``kind``: ``"requests"`` or ``"tokens"`` for a
    rate limit, else an error type such as ``"invalid_request_error"``.

    >>> error("openai", "tokens", "slow down")
    b'{"error":{"message":"slow down","type":"tokens","param":null,"code":"rate_limit_exceeded"}}'
    >>> error("anthropic", "tokens", "slow down")
    b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    """
    limited = kind in ("requests", "tokens")
    if flavour == "openai":
        code = "rate_limit_exceeded" if limited else None
        payload: dict[str, Any] = {
            "error": {"message": message, "type": kind, "param": param, "code": code}
        }
    else:
        payload = {
            "type": "error",
            "error": {"type": "rate_limit_error" if limited else kind, "message": message},
        }
    return json.dumps(payload, separators=(",", ":")).encode()
