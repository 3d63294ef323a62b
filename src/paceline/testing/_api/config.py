"""The knobs of the test API: a hidden quota, a capacity, latency and injected failures."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from paceline.errors import InvalidArgument
from paceline.testing._api.llm_config import LlmConfig

HeaderStyle = Literal["none", "ietf", "x"]
ResetFormat = Literal["epoch", "delta", "delta_ms"]
Limiter = Literal["window", "bucket"]

_HEADER_STYLES = ("none", "ietf", "x")
_RESET_FORMATS = ("epoch", "delta", "delta_ms")
_LIMITERS = ("window", "bucket")


def _check_rate(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidArgument(f"{name} {value!r}: must be a fraction from 0 to 1, such as 0.05")


def _check_seconds(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name} {value!r}: must be a number of seconds such as 0.01")
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{name} {value!r}: must be a finite number of seconds, 0 or more")


def _check_count(name: str, value: int | None, *, minimum: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument(
            f"{name} {value!r}: must be a whole number, at least {minimum}, or None"
        )


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """How the test API behaves. The client is told none of it, unless ``headers`` says so.

    Every knob is off by default except a small base latency: ``ApiConfig()`` is an API that
    accepts everything after 5 ms.

    >>> config = ApiConfig(quota=100, window_s=1.0, retry_after=True, capacity=16)
    >>> config.effective_knee, config.latency_s(in_flight=16)
    (8, 0.01)

    Quota (counted when a request arrives):

    - ``quota``: requests admitted in any window of ``window_s`` seconds; ``None`` for no quota.
      Beyond it the answer is 429. A request admitted by the quota uses its slot even if it then
      ends in 503, 500 or a drop, as behind a real API gateway.
    - ``limiter``: how the quota is kept. ``"window"``, a strict sliding-window log: never more
      than ``quota`` in any ``window_s``. ``"bucket"``, a token bucket: ``burst`` tokens at
      most, refilled continuously at ``quota / window_s`` per second, one taken per request
      (``ApiConfig(quota=50, limiter="bucket", burst=10)``: 10 at once, then one every 20 ms).
    - ``burst``: the bucket's capacity; ``None`` means ``quota`` (one window's worth, the
      same largest burst as the sliding window allows). Only with ``limiter="bucket"``.
    - ``retry_after``: send ``Retry-After`` (whole seconds until a slot or token frees,
      rounded up, at least 1) with each 429.
    - ``headers``: ``"none"``; ``"ietf"`` for the draft-10 ``RateLimit-Policy`` and ``RateLimit``
      fields; ``"x"`` for ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``, the reset written
      as ``reset_format``: ``"epoch"`` (Unix seconds), ``"delta"`` (seconds) or ``"delta_ms"``.
      A bucket describes itself as ``burst`` requests per the time it takes to fill, with the
      whole tokens left, and resets when it is full again.

    - ``secondary_limit``: refuse beyond the quota the way GitHub's secondary rate limit does:
      403, ``Retry-After`` (whether or not ``retry_after`` is set) and the body "You have
      exceeded a secondary rate limit..." (counted in ``throttled_429`` all the same).
    - ``credit``: an account out of credit after this many requests admitted (reserved as they
      arrive, so exactly ``credit`` succeed when nothing else fails): every later one is
      answered 429 ``insufficient_quota`` as OpenAI does (counted in ``credit_refused``);
      ``POST /reset`` restores the credit. ``None``: no credit limit.

    - ``network_delay_s``: each quota-counted request reaches the counter after a delay drawn
      uniformly from ``[0, network_delay_s]`` (a network or gateway queue in between, from its
      own random generator), so arrivals are not spaced as the client sent them.

    Capacity (a backend that slows down, then refuses):

    - ``capacity``: requests being served at once; beyond it the answer is 503, at once.
      ``None`` for no limit.
    - ``base_latency_s``, ``load_factor``, ``knee``: each admitted request takes
      ``base_latency_s * (1 + load_factor * max(0, in_flight - knee) / knee)`` seconds, where
      ``in_flight`` counts it and every other request being served when it arrived, and ``knee``
      defaults to ``capacity // 2`` (at least 1). Without a capacity or a knee, the latency is
      flat.

    Failures, drawn from a random generator seeded with ``seed`` (three draws per admitted
    request, so a sequential client sees the same run every time):

    - ``error_rate``: fraction answered 500.
    - ``drop_rate``: fraction whose connection is closed without an answer (after the latency).
    - ``slow_rate``, ``slow_s``: fraction that take ``slow_s`` seconds longer.
    - ``post_drop_rate``: fraction of ``POST /objects`` that create their object (and store
      their ``Idempotency-Key``) and then close the connection without an answer, from a
      generator of their own (see ``testing/_api/objects.py``).

    LLM mode:

    - ``llm``: an :class:`LlmConfig` adds an OpenAI-style ``POST /v1/chat/completions`` (or
      Anthropic's ``/v1/messages``) with its own requests and tokens buckets;
      ``ApiConfig(llm=LlmConfig(tokens_per_min=60_000))``. ``None``: no such route.
    """

    quota: int | None = None
    window_s: float = 1.0
    limiter: Limiter = "window"
    burst: int | None = None
    retry_after: bool = False
    headers: HeaderStyle = "none"
    reset_format: ResetFormat = "delta"
    network_delay_s: float = 0.0
    capacity: int | None = None
    base_latency_s: float = 0.005
    load_factor: float = 1.0
    knee: int | None = None
    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = 1.0
    drop_rate: float = 0.0
    post_drop_rate: float = 0.0
    secondary_limit: bool = False
    credit: int | None = None
    seed: int = 0
    llm: LlmConfig | None = None

    def __post_init__(self) -> None:
        _check_count("quota", self.quota)
        _check_count("capacity", self.capacity)
        _check_count("burst", self.burst)
        if self.limiter not in _LIMITERS:
            raise InvalidArgument(
                f"limiter {self.limiter!r}: must be one of {', '.join(_LIMITERS)}"
            )
        if self.limiter == "bucket" and self.quota is None:
            raise InvalidArgument(
                "limiter 'bucket' needs a quota for its rate, e.g. quota=50, window_s=1.0"
            )
        if self.burst is not None and self.limiter != "bucket":
            raise InvalidArgument(
                f"burst {self.burst!r}: only a token bucket has one; add limiter='bucket'"
            )
        _check_count("knee", self.knee)
        _check_count("credit", self.credit, minimum=0)
        _check_seconds("window_s", self.window_s)
        if self.window_s == 0:
            raise InvalidArgument("window_s 0: the quota window must be longer than zero, e.g. 1.0")
        _check_seconds("base_latency_s", self.base_latency_s)
        _check_seconds("network_delay_s", self.network_delay_s)
        _check_seconds("slow_s", self.slow_s)
        _check_seconds("load_factor", self.load_factor)
        for name in ("error_rate", "slow_rate", "drop_rate", "post_drop_rate"):
            _check_rate(name, getattr(self, name))
        if self.headers not in _HEADER_STYLES:
            raise InvalidArgument(
                f"headers {self.headers!r}: must be one of {', '.join(_HEADER_STYLES)}"
            )
        if self.reset_format not in _RESET_FORMATS:
            raise InvalidArgument(
                f"reset_format {self.reset_format!r}: must be one of {', '.join(_RESET_FORMATS)}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidArgument(f"seed {self.seed!r}: must be a whole number such as 0")
        if self.llm is not None and not isinstance(self.llm, LlmConfig):
            raise InvalidArgument(f"llm {self.llm!r}: must be an LlmConfig or None")

    @property
    def window_ns(self) -> int:
        """The quota window in integer nanoseconds, rounded up."""
        return math.ceil(self.window_s * 1e9)

    @property
    def bucket_capacity(self) -> int | None:
        """The token bucket's capacity (``burst``, or ``quota`` without one); ``None`` for the
        sliding window."""
        if self.limiter != "bucket":
            return None
        return self.burst if self.burst is not None else self.quota

    @property
    def effective_knee(self) -> int | None:
        """The in-flight count above which latency grows, or ``None`` for flat latency."""
        if self.knee is not None:
            return self.knee
        if self.capacity is not None:
            return max(1, self.capacity // 2)
        return None

    def latency_s(self, in_flight: int) -> float:
        """Seconds a request takes when it arrives with ``in_flight`` requests being served.

        ``in_flight`` counts the request itself.

        >>> config = ApiConfig(base_latency_s=0.1, capacity=8, load_factor=2.0)
        >>> [round(config.latency_s(n), 3) for n in (1, 4, 6, 8)]
        [0.1, 0.1, 0.2, 0.3]
        """
        knee = self.effective_knee
        if knee is None:
            return self.base_latency_s
        return self.base_latency_s * (1 + self.load_factor * max(0, in_flight - knee) / knee)

    def to_argv(self) -> list[str]:
        """The command-line arguments that give this config to ``python -m ...api_server``.

        >>> ApiConfig(quota=10, window_s=0.5, retry_after=True).to_argv()[:3]
        ['--quota', '10/0.5s', '--retry-after']
        >>> ApiConfig(quota=10, limiter="bucket", burst=4).to_argv()
        ['--quota', '10/1.0s', '--bucket', '4']
        """
        argv: list[str] = []
        defaults = ApiConfig()
        if self.quota is not None:
            argv += ["--quota", f"{self.quota}/{self.window_s!r}s"]
        if self.retry_after:
            argv.append("--retry-after")
        if self.secondary_limit:
            argv.append("--secondary-limit")
        if self.limiter == "bucket":
            argv += ["--bucket"] if self.burst is None else ["--bucket", str(self.burst)]
        for field in fields(self):
            name = field.name
            if name in (
                "quota",
                "window_s",
                "retry_after",
                "secondary_limit",
                "limiter",
                "burst",
                "llm",
            ):
                continue
            value = getattr(self, name)
            if value != getattr(defaults, name) and value is not None:
                argv += ["--" + name.replace("_", "-"), str(value)]
        if self.llm is not None:
            argv += self.llm.to_argv()
        return argv
