"""The hostile matrix's shared parts: a policy per mode, the bound it implies, and the checks
every face must pass (the batch ends, every item settles once, nothing served twice, no secret
written down)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from paceline.policy.adaptive import AdaptiveSettings
from paceline.policy.retry import RetryPolicy
from paceline.testing.hostile import HostileCounts, Mode

# Secrets a user puts in the URL and the headers; they must never reach a journal or --out.
SECRET_QUERY = "hq-s3cr3t-7f3a0c"
SECRET_HEADER = "hh-s3cr3t-91bd4e"
SECRETS = (SECRET_QUERY, SECRET_HEADER)
# Throttles are retried apart from the attempts, up to this many an item (RetryPolicy's
# default, 20); a plan may set fewer, as a user can.
MAX_THROTTLES = RetryPolicy().max_throttles

# Room for a busy 2-core machine shared with other jobs: interpreter start-up (~1 s for the
# CLI), thread and event-loop scheduling, loopback I/O of 10 MiB bodies.
SLACK_S = 15.0
# Faster than any per-read timeout in the matrix, slow enough that an answer takes ~15 s: only
# a bound on the whole attempt ends it.
TRICKLE_INTERVAL_S = 0.1
# Backoff kept short so that a bound computed from it is short (the defaults are for real APIs).
BASE_S = 0.05
CAP_S = 0.2

# The adaptive controller with short test clocks: rate floor 20/s instead of 0.05/s, probes of
# 0.05-0.1 s instead of 1-64 s; otherwise its defaults. Each of its waits enters the bound.
ADAPTIVE = AdaptiveSettings(
    initial_concurrency=4,
    max_concurrency=4,
    min_rate_per_s=20.0,
    probe_initial_s=0.05,
    probe_max_s=0.1,
)


@dataclass(frozen=True)
class Plan:
    """One mode's batch: its size and policy, and what each item must end as.

    ``expect``: ``"ok"`` every item succeeds, ``"fail"`` every item fails, ``"one-fails"`` only
    the item that got the far Retry-After fails, ``"any"`` each item either way (the server is
    consistent with it: success exactly when it served it).
    """

    mode: Mode
    items: int
    attempts: int
    timeout_s: float
    expect: str
    concurrency: int = 4
    max_throttles: int = MAX_THROTTLES

    @property
    def requests_per_item(self) -> int:
        # A throttle spends no attempt (issue 11): an item the server answers only with 429 is
        # sent up to max_throttles times; any other failure counts against ``attempts``.
        return self.max_throttles if self.mode == "throttle" else self.attempts

    @property
    def requests_at_most(self) -> int:
        return self.items * self.requests_per_item

    def bound_s(self) -> float:
        """How long the batch may take, from its policy, at the worst the policy allows.

        Every attempt may run to its timeout and wait the longest backoff before the next; the
        adaptive controller may bring the concurrency down to 1 and space starts at its rate
        floor or its longest probe interval. Plus :data:`SLACK_S`.
        """
        attempts = self.requests_at_most
        sequential_s = attempts * (self.timeout_s + CAP_S)
        spacing_s = attempts * max(1 / ADAPTIVE.min_rate_per_s, ADAPTIVE.probe_max_s)
        return sequential_s + spacing_s + SLACK_S


PLANS: dict[Mode, Plan] = {
    plan.mode: plan
    for plan in (
        Plan("error", items=10, attempts=3, timeout_s=1.0, expect="fail"),
        Plan("flaky", items=10, attempts=3, timeout_s=1.0, expect="any"),
        Plan("far-retry-after", items=10, attempts=3, timeout_s=1.0, expect="one-fails"),
        Plan("far-reset", items=10, attempts=2, timeout_s=1.0, expect="ok"),
        # Every answer a 429: each item is sent max_throttles times, spaced by the rate floor
        # (20/s): 10 x 20 (the default) took 16-22 s a face; 10 x 6 still retries each item
        # five times past its 3 attempts, and shows the faces honour a max_throttles set.
        Plan("throttle", items=10, attempts=3, timeout_s=1.0, expect="fail", max_throttles=6),
        # Every attempt runs to its timeout: few items, short timeouts.
        Plan("silent", items=4, attempts=2, timeout_s=0.3, expect="fail"),
        Plan("trickle", items=4, attempts=2, timeout_s=0.3, expect="fail"),
        # Reading 10 MiB on a busy machine: a timeout that leaves no reason to retry.
        Plan("huge-body", items=4, attempts=2, timeout_s=10.0, expect="ok"),
        Plan("cut-body", items=10, attempts=2, timeout_s=1.0, expect="fail"),
        Plan("huge-header", items=10, attempts=2, timeout_s=1.0, expect="ok"),
        Plan("bad-header", items=10, attempts=2, timeout_s=1.0, expect="ok"),
    )
}

_ITEM_PATH = re.compile(r"/items/(\d+)")


def item_of(text: str) -> int:
    """The item number in a path, URL or key naming ``/items/<n>``."""
    match = _ITEM_PATH.search(text)
    assert match is not None, f"no /items/<n> in {text!r}"
    return int(match[1])


def check_settled_once(plan: Plan, outcomes: Iterable[tuple[int, bool]]) -> dict[int, bool]:
    """Every item ``0 .. items-1`` has exactly one outcome; return item -> succeeded."""
    listed = list(outcomes)
    seen = Counter(item for item, _ in listed)
    twice = sorted(item for item, n in seen.items() if n > 1)
    assert not twice, f"items settled more than once: {twice}"
    assert sorted(seen) == list(range(plan.items)), f"settled {sorted(seen)}"
    return dict(listed)


def check_outcomes(plan: Plan, ok: dict[int, bool], counts: HostileCounts) -> None:
    """What each item ended as agrees with the plan and with what the server did."""
    assert counts.served_twice() == [], f"served twice: {counts.served_twice()}"
    requests = {item_of(path): n for path, n in counts.requests.items()}
    served = {item_of(path): n for path, n in counts.served.items()}
    refused = {item_of(path): n for path, n in counts.refused.items()}
    never = sorted(set(range(plan.items)) - set(requests))
    assert not never, f"items never requested: {never}"
    over = {item: n for item, n in requests.items() if n > plan.requests_per_item}
    assert not over, f"more requests than {plan.requests_per_item} an item: {over}"
    for item, succeeded in ok.items():
        if succeeded:
            # A 10 MiB answer may be cut short on purpose by a client's size cap.
            assert served.get(item, 0) == 1 or plan.mode == "huge-body", (item, served)
        else:
            assert served.get(item, 0) == 0, f"item {item} failed though it was served"
    failed = sorted(item for item, succeeded in ok.items() if not succeeded)
    if plan.expect == "ok":
        assert failed == [], f"failed: {failed}"
    elif plan.expect == "fail":
        assert failed == list(range(plan.items)), f"succeeded: {set(ok) - set(failed)}"
    elif plan.expect == "one-fails":
        assert sum(refused.values()) == 1, refused
        assert failed == list(refused), f"failed {failed}; the far Retry-After went to {refused}"


def check_no_secret(paths: Iterable[Path], *texts: str) -> None:
    """No secret in any of ``paths`` that exist (bytes, as written) nor in ``texts``."""
    for path in paths:
        if not path.exists():
            continue  # nothing written, nothing leaked
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret!r} written to {path.name}"
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} printed"


def journal_files(directory: Path) -> list[Path]:
    """Every file a journal left in ``directory`` (the database, its WAL and shared memory)."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and ".journal" in p.name)
