"""What the test API's LLM mode decides and remembers, without I/O: two token buckets, the
reservations they hold, the refunds, the seeded completion lengths and the counters.

Everything here runs on the server's event loop thread and takes the time as an argument.
"""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from paceline.testing._api.bucket import TokenBucket
from paceline.testing._api.llm_config import LlmConfig, go_duration

__all__ = ["Admission", "LlmState"]

NS_PER_S = 1_000_000_000
NS_PER_MIN = 60 * NS_PER_S
NS_PER_MS = 1_000_000

Limit = Literal["requests", "tokens"]


@dataclass(slots=True)
class Admission:
    """One call's charge: admitted (``limit is None``) or refused by ``limit``.

    ``reserved_tokens`` = ``prompt_tokens`` + ``max_tokens * n``; ``completions`` are the
    choices' drawn lengths (empty when refused). ``retry_after_ns`` is the wait before the
    call would fit, ``None`` when it never can (more tokens than the bucket holds).
    """

    prompt_tokens: int
    max_tokens: int
    n: int
    limit: Limit | None = None
    retry_after_ns: int | None = 0
    completions: list[int] = field(default_factory=list)
    index: int = -1  # into LlmState's log of admissions

    @property
    def admitted(self) -> bool:
        """Whether both buckets took their share."""
        return self.limit is None

    @property
    def reserved_tokens(self) -> int:
        """Tokens charged at admission: the prompt and every choice's ``max_tokens``."""
        return self.prompt_tokens + self.max_tokens * self.n

    @property
    def completion_tokens(self) -> int:
        """Tokens the answer uses beyond the prompt: the sum over its choices."""
        return sum(self.completions)


def _bucket(rate_per_min: int | None, capacity: int | None, now_ns: int) -> TokenBucket | None:
    if rate_per_min is None or capacity is None:
        return None
    return TokenBucket(rate_per_min, NS_PER_MIN, capacity, now_ns)


def _max_in_window(times_ns: list[int], weights: list[int], window_ns: int) -> int:
    """The largest sum of ``weights`` whose times fall in one half-open window ``[t, t + W)``;
    ``times_ns`` ascending."""
    most = total = lo = 0
    for hi, t in enumerate(times_ns):
        total += weights[hi]
        while times_ns[lo] <= t - window_ns:
            total -= weights[lo]
            lo += 1
        most = max(most, total)
    return most


