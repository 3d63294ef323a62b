"""A real HTTP/1.1 API on loopback with limits the client is not told: quota, capacity, failures.

paceline's tests, benchmarks and demo prove adaptive throttling against it. It serves on
asyncio streams with a small HTTP/1.1 parser (keep-alive, ``Content-Length`` bodies), fast
enough not to be the bottleneck for a Python client at a few thousand requests per second.

Routes:

- ``GET|POST /items/<id>`` → ``{"id": "<id>", "n": <times served>}`` (POST adds the JSON body
  as ``"echo"``).
- ``POST /bulk`` with ``{"ids": [...]}`` → ``{"items": {id: {...}}}``, leaving out ids that start
  with ``missing``; one call counts once against the quota.
- ``POST /objects`` creates an object from its JSON body (201), or with an
  ``Idempotency-Key`` it has seen answers the stored object again and creates nothing;
  ``--post-drop-rate`` drops a share of the answers after the object was created.
  ``GET /objects`` lists the objects and each POST's key; ``/stats`` gains ``"objects"``
  (``created``, ``duplicates``, ``replays``, ``dropped_after_processing``).
- ``GET /stats`` (``?times=1`` adds accepted arrival times) and ``POST /reset``, not counted.

Every response has a ``Date``; served ones a ``Server-Timing: app;dur=<ms>`` with the latency
the server chose. See :class:`ApiConfig` for the knobs.

>>> import urllib.request, urllib.error
>>> config = ApiConfig(quota=1, window_s=60, retry_after=True, base_latency_s=0)
>>> with ApiServer(config) as server:
...     first = urllib.request.urlopen(server.url + "/items/1").status
...     try:
...         urllib.request.urlopen(server.url + "/items/2")
...     except urllib.error.HTTPError as exc:
...         second = exc.code, exc.headers["Retry-After"]
>>> first, second
(200, (429, '60'))

As a process (``--port 0`` picks a free port; the first stdout line gives the URL)::

    python -m paceline.testing.api_server --quota 100/1s --retry-after --headers ietf \\
        --capacity 16 --port 0
    listening on http://127.0.0.1:40123

``--bucket [BURST]`` keeps the quota as a token bucket instead (``paceline serve-test --quota
50/1s --bucket 10``: 10 at once, then 50 per second).

LLM mode (:class:`LlmConfig`) adds ``POST /v1/chat/completions``, limited in requests and
tokens per minute as OpenAI's API is: the prompt's estimate plus ``max_tokens`` are reserved
at admission and the unused part refunded with the answer, whose ``usage`` says what was
spent; ``x-ratelimit-*-requests`` / ``-tokens`` headers on every answer, ``retry-after-ms`` on
a 429. ``GET /stats`` gains an ``"llm"`` part with the server's own counts:

>>> import json
>>> config = ApiConfig(base_latency_s=0, llm=LlmConfig(tokens_per_min=60_000, tokens_burst=500))
>>> call = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 100}
>>> with ApiServer(config) as server:
...     request = urllib.request.Request(server.url + "/v1/chat/completions",
...                                      data=json.dumps(call).encode(), method="POST")
...     with urllib.request.urlopen(request) as answer:
...         usage = json.load(answer)["usage"]
...         remaining = int(answer.headers["x-ratelimit-remaining-tokens"])
...     llm = server.stats()["llm"]
>>> usage["prompt_tokens"], remaining >= 500 - usage["total_tokens"]
(9, True)
>>> llm["tokens_reserved"], llm["tokens_used"] == usage["total_tokens"]
(109, True)

As a process: ``paceline serve-test --llm --llm-tokens-per-min 60000 --llm-tokens-burst 500``
(``--help`` lists the ``--llm-*`` options).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from paceline.errors import InvalidArgument
from paceline.policy.rate import NS_PER_S, Rate, RateSpecError
from paceline.testing._api.app import Service
from paceline.testing._api.config import ApiConfig
from paceline.testing._api.llm_config import LlmConfig
from paceline.testing._api.server import ApiServer, SpawnedServer
from paceline.testing.hostile import MODES
from paceline.testing.hostile import main as hostile_main

__all__ = ["ApiConfig", "ApiServer", "LlmConfig", "SpawnedServer", "main"]


# An --llm-* option left out (LlmConfig's default applies); not None, which means "no limit".
_NOT_GIVEN = object()

# `--bucket` alone: a bucket that holds the quota (ApiConfig's burst=None). Not a string:
# argparse would pass a string const through `type=int`.
_BUCKET_OF_QUOTA = object()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m paceline.testing.api_server",
        description="Serve the paceline test API on 127.0.0.1 until terminated.",
    )
    add = parser.add_argument
    add("--quota", metavar="N/W", help="hidden quota, e.g. 100/1s or 10/0.5s (default: none)")
    add(
        "--bucket",
        nargs="?",
        const=_BUCKET_OF_QUOTA,
        type=int,
        metavar="BURST",
        help="keep the quota as a token bucket of BURST (default: the quota), refilled at "
        "the quota's rate, instead of a sliding window",
    )
    add("--retry-after", action="store_true", help="send Retry-After with each 429")
    add(
        "--secondary-limit",
        action="store_true",
        help="refuse beyond the quota as GitHub's secondary limit: 403 + Retry-After",
    )
    add(
        "--credit",
        type=int,
        metavar="K",
        help="out of credit after K admitted requests: 429 insufficient_quota (POST /reset "
        "restores it)",
    )
    add("--headers", choices=["none", "ietf", "x"], default="none", help="quota headers to send")
    add("--reset-format", choices=["epoch", "delta", "delta_ms"], default="delta")
    add("--network-delay-s", type=float, default=0.0, help="up to this delay before counting")
    add("--capacity", type=int, help="requests served at once before 503 (default: no limit)")
    add("--base-latency-s", type=float, default=0.005, help="latency at low load, seconds")
    add("--load-factor", type=float, default=1.0, help="latency growth above the knee")
    add("--knee", type=int, help="in-flight count where latency starts to grow (capacity // 2)")
    add("--error-rate", type=float, default=0.0, help="fraction answered 500")
    add("--slow-rate", type=float, default=0.0, help="fraction answered slow-s later")
    add("--slow-s", type=float, default=1.0, help="extra seconds for slow answers")
    add("--drop-rate", type=float, default=0.0, help="fraction closed without an answer")
    add(
        "--post-drop-rate",
        type=float,
        default=0.0,
        help="fraction of POST /objects processed, then closed without an answer",
    )
    add("--seed", type=int, default=0, help="seed for the failure draws")
    add("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    llm = parser.add_argument_group(
        "LLM mode",
        "--llm adds POST /v1/chat/completions (OpenAI) or /v1/messages (anthropic) with "
        "requests and tokens buckets; see LlmConfig",
    )
    llm.add_argument("--llm", action="store_true", help="serve the LLM route")
    llm.set_defaults(**{"llm_" + name: _NOT_GIVEN for name in _LLM_OPTIONS})
    llm.add_argument(
        "--llm-requests-per-min", type=_limit, metavar="N|none", help="default 500 (OpenAI tier 1)"
    )
    llm.add_argument(
        "--llm-tokens-per-min", type=_limit, metavar="N|none", help="default 200000 (tier 1)"
    )
    llm.add_argument(
        "--llm-requests-burst", type=int, metavar="N", help="default: a minute's worth"
    )
    llm.add_argument("--llm-tokens-burst", type=int, metavar="N", help="default: a minute's worth")
    llm.add_argument(
        "--llm-completion-ratio", type=float, metavar="R", help="mean of max_tokens used (0.3)"
    )
    llm.add_argument(
        "--llm-output-token-s", type=float, metavar="S", help="latency per output token (0)"
    )
    llm.add_argument("--llm-quiet", action="store_true", help="send no rate-limit headers")
    llm.add_argument("--llm-flavour", choices=["openai", "anthropic"], help="default openai")
    add(
        "--hostile",
        choices=MODES,
        metavar="MODE",
        help=f"misbehave instead of serving the API (uses --port, --seed): {', '.join(MODES)}",
    )
    add("--trickle-interval-s", type=float, help="--hostile trickle: seconds between bytes")
    add("--body-bytes", type=int, help="--hostile huge-body: bytes in each body")
    return parser


def _limit(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


_LLM_OPTIONS = (
    "requests_per_min",
    "tokens_per_min",
    "requests_burst",
    "tokens_burst",
    "completion_ratio",
    "output_token_s",
    "flavour",
)


def _llm_from_args(args: argparse.Namespace) -> LlmConfig | None:
    given = {
        name: getattr(args, "llm_" + name)
        for name in _LLM_OPTIONS
        if getattr(args, "llm_" + name) is not _NOT_GIVEN
    }
    if not args.llm:
        if given or args.llm_quiet:
            raise InvalidArgument(
                "the LLM options need --llm, e.g. --llm --llm-tokens-per-min 60000"
            )
        return None
    return LlmConfig(announce=not args.llm_quiet, **given)


def config_from_args(args: argparse.Namespace) -> ApiConfig:
    """Build an :class:`ApiConfig` from parsed command-line arguments."""
    quota: int | None = None
    window_s = 1.0
    if args.quota is not None:
        rate = Rate.parse(args.quota)
        quota, window_s = rate.max_requests, rate.window_ns / NS_PER_S
    bucket = args.bucket
    return ApiConfig(
        quota=quota,
        window_s=window_s,
        limiter="window" if bucket is None else "bucket",
        burst=None if bucket is None or bucket is _BUCKET_OF_QUOTA else bucket,
        retry_after=args.retry_after,
        headers=args.headers,
        reset_format=args.reset_format,
        network_delay_s=args.network_delay_s,
        capacity=args.capacity,
        base_latency_s=args.base_latency_s,
        load_factor=args.load_factor,
        knee=args.knee,
        error_rate=args.error_rate,
        slow_rate=args.slow_rate,
        slow_s=args.slow_s,
        drop_rate=args.drop_rate,
        post_drop_rate=args.post_drop_rate,
        secondary_limit=args.secondary_limit,
        credit=args.credit,
        seed=args.seed,
        llm=_llm_from_args(args),
    )


async def _serve(config: ApiConfig, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGTERM (what SpawnedServer sends) and SIGINT close every connection and exit 0. Without
    # this, a SIGINT inherited as ignored (a background job of a script) would not stop us.
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no such handlers
            loop.add_signal_handler(signum, stop.set)

    def ready(bound: int) -> None:
        print(f"listening on http://127.0.0.1:{bound}", flush=True)

    await Service(config).run(port, ready, stop)


def _hostile_argv(args: argparse.Namespace) -> list[str]:
    argv = [args.hostile, "--port", str(args.port), "--seed", str(args.seed)]
    if args.trickle_interval_s is not None:
        argv += ["--trickle-interval-s", str(args.trickle_interval_s)]
    if args.body_bytes is not None:
        argv += ["--body-bytes", str(args.body_bytes)]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until terminated (SIGTERM or Ctrl-C); return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.hostile is not None:
        return hostile_main(_hostile_argv(args))
    try:
        config = config_from_args(args)
    except (RateSpecError, ValueError) as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(config, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"api_server: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
