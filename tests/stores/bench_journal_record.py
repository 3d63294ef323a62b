"""How much ``Journal.record`` costs the thread that settles items (not a test: run it).

    .venv/bin/python tests/stores/bench_journal_record.py [items] [runs]

Records ``items`` small results (ints, then short strs) with the default settings, then
flushes, and reports the cost per item of the recording loop and of the whole thing including
the final flush (the amortized cost: every row committed). Two yardsticks measured in the same
process put the numbers in proportion on this machine: a method that only appends to a list,
with ``record``'s signature, and SQLite inserting the same rows with nothing else around it.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from paceline.stores import Journal
from paceline.stores._file import connect
from paceline.stores._schema import create
from paceline.stores._writer import _statement


class NoOp:
    def __init__(self) -> None:
        self.rows: list[object] = []

    def record(self, key, *, success, result=None, error=None, attempts=1, duration_s=None):
        self.rows.append((key, result))


def per_item_us(seconds: float, items: int) -> float:
    return seconds / items * 1e6


def run_journal(keys: list[str], results: list[object], **options) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal.open(Path(tmp) / "bench.journal", fingerprint="bench", **options)
        record = journal.record
        start = time.perf_counter()
        for key, result in zip(keys, results, strict=True):
            record(key, success=True, result=result, duration_s=0.001)
        recorded = time.perf_counter()
        journal.flush()
        flushed = time.perf_counter()
        journal.close()
        assert journal.counts() == {"succeeded": len(keys), "failed": 0}
    return per_item_us(recorded - start, len(keys)), per_item_us(flushed - start, len(keys))


def run_noop(keys: list[str]) -> float:
    record = NoOp().record
    start = time.perf_counter()
    for n, key in enumerate(keys):
        record(key, success=True, result=n, duration_s=0.001)
    return per_item_us(time.perf_counter() - start, len(keys))


def run_sqlite(keys: list[str]) -> float:
    rows = [(n + 1, key, n, 1, 0.001) for n, key in enumerate(keys)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.journal"
        create(path, "bench", None)
        conn = connect(path)
        sql = _statement(5, 2048)
        conn.execute(sql, [0, *itertools.chain.from_iterable(rows[:2048])])  # prepare once
        conn.execute("DELETE FROM items")
        start = time.perf_counter()
        for first in range(0, len(rows) - 2047, 2048):
            conn.execute(sql, [0, *itertools.chain.from_iterable(rows[first : first + 2048])])
        elapsed = time.perf_counter() - start
        conn.close()
    return per_item_us(elapsed, len(rows) // 2048 * 2048)


def main() -> None:
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    keys = [f"i:{n}" for n in range(items)]
    ints = list(range(items))
    strs = [f"status-{n % 7}" for n in range(items)]
    int_runs = [run_journal(keys, ints) for _ in range(runs)]
    str_runs = [run_journal(keys, strs) for _ in range(runs)]
    # The writer held back until the end: what record() alone costs the calling thread.
    held = [run_journal(keys, ints, flush_interval_s=3600, flush_rows=10**9) for _ in range(runs)]
    noop = [run_noop(keys) for _ in range(runs)]
    sqlite = [run_sqlite(keys) for _ in range(runs)]
    print(f"{items} items, {runs} runs, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print("                                        best   median  (us/item)")
    for name, values in [
        ("int results: recording loop", [r[0] for r in int_runs]),
        ("int results: + final flush (amortized)", [r[1] for r in int_runs]),
        ("str results: recording loop", [r[0] for r in str_runs]),
        ("str results: + final flush (amortized)", [r[1] for r in str_runs]),
        ("int results, writer held: record alone", [r[0] for r in held]),
        ("yardstick: no-op method, same call", noop),
        ("yardstick: bare SQLite insert", sqlite),
    ]:
        print(f"{name:38s} {min(values):6.2f}  {statistics.median(values):6.2f}")


if __name__ == "__main__":
    main()
