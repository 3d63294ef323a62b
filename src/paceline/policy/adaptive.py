"""Adaptive throttling: find an unknown server limit from its answers and run just under it.

Before each attempt, ``decide`` checks these gates in order (docs/design.md, 'Adaptive gates'):

1. **pause** — a ``Retry-After`` stops every dispatch until it passes. A *probe* starts when three
   throttles come right after a cut, before anything sent since has succeeded (a long-window
   quota): one attempt at a time, after a step of 1 s that doubles up to 64 s, each wait drawn
   between half the step and the whole step (equal jitter: a probe sent at once learns nothing)
   — but never waiting more than half the time since the cycle's first success, and going just
   after each round window (1 s, 2 s, 5 s, ... 60 s, ... 1 h) since that success was answered
   (the latest the server can have counted it), so the probe that gets through is only a little
   late. A probe lost without an answer (a dropped connection, a timeout) is sent again at once:
   it says nothing about the window. A probe that needed several tries ends a *long-window cycle*:
   its successes are the quota N, the time from its first success to the probe bounds the window
   W (the last throttle bounds it from below), and the rate is handed over to N/W less the
   margin. Later cycles (the rate crept over N/W) probe no sooner than the known lower bound,
   then in fine steps.
2. **probing** — while probing, one attempt at a time, and only when nothing else is in flight.
3. **concurrency** — at most L in flight.
4. **one at a time after a rate cut** — until an attempt sent since the cut has succeeded, only
   one such attempt is in flight: when the window is still full (a long-window quota) the others
   would only collect 429s before the probe starts.
5. **rate** — an even pacer (interval 1/R). There is none until the first throttle. Against a
   learned window without ``Retry-After``, missed slots are caught up (``_WINDOW_CATCH_UP_S``).
   Against a window of a second found at the start (confirmed by the bucket-or-window test, or
   probed open a second on) over a short round trip, its slots instead: N, each free again a
   second after its answer (``_WINDOW_SLOTS_SLACK_S``).

Outcomes are classified by the caller: ``SUCCESS`` (its RTT is sampled), ``THROTTLE`` (429,
a raised ``Throttled``: a quota), ``OVERLOAD`` (503: cut whichever gate was binding),
``CAPACITY`` (timeouts, 5xx: cut concurrency — unless the answers that do come are as fast as
unloaded: then it is a *loss*, no cut) and ``IGNORE`` (other 4xx, cancellations). Every outcome
but ``THROTTLE`` and ``OVERLOAD`` counts in the rate the server accepted (its quota counted a
dropped answer too).
Throttled answers are fast: they never feed the latency estimates. Two concurrency cuts by 503s
at the same load teach a connection limit: L is then held one below that load, and probes past
it only slowly (see ``_CAPACITY_LEARN_AFTER``).

A throttle either *smooths* or *cuts* (docs/design.md, 'Smoothing versus cutting'). It says
"burst", not "rate", when the attempt went out with no pacer (the initial concurrency leaves at
once) or less than ``burst_gap`` (0.99) of an interval after the start before it: then R stays
the pace that was working, strictly kept, and no ceiling is learned. At the first throttle (no
pacer yet) R becomes the rate the server accepted, judged over at least a second (a quarter
second when only one request got through), and slow start doubles it every 0.5 s from there.
It is a cut when the server has ever sent ``Retry-After``, when 3 smoothings came in the last
second already, or when the user's limiter paced the attempt: R becomes ``rate_cut`` (0.8) of
the ceiling, the rate accepted over the last second of sending (no more than the pace then; in
slow start, the pace the throttled attempt was sent at; at a first throttle, the answers still
in flight then are added when they come). The jitter refusals of a server that
looks like a bucket (at most 2 of the last 100 answers) cost no cut, and the user's rate is held
unless the server keeps throttling at it.

A first cut of the unpaced start with ``Retry-After`` (a pause of a second at most) is
followed by one *bucket-or-window test* (docs/design.md, 'Bucket or window'): after the pause,
send at 4x that ceiling until refused; a window takes no more than it took at first, a token
bucket takes more, and its rate is learned from what each stage took (see
``_RATE_TEST_FACTOR``). Its refusal's whole-second ``Retry-After`` is cut short when the test
tells when the server has room again (``_resume_after_test``). A bucket found so is read again
from each of its refusals: what it took since the last one, over that span, is its rate
(``_bucket_refused``, docs/design.md, 'A bucket's rate from its refusals').

Increases happen only when a gate was binding for that attempt (otherwise the limit inflates
during idle stretches and floods later). One cut per congestion event: throttles of attempts
sent before the last cut are ignored, or a burst of 429s would multiply the cut.

Rate growth after a cut from ceiling C with factor β is sized for a target throttled fraction f:
``a = f (1 - β²) C² / 2`` per second (one throttle per sawtooth cycle), at least 1 % of the rate
per second; with a pacer but no ceiling yet (``initial_rate_per_s``), +10 %/s; in slow start
(after a smoothing, or once a second passes without a throttle; never after a ``Retry-After``),
doubling every 0.5 s. After two cuts the quota is taken as learned: the rate is held at
``(1 - margin)`` of the mean ceiling and grows only +1 % per 10 s — after one cut already when
the server sends ``Retry-After`` (each of its throttles costs a pause; see ``learned``).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field

from paceline.errors import InvalidArgument
from paceline.policy.pause import DEFAULT_MAX_PAUSE_S, ServerPause
from paceline.policy.rate import NS_PER_S
from paceline.policy.refill import RefillCount
from paceline.policy.slots import WindowSlots

NS = NS_PER_S

_MINUTES = (1, 1.5, 2, 5, 10, 15, 30, 60, 120, 1440)
ROUND_WINDOWS_S: tuple[float, ...] = (1, 2, 5, 10, 15, 20, 30, *(60.0 * m for m in _MINUTES))
"""Quota windows as APIs usually state them (per second ... per day), in seconds."""

# Learned capacity (a connection limit such as nginx's limit_conn, which answers 503 at once
# beyond N in flight): after two concurrency cuts by 503s at loads (attempts in flight, the
# refused one included) within one of each other, the capacity is one below the lower load. L is
# set to it instead of being cut by ``concurrency_cut``, a 503 above it cuts back to it, and
# growth past it is slowed by this factor (+1 after ~50 rounds of L binding successes instead of
# one round: against limit_conn 8 behind 50 ms, a probe of 9 every ~2.5 s). Without it L ran a
# sawtooth 9 -> 6 -> 9 every ~0.16 s: 0.88 of 8 in flight with 4 % 503s (simulated), 0.90 of
# ``-j 8`` with 2.8 % 503s measured against nginx.
_CAPACITY_LEARN_AFTER = 2
_CAPACITY_PROBE_GROWTH = 0.02

# Bucket or window (docs/design.md, 'Bucket or window'): a first throttle of the unpaced start
# that carried ``Retry-After`` cannot tell a window of N per second from a token bucket of
# burst N that refills much faster (80/s with burst 10 looked like a window of 11/s: 0.14 of
# its rate). After that pause both are fresh: the controller sends at this multiple of the
# first ceiling until the server refuses. A window refuses after the N it took before (the
# test costs a window ~0.2 s of its quota once: a burst fills it, and the pause that follows
# overlaps the time it has to empty anyway; 8x cost less but let a bucket of rate 2x its
# burst pass for a window); a bucket takes ``b p / (p - r)`` at pace p > r, which gives r.
_RATE_TEST_FACTOR = 4.0
# A stage that takes this many times the first burst without a refusal: the server sustains
# the test pace (a bucket faster than it): the pace doubles and the test goes on.
_RATE_TEST_STAGE = 4.0
# More than this share over the first burst (and 2 more) taken before the refusal: not the
# same window again, a bucket (a window takes at most the N it took before).
_RATE_TEST_OVER = 0.25
# After a peek that got through (docs/design.md, 'A short first stage after the peek'), the
# test's first stage is this many first bursts, not ``_RATE_TEST_STAGE``: the peek showed a
# bucket at least about as fast as the test pace, so the pace doubles after one burst (80/10:
# ~0.75 s at 40/s cost ~0.4 s of its rate; simulated 0.931 -> 0.944 of its quota, 200/10
# 0.846 -> 0.910). Only from a first burst of 8 or more: the later stage's count is the rate
# estimate, and a burst of 5 (20/5, its pace already the rate) read 17.9/s instead of 19.2
# (0.937 -> 0.879; 2 bursts 0.913).
_PEEK_STAGE = 1.0
_PEEK_STAGE_MIN_BURST = 8.0

# A bucket's rate from its refusals (docs/design.md, 'A bucket's rate from its refusals'): a
# bucket whose refill the test measured (a stage's count over its first ceiling: a lower bound
# of its rate, so paced at it with no margin) is held this far under the rate read from its
# refusals (``RefillCount``: exact to a token over the seconds between two refusals), and
# grows this fast between them: each refusal resumes when the bucket is full again, which
# loses no token and costs 1-3 429s, so running into it every ~10 s is cheap. Simulated
# (hidden buckets with whole-second Retry-After, 25 s): 80/10 0.944 -> 0.976, 20/5 0.937 ->
# 0.978, 200/10 0.910 -> 0.937, refused 0.3 -> 0.4 %; growing +0.1 %/s instead (the learned
# quota's), 20/5 0.964; +1 %/s, up to 1.9 % refused.
_REFILL_MARGIN = 0.01
_REFILL_GROWTH_PER_S = 0.005

# Window slots (docs/design.md, 'Window slots'): a window the test confirmed (or, without
# Retry-After, the first probe found open a second on) is kept from this side (``WindowSlots``):
# N slots, each free again a window after its answer, instead of even pacing at 0.97 N/W.
# The window is taken as 1 s (the first Retry-After was one, or the probe went at the round
# second) plus this slack for a window a little longer; a slot then cycles in W + slack +
# the round trip: ~0.985 of a 1 s window over loopback. Not when the round trip is over
# ``_WINDOW_SLOTS_MAX_RTT_S`` (there even pacing at 0.97 wastes less). A refusal turns the
# slots off (back to the pace): the window is longer than kept, or shared (simulated, a
# window of 1.03 s: stepping one slot down per refusal cost a pause each, 0.90 -> 0.75 of
# the quota; off at the first, as before).
_WINDOW_SLOTS_SLACK_S = 0.01
_WINDOW_SLOTS_MAX_RTT_S = 0.02
# A round window longer than a second found from a whole-second Retry-After
# (``_resume_at_round_window``) is kept as slots too, when its first stretch took at most this
# many: the answers it keeps (32 KiB).
_ROUND_SLOTS_MAX = 4096

# Window catch-up (docs/design.md, 'Catching up against a window'): against a learned window
# quota without ``Retry-After`` (the server stayed shut after a cut and was probed), a late
# start is charged from its slot back this far at most, while the last second's starts leave
# room in the window (``_window_catch_up_ns``), not one interval only: a busy client's timers
# come 5-20 ms late, and with one interval of catch-up the batch lost the slots missed
# (simulated, 37/s window: 0.94 of the quota at 1 ms late, 0.85 at 10 ms). A window counts
# starts, not their spacing; a leaky bucket (strict pacing, never probed) gets none, nor a
# server that sends ``Retry-After`` (measured: each refusal's pause cost more than the
# catch-up gained). 50 ms: five 10 ms wake-ups' worth; the room check bounds the rest.
_WINDOW_CATCH_UP_S = 0.05


class Outcome(enum.Enum):
    """How an attempt ended, as far as adaptive control cares: what a ``classify(value,
    error)`` callable returns to the batch faces (``classify=``).

    ``THROTTLE``: a quota said no (like a 429): cut the rate. ``OVERLOAD``: the server is
    overloaded (like a 503): cut the concurrency. ``CAPACITY``: a timeout, a dropped
    connection, a 502 or 504: the server is at capacity, cut the concurrency (not while the
    answers that do come are as fast as unloaded: a lost answer, no cut). ``SUCCESS``,
    and ``IGNORE`` for a failure that says nothing about the server's limits (the
    operation's own error).

    >>> import paceline
    >>> def classify(value, error):
    ...     if error is not None and "quota" in str(error):
    ...         return paceline.Outcome.THROTTLE
    ...     return paceline.Outcome.SUCCESS if error is None else paceline.Outcome.IGNORE
    >>> classify(None, RuntimeError("quota exceeded"))
    <Outcome.THROTTLE: 'throttle'>
    """

    SUCCESS = "success"
    THROTTLE = "throttle"
    OVERLOAD = "overload"
    CAPACITY = "capacity"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    """The knobs of adaptive control (``adaptive=`` of the batch faces and the HTTP face);
    every default says where it came from. Rates are starts per second.

    >>> import paceline
    >>> async def double(n: int) -> int:
    ...     return 2 * n
    >>> settings = paceline.AdaptiveSettings(initial_concurrency=4, max_concurrency=32)
    >>> results = paceline.batch_execute_sync([1, 2], double, adaptive=settings)
    >>> [r.value for r in results]
    [2, 4]
    """

    initial_concurrency: int = 8
    min_concurrency: int = 1
    max_concurrency: int = 256
    # None: no rate gate until the first throttle (the server's limit is unknown).
    initial_rate_per_s: float | None = None
    min_rate_per_s: float = 0.05
    max_rate_per_s: float = 1e6
    # AIMD factors (docs/design.md, 'AIMD cuts'): rate x0.8 (quota), concurrency x0.7 (capacity).
    rate_cut: float = 0.8
    concurrency_cut: float = 0.7
    target_throttle_fraction: float = 0.01
    pre_throttle_growth_per_s: float = 0.10
    # This many throttles after a cut, before anything sent since has succeeded, mean a
    # long-window quota: stop and probe.
    probe_after_cuts: int = 3
    # A probe that needed this many tries (waits of ~1 + 2 + 4 s) found a long window: learn
    # the rate from the whole cycle instead of from the cut.
    long_window_probes: int = 3
    probe_initial_s: float = 1.0
    probe_max_s: float = 64.0
    # A probe waits at most this fraction of the time since the cycle's first success: the probe
    # that finds the window open is at most that much late, and so is the window learned from it
    # (plain doubling overshot a 60 s window by up to 64 s). Simulated: 0.25 costs ~4 more
    # probes a cycle; 1.0 learns a 45 s window as 60 s (0.75 of the quota); 0.5 gets 0.98.
    probe_step_fraction: float = 0.5
    # Quota windows are mostly round (a second, a minute, an hour): a probe also goes just after
    # each of these has passed since the cycle's first success (``probe_window_slack`` later),
    # so a window of exactly that length is found to within the slack.
    probe_windows_s: tuple[float, ...] = ROUND_WINDOWS_S
    probe_window_slack: float = 0.02
    # Once a cycle has bounded the window (lo, hi], later probes go no sooner than lo, then in
    # steps of this fraction of it.
    probe_fine_fraction: float = 0.02
    # Envoy/Gradient-style latency brake: hold the recent RTT under this multiple of the
    # minimum. 1.4, not the 1.5 bound we promise for the median: concurrency oscillates
    # around the brake's set point, and at 1.5 the median sat just above it (1.52x with
    # 16 in flight at 50 ms); where latency grows past a knee, throughput is the same.
    latency_tolerance: float = 1.4
    rtt_min_window_s: float = 30.0
    # Learned-quota hand-over: after this many cuts hold (1 - margin) of the ceiling, +1 %/10 s.
    handover_after_cuts: int = 2
    handover_margin: float = 0.03
    handover_growth_per_s: float = 0.001
    # Slow start (fast recovery): once no throttle has come for ``slow_start_after_s`` after a
    # cut (a second: the commonest window has turned over; sooner, a window still full looked
    # like quiet), or at once after smoothing a first burst, the rate doubles every
    # ``slow_start_doubling_s`` until the next throttle, whose ceiling is the rate it was paced
    # at (not against a window, which lags: see ``_cut_rate``). Additive growth alone took
    # minutes to climb back to a rate the server had taken seconds before (nginx limit_req
    # 50r/s: ~15/s after 5 minutes). Doubling every 0.5 s climbs from 1/s to 50/s in ~3 s
    # (~2 s of the rate lost); every 1 s lost ~5 s.
    slow_start_after_s: float = 1.0
    slow_start_doubling_s: float = 0.5
    # Smoothing (burst intolerance, not over-quota): a throttle of an attempt sent with no pacer
    # (the initial concurrency goes out at once) or less than ``burst_gap`` of an interval
    # after the one before it (a late timer's catch-up) says the server refuses bursts, not the
    # rate: pace evenly at the rate that was working, and learn no ceiling from it. More than
    # this many smoothings in a second are not bursts any more: the next throttle cuts.
    max_smoothings_per_s: int = 3
    # A gap under this fraction of the pacing interval is a catch-up: the pacer sends sooner
    # after a late timer so the average rate holds (a timer ~1 ms late cost 5 % of 100/s).
    # nginx limit_req without burst refuses anything closer than 1/rate to the last accepted
    # request, so after a throttled catch-up the pacer stops catching up (strict pacing).
    # 0.99: any catch-up at all (a gap within 1 % of the interval is the pacer's rounding);
    # at 0.9 the catch-ups of 1-2 ms late timers on a 20 ms interval were taken for the rate
    # and the rate was cut to 0.88 of nginx's in 3 % steps.
    burst_gap: float = 0.99
    # The user's strict rate (``--rate``): the controller keeps its rate at or above it unless
    # the server keeps throttling at it — more than this many of the last ``jitter_window``
    # answers (2.5x the 2 % a batch may spend on 429s; jitter against a leaky bucket costs
    # ~1 %). A count, not a share of the last second: the first second's few attempts, bunched
    # by connection set-up (measured: the first request reached nginx 40 ms late and the next
    # two were refused), made "3 of 8" and cut below the user's rate for the whole batch.
    user_rate_per_s: float | None = None
    user_rate_max_throttles: int = 5
    # The user's rate paces evenly (``--rate`` with burst 1): the controller paces at it too,
    # each start a full interval after the last one (no catch-up after a late timer). A
    # limiter that catches up sends two requests closer than 1/rate, which nginx limit_req
    # without burst refuses (measured: 0.9 % 429 at 50r/s and a cut to 0.7 of the rate).
    user_rate_even: bool = False
    # Jitter allowance: a throttle of a server that looks like a bucket (no Retry-After, no
    # window seen) costs no cut while at most ``jitter_throttles`` of the last
    # ``jitter_window`` answers were throttles (of fewer answers, that share: the first
    # throttle after a cut or at the start cuts unless 50 answers came since); after a cut
    # the count starts over. A leaky
    # bucket refuses a request that arrives a millisecond early, and the server's own delays
    # make some arrive early however evenly they are sent: at 0.75-0.9 of nginx's rate ~1 in
    # 100 still came, in clusters (measured: 5 in 2 s), and cutting 3 % for each held 0.78 of
    # the rate (a cut does nothing against the server's jitter). Over its rate the same bucket
    # refuses every other request: 3 throttles come within a few answers. 2 in 100: the 2 % a
    # batch may spend on 429s.
    jitter_window: int = 100
    jitter_throttles: int = 2
    # A Retry-After beyond this is not a pause for everyone (one absurd value froze batches
    # for days); the item that got it fails instead (RetryPolicy.max_retry_after_s, the same).
    max_pause_s: float = DEFAULT_MAX_PAUSE_S

    def __post_init__(self) -> None:
        if not 1 <= self.min_concurrency <= self.initial_concurrency <= self.max_concurrency:
            raise InvalidArgument(
                "concurrency bounds must satisfy 1 <= min <= initial <= max, got "
                f"{self.min_concurrency}, {self.initial_concurrency}, {self.max_concurrency}"
            )
        for name in ("rate_cut", "concurrency_cut"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise InvalidArgument(f"{name}={value!r}: must be between 0 and 1, e.g. 0.8")


@dataclass(slots=True)
class Ticket:
    """What the controller remembers about one attempt between its start and its outcome."""

    sent_ns: int
    epoch: int
    rate_binding: bool
    concurrency_binding: bool
    probe: bool = False
    load: int = 1  # attempts in flight when it started, itself included
    pace_per_s: float | None = None  # the even pace it was sent at (None: no pacer)
    gap_ns: int | None = None  # since the attempt started before it (None: the first)
    rate_test: bool = False  # sent at a bucket-or-window test's pace (see ``_RATE_TEST_FACTOR``)
    peek: bool = False  # the one attempt sent during the first pause (see ``_peek_finished``)


@dataclass(slots=True)
class Decision:
    """``wait_ns`` > 0: ask again after that long; ``slot``: wait for an attempt to finish;
    neither: go now."""

    wait_ns: int = 0
    slot: bool = False
    rate: bool = False  # the wait is the rate gate's (an attempt after it counts as binding)

    @property
    def go(self) -> bool:
        return self.wait_ns == 0 and not self.slot


GO = Decision()


@dataclass(slots=True)
class LatencyFit:
    """Latency against load: a least-squares line through recent (attempts in flight, RTT)
    pairs (exponentially weighted, ~``1/alpha`` samples), to tell the latency a server adds
    under load from the noise it always has.

    The brake compares recent RTTs with the unloaded latency. The minimum RTT alone is the
    luckiest sample: against a server whose latency varies (0-20 ms of network jitter on
    5 ms) every RTT looks like 3x the minimum and the brake held one attempt in flight
    (67 requests/s where 32 in flight served 1,300/s). The line's value at one in flight is a
    second estimate, as high as the typical RTT when latency does not grow with load; the
    brake uses the larger of the two. While load hardly varies there is no slope to fit and
    the last estimate stands (the mean RTT instead would be the loaded latency once the
    concurrency settles, and the brake would let go: the median crept to 1.51x at 50 ms).
    ``unloaded_ns(load, rtt)`` adds a sample and answers (0: no estimate yet).

    >>> grows = LatencyFit()  # 10 ms more for every attempt in flight: 10 ms unloaded
    >>> round([grows.unloaded_ns(n % 4 + 1, 10e6 * (n % 4 + 1)) for n in range(200)][-1] / 1e6)
    10
    >>> noisy = LatencyFit()  # 5-24 ms whatever the load: the mean, ~14 ms
    >>> samples = [(n % 4 + 1, 5e6 + n * 7919 % 20 * 1e6) for n in range(400)]
    >>> round([noisy.unloaded_ns(load, rtt) for load, rtt in samples][-1] / 1e6)
    14
    """

    alpha: float = 1 / 64
    _n: int = 0
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0
    _unloaded_ns: float = 0.0  # the last estimate (0: none yet)

    def unloaded_ns(self, load: int, rtt_ns: float) -> float:
        if self._n == 0:
            self._x, self._y, self._xx, self._xy = load, rtt_ns, load * load, load * rtt_ns
        else:
            a = max(self.alpha, 1 / (self._n + 1))  # a plain mean until the window fills
            self._x += a * (load - self._x)
            self._y += a * (rtt_ns - self._y)
            self._xx += a * (load * load - self._xx)
            self._xy += a * (load * rtt_ns - self._xy)
        self._n += 1
        variance = self._xx - self._x * self._x
        if variance > 0.25:  # load varied by about one attempt or more: a slope to fit
            slope = max(0.0, (self._xy - self._x * self._y) / variance)
            self._unloaded_ns = self._y - slope * (self._x - 1)
        return self._unloaded_ns


@dataclass(slots=True)
class AdaptiveController:
    """The sans-I/O controller: ``decide`` before an attempt, ``started`` when it starts,
    ``finished`` with its :class:`Outcome`.

    >>> c = AdaptiveController(AdaptiveSettings(initial_concurrency=2))
    >>> c.decide(0, in_flight=0).go, c.decide(0, in_flight=2).slot
    (True, True)
    """

    settings: AdaptiveSettings = field(default_factory=AdaptiveSettings)
    rng: random.Random = field(default_factory=random.Random)
    concurrency: float = 0.0
    rate_per_s: float | None = None
    pause_until_ns: int = 0
    epoch: int = 0
    cuts: int = 0
    throttled: int = 0
    events: list[tuple[int, str, float]] = field(default_factory=list)  # (ns, what, value)
    # The cap on Retry-After pauses and the count of those refused (set from the settings).
    server_pause: ServerPause = field(init=False)
    _tat_ns: int | None = None
    _last_growth_ns: int | None = None
    _ceiling: float | None = None  # the rate at the last cut
    _ceilings: list[float] = field(default_factory=list)
    _recent_starts: deque[int] = field(default_factory=deque)
    _recent_successes: deque[int] = field(default_factory=deque)  # send times, last second
    _recent_throttles: deque[int] = field(default_factory=deque)  # answer times, last second
    _smoothings: deque[int] = field(default_factory=deque)  # times, last second
    _slow_start: bool = False  # doubling until the next throttle
    _retry_after_seen: bool = False
    _window_seen: bool = False  # the server stayed shut after a cut: a window, not a bucket
    _strict_pacing: bool = False  # no catch-up after a late timer (see ``burst_gap``)
    # the last answers (``jitter_window``), True for a throttle, and how many were throttles
    _answers: deque[bool] = field(default_factory=deque)
    _answers_throttled: int = 0
    _last_start_ns: int | None = None
    _last_ticket: Ticket | None = None  # the latest attempt to start
    # the last wake-ups' lateness (a window's minimum: 16 is ~0.3 s at 50/s)
    _lateness_ns: deque[int] = field(default_factory=lambda: deque(maxlen=16))
    _last_throttle_ns: int | None = None
    below_user_rate: bool = False  # the server kept throttling at the user's rate: cut below it
    _first_start_ns: int | None = None
    _paused_ns: deque[tuple[int, int]] = field(default_factory=deque)  # (from, to)
    # The current throttle/probe cycle: send time of its first success (a sliding window frees
    # up one window after it), its successes, and the send time of its last throttled attempt
    # (the window is longer than that attempt's distance from the first success).
    _cycle_first_ns: int | None = None
    # when that first success was answered: the latest it can have been counted (a new
    # connection's first request reaches the server tens of ms after it starts)
    _cycle_first_answer_ns: int | None = None
    _cycle_successes: int = 0
    _cycle_throttled_ns: int | None = None
    _window_ns: tuple[int, int] | None = None  # a long window learned from cycles: (lo, hi]
    # The first throttle's judgement of the accepted rate (see ``_late_answer``): the sends it
    # covered [from, to), what one more answer adds to the rate, and the rate set per unit of
    # the accepted rate (None: nothing to add to).
    _first_judged: tuple[int, int, float] | None = None
    _first_factor: float | None = None
    _recovered: bool = True  # an attempt sent after the last cut has succeeded
    # After a rate cut, until recovery, one attempt of the new epoch at a time (the rest would
    # only collect 429s if the window is still full): how many of them are in flight.
    _one_at_a_time: bool = False
    _epoch_in_flight: int = 0
    _aftershocks: int = 0  # throttles of attempts sent after the last cut, before recovery
    _probing: bool = False
    _probe_in_flight: bool = False
    _probe_attempt: int = 0
    _rtt_min_ns: int | None = None
    _rtt_min_since_ns: int = 0
    _rtt_recent_ns: float | None = None
    _fit: LatencyFit = field(default_factory=LatencyFit)
    # loads of the latest 503s that cut the concurrency, and the capacity learned from them
    _overload_loads: list[int] = field(default_factory=list)
    capacity: int | None = None
    # The bucket-or-window test (see ``_RATE_TEST_FACTOR``): its pace (None: no test running),
    # the first burst it is judged against, what the current stage has taken, and whether it ran.
    _test_pace_per_s: float | None = None
    _test_burst: float = 0.0
    _test_span_ns: int = 0  # the first burst's span at the server (see ``_cut_rate``)
    _test_from_ns: int | None = None  # the current stage's first send (None: not yet)
    _test_taken: int = 0
    _test_stages: list[tuple[int, int]] = field(default_factory=list)  # (first send, taken before)
    _test_stage_bursts: float = _RATE_TEST_STAGE
    _tested: bool = False
    _test_first_answer_ns: int | None = None  # the test's first success answered (its window)
    # when the test's refusal let the batch resume (None: as its Retry-After said; see
    # ``_resume_after_test``): the test's refusals still in flight pause nothing more
    _test_resume_ns: int | None = None
    _test_retry_after_ns: int | None = None  # when that Retry-After would have ended
    _resume_taken: bool = False  # an attempt sent since that resume was taken: it was right
    _test_answers_ns: list[int] = field(default_factory=list)  # the test's successes' answers
    # the window the test confirmed, kept from this side (see ``_WINDOW_SLOTS_SLACK_S``): its
    # slots and the first epoch they gate
    _slots: WindowSlots | None = None
    _slots_epoch: int = 0
    _slots_cap: int = 0  # the most slots the test's late answers may add (its first burst)
    # when the last second's counted attempts were answered (a probed window's slots start
    # from them), and whether a probe got through yet
    _recent_answers_ns: deque[int] = field(default_factory=deque)
    _probed_once: bool = False
    # the batch's first counted attempt's send, and how many sent within a second of it were
    # counted (a window's N, when it refused the rest)
    _first_counted_ns: int | None = None
    _first_second_counted: int = 0
    # the first Retry-After (a bucket's next token comes within a second at any rate worth testing)
    # The peek (see ``_peek_finished``): when it may go, and when it went (None: not yet).
    _peek_at_ns: int | None = None
    _peek_sent_ns: int | None = None
    _peek_in_flight: bool = False
    # The first success answered since the last pause ended (a window's first count in this
    # stretch: see ``_resume_at_round_window``), and whether such a resume came too soon.
    _stretch_first_answer_ns: int | None = None
    _round_resume_failed: bool = False
    # that stretch's successes' answers (at most ``_ROUND_SLOTS_MAX``), and how many
    _stretch_answers_ns: deque[int] = field(default_factory=lambda: deque(maxlen=_ROUND_SLOTS_MAX))
    _stretch_successes: int = 0
    _slots_late_count: bool = False  # the slots count late answers sent before them
    _first_pause_s: float = 0.0
    # A bucket judged by the test: its refusals since, counted (see ``_bucket_refused``), and
    # its burst.
    _refill: RefillCount | None = None
    _refill_burst: float = 0.0
    # the refusal being answered: a 429 (not a 503), and its Retry-After (``_bucket_refused``)
    _refusal: tuple[bool, float | None] = (False, None)

    def __post_init__(self) -> None:
        self.server_pause = ServerPause(self.settings.max_pause_s)
        if not self.concurrency:
            self.concurrency = float(self.settings.initial_concurrency)
        if self.rate_per_s is None:
            self.rate_per_s = self.settings.initial_rate_per_s

    # -- limits as seen from outside -----------------------------------------------------

    @property
    def concurrency_limit(self) -> int:
        """The current concurrency limit L."""
        return max(self.settings.min_concurrency, int(self.concurrency))

    @property
    def learned(self) -> bool:
        """Whether the quota counts as learned (hand-over mode): after
        ``handover_after_cuts`` cuts, or after one from a server that sends ``Retry-After``, or
        while a window's slots are kept (see ``_WINDOW_SLOTS_SLACK_S``).

        Such a server's throttle costs a pause for everyone, and most send whole seconds (a
        second's worth of the quota, though its window frees a slot within milliseconds); its
        first cut comes after the pause has emptied the window, from what a full window
        accepted. Sawing back up to that ceiling to cut a second time cost that second again:
        0.84-0.85 of a 100/s quota over a 20 s batch (issue 14; 0.93 with one cut)."""
        cuts = len(self._ceilings)
        return (
            cuts >= self.settings.handover_after_cuts
            or (self._retry_after_seen and cuts >= 1)
            or self._slots is not None
        )

    @property
    def shown_rate_per_s(self) -> float | None:
        """The rate this controller holds starts to, per second, as a user should read it: while
        a window's slots gate the starts (see ``_WINDOW_SLOTS_SLACK_S``) the pace is idle, and
        the slots let N per slack-lengthened window through (the pace's 0.97 N/s on the
        progress line read "limit 19.4/s" while a 20/s window ran at 20/s); else
        :attr:`rate_per_s`.

        >>> AdaptiveController().shown_rate_per_s is None  # nothing learned yet
        True
        """
        slots = self._slots
        if slots is not None:
            return slots.quota * NS / slots.window_ns
        return self.rate_per_s

    @property
    def paces_precisely(self) -> bool:
        """Whether starts must keep their slots to the millisecond: the pacer is strict (a
        server refused a start that came early) or the user's rate paces evenly."""
        return self._strict_pacing or (
            self.settings.user_rate_even and self.settings.user_rate_per_s is not None
        )

    def quota_announced(self, now_ns: int) -> None:
        """The server announced its quota (``RateLimit-Policy``) and a strict limit keeps to
        it from now on: the rate gate and any probing stand down, and throttles of attempts
        sent before now (they went out while the quota was unknown) are not held against the
        rate. A ``Retry-After`` pause stands; the concurrency gate goes on as before. Later
        throttles are learned from as usual (a quota shared with other clients)."""
        if self._probing:
            self.pause_until_ns = 0  # the probe's wait, not the server's
        self.epoch += 1
        self._epoch_in_flight = 0
        self.rate_per_s = None
        self._tat_ns = None
        self._ceiling = None
        self._ceilings = []
        self._last_growth_ns = None
        self._probing = self._probe_in_flight = self._one_at_a_time = False
        self._probe_attempt = self._aftershocks = 0
        self._recovered = True
        self._cycle_first_ns = self._cycle_throttled_ns = self._cycle_first_answer_ns = None
        self._cycle_successes = 0
        self._window_ns = None
        self._test_pace_per_s = None  # the quota is known: nothing to test
        self._peek_at_ns = None
        self._slots = None  # nor to keep from this side: the strict limit keeps it
        self.events.append((now_ns, "quota", 0.0))

    def adopt_rate(self, now_ns: int, rate_per_s: float) -> None:
        """Run at ``rate_per_s`` from now: this process's share of a rate that processes
        sharing one quota learned together (a rate store's key, docs/design.md, 'Adaptive rate
        shared'). A lower rate counts as a cut for the congestion event another process
        already cut for: throttles of attempts sent before now are not cut for again."""
        settings = self.settings
        rate = min(max(rate_per_s, settings.min_rate_per_s), settings.max_rate_per_s)
        # a window's slots count this process alone: sharing the quota, the share paces
        self._slots = None
        if self.rate_per_s is not None and rate < self.rate_per_s:
            # As after a cut of its own: no more doubling, and the next growth is sized for
            # the ceiling the share was cut from (the others' throttle is this one's too).
            self.epoch += 1
            self._epoch_in_flight = 0
            self._last_growth_ns = None
            self._slow_start = False
            self._last_throttle_ns = now_ns
            self._ceiling = rate / settings.rate_cut
        self._set_pace(rate)
        self.events.append((now_ns, "shared rate", rate))

    # -- before an attempt -----------------------------------------------------------------

    def decide(self, now_ns: int, in_flight: int) -> Decision:
        """May an attempt start now, with ``in_flight`` attempts running?"""
        if now_ns < self.pause_until_ns:
            if self._peek_in_flight:
                # its answer may end the pause sooner: wait for it, not for the pause (a
                # worker asleep until the pause's end is not woken by a shorter pause)
                return Decision(slot=True)
            peek = self._peek_at_ns
            if peek is None:
                return Decision(wait_ns=self.pause_until_ns - now_ns)
            if now_ns < peek:
                return Decision(wait_ns=peek - now_ns)
            return Decision(slot=True) if in_flight else GO
        if self._probing:
            if self._probe_in_flight or in_flight > 0:
                return Decision(slot=True)
            return GO
        if in_flight >= self.concurrency_limit:
            return Decision(slot=True)
        if self._one_at_a_time and self._epoch_in_flight > 0:
            return Decision(slot=True)
        slots = self._slots
        if slots is not None:
            wait = slots.wait_ns(now_ns)
            if wait is None:
                return Decision(slot=True)
            return Decision(wait_ns=wait) if wait else GO
        tat = self._tat_ns
        if self._gate_pace_per_s() is not None and tat is not None and now_ns < tat:
            return Decision(wait_ns=tat - now_ns, rate=True)
        return GO

    def started(self, now_ns: int, in_flight: int, waited_for_rate: bool) -> Ticket:
        """An attempt starts now (``in_flight`` counts those already running)."""
        starts = self._recent_starts
        ticket = Ticket(
            sent_ns=now_ns,
            epoch=self.epoch,
            rate_binding=waited_for_rate,
            concurrency_binding=in_flight + 1 >= self.concurrency_limit,
            probe=self._probing,
            load=in_flight + 1,
            pace_per_s=self._pace_per_s(),
            gap_ns=now_ns - starts[-1] if starts else None,
            rate_test=self._test_pace_per_s is not None,
        )
        if self._peek_at_ns is not None and now_ns < self.pause_until_ns:
            ticket.peek, ticket.rate_test = True, False
            self._peek_sent_ns = now_ns
            self._peek_in_flight = True
        self._peek_at_ns = None  # the first start after the first cut: the peek or not at all
        if ticket.rate_test and self._test_from_ns is None:
            self._test_from_ns = now_ns
            self._test_stages.append((now_ns, self._test_taken))
        if self._probing:
            self._probe_in_flight = True
        if self._slots is not None:
            self._slots.start()
        if self._refill is not None:
            self._refill.started(ticket)
        self._epoch_in_flight += 1
        rate = self._gate_pace_per_s()
        if rate is not None:
            interval = max(1, round(NS / rate))
            tat = self._tat_ns
            # Charged from the intended slot when the attempt waited for it (no lost
            # wake-ups), never more than one interval back — unless the server refused a
            # catch-up (a leaky bucket): then never sooner than one interval after the last.
            # Against a learned window (no Retry-After), up to ``_WINDOW_CATCH_UP_S`` back, the
            # catch-up's own starts included (they go without waiting), while the last
            # second's starts leave room in the window.
            catch_up = 0
            window = 0 if self._strict_pacing or tat is None else self._window_catch_up_ns(now_ns)
            if ticket.rate_test and tat is not None:
                window = self._test_catch_up_ns(now_ns)
            if waited_for_rate and tat is not None:
                least_late = self._timer_lateness_ns(now_ns - tat)
                catch_up = min(interval - 1, least_late) if self._strict_pacing else interval - 1
            catch_up = max(catch_up, window)
            base = now_ns if tat is None else max(tat, now_ns - catch_up)
            self._tat_ns = base + interval
        if self._first_start_ns is None:
            self._first_start_ns = now_ns
        self._last_start_ns = now_ns
        self._last_ticket = ticket
        starts.append(now_ns)
        while starts and starts[0] <= now_ns - NS:
            starts.popleft()
        return ticket

    # -- after an attempt ------------------------------------------------------------------

    def finished(
        self, now_ns: int, ticket: Ticket, outcome: Outcome, retry_after_s: float | None = None
    ) -> None:
        """Learn from an attempt's outcome."""
        if ticket.probe:
            self._probe_in_flight = False
        if ticket.epoch == self.epoch:
            self._epoch_in_flight = max(0, self._epoch_in_flight - 1)
        if ticket.peek:
            self._peek_finished(now_ns, ticket, outcome)
            return
        refused = outcome is Outcome.THROTTLE or outcome is Outcome.OVERLOAD
        if self._refill is not None:
            self._refill.finished(ticket, accepted=not refused)
            self._refusal = (outcome is Outcome.THROTTLE, retry_after_s)
        resumed = self._test_resume_ns
        if outcome is Outcome.SUCCESS and resumed is not None and ticket.sent_ns >= resumed:
            self._resume_taken = True
        slots = self._slots
        slot_ticket = (
            slots is not None and ticket.epoch >= self._slots_epoch and not ticket.rate_test
        )
        if slots is not None:
            if slot_ticket:
                if refused:
                    slots.refused()
                else:
                    slots.taken(now_ns)
            elif self._slots_late_count and not refused:
                # sent before a round window's slots were kept, answered after: counted there
                slots.counted(now_ns)
                slots.quota += 1
            elif ticket.rate_test and not refused:
                slots.counted(now_ns)  # the test's, answered after its end
                # ... and the window's N too: the test took it before its refusal's answer
                # came back (``_keep_window_slots``)
                if slots.quota < self._slots_cap:
                    slots.quota += 1
        resumed_too_soon = self._resumed_too_soon(ticket, outcome)
        round_pause = False  # a new pause by a refusal (see ``_resume_at_round_window``)
        if resumed_too_soon:
            # The server had no room yet when the test's end said it would (a fixed window
            # turns over at its own boundary): wait out the test's refusal's Retry-After after
            # all, not this one's (whole seconds again); no cut, once.
            assert self._test_retry_after_ns is not None
            self.pause_until_ns = max(self.pause_until_ns, self._test_retry_after_ns)
            self._test_retry_after_ns = None
            self._round_resume_failed = True
            self.events.append((now_ns, "resumed too soon", 0.0))
            if self._slots is not None:
                self._slot_refused(now_ns)
        elif (
            retry_after_s is not None
            and retry_after_s > 0
            and self._test_resume_ns is not None
            and ticket.rate_test
            and ticket.epoch < self.epoch
        ):
            # a refusal of the bucket-or-window test, still in flight at its end: the test's
            # end chose when to resume from what it learned (``_resume_after_test``)
            pass
        elif (
            retry_after_s is not None
            and retry_after_s > 0
            and self._test_resume_ns is not None
            and ticket.epoch < self.epoch
            and ticket.sent_ns < self._test_resume_ns
            and self._test_resume_ns > self.pause_until_ns - round(retry_after_s * NS)
        ):
            pass  # sent before an early resume was chosen: counted in it (its Retry-After too)
        elif (
            retry_after_s is not None
            and retry_after_s > 0
            and self._peek_sent_ns is not None
            and ticket.sent_ns < self._peek_sent_ns
            and self._test_pace_per_s is not None
        ):
            pass  # the first burst's, sent before the peek got through: the bucket was dry
        elif (
            retry_after_s is not None
            and retry_after_s > 0
            and self.server_pause.obeys(retry_after_s)
        ):
            until = now_ns + round(retry_after_s * NS)
            if until > self.pause_until_ns:
                new_pause = now_ns >= self.pause_until_ns
                self._paused_ns.append((max(now_ns, self.pause_until_ns), until))
                self.pause_until_ns = until
                self.events.append((now_ns, "pause", retry_after_s))
                round_pause = new_pause and outcome is Outcome.THROTTLE
            if not self._retry_after_seen:
                self._first_pause_s = retry_after_s
            self._retry_after_seen = True
        elif retry_after_s is not None and retry_after_s > 0:
            self.events.append((now_ns, "pause refused", retry_after_s))
        if outcome is Outcome.SUCCESS:
            self._on_success(now_ns, ticket)
        elif outcome is Outcome.THROTTLE:
            self.throttled += 1
            self._answer(throttled=True)
            self._note_throttle(now_ns)
            first, last = self._cycle_first_ns, self._cycle_throttled_ns
            if first is not None and ticket.sent_ns > first:
                self._cycle_throttled_ns = max(ticket.sent_ns, last or ticket.sent_ns)
            if ticket.rate_test and self._test_pace_per_s is not None:
                if ticket.epoch == self.epoch:
                    self._end_rate_test(now_ns, ticket)
            elif resumed_too_soon:
                pass  # not over the rate: too soon after the test (see ``_resume_after_test``)
            elif slot_ticket and self._slots is not None:
                self._slot_refused(now_ns)
            else:
                self._on_congestion(now_ns, ticket, cut_rate=True)
            if round_pause and retry_after_s is not None:
                self._resume_at_round_window(now_ns, retry_after_s)
        elif outcome is Outcome.OVERLOAD:
            self.throttled += 1
            self._answer(throttled=True)
            self._note_throttle(now_ns)
            # 503 is an overloaded server: cut concurrency, unless the pacer was what held
            # this attempt back (then the rate is what the server cannot take).
            self._on_congestion(now_ns, ticket, cut_rate=ticket.rate_binding, overload=True)
        elif outcome is Outcome.CAPACITY:
            self._not_refused(now_ns, ticket)
            self._on_congestion(now_ns, ticket, cut_rate=False)
        else:
            self._not_refused(now_ns, ticket)
        if ticket.probe and outcome is not Outcome.SUCCESS and self._probing:
            if outcome is Outcome.THROTTLE or outcome is Outcome.OVERLOAD:
                self._schedule_probe(now_ns)
            else:
                # Lost without a word on the quota (a dropped connection, a timeout, the
                # operation's own error): the window may well be open — a POST processed and
                # then dropped was counted by it. Probe again now, not one step later: counted
                # as a closed window, two drops in a row took a 1 s window for 3 s (issue 14).
                self.events.append((now_ns, "probe lost", 0.0))

    def _on_success(self, now_ns: int, ticket: Ticket) -> None:
        settings = self.settings
        if ticket.epoch == self.epoch:
            self._recovered = True
            self._one_at_a_time = False
        if ticket.probe:
            long_window = self._probe_attempt >= settings.long_window_probes
            self._probing = False
            self._probe_attempt = 0
            self._aftershocks = 0
            if long_window:
                self._learn_cycle(ticket.sent_ns)
            elif not self._probed_once:
                self._keep_probed_window_slots(now_ns, ticket)
            self._probed_once = True
            # The probe is the first success of a new cycle (a short window freed up within a
            # probe or two: the cut rate stands).
            self._cycle_first_ns, self._cycle_successes = ticket.sent_ns, 0
            self._cycle_first_answer_ns = now_ns
            self._cycle_throttled_ns = None
            self.events.append((now_ns, "probe-ok", self.rate_per_s or 0.0))
        self._answer(throttled=False)
        if ticket.sent_ns >= self.pause_until_ns:
            if self._stretch_first_answer_ns is None:
                self._stretch_first_answer_ns = now_ns
            self._stretch_answers_ns.append(now_ns)
            self._stretch_successes += 1
        self._cycle_successes += 1
        if self._cycle_first_ns is None or ticket.sent_ns < self._cycle_first_ns:
            self._cycle_first_ns = ticket.sent_ns
            self._cycle_first_answer_ns = now_ns
        self._taken(now_ns, ticket)
        self._late_answer(now_ns, ticket)
        if ticket.rate_test and self._test_pace_per_s is not None:
            self._rate_test_taken(now_ns)
        rtt = now_ns - ticket.sent_ns
        if (
            self._rtt_min_ns is None
            or rtt < self._rtt_min_ns
            or (now_ns - self._rtt_min_since_ns > settings.rtt_min_window_s * NS)
        ):
            self._rtt_min_ns = rtt
            self._rtt_min_since_ns = now_ns
        recent = self._rtt_recent_ns
        self._rtt_recent_ns = rtt if recent is None else 0.8 * recent + 0.2 * rtt
        if ticket is self._last_ticket and self._strict_pacing and settings.user_rate_even:
            self._after_late_arrival(ticket.sent_ns, rtt - self._rtt_min_ns)
        # the latency brake (concurrency gate)
        gradient = 1.0
        if self._rtt_recent_ns and self._rtt_min_ns:
            unloaded = max(float(self._rtt_min_ns), self._fit.unloaded_ns(ticket.load, rtt))
            gradient = settings.latency_tolerance * unloaded / self._rtt_recent_ns
            gradient = min(1.0, max(0.5, gradient))
        if gradient < 1.0:
            self.concurrency = max(
                float(settings.min_concurrency), self.concurrency * (1 - 0.1 * (1 - gradient))
            )
        elif ticket.concurrency_binding:
            step = 1 / self.concurrency
            if self.capacity is not None and self.concurrency >= self.capacity:
                step *= _CAPACITY_PROBE_GROWTH  # past the learned capacity: probe slowly
            self.concurrency = min(float(settings.max_concurrency), self.concurrency + step)
        # the rate gate (not at a bucket-or-window test's pace: that is not the rate's)
        if self.rate_per_s is not None and ticket.rate_binding and not ticket.rate_test:
            last = self._last_growth_ns
            self._last_growth_ns = now_ns
            if last is None:
                return
            elapsed_s = min(1.0, (now_ns - last) / NS)
            if self._slow_starting(now_ns):
                # Up to two doublings per success: at 1/s a success comes once a second, and
                # one doubling each took ~2 s to reach the doubling period.
                doublings = min(2.0, elapsed_s / settings.slow_start_doubling_s)
                grown = self.rate_per_s * 2.0**doublings
                user = settings.user_rate_per_s
                if user is not None and self.rate_per_s < user:
                    grown = min(grown, user)  # more is the user's limiter's to refuse
            else:
                grown = self.rate_per_s + self._growth() * elapsed_s
            if self._at_user_even_rate(grown):
                # The user's even rate is the pace from here (the gate paces at the slower of
                # the two): doubling past it took the next jitter refusal for a ceiling found
                # by doubling and cut to 0.8 of the user's rate (measured against nginx).
                grown = max(self.rate_per_s, settings.user_rate_per_s or 0.0)
                self._slow_start = False
            self._set_pace(min(settings.max_rate_per_s, grown))

    def _taken(self, now_ns: int, ticket: Ticket) -> None:
        """The quota took ``ticket``'s attempt: it counts in the accepted rate."""
        successes = self._recent_successes
        successes.append(ticket.sent_ns)
        while successes and successes[0] <= now_ns - NS:
            successes.popleft()
        first = self._first_counted_ns
        if first is None:
            first = self._first_counted_ns = ticket.sent_ns
        if ticket.sent_ns < first + NS:
            self._first_second_counted += 1
        answers = self._recent_answers_ns
        answers.append(now_ns)
        while answers and answers[0] <= now_ns - round(NS * (1 + 2 * _WINDOW_SLOTS_SLACK_S)):
            answers.popleft()

    def _late_answer(self, now_ns: int, ticket: Ticket) -> None:
        """A success sent within the span a first throttle that cut judged the accepted rate
        over, answered after it: the server took it in that span too, so it adds to that rate
        (the ceiling, and the rate set from it) until the next cut. Not after a smoothing: slow
        start climbs from that rate anyway, and from a higher one it overshot further. At the
        first throttle the attempts sent just before it are still in flight: a 100/s window was
        judged 97/s, and the rate held 3 % low for the whole batch (issue 14)."""
        judged, factor = self._first_judged, self._first_factor
        if judged is None or factor is None or self.rate_per_s is None:
            return
        since, until, per_answer = judged
        if not since <= ticket.sent_ns < until:
            return
        if self._ceilings:
            self._ceilings[-1] += per_answer
            self._ceiling = self._ceilings[-1]
        if self._test_pace_per_s is not None and self._test_from_ns is None:
            self._test_burst += 1  # the first burst the test is judged against
            if self._cycle_first_answer_ns is not None:
                self._test_span_ns = now_ns - self._cycle_first_answer_ns
            self._test_pace_per_s = _RATE_TEST_FACTOR * self._ceilings[-1]
        self.rate_per_s += per_answer * factor

    def _not_refused(self, now_ns: int, ticket: Ticket) -> None:
        """An attempt ended without a success and without a throttle (a dropped connection,
        a timeout, a 404): the quota most likely counted it, so it counts in the accepted rate
        and in a long-window cycle's N. Left out, the answers a server drops after processing
        (10 % of POSTs, issue 14) made every ceiling, and the rate, 10 % low."""
        first = self._cycle_first_ns
        if first is not None and ticket.sent_ns >= first:
            self._cycle_successes += 1
        self._taken(now_ns, ticket)

    def _after_late_arrival(self, sent_ns: int, extra_ns: int) -> None:
        """The latest attempt was taken ``extra_ns`` slower than the fastest round trip: it
        may have reached the server that much late (the client's loop or the server was
        busy), and a leaky bucket counts the next interval from when it did. The next start
        goes no sooner than an interval after that (at most one interval more).

        Measured against nginx limit_req 50r/s, sent to within 0.1 ms: most refusals came
        15-19 ms (by nginx's clock) after an accepted request that had reached it 2-7 ms
        late, though sent 20-24 ms after it; every one of those cost a 3 % cut or a slot.
        Only at the user's even rate (``--rate``, which may be the server's exact rate): the
        controller's own rate keeps a margin, and there the extra round trips cost more than
        the refusals they saved (default mode against nginx 50r/s: 0.81 and 0.69 of the
        rate with it, 0.88 and 0.87 without; the old controller 0.79-0.86)."""
        pace = self._gate_pace_per_s()
        tat = self._tat_ns
        if pace is None or tat is None or extra_ns <= 0:
            return
        interval = max(1, round(NS / pace))
        self._tat_ns = max(tat, sent_ns + interval + min(extra_ns, interval))

    def _set_pace(self, rate_per_s: float) -> None:
        """A new rate; when faster, the next start moves up to one new interval after the
        last (at 1/s a doubling otherwise waited out the old second's interval)."""
        tat, last = self._tat_ns, self._last_start_ns
        faster = self.rate_per_s is not None and rate_per_s > self.rate_per_s
        if tat is not None and last is not None and faster:
            sooner = last + max(1, round(NS / rate_per_s))
            self._tat_ns = min(tat, sooner)
        self.rate_per_s = rate_per_s

    def _slow_starting(self, now_ns: int) -> bool:
        """Whether the rate grows by doubling now (see ``slow_start_after_s``)."""
        if self.learned:
            self._slow_start = False
            return False
        if self._slow_start:
            return True
        if self._retry_after_seen:
            # The server says when it has room: a window, which is empty after the pause and
            # takes a doubling pace for up to a window before it throttles (1.5x overshoots).
            return False
        if self.rate_per_s is None or self._last_throttle_ns is None:
            return False
        if self._at_user_even_rate(self.rate_per_s):
            return False
        if now_ns - self._last_throttle_ns >= self.settings.slow_start_after_s * NS:
            self._slow_start = True
            self.events.append((now_ns, "slow start", self.rate_per_s or 0.0))
        return self._slow_start

    def _at_user_even_rate(self, rate_per_s: float) -> bool:
        """Whether ``rate_per_s`` reaches the user's even rate (then that is the pace)."""
        user = self.settings.user_rate_per_s
        return self.settings.user_rate_even and user is not None and rate_per_s >= user

    def _pace_per_s(self) -> float | None:
        """The even pace attempts go out at now: the controller's or the user's, the slower."""
        if self._test_pace_per_s is not None:
            return self._test_pace_per_s
        rates = [r for r in (self.rate_per_s, self.settings.user_rate_per_s) if r is not None]
        return min(rates) if rates else None

    def _window_catch_up_ns(self, now_ns: int) -> int:
        """How far back the pacer may charge a late start against a learned window quota
        (see ``_WINDOW_CATCH_UP_S``; 0: no more than an interval, as for any server)."""
        if not self._window_seen or not self.learned:
            return 0
        if self._retry_after_seen:
            # each refusal of a server that sends Retry-After costs a pause (measured: a
            # 100/s window, steady 0.98 -> 0.91 of its quota with the catch-up); and a
            # token bucket found by the bucket-or-window test is bounded by its burst
            return 0
        if self._test_pace_per_s is not None or not self._ceilings:
            return 0
        if self.settings.user_rate_per_s is not None:
            return 0  # the user's rate (``--rate``) paces evenly, as asked
        # A window of N per W >= 1 s (the shortest round window) took the least of the recent
        # ceilings, N1 = N / W per second: while fewer than (1 - margin) N1 started in the
        # last second, missed slots may go late (at most N1 (W - 1) + (1 - margin) N1 + 1 in
        # any W, within N when the margin leaves room for one); then back to even pacing.
        quota_1s = min(self._ceilings[-4:])
        room = min(quota_1s * (1 - self.settings.handover_margin), quota_1s - 1)
        started = sum(1 for t in self._recent_starts if t > now_ns - NS)
        if started + 1 >= room:
            return 0
        # never back into a pause (its slots were not missed: the window was shut)
        return max(0, min(round(_WINDOW_CATCH_UP_S * NS), now_ns - self.pause_until_ns))

    def _resumed_too_soon(self, ticket: Ticket, outcome: Outcome) -> bool:
        """Whether ``ticket`` was refused for going out after the test's early resume but
        before the test's refusal's ``Retry-After`` ended (see ``_resume_after_test``), with
        nothing sent since taken (then the server had room at the resume: a bucket that ran
        dry again is over its rate, not resumed too soon)."""
        resumed, retry_after_ends = self._test_resume_ns, self._test_retry_after_ns
        return (
            outcome is Outcome.THROTTLE
            and resumed is not None
            and retry_after_ends is not None
            and not self._resume_taken
            and ticket.epoch == self.epoch
            and resumed <= ticket.sent_ns < retry_after_ends
        )

    def _test_catch_up_ns(self, now_ns: int) -> int:
        """How far back the bucket-or-window test's pacer charges a late start: its slots are
        caught up, as against a learned window (``_WINDOW_CATCH_UP_S``), never into a pause.
        Timers 10 ms late slowed a 400/s test (2.5 ms apart) to ~130/s: a fixed window of
        100/s turned over while the test was still filling it, took 2N, and was judged a
        bucket of 270-280/s (simulated, 30 ms away: 0.83 of its quota, 4 % refused). Both
        kinds are fresh when the test starts: a burst costs neither."""
        return max(0, min(round(_WINDOW_CATCH_UP_S * NS), now_ns - self.pause_until_ns))

    def _timer_lateness_ns(self, late_ns: int) -> int:
        """The least lateness of the recent wake-ups, this one's (``late_ns``) included.
        Strict pacing charges the next interval from the start less this: a timer always that
        late would otherwise stretch every interval (measured: 20 ms + ~2.5 ms on a busy
        machine, 0.89 of nginx's rate), and the next wake-up, at least as late, still comes a
        full interval after this start."""
        lateness = self._lateness_ns
        lateness.append(max(0, late_ns))
        return min(lateness)

    def _gate_pace_per_s(self) -> float | None:
        """The pace of this controller's rate gate: its own rate, or the user's when that is
        slower and even (``user_rate_even``; otherwise the user's limiter paces alone)."""
        if self._test_pace_per_s is not None:
            return self._test_pace_per_s
        user = self.settings.user_rate_per_s if self.settings.user_rate_even else None
        rates = [r for r in (self.rate_per_s, user) if r is not None]
        return min(rates) if rates else None

    def _note_throttle(self, now_ns: int) -> None:
        # a Retry-After pause is no quiet time: the quota's window empties during it
        self._last_throttle_ns = max(now_ns, self.pause_until_ns)
        throttles = self._recent_throttles
        throttles.append(now_ns)
        while throttles and throttles[0] <= now_ns - NS:
            throttles.popleft()

    def _growth(self) -> float:
        """Rate growth, in (starts/s) per second."""
        settings = self.settings
        rate = self.rate_per_s or 0.0
        if self._refill is not None:
            return _REFILL_GROWTH_PER_S * rate
        if self.learned:
            return settings.handover_growth_per_s * rate
        if self._ceiling is None:
            return settings.pre_throttle_growth_per_s * rate
        beta = settings.rate_cut
        grow = settings.target_throttle_fraction * (1 - beta**2) * self._ceiling**2 / 2
        return max(grow, 0.01 * rate)

    def _on_congestion(
        self, now_ns: int, ticket: Ticket, cut_rate: bool, overload: bool = False
    ) -> None:
        if ticket.epoch != self.epoch:
            return  # sent before the last cut: that congestion event was already answered
        settings = self.settings
        if not self._recovered:
            # Nothing sent since the cut has got through yet: the server's window is still
            # full (a long-window quota), so cutting again would only misjudge the ceiling.
            # A few of these and we stop and probe instead. Only throttles say "quota": a
            # server that breaks or times out every attempt is not probed at minute-long
            # intervals (a batch against one that cut every body crawled at 0.1 items/s);
            # the items' own retries and the retry budget bound what it is sent.
            if not cut_rate:
                if overload:
                    # Refused at this load though sent after the cut (a 503 comes back at once
                    # and its slot went straight out again: 100 refusals in the first 50 ms RTT
                    # with 8 in flight against room for 4, simulated): stay below that load.
                    self.concurrency = max(
                        float(self.settings.min_concurrency),
                        min(self.concurrency, float(ticket.load - 1)),
                    )
                return
            self._aftershocks += 1
            if self._aftershocks >= settings.probe_after_cuts and not self._probing:
                self._probing = self._window_seen = True
                self._strict_pacing = False  # a window takes catch-ups (see _WINDOW_CATCH_UP_S)
                self._slow_start = False  # a window: what it accepted in a second is its rate
                self._probe_attempt = 0
                self._schedule_probe(now_ns)
            return
        if cut_rate and self._absorbs(now_ns):
            return
        if not cut_rate and not overload and self._latency_unloaded():
            # A timeout or a dropped connection while the answers that do come are as fast as
            # unloaded: a loss, not a server at capacity (which answers slower first). Cut for
            # each, the concurrency of a batch whose server dropped 10 % of POST answers after
            # processing fell to 1 and held it to 0.7-0.8 of its rate (issue 14).
            self.events.append((now_ns, "loss", float(ticket.load)))
            return
        if self._test_pace_per_s is not None:
            # a cut of another kind (a 503) while testing: what the test took says nothing
            # clean about the quota any more; the hand-over rate stands
            self._test_pace_per_s = self._peek_at_ns = None
            self.events.append((now_ns, "rate test abandoned", 0.0))
        self._recovered = False
        self._aftershocks = 0
        self._first_judged = self._first_factor = None  # the next cut is judged on its own
        self.epoch += 1
        self._epoch_in_flight = 0
        self._one_at_a_time = cut_rate
        self.cuts += 1
        self._last_growth_ns = None
        if not cut_rate:
            cut = self.concurrency * settings.concurrency_cut
            if overload:
                cut = self._learn_capacity(ticket.load, cut)
            self.concurrency = max(float(settings.min_concurrency), cut)
            self.events.append((now_ns, "concurrency", float(self.concurrency_limit)))
        elif self._in_a_burst(now_ns, ticket):
            self._smooth(now_ns, ticket)
        else:
            self._cut_rate(now_ns, ticket)

    def _learn_capacity(self, load: int, cut: float) -> float:
        """A 503 at ``load`` in flight: the concurrency to cut to (see ``_CAPACITY_LEARN_AFTER``).

        Above a learned capacity (a slow probe past it), back to it; at or below it, the
        server takes less than it did: cut as usual and learn again."""
        capacity = self.capacity
        if capacity is not None and load > capacity:
            return float(capacity)
        loads = self._overload_loads
        loads.append(load)
        del loads[:-_CAPACITY_LEARN_AFTER]
        if len(loads) == _CAPACITY_LEARN_AFTER and max(loads) - min(loads) <= 1:
            self.capacity = max(self.settings.min_concurrency, min(loads) - 1)
            return float(self.capacity)
        self.capacity = None
        return cut

    def _latency_unloaded(self) -> bool:
        """Whether recent round trips are within the latency brake's tolerance of the
        unloaded latency (False before any success)."""
        recent, least = self._rtt_recent_ns, self._rtt_min_ns
        if recent is None or least is None:
            return False
        unloaded = max(float(least), self._fit._unloaded_ns)
        return recent <= self.settings.latency_tolerance * unloaded

    def _answer(self, throttled: bool) -> None:
        """Count an answer into the last ``jitter_window``."""
        answers = self._answers
        answers.append(throttled)
        self._answers_throttled += throttled
        if len(answers) > self.settings.jitter_window:
            self._answers_throttled -= answers.popleft()

    def _forget_answers(self) -> None:
        self._answers.clear()
        self._answers_throttled = 0

    def _absorbs(self, now_ns: int) -> bool:
        """Whether a throttle is a bucket's refusal of timing jitter (see ``jitter_throttles``)
        instead of a reason to cut; the pacer turns strict (no catch-up)."""
        settings = self.settings
        # this throttle included, at most jitter_throttles per jitter_window answers so far
        earned = settings.jitter_throttles * len(self._answers) / settings.jitter_window
        if (
            self._answers_throttled > earned
            or self._pace_per_s() is None
            or self._slow_start  # doubling found the rate: that throttle is the ceiling
            or self._retry_after_seen
            or self._window_seen
            or self._probing
        ):
            return False
        self._strict_pacing = True
        self.events.append((now_ns, "absorbed", float(self._answers_throttled)))
        return True

    def _in_a_burst(self, now_ns: int, ticket: Ticket) -> bool:
        """Whether a throttle says "burst" rather than "rate": the attempt went out with no
        pacer, or less than ``burst_gap`` (0.99) of an interval after the one before it under
        the controller's own pacer (a late timer's catch-up) — and such throttles are not coming
        all the time (fewer than ``max_smoothings_per_s`` in the last second)."""
        smoothings = self._smoothings
        while smoothings and smoothings[0] <= now_ns - NS:
            smoothings.popleft()
        if self._retry_after_seen or len(smoothings) >= self.settings.max_smoothings_per_s:
            return False  # a server that says when it has room is a window, not a bucket
        pace = ticket.pace_per_s
        if pace is None:
            return True
        user = self.settings.user_rate_per_s
        if user is not None and pace >= user:
            return False  # the user's limiter paced it (its start here is not its send)
        return ticket.gap_ns is not None and ticket.gap_ns * pace < self.settings.burst_gap * NS

    def _smooth(self, now_ns: int, ticket: Ticket) -> None:
        """Burst intolerance: pace evenly at the rate that was working, learn no ceiling. With
        no pacer yet that rate is what the server accepted, judged over at least a second (a
        lower bound of its rate), and slow start climbs from it."""
        settings = self.settings
        self._smoothings.append(now_ns)
        self._forget_answers()  # the evidence for a cut starts over
        if ticket.pace_per_s is not None and not self._window_seen:
            self._strict_pacing = True
        if self.rate_per_s is None:
            rate = max(self._accepted_rate(now_ns), settings.min_rate_per_s)
            if settings.user_rate_per_s is not None:
                rate = max(rate, settings.user_rate_per_s)
            self.rate_per_s = rate
            # a lower bound of the server's rate (a burst's worth per second): climb from it
            self._slow_start = not self.learned
            self._last_growth_ns = now_ns  # its first success doubles it already
        self.events.append((now_ns, "smooth", self.rate_per_s))

    def _cut_rate(self, now_ns: int, ticket: Ticket) -> None:
        """Over the quota: cut the rate from the ceiling it was throttled at."""
        settings = self.settings
        if self._refill is not None and self._refusal[0]:
            self._bucket_refused(now_ns, ticket)
            return
        if self._slow_start and ticket.pace_per_s is not None and not self._window_seen:
            # Doubling found the quota: it is below the pace this attempt was sent at (the
            # accepted rate lags a doubling pace by half). Not so for a window, which takes a
            # doubling pace for up to a window before it throttles: its accepted rate is right.
            ceiling = ticket.pace_per_s
        else:
            ceiling = self._accepted_rate(now_ns)
            if self.rate_per_s is not None:
                # Right after a pause the server's window is empty and everything we send is
                # accepted for a while: the accepted rate then overstates the quota. We were
                # throttled at the rate we sent, so the quota is below it.
                ceiling = min(ceiling, self.rate_per_s)
        self._slow_start = False
        ceiling = max(ceiling, settings.min_rate_per_s)
        user = settings.user_rate_per_s
        near_user_rate = False
        if user is not None and ceiling * settings.rate_cut < user:
            if not self.below_user_rate and not self._keeps_throttling():
                # The user's rate: held unless the server keeps (or kept) throttling at it.
                self.rate_per_s = max(self.rate_per_s or user, user)
                self._strict_pacing = True  # a bucket refuses the user's limiter's catch-ups
                self.events.append((now_ns, "hold user rate", self.rate_per_s))
                return  # the evidence stands: more throttles take the rate below the user's
            if self._throttled_fraction() < 0.5:
                # Most of what went at (about) the user's rate was taken: the quota is close
                # to it (a leaky bucket refusing a timer's jitter), not at the accepted rate
                # (which such refusals drag down): step down from the pace, strictly paced.
                ceiling = min(ticket.pace_per_s or user, user)
                near_user_rate = self._strict_pacing = True
        self._forget_answers()  # the evidence for the next cut starts over
        self._ceiling = ceiling
        self._ceilings.append(ceiling)
        if near_user_rate:
            new_rate = ceiling * (1 - settings.handover_margin)
        elif self.learned:
            mean = sum(self._ceilings[-4:]) / len(self._ceilings[-4:])
            new_rate = mean * (1 - settings.handover_margin)
            if self.rate_per_s is not None and new_rate >= self.rate_per_s:
                new_rate = self.rate_per_s * (1 - settings.handover_margin)
        else:
            new_rate = ceiling * settings.rate_cut
        self.rate_per_s = max(settings.min_rate_per_s, new_rate)
        if self._first_judged is not None and user is None and new_rate > settings.min_rate_per_s:
            self._first_factor = new_rate / ceiling
        if user is not None and self.rate_per_s < user and not self.below_user_rate:
            self.below_user_rate = True
            self.events.append((now_ns, "below user rate", self.rate_per_s))
        self.events.append((now_ns, "rate", self.rate_per_s))
        if (
            not self._tested
            and self._retry_after_seen
            and ticket.pace_per_s is None
            and user is None
            and len(self._ceilings) == 1
            and self._first_start_ns is not None
            and self._first_pause_s <= 1.0
            and (ticket.gap_ns is None or ticket.gap_ns * ceiling < NS)
        ):
            # (a bucket that refused an attempt a gap g after the one before refills less
            # than a token in g: its rate is under 1/g, no more than the ceiling: nothing to test)
            # the unpaced start's first throttle, with Retry-After: a window or a bucket?
            judged = self._first_judged
            self._tested = True
            self._test_pace_per_s = _RATE_TEST_FACTOR * ceiling
            self._test_burst = ceiling if judged is None else ceiling / judged[2]
            # The span the first burst reached the server over, from its first answer to
            # this refusal's (answers from where it arrived: sends from the first start
            # count the connections' set-up, 40-60 ms measured, and overstated the bucket's
            # rate by ~6 %); answers still in flight extend it (``_late_answer``).
            first_answer = self._cycle_first_answer_ns
            self._test_span_ns = 0 if first_answer is None else max(0, now_ns - first_answer)
            self._test_from_ns = None
            self._test_taken = 0
            self._test_first_answer_ns = None
            self._test_answers_ns = []
            self._test_stages = []
            self._test_stage_bursts = _RATE_TEST_STAGE  # one first burst after a peek taken
            self._tat_ns = None
            self.events.append((now_ns, "rate test", self._test_pace_per_s))
            # one peek at the test's pace: a bucket that fast has a token again by then
            self._peek_at_ns = now_ns + round(NS / self._test_pace_per_s)

    def _peek_finished(self, now_ns: int, ticket: Ticket, outcome: Outcome) -> None:
        """The peek, one attempt sent during the first pause one interval of the test's pace
        after the refusal (docs/design.md, 'Peeking during the first pause'), is answered.
        Taken: the server is no full window, and if a bucket, one that refills at least at
        that pace: full again ``burst`` such intervals after the peek, when the test starts
        instead of at the end of the whole-second ``Retry-After``. Refused: a window (or a
        slower bucket): the pause stands as it was, no cut. Neither counts anywhere else."""
        self._peek_in_flight = False
        if outcome is Outcome.THROTTLE or outcome is Outcome.OVERLOAD:
            self.throttled += 1
            self.events.append((now_ns, "peek refused", 0.0))
            return
        pace = self._test_pace_per_s
        if outcome is not Outcome.SUCCESS or pace is None:
            return
        full_ns = ticket.sent_ns + round(max(self._test_burst, 1.0) * NS / pace)
        until = max(now_ns, full_ns)
        if until < self.pause_until_ns:
            self.pause_until_ns = until
            if self._paused_ns:
                start, _ = self._paused_ns[-1]
                self._paused_ns[-1] = (start, max(start, until))
            self.events.append((now_ns, "peek", (until - now_ns) / NS))
        if self._test_burst >= _PEEK_STAGE_MIN_BURST:
            self._test_stage_bursts = _PEEK_STAGE

    def _rate_test_taken(self, now_ns: int) -> None:
        """A test attempt was taken: a stage that took ``_RATE_TEST_STAGE`` first bursts
        without a refusal found no window of that burst, and a server at least about as fast
        as the test pace: double it. After a peek that got through, the first stage is
        ``_PEEK_STAGE`` first bursts (the peek showed that much already)."""
        pace = self._test_pace_per_s
        assert pace is not None
        if self._test_taken == 0:
            self._test_first_answer_ns = now_ns
        self._test_answers_ns.append(now_ns)
        self._test_taken += 1
        stages = self._test_stages
        stage_taken = self._test_taken - stages[-1][1] if stages else 0
        if stages and stage_taken >= self._test_stage_bursts * self._test_burst:
            self._test_stage_bursts = _RATE_TEST_STAGE
            self._test_pace_per_s = min(self.settings.max_rate_per_s, 2 * pace)
            self._test_from_ns = None  # the next stage starts with its first send
            self.events.append((now_ns, "rate test", self._test_pace_per_s))

    def _end_rate_test(self, now_ns: int, ticket: Ticket) -> None:
        """The server refused a test attempt: judge window or bucket, and hold the rate found
        (a bucket's stage count, a lower bound, as it is; a window's, less the margin). The
        test's other refusals are not cuts.

        A window takes at most the N it took at first (``_RATE_TEST_OVER``). A bucket of burst
        b and rate r took ``A1 = b + r T1`` over the first burst's sends (T1 long), from a full
        bucket to an empty one, and since the start of any stage no more than ``b + r T``: so
        ``(A - A1) / (T - T1)`` is a lower bound of r from each stage's start, and exact from
        the last stage that began with the bucket full (or that wasted none of its refill)."""
        pace = self._test_pace_per_s
        assert pace is not None
        settings = self.settings
        burst = max(self._test_burst, 1.0)
        stages = self._test_stages
        self._test_pace_per_s = None
        self.epoch += 1  # the test's attempts still in flight belong to the test
        self._epoch_in_flight = 0
        self._last_growth_ns = None
        self._tat_ns = None
        taken = self._test_taken
        last_stage = taken - stages[-1][1] if stages else 0
        if len(stages) > 1 or last_stage > burst * (1 + _RATE_TEST_OVER) + 2:
            ceiling = rate = self._ceilings[-1]
            for since_ns, before in stages:
                span_ns = ticket.sent_ns - since_ns - self._test_span_ns
                if span_ns > 0:
                    rate = max(rate, (taken - before - burst) * NS / span_ns)
            rate = min(pace, rate)
            self._ceilings[-1:] = [rate]
            self._ceiling = rate
            self._first_judged = self._first_factor = None
            # A stage's count measured the refill (a lower bound of the rate): paced at it,
            # and its refusals tell the rest (``_bucket_refused``). Else the rate is the first
            # ceiling (a fixed window that turned over during the test looks so at 30 ms):
            # the margin, and no more.
            measured = rate > ceiling
            margin = 0.0 if measured else settings.handover_margin
            self.rate_per_s = max(settings.min_rate_per_s, rate * (1 - margin))
            self.events.append((now_ns, "bucket", rate))
            # a bucket of burst b refilled at r is full again b / r after running dry
            self._resume_after_test(now_ns, now_ns + round(burst * NS / rate))
            if measured:
                self._refill = RefillCount(ticket.sent_ns)
                self._refill.full(self.pause_until_ns, burst)
                self._refill_burst = burst
        else:
            self.events.append((now_ns, "window", burst))
            slots = self._keep_window_slots(now_ns, taken, burst)
            first = self._test_first_answer_ns
            if slots is not None:
                wait = slots.wait_ns(now_ns)
                if wait is not None:
                    self._resume_after_test(now_ns, now_ns + wait)
            elif first is not None:
                # a window of at most a second (the first Retry-After was one) is empty again
                # a second after it took the test's first success, no later than its answer
                second = round(NS * (1 + settings.probe_window_slack))
                self._resume_after_test(now_ns, first + second)
        self.events.append((now_ns, "rate", self.rate_per_s or 0.0))

    def _bucket_refused(self, now_ns: int, ticket: Ticket) -> None:
        """The bucket the test found refused an attempt (docs/design.md, 'A bucket's rate from
        its refusals'): it ran dry at the pace then, so its rate is below that pace, and
        what it took since its last refusal says by how much (``RefillCount``). Hold
        ``_REFILL_MARGIN`` under that rate, and resume when the bucket is full again, not at
        the end of a whole-second ``Retry-After`` (at 80/s burst 10, a pause of 1 s lost 70
        tokens; 10 / 80 s loses none) — unless such a resume once came too soon, or this
        refusal asked for more than a second (a bucket's next token comes within one at any
        rate worth reading: a longer ``Retry-After`` is another limit's, and waited out). A 503
        is no bucket's refusal: it is cut as usual (``_cut_rate``)."""
        settings = self.settings
        refill = self._refill
        assert refill is not None
        pace = ticket.pace_per_s or self.rate_per_s or settings.min_rate_per_s
        measured = refill.refused(ticket.sent_ns)
        # Refused at that pace: the rate is below it. A count is a lower bound (a pause longer
        # than the refill lost tokens to the cap): no deeper than one cut (a bucket shared
        # with a client that took half of it: 0.48 -> 0.95 of the half, simulated), and one
        # cut when it ran dry again within half a second (no count: far over its rate).
        rate = pace * settings.rate_cut
        if measured is not None:
            rate = max(min(measured, pace), rate)
        rate = max(rate, settings.min_rate_per_s)
        self._ceiling = rate
        self._ceilings.append(rate)
        self.rate_per_s = max(settings.min_rate_per_s, rate * (1 - _REFILL_MARGIN))
        self.events.append((now_ns, "bucket refill", measured or 0.0))
        self.events.append((now_ns, "rate", self.rate_per_s))
        burst = max(self._refill_burst, 1.0)
        retry_after_s = self._refusal[1]
        if not self._round_resume_failed and (retry_after_s is None or retry_after_s <= 1):
            full_ns = max(now_ns + 1, ticket.sent_ns + round(burst * NS / rate))
            self._resume_after_test(now_ns, full_ns)
        refill.full(self.pause_until_ns, burst)

    def _keep_window_slots(self, now_ns: int, taken: int, burst: float) -> WindowSlots | None:
        """The test confirmed a window of about ``burst`` (it took ``taken`` again): keep its
        slots from here (see ``_WINDOW_SLOTS_SLACK_S``), unless the round trip is too long."""
        rtt = self._rtt_min_ns
        if rtt is None or rtt > _WINDOW_SLOTS_MAX_RTT_S * NS or taken < 1:
            return None
        quota = max(1, min(int(burst + 0.5), taken))
        ceiling = self._ceilings[-1] if self._ceilings else 0.0
        if ceiling > quota * (1 + _RATE_TEST_OVER) + 2:
            # A window of N per second accepts N a second: this server took more over the
            # first second than its first burst (a bucket the test's pace did not run dry:
            # 20/s with burst 5, simulated; kept as 5 slots a second it got 0.25 of its rate).
            return None
        window_ns = round(NS * (1 + _WINDOW_SLOTS_SLACK_S))
        self._slots = WindowSlots(quota, window_ns, tuple(self._test_answers_ns))
        self._slots_epoch = self.epoch
        self._slots_cap = int(burst + 0.5)
        self._slots_late_count = False
        self.events.append((now_ns, "window slots", float(quota)))
        return self._slots

    def _keep_probed_window_slots(self, now_ns: int, probe: Ticket) -> None:
        """The batch's first probe got through a second after the first burst's first answer,
        against a window without ``Retry-After``: keep its slots (see ``_WINDOW_SLOTS_SLACK_S``),
        N what it counted of the attempts sent in the batch's first second (the first burst,
        taken from an empty window; not the probes, a window later), each held a second after
        its answer. A refusal costs one retry there."""
        first = self._cycle_first_answer_ns
        quota = self._first_second_counted
        rtt = self._rtt_min_ns
        if (
            self._retry_after_seen
            or not self._window_seen
            or self.settings.user_rate_per_s is not None
            or first is None
            or quota < 2
            or rtt is None
            or rtt > _WINDOW_SLOTS_MAX_RTT_S * NS
            or not NS <= probe.sent_ns - first <= round(NS * (1 + 5 * _WINDOW_SLOTS_SLACK_S))
        ):
            # Nothing to count it by, or not a window of a second: the probe went sooner (a
            # window of 0.5 s got through at 0.6 s: kept as a second's, 0.80 -> 0.50 of its
            # quota, simulated) or later than the round second (probe_windows_s) it goes at.
            return
        window_ns = round(NS * (1 + _WINDOW_SLOTS_SLACK_S))
        answers = (*self._recent_answers_ns, now_ns)
        self._slots = WindowSlots(quota, window_ns, answers)
        self._slots_epoch = self.epoch
        self._slots_cap = quota
        self.events.append((now_ns, "window slots", float(quota)))

    def _slot_refused(self, now_ns: int) -> None:
        """The server refused an attempt the slots let go: the window is longer (or shared,
        or smaller) than kept: even pacing again, at the rate handed over."""
        self._slots = None
        self._slots_late_count = False
        self._tat_ns = None
        self.events.append((now_ns, "window slots off", 0.0))

    def _resume_after_test(self, now_ns: int, room_ns: int) -> None:
        """Resume when the server judged by the test has room again (``room_ns``), if that is
        sooner than its ``Retry-After`` said: whole seconds, rounded up (docs/design.md,
        'Resuming after the test'). A bucket of 80/s refused the test with "1 s" though its
        next token came in 12.5 ms; a window with "1 s" when its first slot freed 0.26 s later
        (20/s): simulated, 0.84 -> 0.87 and 0.93 -> 0.94 of their quotas over 25 s. Once per
        batch, and the next refusal is obeyed in full: a wrong guess costs one 429. Not when
        the room should have come already (the server is not what the test took it for)."""
        until = room_ns
        if not now_ns < until < self.pause_until_ns:
            return
        self._test_resume_ns = until
        self._resume_taken = False
        self._test_retry_after_ns = self.pause_until_ns
        self.pause_until_ns = until
        # the first attempt after it goes alone: if the server has no room yet, one refusal
        self._one_at_a_time = True
        if self._paused_ns:
            start, _ = self._paused_ns[-1]
            self._paused_ns[-1] = (start, max(start, until))
        self.events.append((now_ns, "resume", (until - now_ns) / NS))

    def _resume_at_round_window(self, now_ns: int, retry_after_s: float) -> None:
        """A refusal with a ``Retry-After`` of whole seconds (2 or more: a 1 s window is the
        bucket-or-window test's) paused the batch: resume when the window that refused it has
        room, if that is sooner (docs/design.md, 'Resuming at a round window'). The server
        counted this stretch's first success no later than its answer ``f``, and "come back in
        R s" is rounded up: the window W is in ``(now - f + R - 1, now - f + R]``. When one
        round window (``probe_windows_s``) is in that range, the first success's slot is free
        at ``f + W`` (+ ``probe_window_slack``): a fixed window has turned over by then too.
        300 per 5 s refused a burst that took 0.25-0.3 s to send with "5 s": each window
        started that much late. Not after such a resume came too soon (once per batch)."""
        first = self._stretch_first_answer_ns
        answers, taken = tuple(self._stretch_answers_ns), self._stretch_successes
        self._stretch_first_answer_ns = None
        self._stretch_answers_ns.clear()
        self._stretch_successes = 0
        if first is None or retry_after_s < 2 or self._round_resume_failed:
            return
        settings = self.settings
        elapsed = now_ns - first
        lo, hi = elapsed + round((retry_after_s - 1) * NS), elapsed + round(retry_after_s * NS)
        windows = [w for w in settings.probe_windows_s if lo < w * NS <= hi]
        if len(windows) != 1:
            return
        window_ns = round(windows[0] * NS * (1 + settings.probe_window_slack))
        rtt = self._rtt_min_ns
        if (
            self._slots is None
            and not self._tested
            and settings.user_rate_per_s is None
            and 2 <= taken <= _ROUND_SLOTS_MAX
            and rtt is not None
            and rtt <= _WINDOW_SLOTS_MAX_RTT_S * NS
        ):
            # The window's N: what this stretch had counted (and what was in flight, added
            # as it comes): kept as slots, each free W after its answer ('Window slots').
            slots_ns = round(windows[0] * NS * (1 + _WINDOW_SLOTS_SLACK_S))
            self._slots = WindowSlots(taken, slots_ns, answers)
            self._slots_epoch = self.epoch
            self._slots_late_count = True
            self._tested = True  # no bucket-or-window test: the window is known
            self.events.append((now_ns, "window slots", float(taken)))
            wait = self._slots.wait_ns(now_ns)
            if wait is not None:
                self._resume_after_test(now_ns, now_ns + wait)
            return
        self._resume_after_test(now_ns, first + window_ns)

    def _keeps_throttling(self) -> bool:
        """More than ``user_rate_max_throttles`` of the last ``jitter_window`` answers were
        throttles."""
        return self._answers_throttled > self.settings.user_rate_max_throttles

    def _throttled_fraction(self) -> float:
        """Throttles answered in the last second, per attempt started in it."""
        return len(self._recent_throttles) / max(1, len(self._recent_starts))

    def _learn_cycle(self, probe_sent_ns: int) -> None:
        """A probe sent at ``probe_sent_ns`` got through after a long-window quota made us
        stop. The cycle's successes are the quota N; the window W is at most the time from
        the cycle's first success to the probe, and longer than that to its last throttled
        attempt. Pace at N/W (W the upper bound: safe), less the margin, and treat the quota
        as learned."""
        first = self._cycle_first_ns
        successes = self._cycle_successes
        if first is None or probe_sent_ns <= first or successes < 2:
            return
        hi = probe_sent_ns - first
        lo = 0 if self._cycle_throttled_ns is None else self._cycle_throttled_ns - first
        known = self._window_ns
        if known is not None and max(lo, known[0]) < min(hi, known[1]):
            lo, hi = max(lo, known[0]), min(hi, known[1])
        self._window_ns = (lo, hi)
        rate = successes * NS / hi
        self._ceilings = [rate, rate]
        self._ceiling = rate
        self.rate_per_s = max(
            self.settings.min_rate_per_s, rate * (1 - self.settings.handover_margin)
        )
        self._tat_ns = None
        self._last_growth_ns = None
        self.events.append((probe_sent_ns, "window", hi / NS))
        self.events.append((probe_sent_ns, "rate", self.rate_per_s))

    def _accepted_rate(self, now_ns: int) -> float:
        """Successes per second of sending time over the last second: at a throttle the server
        was saturated, so this is its quota rate as seen from here. Paused time and the time
        before the first start do not count as sending time."""
        since = now_ns - NS
        if self._first_start_ns is not None:
            since = max(since, self._first_start_ns)
        active = now_ns - since
        for start, end in self._paused_ns:
            overlap = min(end, now_ns) - max(start, since)
            if overlap > 0:
                active -= overlap
        while self._paused_ns and self._paused_ns[0][1] < now_ns - NS:
            self._paused_ns.popleft()
        accepted = sum(1 for t in self._recent_successes if t >= since)
        if self.rate_per_s is None:
            # The first throttle: all we know is that the server took ``accepted`` and then
            # refused. A window shorter than a second would show as a steady rate; judge over
            # at least one second so an early 429 (a quota filled in a burst) is not read as
            # a huge rate.
            # Only one taken of a burst is a bucket without burst (nginx's default): judged
            # over a quarter second, slow start climbs from 4/s instead of 1/s (1 s sooner).
            judge_ns = NS // 4 if accepted <= 1 else NS
            self._first_judged = (since, now_ns, NS / max(active, judge_ns))
            return max(accepted, 1) * NS / max(active, judge_ns)
        if active < NS // 10 or accepted == 0:  # too little to judge: keep the pacing rate
            return self.rate_per_s
        return accepted * NS / active

    def _schedule_probe(self, now_ns: int) -> None:
        settings = self.settings
        step = min(settings.probe_max_s, settings.probe_initial_s * 2.0**self._probe_attempt)
        # equal jitter: between half the step and the step (a probe right away learns nothing)
        delay = step / 2 + self.rng.uniform(0.0, step / 2)
        first = self._cycle_first_ns
        if first is not None:
            elapsed = (now_ns - first) / NS
            known = self._window_ns
            if known is not None and now_ns - first > known[1]:
                # still closed past the window learned before: it was not the window (a
                # fixed window whose cycle began mid-window, or the quota changed)
                known = self._window_ns = None
            if known is None:
                cap = settings.probe_step_fraction * elapsed
                delay = min(delay, max(cap, settings.probe_initial_s / 2))
            else:
                # the window is longer than lo: go no sooner, then in fine steps
                lo = known[0] / NS
                fine = settings.probe_fine_fraction * lo
                delay = lo + fine - elapsed if elapsed < lo else min(delay, fine)
            # A round window frees the first success's slot one window after the server
            # counted it: no later than its answer (measured: a new connection's first request
            # answered 64 ms after it started; timed from the start, the 1 s probe came 20 ms
            # early and a 1 s window was learned as 1.5 s, 0.64 of the quota).
            answered = self._cycle_first_answer_ns
            since_answer = elapsed if answered is None else (now_ns - answered) / NS
            for window in settings.probe_windows_s:
                at = window * (1 + settings.probe_window_slack) - since_answer
                if at > 0 and (known is None or window * NS > known[0]):
                    delay = min(delay, at)
                    break
        self._probe_attempt += 1
        self.pause_until_ns = max(self.pause_until_ns, now_ns + round(delay * NS))
        # a probe's wait is no window's: the next stretch starts after it
        self._stretch_first_answer_ns = None
        self._stretch_answers_ns.clear()
        self._stretch_successes = 0
        self.events.append((now_ns, "probe", delay))


def describe(controller: AdaptiveController) -> str:
    """A one-line summary for logs and reports."""
    rate = controller.rate_per_s
    shown = "unlimited" if rate is None else f"{rate:.1f}/s"
    mode = "probing" if controller._probing else ("learned" if controller.learned else "learning")
    return (
        f"rate {shown}, concurrency {controller.concurrency_limit}, {mode}, cuts {controller.cuts}"
    )