class LlmState:
    """The requests and tokens buckets of :class:`LlmConfig`, and what they admitted.

    >>> config = LlmConfig(requests_per_min=60, tokens_per_min=600, tokens_burst=100)
    >>> state = LlmState(config, seed=0, now_ns=0)
    >>> call = state.admit(now_ns=0, prompt_tokens=10, max_tokens=50)
    >>> call.admitted, call.reserved_tokens, state.admit(0, 10, 50).limit
    (True, 60, 'tokens')
    >>> state.finish(now_ns=0, admission=call, served=True)
    >>> call.completion_tokens, state.stats()["tokens_used"]
    (29, 39)
    """

    def __init__(self, config: LlmConfig, seed: int, now_ns: int) -> None:
        self.config = config
        self._requests = _bucket(config.requests_per_min, config.requests_capacity, now_ns)
        self._tokens = _bucket(config.tokens_per_min, config.tokens_capacity, now_ns)
        # Its own generator (the failure draws use seed and seed + 1): the lengths depend only
        # on the order of admissions.
        self._rng = random.Random(seed + 2)
        self._low, self._high = config.completion_bounds()
        self.start_ns = now_ns
        self.throttled_429_requests = 0
        self.throttled_429_tokens = 0
        self.too_large_429 = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.tokens_refunded = 0
        self.answered = 0
        self._admitted_ns: list[int] = []
        self._reserved: list[int] = []
        self._used: list[int] = []  # the reservation until the call finishes

    # -- admission ---------------------------------------------------------------------------

    def admit(self, now_ns: int, prompt_tokens: int, max_tokens: int, n: int = 1) -> Admission:
        """Charge a call at ``now_ns``: 1 request and its reserved tokens, both or neither."""
        call = Admission(prompt_tokens, max_tokens, n)
        cost = call.reserved_tokens
        requests, tokens = self._requests, self._tokens
        if tokens is not None and cost > tokens.burst:
            self.too_large_429 += 1
            call.limit, call.retry_after_ns = "tokens", None
            return call
        waits: list[tuple[int, Limit]] = []
        if requests is not None and (wait := requests.wait_ns(now_ns)) > 0:
            waits.append((wait, "requests"))
        if tokens is not None and (wait := tokens.wait_ns(now_ns, cost)) > 0:
            waits.append((wait, "tokens"))
        if waits:
            # Both short: name the one that takes longer, the one the caller must wait for.
            call.retry_after_ns, call.limit = max(waits)
            if call.limit == "requests":
                self.throttled_429_requests += 1
            else:
                self.throttled_429_tokens += 1
            return call
        if requests is not None:
            requests.admit(now_ns)
        if tokens is not None:
            tokens.admit(now_ns, cost)
        call.completions = [
            self.config.completion_tokens(self._rng.uniform(self._low, self._high), max_tokens)
            for _ in range(n)
        ]
        call.index = len(self._admitted_ns)
        self._admitted_ns.append(now_ns)
        self._reserved.append(cost)
        self._used.append(cost)
        return call

    def finish(self, now_ns: int, admission: Admission, served: bool) -> None:
        """Refund what an admitted call did not use: the unused completion tokens when it was
        ``served``, all of them when it failed. The prompt stays charged."""
        if not admission.admitted:
            return
        used = admission.prompt_tokens + (admission.completion_tokens if served else 0)
        refund = admission.reserved_tokens - used
        if self._tokens is not None and refund:
            self._tokens.refund(now_ns, refund)
        self.tokens_refunded += refund
        self.prompt_tokens += admission.prompt_tokens
        if served:
            self.completion_tokens += admission.completion_tokens
            self.answered += 1
        self._used[admission.index] = used

    # -- what the client is told ---------------------------------------------------------------

    def headers(self, now_ns: int, now_epoch_s: float) -> list[tuple[str, str]]:
        """The limit headers after this call, in the config's flavour; none unless announced."""
        config = self.config
        if not config.announce:
            return []
        result: list[tuple[str, str]] = []
        for kind, rate, bucket in (
            ("requests", config.requests_per_min, self._requests),
            ("tokens", config.tokens_per_min, self._tokens),
        ):
            if bucket is None or rate is None:
                continue
            remaining, full_in_ns = bucket.remaining(now_ns), bucket.full_in_ns(now_ns)
            if config.flavour == "openai":
                result += [
                    (f"x-ratelimit-limit-{kind}", str(rate)),
                    (f"x-ratelimit-remaining-{kind}", str(remaining)),
                    (f"x-ratelimit-reset-{kind}", go_duration(full_in_ns)),
                ]
            else:
                when = datetime.datetime.fromtimestamp(
                    now_epoch_s + full_in_ns / NS_PER_S, datetime.timezone.utc
                )
                result += [
                    (f"anthropic-ratelimit-{kind}-limit", str(rate)),
                    (f"anthropic-ratelimit-{kind}-remaining", str(remaining)),
                    (f"anthropic-ratelimit-{kind}-reset", when.isoformat(timespec="seconds")),
                ]
        return result

    @staticmethod
    def retry_headers(admission: Admission, flavour: str) -> list[tuple[str, str]]:
        """``retry-after-ms`` (OpenAI only) and ``retry-after`` in whole seconds, rounded up,
        for a refused call; none when it can never fit.

        >>> call = Admission(10, 50, 1, limit="tokens", retry_after_ns=1_200_000_001)
        >>> LlmState.retry_headers(call, "openai")
        [('retry-after-ms', '1201'), ('retry-after', '2')]
        """
        wait_ns = admission.retry_after_ns
        if wait_ns is None:
            return []
        seconds = str(max(1, -(-wait_ns // NS_PER_S)))
        if flavour != "openai":
            return [("retry-after", seconds)]
        return [("retry-after-ms", str(-(-wait_ns // NS_PER_MS))), ("retry-after", seconds)]

    def refusal(self, admission: Admission) -> str:
        """What a 429 says, in OpenAI's words: the limit, its size and the charge."""
        config = self.config
        kind = admission.limit or "tokens"
        if admission.retry_after_ns is None:
            return (
                f"Request too large: tokens per min (TPM) limit {config.tokens_capacity}, "
                f"requested {admission.reserved_tokens} (prompt {admission.prompt_tokens} + "
                f"max_tokens {admission.max_tokens} x n {admission.n}). Lower max_tokens or n."
            )
        if kind == "requests":
            limit, requested, label = config.requests_per_min, 1, "requests per min (RPM)"
        else:
            limit, requested = config.tokens_per_min, admission.reserved_tokens
            label = "tokens per min (TPM)"
        wait = go_duration(admission.retry_after_ns or 0)
        return (
            f"Rate limit reached on {label}: Limit {limit}, Requested {requested}. "
            f"Please try again in {wait}."
        )

    # -- stats -------------------------------------------------------------------------------

    def stats(self, times: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (``times=True`` adds ``admissions``: ``[seconds since start,
        tokens reserved, tokens used]`` per admitted call, in order).

        Tokens used are the prompt plus the completion, counted at the call's admission (a call
        still in flight counts its whole reservation).
        """
        config, at, used = self.config, self._admitted_ns, self._used
        result: dict[str, Any] = {
            "flavour": config.flavour,
            "requests_per_min": config.requests_per_min,
            "tokens_per_min": config.tokens_per_min,
            "requests_burst": config.requests_capacity,
            "tokens_burst": config.tokens_capacity,
            "requests_admitted": len(at),
            "requests_answered": self.answered,
            "tokens_reserved": sum(self._reserved),
            "tokens_refunded": self.tokens_refunded,
            "tokens_used": sum(used),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "throttled_429_requests": self.throttled_429_requests,
            "throttled_429_tokens": self.throttled_429_tokens,
            "too_large_429": self.too_large_429,
            "max_requests_in_any_min": _max_in_window(at, [1] * len(at), NS_PER_MIN),
            "max_tokens_reserved_in_any_min": _max_in_window(at, self._reserved, NS_PER_MIN),
            "max_tokens_used_in_any_min": _max_in_window(at, used, NS_PER_MIN),
            "max_tokens_used_in_any_s": _max_in_window(at, used, NS_PER_S),
            "admitted_span_s": (at[-1] - at[0]) / NS_PER_S if at else 0.0,
        }
        if times:
            result["admissions"] = [
                [(t - self.start_ns) / NS_PER_S, reserved, spent]
                for t, reserved, spent in zip(at, self._reserved, used, strict=True)
            ]
        return result
