"""A journaled batch killed (SIGKILL) or interrupted (SIGINT) at random points, resumed each
time: every item ends with exactly one stored result, and nothing durably settled runs again."""

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from paceline.stores import Journal, fingerprint_of, item_key

CHILD = Path(__file__).with_name("crash_child.py")
N = 5000
WORKERS = 8
FLUSH_ROWS = 1000  # the journal's default batch: the most a crash can lose beyond in-flight


def settled_keys(path: Path, face: str) -> set[str]:
    if not path.exists():
        return set()
    operation = "paceline.BatchExecutor" if face == "threads" else "__main__:awork"
    with Journal.open(path, fingerprint=fingerprint_of(operation, "crash-test")) as journal:
        return {o.key for o in journal.outcomes()}


def runs_of(log: Path) -> list[list[int]]:
    runs: list[list[int]] = []
    for line in log.read_text().splitlines():
        if line.startswith("RUN"):
            runs.append([])
        elif line:
            runs[-1].append(int(line))
    return runs


def key_for(face: str, i: int) -> str:
    return item_key(None, item_id=str(i)) if face == "threads" else item_key(i)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("face", ["threads", "async"])
def test_killed_and_interrupted_batches_resume_to_exactly_one_result_each(tmp_path, face):
    journal = tmp_path / "batch.journal"
    log = tmp_path / "exec.log"
    rng = random.Random(20261123)
    signals = [signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGKILL, signal.SIGINT]
    before_each_run: list[set[str]] = []
    stops: dict[int, signal.Signals] = {}  # run number -> the signal that stopped it
    for run, sig in enumerate([*signals, None]):
        before_each_run.append(settled_keys(journal, face))
        child = subprocess.Popen(
            [sys.executable, str(CHILD), face, str(journal), str(log), str(N), str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=CHILD.parent,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "started"
        if sig is None:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            assert "finished" in out
            break
        time.sleep(rng.uniform(0.15, 0.6))
        child.send_signal(sig)
        out, err = child.communicate(timeout=60)
        if child.returncode == 0 or "finished" in out:
            # It finished before the signal: nothing to check for this run. A SIGINT that
            # lands while the interpreter exits (its handlers already reset) ends it with -2.
            continue
        stops[run] = sig
        expected = -signal.SIGKILL if sig == signal.SIGKILL else 130
        assert child.returncode == expected, err
    final = settled_keys(journal, face)
    runs = runs_of(log)

    # every item has exactly one stored result, and it is the right one
    assert final == {key_for(face, i) for i in range(N)}
    operation = "paceline.BatchExecutor" if face == "threads" else "__main__:awork"
    with Journal.open(journal, fingerprint=fingerprint_of(operation, "crash-test")) as store:
        outcomes = list(store.outcomes())
    assert len(outcomes) == N
    assert all(o.success for o in outcomes)
    assert sorted(o.result for o in outcomes) == sorted(i * i for i in range(N))

    # nothing settled before a run started was executed again in it or later
    for k, settled in enumerate(before_each_run):
        later = {key_for(face, i) for run in runs[k:] for i in run}
        assert not settled & later, f"run {k} re-executed settled items"

    # every item ran at least once; the extra executions are bounded per kill
    executions = Counter(i for run in runs for i in run)
    assert set(executions) == set(range(N))
    extra = sum(executions.values()) - N
    kills = sum(1 for s in stops.values() if s == signal.SIGKILL)
    interrupts = len(stops) - kills
    assert extra <= kills * (WORKERS + FLUSH_ROWS) + interrupts * WORKERS
    # An interrupt (SIGINT) flushes the journal. Threads cannot be cancelled: the calls
    # running finish and are settled, so nothing that ran is lost. Async work in flight is
    # cancelled instead: at most the concurrency's worth of items runs again.
    for run, sig in stops.items():
        if sig != signal.SIGINT:
            continue
        unsettled = {key_for(face, i) for i in runs[run]} - before_each_run[run + 1]
        if face == "threads":
            assert not unsettled, "an interrupted thread batch lost completed work"
        else:
            assert len(unsettled) <= WORKERS
