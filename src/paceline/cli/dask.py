"""``--dask``: a CLI batch run on a Dask cluster (docs/design.md, "Dask runner", "The CLI").

``--dask tcp://scheduler:8786`` connects to a running cluster; ``--dask local:N`` starts a
``LocalCluster`` of N worker processes for the run and stops it after. The driver (this
process) reads the input, keeps the journal, ``--out``, the progress and the summary; the
workers run the items. The operation cannot travel as it is (a thread pool, a closure over the
run's metrics): each worker rebuilds it from the run's spec (:class:`OnWorker`), so a ``call``
target's module must be importable there — with ``local:N`` the workers get this process's
``sys.path`` and the current directory; on a remote cluster, install the module on every worker
(or put it on their ``PYTHONPATH``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from paceline.cli.ops import BadInputRow, CallOperation, ExecOperation, Item, Operation
from paceline.cli.spec import RunSpec, UsageError
from paceline.runners.identity import CURRENT, new_batch_id

# Items a chunk runs at once on its worker when -j is auto: the adaptive controller does not
# run on a cluster (it would need every worker's answers), so a fixed count stands in; 8 keeps a
# worker's event loop busy for I/O-bound calls without flooding a --rate (which still applies).
DASK_CONCURRENCY = 8
LOCAL_PREFIX = "local:"
# Worker processes of --dask local:N at most: more than a few per core only adds start time.
MAX_LOCAL_WORKERS = 64
# Dask's own periodic work, leaner on the cluster of --dask local:N (no dashboard reads it):
# the workers' statistical profiler samples every thread's stack every 10 ms, the event-loop
# tick every 20 ms and the system monitor every 0.5 s. Measured with 2 idle worker processes
# on this 2-core machine: 0.26 s of CPU in 5 s with Dask's defaults, 0.06 s with these; the
# driver's process (scheduler, nannies, client) 0.13-0.18 s -> 0.07 s. A CPU-bound batch
# gets that CPU back. A remote cluster keeps its own settings.
LEAN_LOCAL_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",  # only warns of a blocked loop: 0.5 s is ample
    "distributed.admin.system-monitor.interval": "2s",  # the dashboard's plots; none here
}


def parse_dask(value: str) -> tuple[str, int | None]:
    """``("local", N)`` or ``(address, None)``; a :class:`UsageError` naming the forms.

    >>> parse_dask("local:2"), parse_dask("tcp://10.0.0.5:8786")
    (('local', 2), ('tcp://10.0.0.5:8786', None))
    """
    hint = (
        "give tcp://host:8786 (a running scheduler) or local:N (N worker processes, e.g. local:2)"
    )
    if value.startswith(LOCAL_PREFIX):
        count = value[len(LOCAL_PREFIX) :]
        if not count.isdigit() or not 1 <= int(count) <= MAX_LOCAL_WORKERS:
            raise UsageError(
                f"--dask {value!r}: local:N needs N from 1 to {MAX_LOCAL_WORKERS}; {hint}"
            )
        return "local", int(count)
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("tcp", "tls", "ucx", "inproc", "ws", "wss") or not rest:
        raise UsageError(f"--dask {value!r}: not a scheduler address; {hint}")
    return value, None


def check_dask(spec: RunSpec, operation: Operation) -> None:
    """Refuse, in one line naming the fix, what a run on Dask cannot honour."""
    assert spec.dask is not None
    parse_dask(spec.dask)
    if spec.command not in ("http", "call", "exec"):
        raise UsageError(f"--dask runs paceline http, call and exec, not {spec.command}")
    if spec.command == "http" and not spec.rates:
        # Adaptive control finds a server's rate from every answer at once, which a cluster's
        # workers do not share: the user's --rate is the pace (docs/design.md, "The CLI").
        raise UsageError(
            "paceline http --dask needs --rate (e.g. --rate 50/s): finding the server's rate "
            "on its own (adaptive control) does not run on a cluster"
        )
    if spec.counts_costs() or spec.budget_caps() or getattr(operation, "row_costs", False):
        raise UsageError(
            "--dask does not count costs (--cost, budget --halt caps, rows with a cost): drop "
            "them, or run without --dask"
        )
    if spec.keep_order:
        raise UsageError(
            "--dask writes results as they settle: drop --keep-order (each result names its item)"
        )


@contextlib.contextmanager
def dask_client(value: str) -> Iterator[Any]:
    """A ``distributed.Client`` for ``--dask`` (a LocalCluster started and stopped for it)."""
    address, workers = parse_dask(value)
    try:
        import distributed
    except ImportError:
        raise UsageError("--dask needs dask distributed: pip install 'paceline[dask]'") from None
    dask: Any = distributed  # untyped: its calls are checked by the tests
    if workers is not None:
        import dask as dask_config  # comes with distributed

        # One thread a worker: a chunk runs its items on the worker's event loop (and a sync
        # call target on that loop's threads), so more Dask threads would only split chunks.
        lean: Any = dask_config.config.set(LEAN_LOCAL_CLUSTER)  # the workers inherit it
        with lean:
            cluster = dask.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                # No dashboard; the scheduler's HTTP endpoints (health, metrics) on a free port:
                # None means 8787, and a second run (or any Dask) there made it print a warning.
                dashboard_address=":0",
                scheduler_kwargs={"dashboard": False},
                # The in-process scheduler's and the nannies' logs would tear through the progress
                # line (workers stopping at a Ctrl-C, a lost actor); what matters reaches the
                # summary: failed items, a lost cluster, a chunk its worker could not run.
                silence_logs=logging.CRITICAL,
            )
        try:
            # Not ``with Client(...)``: that sets a context variable, and the CLI opens and
            # closes the client from different threads (each with a context of its own).
            client = dask.Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()
        return
    try:
        client = dask.Client(address, timeout="10s")
    except OSError as exc:
        raise UsageError(f"--dask {value}: cannot reach the scheduler ({exc})") from None
    try:
        yield client
    finally:
        client.close()


@dataclass
class OnWorker:
    """The CLI's operation, rebuilt on each worker from the run's spec (it pickles; the
    operation itself holds a thread pool). ``path`` is the driver's ``sys.path`` and working
    directory, put in front on the worker so a ``call`` target imports there as here.
    ``batch_id`` is the journal's: each attempt's ``current_item_key()`` (exec's ``{_key}``)
    is then the one a local run of the batch gives the item."""

    spec: RunSpec
    workers: int
    batch_id: str = field(default_factory=new_batch_id)
    path: list[str] = field(default_factory=lambda: [os.getcwd(), *sys.path])
    _operation: Operation | None = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "workers": self.workers,
            "batch_id": self.batch_id,
            "path": self.path,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec, self.workers, self.path = state["spec"], state["workers"], state["path"]
        self.batch_id = state["batch_id"]
        self._operation = None

    def operation(self) -> Operation:
        if self._operation is None:
            for entry in reversed(self.path):
                if entry not in sys.path and os.path.isdir(entry):
                    sys.path.insert(0, entry)
            if self.spec.command == "call":
                self._operation = CallOperation(self.spec, self.workers)
            else:
                self._operation = ExecOperation(self.spec)
        return self._operation

    async def __call__(self, item: Item) -> Any:
        if item.bad is not None:
            raise BadInputRow(item.bad)
        # The item's own identity (the chunk's runner knows only its position in the chunk).
        CURRENT.set(ItemIdentity(self.batch_id, item.key, item.line))
        return await self.operation().run(item.payload)


@dataclass(slots=True)
class ItemIdentity:
    """What :data:`~paceline.runners.identity.CURRENT` holds for an attempt on a worker."""

    batch_id: str
    key: str | None
    index: int


__all__ = [
    "DASK_CONCURRENCY",
    "ItemIdentity",
    "OnWorker",
    "check_dask",
    "dask_client",
    "parse_dask",
]
