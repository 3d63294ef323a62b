"""A discrete-event simulation of the adaptive controller against a hidden quota (fake time)."""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import deque
from dataclasses import dataclass, field

from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings, Outcome
from paceline.policy.gcra import Gcra

NS = 1_000_000_000


@dataclass
class SimResult:
    accepted: int
    throttled: int
    sent: int
    duration_s: float
    max_in_window: int
    throttled_at_s: list[float] = field(default_factory=list)  # arrival times of the 429s

    @property
    def throttled_fraction(self) -> float:
        return self.throttled / self.sent if self.sent else 0.0


class QuotaServer:
    """N per W counted at arrival (sliding log); 429 beyond, optionally with Retry-After."""

    def __init__(
        self, quota: int, window_s: float, retry_after: bool, whole_seconds: bool = False
    ) -> None:
        self.quota = quota
        self.window_ns = round(window_s * NS)
        self.retry_after = retry_after
        self.whole_seconds = whole_seconds  # Retry-After rounded up, as the test API sends it
        self.log: deque[int] = deque()
        self.accepted: list[int] = []
        self.delay_ns = 0  # how long the server held the last accepted request (nginx's delay)

    def admit(self, now: int) -> tuple[Outcome, float | None]:
        while self.log and self.log[0] <= now - self.window_ns:
            self.log.popleft()
        if len(self.log) >= self.quota:
            wait = (self.log[0] + self.window_ns - now) / NS
            if self.whole_seconds:
                wait = float(-(-(self.log[0] + self.window_ns - now) // NS))
            return Outcome.THROTTLE, (max(1.0, wait) if self.retry_after else None)
        self.log.append(now)
        self.accepted.append(now)
        return Outcome.SUCCESS, None


class FixedWindowServer(QuotaServer):
    """N per clock-aligned window of W (the count resets every W, ``phase_s`` into the run)."""

    def __init__(self, quota: int, window_s: float, retry_after: bool, phase_s: float) -> None:
        super().__init__(quota, window_s, retry_after)
        self.phase_ns = round(phase_s * NS)
        self.current: int | None = None
        self.count = 0

    def admit(self, now: int) -> tuple[Outcome, float | None]:
        k = (now + self.phase_ns) // self.window_ns
        if k != self.current:
            self.current, self.count = k, 0
        if self.count >= self.quota:
            wait = ((k + 1) * self.window_ns - self.phase_ns - now) / NS
            return Outcome.THROTTLE, (max(1.0, wait) if self.retry_after else None)
        self.count += 1
        self.accepted.append(now)
        return Outcome.SUCCESS, None


class LeakyBucketServer(QuotaServer):
    """nginx's ``limit_req`` to the letter (ngx_http_limit_req_module.c): time in whole
    milliseconds, ``excess`` in thousandths of a request; a request arriving ``ms`` after the
    last accepted one makes ``excess = max(0, excess - rate * ms + 1000)`` and is refused
    (without moving anything) if that exceeds ``burst * 1000``. Accepted with ``excess > 0``
    and without ``nodelay``, it is answered ``excess / rate`` ms late. No ``Retry-After``."""

    def __init__(self, rate_per_s: int, burst: int = 0, nodelay: bool = False) -> None:
        super().__init__(rate_per_s, 1.0, retry_after=False)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.nodelay = nodelay
        self.last_ms: int | None = None
        self.excess = 0

    def admit(self, now: int) -> tuple[Outcome, float | None]:
        now_ms = now // 1_000_000
        self.delay_ns = 0
        if self.last_ms is None:
            excess = 0
        else:
            ms = now_ms - self.last_ms
            excess = max(0, self.excess - self.rate_per_s * ms + 1000)
            if excess > self.burst * 1000:
                return Outcome.THROTTLE, None
        if not self.nodelay:
            self.delay_ns = excess * 1_000_000 // self.rate_per_s
        self.excess = excess
        if self.last_ms is None or now_ms != self.last_ms:
            self.last_ms = now_ms
        self.accepted.append(now)
        return Outcome.SUCCESS, None


class TokenBucketServer(QuotaServer):
    """A token bucket: ``capacity`` tokens, refilled at ``rate_per_s`` (continuous, in ns);
    each request takes one or is refused. ``retry_after``: a refusal says when the next token
    comes, rounded up to whole seconds (at least 1, as the test API's bucket mode does)."""

    def __init__(self, rate_per_s: float, capacity: int, retry_after: bool = False) -> None:
        super().__init__(capacity, 1.0, retry_after=retry_after)
        self.interval_ns = round(NS / rate_per_s)
        self.capacity_ns = capacity * self.interval_ns
        self.level_ns = self.capacity_ns  # tokens, in ns of refill
        self.at_ns = 0

    def admit(self, now: int) -> tuple[Outcome, float | None]:
        self.level_ns = min(self.capacity_ns, self.level_ns + now - self.at_ns)
        self.at_ns = now
        if self.level_ns < self.interval_ns:
            if not self.retry_after:
                return Outcome.THROTTLE, None
            return Outcome.THROTTLE, float(max(1, -(-(self.interval_ns - self.level_ns) // NS)))
        self.level_ns -= self.interval_ns
        self.accepted.append(now)
        return Outcome.SUCCESS, None


def simulate(
    server: QuotaServer,
    duration_s: float,
    latency_s: float = 0.02,
    settings: AdaptiveSettings | None = None,
    seed: int = 1,
    wake_jitter_s: float = 0.0,
    user_rate_per_s: float | None = None,
    send_jitter_s: float = 0.0,
    connect_s: float = 0.0,
    drop_rate: float = 0.0,
    service_s: float = 0.0,
    stamp_s: float = 0.0,
) -> tuple[SimResult, AdaptiveController]:
    """Run the controller against ``server`` for ``duration_s`` of fake time. A timer (the
    pacer's, the user's limiter's) fires up to ``wake_jitter_s`` late; ``user_rate_per_s``: a
    strict limiter paces evenly at that rate after the controller's gates (``--rate``, which
    the controller paces at too, as the CLI sets it up); a request reaches the server up to
    ``send_jitter_s`` after it starts (the client's event loop, the network), beside the
    latency's own +-10 %. The first ``initial_concurrency`` requests reach the server
    ``connect_s`` late (each opens a connection: measured 40-60 ms on loopback for the CLI's
    first requests). ``drop_rate``: the share of admitted requests whose answer is lost (the
    server processed it, the client sees a dropped connection: ``Outcome.CAPACITY``).
    ``service_s``: the server (and the client's event loop) handles one request at a time, each
    taking this long, in arrival order: a burst queues, and its last requests are counted and
    answered late (the test API and the CLI on one loopback: ~0.8 ms a request, measured).
    ``stamp_s``: a request goes out this long after the controller's start, and its ticket's
    ``sent_ns`` is stamped again then, as the CLI's gate does (``AdaptiveGate.sent``)."""
    rng = random.Random(seed)
    drops = random.Random(seed + 1)  # its own draws: the other draws run as without drops
    settings = settings or AdaptiveSettings()
    if user_rate_per_s is not None:
        settings = dataclasses.replace(
            settings, user_rate_per_s=user_rate_per_s, user_rate_even=True
        )
    controller = AdaptiveController(settings, rng=random.Random(seed))
    end = round(duration_s * NS)
    now = 0
    flights: list[tuple[int, int, object, Outcome, float | None]] = []
    seq = 0
    sent = throttled = 0
    throttled_at: list[float] = []
    waited_for_rate = False
    user = None if user_rate_per_s is None else Gcra(round(NS / user_rate_per_s), 0)
    busy_until = 0  # when the server is done with what it has queued (``service_s``)
    while now < end:
        while flights and flights[0][0] <= now:
            done_at, _, ticket, outcome, retry_after = heapq.heappop(flights)
            controller.finished(done_at, ticket, outcome, retry_after)  # type: ignore[arg-type]
        decision = controller.decide(now, len(flights))
        if decision.go:
            ticket = controller.started(now, len(flights), waited_for_rate)
            waited_for_rate = False
            send = now
            if user is not None:
                wait = user.wait_ns(now, 1)
                if wait:
                    send = now + wait + round(wake_jitter_s * NS * rng.random())
                user.record(send, 1, waited=wait > 0)
                ticket.sent_ns = send
            if stamp_s:
                send += round(stamp_s * NS)
                ticket.sent_ns = send
            arrival = send + round(latency_s * NS / 2 * rng.uniform(0.8, 1.2))
            if send_jitter_s:
                arrival += round(send_jitter_s * NS * rng.random())
            if sent < settings.initial_concurrency:
                arrival += round(connect_s * NS)
            if service_s:
                arrival = busy_until = max(arrival, busy_until) + round(service_s * NS)
            outcome, retry_after = server.admit(arrival)
            if outcome is Outcome.SUCCESS and drop_rate and drops.random() < drop_rate:
                outcome = Outcome.CAPACITY
            sent += 1
            throttled += outcome is Outcome.THROTTLE
            if outcome is Outcome.THROTTLE:
                throttled_at.append(arrival / NS)
            seq += 1
            done = arrival + server.delay_ns + round(latency_s * NS / 2)
            heapq.heappush(flights, (done, seq, ticket, outcome, retry_after))
            continue
        next_done = flights[0][0] if flights else end
        if decision.slot:
            now = next_done
        else:
            waited_for_rate = decision.rate
            late = round(wake_jitter_s * NS * rng.random()) if decision.rate else 0
            now = min(now + decision.wait_ns + late, next_done)
    accepted = [t for t in server.accepted if t < end]
    most = 0
    j = 0
    for i, t in enumerate(accepted):
        while j < len(accepted) and accepted[j] < t + server.window_ns:
            j += 1
        most = max(most, j - i)
    result = SimResult(len(accepted), throttled, sent, duration_s, most, throttled_at)
    return result, controller


@dataclass
class CapacityResult:
    completed: int
    overloaded: int
    duration_s: float
    latencies_s: list[float]
    best_per_s: float
    final_limit: int

    @property
    def share_of_best(self) -> float:
        return self.completed / self.duration_s / self.best_per_s

    @property
    def overloaded_fraction(self) -> float:
        return self.overloaded / max(1, self.completed + self.overloaded)

    @property
    def median_latency_s(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[len(ordered) // 2]


def simulate_capacity(
    duration_s: float,
    base_s: float,
    capacity: int | None = None,
    knee: int | None = None,
    jitter_s: float = 0.0,
    settings: AdaptiveSettings | None = None,
    seed: int = 1,
) -> CapacityResult:
    """A server without a quota, as the test API models one: each request takes
    ``base_s * (1 + max(0, n - knee) / knee)`` with ``n`` requests in flight when it arrives,
    plus a uniform ``[0, jitter_s]`` (network and server noise that has nothing to do with
    load); beyond ``capacity`` in flight it answers 503 at once. The client sends whenever the
    controller lets it."""
    rng = random.Random(seed)
    controller = AdaptiveController(settings or AdaptiveSettings(), rng=random.Random(seed))
    end = round(duration_s * NS)
    now = 0
    flights: list[tuple[int, int, object, Outcome]] = []
    seq = completed = overloaded = serving = 0
    latencies: list[float] = []
    while now < end:
        while flights and flights[0][0] <= now:
            done_at, _, ticket, outcome = heapq.heappop(flights)
            serving -= outcome is Outcome.SUCCESS
            controller.finished(done_at, ticket, outcome)  # type: ignore[arg-type]
        decision = controller.decide(now, len(flights))
        if decision.go:
            ticket = controller.started(now, len(flights), False)
            serving += 1  # this one, if the server takes it
            seq += 1
            if capacity is not None and serving > capacity:
                serving -= 1
                overloaded += 1
                heapq.heappush(flights, (now + NS // 1000, seq, ticket, Outcome.OVERLOAD))
                continue
            grow = 0.0 if knee is None else max(0, serving - knee) / knee
            latency = base_s * (1 + grow) + rng.uniform(0.0, jitter_s)
            done = now + round(latency * NS)
            if done < end:
                completed += 1
                latencies.append(latency)
            heapq.heappush(flights, (done, seq, ticket, Outcome.SUCCESS))
            continue
        next_done = flights[0][0] if flights else end
        now = next_done if decision.slot else min(now + decision.wait_ns, next_done)
    if capacity is None:
        best = float("inf")
    else:
        best = max(
            n / (base_s * (1 + (0 if knee is None else max(0, n - knee) / knee)))
            for n in range(1, capacity + 1)
        )
    return CapacityResult(
        completed, overloaded, duration_s, latencies, best, controller.concurrency_limit
    )
