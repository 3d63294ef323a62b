"""A real Dask cluster on loopback: ``dask scheduler`` and ``dask worker`` processes. The
scheduler is killed mid-batch; the driver stops with a resumable journal, and the batch
finishes on a new cluster."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The dask extra (in dev): with CI set a missing one fails the run instead of skipping it.
distributed = (
    importlib.import_module("distributed")
    if "CI" in os.environ
    else pytest.importorskip("distributed")
)

from paceline import DaskRunner, batch_execute  # noqa: E402
from paceline.runners.dask_runner import ClusterLost  # noqa: E402
from paceline.stores import Journal, fingerprint_of  # noqa: E402

DASK = str(Path(sys.executable).with_name("dask"))
NO_DASHBOARD = ("--dashboard-address", ":0")  # any free port: never 8787, which may be taken


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def cluster() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A scheduler and one worker process on 127.0.0.1; yields the address and the scheduler."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    # The worker imports this module to run its functions: it gets this process's sys.path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    port = address.rsplit(":", 1)[1]
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", port, *NO_DASHBOARD, "--no-show"],
        **quiet,
    )
    worker = subprocess.Popen(
        [DASK, "worker", address, "--nthreads", "2", "--host", "127.0.0.1", *NO_DASHBOARD],
        **quiet,
    )
    try:
        yield address, scheduler
    finally:
        for process in (worker, scheduler):
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)


async def slow_double(x: int) -> int:
    await asyncio.sleep(0.02)
    return 2 * x


def test_the_scheduler_killed_mid_batch_leaves_a_journal_that_resumes(tmp_path: Path):
    path = tmp_path / "cluster.journal"
    with cluster() as (address, scheduler), distributed.Client(address, timeout=30) as client:
        client.wait_for_workers(1, timeout=30)

        def progress(completed: int, _total: int | None) -> None:
            if completed == 60:
                os.kill(scheduler.pid, signal.SIGKILL)

        with pytest.raises(ClusterLost, match="run the batch again to resume"):
            asyncio.run(
                batch_execute(
                    range(400),
                    slow_double,
                    runner=DaskRunner(client, chunk_items=20),
                    journal=path,
                    on_progress=progress,
                )
            )
    with Journal.open(path, fingerprint=fingerprint_of(slow_double, None)) as journal:
        first_run = journal.counts()
    assert 60 <= first_run["succeeded"] < 400

    with cluster() as (address, _scheduler), distributed.Client(address, timeout=30) as client:
        client.wait_for_workers(1, timeout=30)
        results = asyncio.run(
            batch_execute(range(400), slow_double, runner=DaskRunner(client), journal=path)
        )
    assert [r.value for r in results] == [2 * x for x in range(400)]
