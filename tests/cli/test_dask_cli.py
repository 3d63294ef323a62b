"""``paceline call|exec --dask``: the batch on a LocalCluster of worker processes (``local:2``),
the journal, --out and the summary on this side; a batch run on Dask resumes locally and the
other way round."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from tests.cli._command import paceline

# The dask extra (in dev): with CI set a missing one fails the run instead of skipping it.
if "CI" in os.environ:
    importlib.import_module("distributed")
else:
    pytest.importorskip("distributed")

WORK = """\
def double(row):
    return {"n": int(row["n"]) * 2}
"""


def _rows(path: Path, start: int, stop: int, *, header: bool) -> None:
    lines = (["n"] if header else []) + [str(n) for n in range(start, stop)]
    with path.open("a") as out:
        out.write("\n".join(lines) + "\n")


def _journaled(journal: Path) -> list[str]:
    from paceline.stores.view import JournalView

    with JournalView.open(journal) as stored:
        return [outcome.key for outcome in stored.outcomes()]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "work.py").write_text(WORK)
    return tmp_path


def test_call_on_a_local_cluster_journals_every_item_once_and_writes_out(work: Path) -> None:
    _rows(work / "in.csv", 0, 120, header=True)
    done = paceline(
        "call", "work:double", "in.csv", "--dask", "local:2", "--journal", "j.journal",
        "--out", "out.jsonl", "--rate", "1000/s", "-j", "4", cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "every item succeeded (120) (exit 0)" in done.stderr
    results = [json.loads(line) for line in (work / "out.jsonl").read_text().splitlines()]
    assert sorted(r["result"]["n"] for r in results) == [2 * n for n in range(120)]
    keys = _journaled(work / "j.journal")
    assert len(keys) == 120
    assert len(set(keys)) == 120


def test_a_dask_batch_resumes_locally_and_a_local_one_on_dask(work: Path) -> None:
    source = work / "in.csv"
    _rows(source, 0, 50, header=True)
    first = paceline(
        "call", "work:double", "in.csv", "--dask", "local:2", "--journal", "j.journal",
        cwd=work,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    _rows(source, 50, 80, header=False)  # appended rows: the same batch, 30 items more
    local = paceline("resume", "j.journal", "--out", "a.jsonl", cwd=work)
    assert local.returncode == 0, local.stderr
    assert "80 of 80 input: 80 succeeded" in local.stderr
    _rows(source, 80, 100, header=False)
    again = paceline("resume", "j.journal", "--dask", "local:2", "--out", "b.jsonl", cwd=work)
    assert again.returncode == 0, again.stderr
    keys = _journaled(work / "j.journal")
    assert len(keys) == 100
    assert len(set(keys)) == 100
    written = [json.loads(line) for line in (work / "b.jsonl").read_text().splitlines()]
    assert sorted(r["result"]["n"] for r in written) == [2 * n for n in range(100)]


@pytest.mark.parametrize("value", ["local:0", "foo", "local:x", "tcp://"])
def test_a_bad_dask_value_is_one_line_and_exit_2(work: Path, value: str) -> None:
    _rows(work / "in.csv", 0, 3, header=True)
    done = paceline("call", "work:double", "in.csv", "--dask", value, cwd=work)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"paceline: error: --dask {value!r}")
    assert "local:N" in lines[0]


def test_what_dask_cannot_honour_is_refused_in_one_line(work: Path) -> None:
    _rows(work / "in.csv", 0, 3, header=True)
    done = paceline("call", "work:double", "in.csv", "--dask", "local:1", "-k", cwd=work)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "paceline: error: --dask writes results as they settle: drop --keep-order (each result "
        "names its item)"
    ]


def test_exec_on_a_local_cluster(work: Path) -> None:
    _rows(work / "in.csv", 0, 20, header=True)
    done = paceline(
        "exec", "in.csv", "--dask", "local:2", "--journal", "j.journal", "--out", "out.jsonl",
        "--", "echo", "n={n}", cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in (work / "out.jsonl").read_text().splitlines()]
    assert len(results) == 20
    assert all(r["ok"] for r in results)
    assert len(set(_journaled(work / "j.journal"))) == 20


def test_the_dry_run_says_what_dask_changes(work: Path) -> None:
    _rows(work / "in.csv", 0, 3, header=True)
    done = paceline("call", "work:double", "in.csv", "--dask", "local:2", "--dry-run", cwd=work)
    assert done.returncode == 0, done.stderr
    assert (
        "  cluster:     Dask local:2; no adaptive control (-j auto runs a fixed count per chunk; "
        "give -j N to choose it)" in done.stdout
    )


@pytest.mark.serial  # waits for items to settle at a real rate before the stop
def test_ctrl_c_stops_a_dask_run_resumably(work: Path) -> None:
    import contextlib
    import os
    import signal
    import subprocess
    import time

    from paceline.stores import JournalError
    from tests.cli._command import PACELINE

    _rows(work / "in.csv", 0, 300, header=True)
    run = subprocess.Popen(
        [PACELINE, "call", "work:double", "in.csv", "--dask", "local:2", "--journal",
         "j.journal", "--rate", "60/s", "-q"],
        cwd=work, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    journal = work / "j.journal"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # some items settled: the stop comes mid-run
        with contextlib.suppress(JournalError):  # a journal still being created
            if journal.exists() and len(_journaled(journal)) >= 30:
                break
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    settled = len(_journaled(journal))
    assert 30 <= settled < 300
    again = paceline("resume", "j.journal", cwd=work)
    assert again.returncode == 0, again.stderr
    assert len(set(_journaled(journal))) == 300


def test_exec_key_on_a_cluster_is_the_local_one(work: Path) -> None:
    from paceline.runners.identity import BATCH_ID_META, stable_key
    from paceline.stores.view import JournalView

    _rows(work / "in.csv", 0, 6, header=True)
    done = paceline(
        "exec", "in.csv", "--dask", "local:2", "--journal", "j.journal", "--out", "a.jsonl",
        "--", "echo", "{_key}", cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with JournalView.open(work / "j.journal") as stored:
        batch_id = str(stored.meta[BATCH_ID_META])
    rows = [json.loads(line) for line in (work / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    # the key a local run gives each item: the journal's batch id and the item's key
    assert {row["result"]["stdout"].strip() for row in rows} == {
        stable_key(batch_id, row["id"]) for row in rows
    }


def test_a_quota_exhausted_on_a_worker_stops_the_batch_and_a_plain_resume_finishes_it(
    work: Path,
) -> None:
    back = work / "quota-back"  # the quota is back once this file exists
    (work / "spend.py").write_text(
        "import pathlib\n"
        "from paceline import QuotaExhausted\n"
        "def spend(row):\n"
        f"    if int(row['n']) >= 5 and not pathlib.Path({str(back)!r}).exists():\n"
        "        raise QuotaExhausted('insufficient_quota: the credit is gone')\n"
        "    return {'n': int(row['n'])}\n"
    )
    _rows(work / "in.csv", 0, 60, header=True)
    command = ["--dask", "local:2", "--journal", "j.journal", "-j", "2", "--no-report"]
    done = paceline("call", "spend:spend", "in.csv", *command, cwd=work)
    assert done.returncode == 3, done.stderr
    assert "stopped: a quota is exhausted" in done.stderr
    assert "continue with: paceline resume j.journal\n" in done.stderr
    # items 0-4 ran before the first refusal; the ones it failed are left for the resume
    assert len(_journaled(work / "j.journal")) == 5
    back.touch()
    again = paceline("resume", "j.journal", "--dask", "local:2", "--out", "o.jsonl", cwd=work)
    assert again.returncode == 0, again.stderr
    assert len(set(_journaled(work / "j.journal"))) == 60
    written = [json.loads(line) for line in (work / "o.jsonl").read_text().splitlines()]
    assert sum(1 for row in written if row.get("restored")) == 5


def test_local_workers_run_without_dasks_profiler(work: Path) -> None:
    # Dask's statistical profiler samples every worker thread's stack every 10 ms; with the
    # tick and the system monitor it took 0.26 s of CPU in 5 s from 2 idle workers (0.06 s
    # without): a CPU-bound batch on --dask local:N gets that back.
    (work / "lean.py").write_text(
        "import dask\n"
        "def settings(row):\n"
        "    return {k: dask.config.get(k) for k in (\n"
        "        'distributed.worker.profile.enabled', 'distributed.admin.tick.interval')}\n"
    )
    _rows(work / "in.csv", 0, 2, header=True)
    done = paceline(
        "call", "lean:settings", "in.csv", "--dask", "local:1", "--journal", "none",
        "--out", "out.jsonl", cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = [json.loads(line)["result"] for line in (work / "out.jsonl").read_text().splitlines()]
    assert (
        results
        == [
            {
                "distributed.worker.profile.enabled": False,
                "distributed.admin.tick.interval": "500ms",
            }
        ]
        * 2
    )
