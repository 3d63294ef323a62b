"""What the test API decides and remembers, without I/O: quota, capacity, failures, stats.

Everything here runs on the server's event loop thread, so nothing is locked.
"""

from __future__ import annotations

import bisect
import enum
import math
import random
import statistics
import time
from collections import Counter, deque
from typing import Any

from paceline.testing._api.bucket import TokenBucket
from paceline.testing._api.config import ApiConfig
from paceline.testing._api.llm_state import LlmState
from paceline.testing._api.objects import ObjectStore

NS_PER_S = 1_000_000_000


class Fate(enum.Enum):
    """What happens to a request that the quota and the capacity admitted."""

    SERVE = "serve"
    ERROR = "error"
    DROP = "drop"


def _ceil_s(ns: int) -> int:
    return -(-ns // NS_PER_S)


class ServerState:
    """The quota log, the in-flight count, the seeded failure draws and the counters.

    >>> state = ServerState(ApiConfig(quota=2, window_s=1.0))
    >>> [state.admit(now_ns=t) for t in (0, 1, 2)]
    [True, True, False]
    >>> state.retry_after_s(now_ns=2), state.admit(now_ns=1_000_000_000)
    (1, True)

    With ``limiter="bucket"`` the quota is a :class:`TokenBucket` instead of the log:

    >>> state = ServerState(ApiConfig(quota=10, limiter="bucket", burst=2))
    >>> [state.admit(now_ns=state.start_ns) for _ in range(3)]
    [True, True, False]
    """

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self._window_ns = config.window_ns
        self.in_flight = 0
        self.reset(now_ns=time.monotonic_ns())

    def reset(self, now_ns: int) -> None:
        """Forget the quota log, the counters and the served ids; reseed the failures."""
        self.start_ns = now_ns
        self._log: deque[int] = deque()
        capacity, quota = self.config.bucket_capacity, self.config.quota
        self._bucket = (
            TokenBucket(quota, self._window_ns, capacity, now_ns)
            if capacity is not None and quota is not None
            else None
        )
        self._rng = random.Random(self.config.seed)
        llm = self.config.llm
        self.llm = LlmState(llm, self.config.seed, now_ns) if llm is not None else None
        self._delay_rng = random.Random(self.config.seed + 1)
        self.objects = ObjectStore(self.config.post_drop_rate, self.config.seed)
        self.requests = 0
        self.throttled_429 = 0
        self.overloaded_503 = 0
        self.errors_500 = 0
        self.dropped = 0
        self.bad_requests = 0
        self.malformed = 0
        self.credit_used = 0  # requests admitted against ApiConfig.credit
        self.credit_refused = 0  # answered insufficient_quota once it was spent
        self.max_in_flight = self.in_flight
        self._accepted_ns: list[int] = []
        self._latencies_ns: list[int] = []
        self.served: Counter[str] = Counter()

    # -- quota -------------------------------------------------------------------------------

    def _expire(self, now_ns: int) -> None:
        log = self._log
        edge = now_ns - self._window_ns
        while log and log[0] <= edge:
            log.popleft()

    def admit(self, now_ns: int) -> bool:
        """Count a request that arrived at ``now_ns``; ``False`` means answer 429."""
        self.requests += 1
        quota = self.config.quota
        if quota is None:
            return True
        if self._bucket is not None:
            if self._bucket.admit(now_ns):
                return True
            self.throttled_429 += 1
            return False
        self._expire(now_ns)
        if len(self._log) >= quota:
            self.throttled_429 += 1
            return False
        self._log.append(now_ns)
        return True

    def spend_credit(self) -> bool:
        """Take one request's credit (``ApiConfig.credit``); ``False``: it is spent."""
        credit = self.config.credit
        if credit is not None and self.credit_used >= credit:
            self.credit_refused += 1
            return False
        self.credit_used += 1
        return True

    def retry_after_s(self, now_ns: int) -> int:
        """Whole seconds until the quota frees a slot, rounded up, at least 1."""
        if self._bucket is not None:
            return max(1, _ceil_s(self._bucket.wait_ns(now_ns)))
        self._expire(now_ns)
        if not self._log:
            return 1
        return max(1, _ceil_s(self._log[0] + self._window_ns - now_ns))

    def rate_headers(self, now_ns: int) -> list[tuple[str, str]]:
        """The quota headers the config asks for, describing the quota after this request."""
        config = self.config
        if config.quota is None or config.headers == "none":
            return []
        limit, window = config.quota, config.window_s
        if self._bucket is not None:
            # A bucket as a policy: `burst` requests per the time it takes to fill; the quota
            # resets when it is full again.
            limit = config.bucket_capacity or config.quota
            window = limit * config.window_s / config.quota
            remaining = self._bucket.remaining(now_ns)
            reset_ns = self._bucket.full_in_ns(now_ns)
        else:
            self._expire(now_ns)
            remaining = max(0, config.quota - len(self._log))
            reset_ns = self._log[0] + self._window_ns - now_ns if self._log else 0
        if config.headers == "ietf":
            # The draft wants whole seconds; a sub-second test window is written as a decimal
            # (still a valid structured-field number) rather than rounded into a wrong one.
            w = str(int(window)) if float(window).is_integer() else f"{window:.3f}".rstrip("0")
            return [
                ("RateLimit-Policy", f'"default";q={limit};w={w}'),
                ("RateLimit", f'"default";r={remaining};t={_ceil_s(reset_ns)}'),
            ]
        if config.reset_format == "epoch":
            reset = str(math.ceil(time.time() + reset_ns / NS_PER_S))
        elif config.reset_format == "delta":
            reset = str(_ceil_s(reset_ns))
        else:
            reset = str(-(-reset_ns // 1_000_000))
        return [
            ("X-RateLimit-Limit", str(limit)),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", reset),
        ]

    # -- capacity and failures ---------------------------------------------------------------

    def enter(self) -> bool:
        """Start serving a request; ``False`` means the server is full (answer 503)."""
        capacity = self.config.capacity
        if capacity is not None and self.in_flight >= capacity:
            self.overloaded_503 += 1
            return False
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return True

    def leave(self) -> None:
        """Finish serving a request that :meth:`enter` admitted."""
        self.in_flight -= 1

    def network_delay_s(self) -> float:
        """How long the next quota-counted request travels before it is counted."""
        limit = self.config.network_delay_s
        return self._delay_rng.uniform(0.0, limit) if limit else 0.0

    def draw(self) -> tuple[Fate, float]:
        """Decide a request's fate and extra latency: always three draws, in a fixed order."""
        config = self.config
        drop, error, slow = self._rng.random(), self._rng.random(), self._rng.random()
        extra_s = config.slow_s if slow < config.slow_rate else 0.0
        if drop < config.drop_rate:
            self.dropped += 1
            return Fate.DROP, extra_s
        if error < config.error_rate:
            self.errors_500 += 1
            return Fate.ERROR, extra_s
        return Fate.SERVE, extra_s

    def record_accepted(self, arrived_ns: int, now_ns: int, ids: list[str]) -> dict[str, int]:
        """Count a 200 answer for ``ids``; return each id's served count."""
        self._accepted_ns.append(arrived_ns)
        self._latencies_ns.append(now_ns - arrived_ns)
        served = self.served
        for item_id in ids:
            served[item_id] += 1
        return {item_id: served[item_id] for item_id in ids}

    # -- stats -------------------------------------------------------------------------------

    def stats(self, times: bool = False) -> dict[str, Any]:
        """A JSON-ready summary; ``times=True`` adds ``accepted_times_s``: each accepted arrival,
        in seconds since the server started or was last reset, in order."""
        accepted = sorted(self._accepted_ns)
        window = self._window_ns
        most = 0
        for i, t in enumerate(accepted):
            # Half-open windows [t, t + W) starting at each accepted arrival find the maximum.
            most = max(most, bisect.bisect_left(accepted, t + window, lo=i) - i)
        config = self.config
        result: dict[str, Any] = {
            "requests": self.requests,
            "accepted": len(accepted),
            "throttled_429": self.throttled_429,
            "overloaded_503": self.overloaded_503,
            "errors_500": self.errors_500,
            "dropped": self.dropped,
            "bad_requests": self.bad_requests,
            "malformed": self.malformed,
            "credit_used": self.credit_used,
            "credit_refused": self.credit_refused,
            "max_accepted_in_any_window": most,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "items_served_more_than_once": sum(1 for n in self.served.values() if n > 1),
            "latency_p50_s": (
                statistics.median(self._latencies_ns) / NS_PER_S if self._latencies_ns else None
            ),
            "quota": config.quota,
            "window_s": config.window_s,
            "limiter": config.limiter,
            "burst": config.bucket_capacity,
            "capacity": config.capacity,
        }
        if self.objects.requests:
            result["objects"] = self.objects.stats()
        if self.llm is not None:
            result["llm"] = self.llm.stats(times=times)
        if times:
            result["accepted_times_s"] = [(t - self.start_ns) / NS_PER_S for t in accepted]
        return result
