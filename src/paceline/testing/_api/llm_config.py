"""The test API's LLM mode: its knobs, the prompt-token estimate and OpenAI's reset durations."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from paceline.errors import InvalidArgument

Flavour = Literal["openai", "anthropic"]
_FLAVOURS = ("openai", "anthropic")

# OpenAI's rule of thumb: one token is about 4 characters of English text.
CHARS_PER_TOKEN = 4
# The overhead of one message and of priming the reply, as OpenAI's cookbook counts them for
# its chat models ("How to count tokens with tiktoken": 3 tokens per message, 3 for the reply).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
# A request without max_tokens still reserves some answer. 256 is a short answer; the API's own
# default would be the model's whole output window (thousands), which no test wants reserved.
DEFAULT_MAX_TOKENS = 256
NS_PER_MS = 1_000_000


def estimate_prompt_tokens(contents: Iterable[str]) -> int:
    """The prompt tokens the test API charges for messages with these texts.

    Each message costs ``ceil(len(text) / 4) + 3`` tokens and the reply's priming 3 more. Real
    tokenizers differ; this one is deterministic, so tests can compute the charge exactly.

    >>> estimate_prompt_tokens(["Say hello.", "Hello!"])
    14
    >>> estimate_prompt_tokens([])
    3
    """
    return TOKENS_PER_REPLY + sum(
        TOKENS_PER_MESSAGE + -(-len(text) // CHARS_PER_TOKEN) for text in contents
    )


def go_duration(ns: int) -> str:
    """A wait as OpenAI writes its ``x-ratelimit-reset-*`` headers (Go's duration format),
    rounded up to the millisecond.

    >>> [go_duration(n) for n in (0, 20_000_000, 999_000_001, 1_000_000_000, 1_500_000_000)]
    ['0s', '20ms', '1s', '1s', '1.5s']
    >>> go_duration(360_000_000_000), go_duration(3_723_500_000_000)
    ('6m0s', '1h2m3.5s')
    """
    ms = -(-ns // NS_PER_MS) if ns > 0 else 0
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds = f"{ms // 1000}" + (f".{ms % 1000:03d}".rstrip("0") if ms % 1000 else "")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _option(name: str) -> str:
    """``tokens_per_min`` -> ``--llm-tokens-per-min``."""
    return "--" + ("llm_" + name).replace("_", "-")


def _check_limit(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name} {value!r}: must be a whole number, at least 1, or None")


@dataclass(frozen=True, slots=True)
class LlmConfig:
    """An LLM API's limits: requests and tokens per minute, both kept as token buckets.

    Given as ``ApiConfig(llm=LlmConfig(...))``, the test API serves
    ``POST /v1/chat/completions`` (``flavour="openai"``) or ``POST /v1/messages``
    (``flavour="anthropic"``) beside its other routes. ``ApiConfig``'s capacity, latency and
    failures apply to these calls too; its ``quota`` and ``headers`` do not.

    >>> config = LlmConfig(requests_per_min=60, tokens_per_min=6000, tokens_burst=1000)
    >>> config.requests_capacity, config.tokens_capacity
    (60, 1000)

    Admission charges the requests bucket 1 and the tokens bucket the prompt's estimate (see
    :func:`estimate_prompt_tokens`) plus ``max_tokens * n``: both or neither. Short of either,
    the answer is 429 with ``retry-after-ms`` and ``retry-after`` (whole seconds, rounded up)
    and an error saying which limit. When the answer is ready, the completion tokens it did not
    use are refunded; if it fails (500, 503, a drop) all of them are. The prompt stays charged.

    - ``requests_per_min``, ``tokens_per_min``: the refill rates; ``None`` for no such limit.
    - ``requests_burst``, ``tokens_burst``: the buckets' capacities; ``None`` means one
      minute's worth, which is what the real APIs' ``remaining`` headers count down from.
    - ``completion_ratio``: the mean fraction of ``max_tokens`` a choice uses. Each choice
      draws its fraction uniformly from an interval of that mean (``[0, 0.6]`` for 0.3),
      from a generator seeded with ``ApiConfig.seed``; at least one token.
    - ``output_token_s``: seconds per completion token added to the latency (the longest
      choice's), as a model generates; real ones take 0.005-0.05 s.
    - ``announce``: send the limit headers (``x-ratelimit-*`` or ``anthropic-ratelimit-*``)
      with every answer; ``False`` hides them (429s still say when to come back).
    - ``flavour``: ``"openai"``: OpenAI's route, bodies, usage (``prompt_tokens``,
      ``completion_tokens``, ``total_tokens``) and headers (resets as ``6m0s``, ``120ms``).
      ``"anthropic"``: Anthropic's (``input_tokens``, ``output_tokens``;
      ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``, resets as RFC 3339
      times; ``retry-after`` only). One tokens bucket serves both kinds: Anthropic's separate
      input and output limits are not modelled.
    """

    # OpenAI's tier 1 for gpt-4o-mini: 500 requests and 200,000 tokens a minute.
    requests_per_min: int | None = 500
    tokens_per_min: int | None = 200_000
    requests_burst: int | None = None
    tokens_burst: int | None = None
    # Chat answers are mostly far shorter than the max_tokens callers reserve; 0.3 makes the
    # refund matter (70 % of the reservation comes back), as it does against the real APIs.
    completion_ratio: float = 0.3
    # Zero: loopback tests want answers at once; set it to model generation time.
    output_token_s: float = 0.0
    announce: bool = True
    flavour: Flavour = "openai"

    def __post_init__(self) -> None:
        _check_limit("requests_per_min", self.requests_per_min)
        _check_limit("tokens_per_min", self.tokens_per_min)
        _check_limit("requests_burst", self.requests_burst)
        _check_limit("tokens_burst", self.tokens_burst)
        for name, burst, rate in (
            ("requests_burst", self.requests_burst, self.requests_per_min),
            ("tokens_burst", self.tokens_burst, self.tokens_per_min),
        ):
            if burst is not None and rate is None:
                raise InvalidArgument(f"{name} {burst}: a bucket needs its rate per minute as well")
        ratio = self.completion_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise InvalidArgument(
                f"completion_ratio {ratio!r}: must be a fraction above 0 and up to 1, e.g. 0.3"
            )
        seconds = self.output_token_s
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise InvalidArgument(
                f"output_token_s {seconds!r}: must be seconds, 0 or more, e.g. 0.01"
            )
        if self.flavour not in _FLAVOURS:
            raise InvalidArgument(
                f"flavour {self.flavour!r}: must be one of {', '.join(_FLAVOURS)}"
            )

    @property
    def requests_capacity(self) -> int | None:
        """The requests bucket's capacity, or ``None`` without a request limit."""
        return self.requests_burst if self.requests_burst is not None else self.requests_per_min

    @property
    def tokens_capacity(self) -> int | None:
        """The tokens bucket's capacity, or ``None`` without a token limit."""
        return self.tokens_burst if self.tokens_burst is not None else self.tokens_per_min

    @property
    def path(self) -> str:
        """The route served: ``/v1/chat/completions`` or ``/v1/messages``."""
        return "/v1/chat/completions" if self.flavour == "openai" else "/v1/messages"

    def completion_bounds(self) -> tuple[float, float]:
        """The interval, with mean ``completion_ratio``, each choice's fraction is drawn from.

        >>> LlmConfig(completion_ratio=0.3).completion_bounds()
        (0.0, 0.6)
        >>> LlmConfig(completion_ratio=0.75).completion_bounds()
        (0.5, 1.0)
        """
        ratio = self.completion_ratio
        return max(0.0, 2 * ratio - 1), min(1.0, 2 * ratio)

    def completion_tokens(self, fraction: float, max_tokens: int) -> int:
        """One choice's completion tokens for a drawn ``fraction`` of ``max_tokens``.

        >>> LlmConfig().completion_tokens(0.3, 100), LlmConfig().completion_tokens(0.0, 100)
        (30, 1)
        """
        return max(1, min(max_tokens, round(fraction * max_tokens)))

    def to_argv(self) -> list[str]:
        """The command-line arguments for this config (``--llm`` and what differs from the
        defaults).

        >>> LlmConfig(tokens_per_min=6000, tokens_burst=500, announce=False).to_argv()
        ['--llm', '--llm-tokens-per-min', '6000', '--llm-tokens-burst', '500', '--llm-quiet']
        """
        argv = ["--llm"]
        defaults = LlmConfig()
        for name in ("requests_per_min", "tokens_per_min"):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                argv += [_option(name), "none" if value is None else str(value)]
        for name in ("requests_burst", "tokens_burst", "completion_ratio", "output_token_s"):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                argv += [_option(name), str(value)]
        if not self.announce:
            argv.append("--llm-quiet")
        if self.flavour != defaults.flavour:
            argv += ["--llm-flavour", self.flavour]
        return argv
