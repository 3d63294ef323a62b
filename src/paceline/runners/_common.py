"""Pieces both runners share: worker-count choice and how an item's outcome becomes a result."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from paceline.errors import InvalidArgument, InvalidArgumentType
from paceline.policy.adaptive import AdaptiveController, AdaptiveSettings

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")

ProgressCallback = Callable[[int, "int | None"], None]
"""``on_progress(completed, total)``: called once per settled item, never two at once;
``total`` is ``None`` when the input's length is unknown."""

Workers = int | Literal["auto"] | None

# "auto" starts from the machine and the batch size; the adaptive controller
# moves it from there. I/O-bound work wants several workers per core (the stdlib's
# ThreadPoolExecutor uses cpu+4, other pools 2x cpu); 32 is where a thread pool's own overhead
# and the risk of stampeding an API we know nothing about start to dominate.
AUTO_WORKERS_PER_CPU = 4
AUTO_WORKERS_MIN = 8
AUTO_WORKERS_MAX = 32


def auto_workers(batch_size: int | None, cpu_count: int | None = None) -> int:
    """The starting worker count for ``"auto"``: never more than the batch, grows with it.

    >>> auto_workers(5, cpu_count=2), auto_workers(100, cpu_count=2), auto_workers(None, 16)
    (5, 8, 32)
    """
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 2)
    per_machine = max(AUTO_WORKERS_MIN, min(AUTO_WORKERS_MAX, cpus * AUTO_WORKERS_PER_CPU))
    if batch_size is None:
        return per_machine
    return max(1, min(batch_size, per_machine))


def resolve_workers(
    workers: Workers, batch_size: int | None, *, name: str = "max_workers"
) -> int | None:
    """Turn ``None | int | "auto"`` into ``None`` (sequential) or a worker count."""
    if workers is None:
        return None
    if workers == "auto":
        return auto_workers(batch_size)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgument(
            f"{name}={workers!r}: use None (one at a time), a whole number of at least 1, or 'auto'"
        )
    return workers


def sized_length(items: Any) -> int | None:
    """``len(items)`` for sized inputs, ``None`` for lazy ones."""
    try:
        return len(items)
    except TypeError:
        return None


def controller_for(
    adaptive: object, default: AdaptiveSettings | None = None
) -> AdaptiveController | None:
    """The adaptive controller ``adaptive=`` asks for — the one reading of it for every runner
    and face: ``None``/``False`` none, ``True`` one with ``default`` settings (the
    controller's own when not given), settings a new one, a controller itself.

    >>> controller_for(None), controller_for(True).settings.initial_concurrency > 0
    (None, True)
    """
    if adaptive is None or adaptive is False:
        return None
    if adaptive is True:
        adaptive = default if default is not None else AdaptiveSettings()
    if isinstance(adaptive, AdaptiveSettings):
        return AdaptiveController(adaptive)
    if isinstance(adaptive, AdaptiveController):
        return adaptive
    raise InvalidArgumentType(
        f"adaptive={adaptive!r}: pass True, paceline.AdaptiveSettings(...) or an AdaptiveController"
    )
