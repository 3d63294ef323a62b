"""The journal's one writer thread: drains a queue of encoded rows into SQLite in batches.

The recording thread only appends tuples to a ``deque`` (atomic, no lock) and pokes the writer
when a batch is due; the writer pops what is there and commits it. Two counters, read together
under a lock, make ``flush`` exact: rows taken from the queue so far plus rows still in it is
the number that must be committed before everything recorded until now is.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from paceline.stores._errors import JournalError

__all__ = ["Writer"]

# Row shapes, told apart by their length. The success shapes hold no None (see NULL_FLOAT in
# _codec: binding None costs ~0.5 us, an adapter lookup) and leave the error columns to SQL
# literals; the native one leaves kind to a literal too. Failures take the general shape.
NATIVE_ROW = 5  # (seq, key, result, attempts, duration_s): kind NATIVE
SUCCESS_ROW = 6  # (seq, key, kind, result, attempts, duration_s)
GENERAL_ROW = 10  # (seq, key, success, kind, result, error, error_type, error_code, attempts, dur)
_COLUMNS = (
    "seq, key, success, kind, result, error, error_type, error_code, attempts, duration_s, "
    "updated_ns"
)
_SELECT = {  # column1...: the row's values; the one ? is the commit time (updated_ns)
    NATIVE_ROW: "column1, column2, 1, 1, column3, NULL, NULL, NULL, column4, column5, ?",
    SUCCESS_ROW: "column1, column2, 1, column3, column4, NULL, NULL, NULL, column5, column6, ?",
    GENERAL_ROW: "column1, column2, column3, column4, column5, column6, column7, column8, "
    "column9, column10, ?",
}
# Rows go in as multi-row INSERTs, INSERT ... SELECT ... FROM (VALUES (?, ...), ...), each its
# own (autocommit) transaction. Against executemany (one sqlite3_step per row) that is ~3x less
# time per row, and the GIL is released for a whole statement's SQLite work, not a row's, so
# commits can run beside the recording thread. Plain "?" keeps preparing linear (numbered
# "?NNN" made it quadratic: 4096 rows took 0.5 s). Per row, statements of 1024-2048 rows cost
# least (measured: 64 rows 1.2 us, 256 0.8, 1024-2048 0.57, 4096 0.8). A run of rows is cut
# into powers of two, the last piece padded with copies of its last row (INSERT OR REPLACE
# makes them no-ops), so at most a dozen statements per shape are ever prepared.
# SQLite before 3.32 takes at most 999 parameters per statement (since: 32766).
_MAX_ROWS_PER_STATEMENT = 2048 if sqlite3.sqlite_version_info >= (3, 32, 0) else 64
# If the writer falls this many batches behind, record() blocks until it has caught up.
BACKLOG_BATCHES = 10
# How often a thread blocked on the writer re-checks that the writer is still alive.
_POLL_S = 0.1


def _statement(shape: int, rows: int) -> str:
    values = ",".join(["(" + ",".join("?" * shape) + ")"] * rows)
    return (
        f"INSERT OR REPLACE INTO items ({_COLUMNS}) SELECT {_SELECT[shape]} FROM (VALUES {values})"
    )


def _pieces(rows: int) -> Iterator[tuple[int, int]]:
    """``(rows taken, statement size)`` pairs covering ``rows``: powers of two, the last one
    padded when that wastes at most half of what it holds."""
    while rows:
        size = min(1 << (rows - 1).bit_length(), _MAX_ROWS_PER_STATEMENT)
        if size - rows > rows // 2:
            size >>= 1
        taken = min(size, rows)
        yield taken, size
        rows -= taken


class Writer:
    """Owns the write connection and the thread that uses it. See the module docstring."""

    __slots__ = (
        "_committed",
        "_conn",
        "_interval_s",
        "_path",
        "_progress",
        "_statements",
        "_stopping",
        "_taken",
        "_thread",
        "_wake",
        "check_at",
        "error",
        "flush_rows",
        "listener",
        "max_rows",
        "queue",
    )

    def __init__(
        self, conn: sqlite3.Connection, path: Path, flush_interval_s: float, flush_rows: int
    ) -> None:
        self._conn = conn
        self._path = path
        self._interval_s = flush_interval_s
        self.flush_rows = flush_rows
        self.max_rows = flush_rows * BACKLOG_BATCHES
        self.queue: deque[tuple[Any, ...]] = deque()
        # record() calls pressure() once the queue is this long.
        self.check_at = flush_rows
        # Set (to a JournalError) once the journal takes no more records: the writer failed,
        # or the journal was closed. record() checks it first thing.
        self.error: JournalError | None = None
        self._statements: dict[tuple[int, int], str] = {}
        self._wake = threading.Event()
        self._progress = threading.Condition(threading.Lock())
        self._taken = 0  # rows popped from the queue, ever
        self._committed = 0  # rows committed, ever
        self._stopping = False
        # Called (from the writer thread, no argument) after each commit; must not block.
        self.listener: Callable[[], None] | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"paceline-journal-writer:{path.name}", daemon=True
        )
        self._thread.start()

    # -- called from other threads -------------------------------------------------------

    def pressure(self) -> None:
        """Called by record() when the queue reaches ``check_at``: wake the writer, and block
        while it is more than ``BACKLOG_BATCHES`` batches behind."""
        queued = len(self.queue)
        if queued >= self.flush_rows:
            self._wake.set()
        if queued >= self.max_rows:
            with self._progress:
                while len(self.queue) >= self.flush_rows and self._alive():
                    self._progress.wait(_POLL_S)
        # Next call once another batch is due (the writer resets this when it takes the queue).
        self.check_at = len(self.queue) + self.flush_rows

    def flush(self) -> None:
        """Block until everything queued before this call is committed (or the writer failed)."""
        with self._progress:
            target = self._taken + len(self.queue)
            if self._committed >= target:
                return
            self._wake.set()
            while self._committed < target and self._alive():
                self._progress.wait(_POLL_S)

    def recorded(self) -> int:
        """Rows recorded so far, ever: everything until now is committed once
        :meth:`committed` reaches it."""
        with self._progress:
            return self._taken + len(self.queue)

    def committed(self) -> int:
        """Rows committed so far, ever."""
        return self._committed

    def stop(self) -> None:
        """Commit what is queued, stop the thread and close the connection. Idempotent."""
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self._interval_s)
                self._wake.clear()
                stopping = self._stopping
                self._drain()
                if stopping:
                    break
        except BaseException as exc:  # surfaced by the next record/flush/close
            self.error = JournalError(
                f"journal {self._path}: committing outcomes failed ({type(exc).__name__}: "
                f"{exc}); outcomes recorded since the last commit are not in the journal and "
                f"will run again on resume"
            )
            self.error.__cause__ = exc
        finally:
            with self._progress:
                self._progress.notify_all()
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

    def _drain(self) -> None:
        queue = self.queue
        while queue:
            with self._progress:
                count = min(len(queue), self.max_rows)
                rows = list(itertools.starmap(queue.popleft, itertools.repeat((), count)))
                self._taken += count
            self.check_at = self.flush_rows
            self._commit(rows)
            with self._progress:
                self._committed += count
                self._progress.notify_all()
            listener = self.listener
            if listener is not None:
                # A listener's failure (its event loop closed) is not the journal's failure.
                with contextlib.suppress(Exception):
                    listener()

    def _commit(self, rows: list[tuple[Any, ...]]) -> None:
        now = time.time_ns()
        if len(set(map(len, rows))) == 1:
            self._insert(len(rows[0]), rows, now)
        else:
            for shape, run in itertools.groupby(rows, len):
                self._insert(shape, list(run), now)

    def _insert(self, shape: int, rows: list[tuple[Any, ...]], now: int) -> None:
        execute = self._conn.execute
        start = 0
        for taken, size in _pieces(len(rows)):
            piece = rows[start : start + taken]
            start += taken
            piece += [piece[-1]] * (size - taken)
            sql = self._statements.get((shape, size))
            if sql is None:
                sql = self._statements[shape, size] = _statement(shape, size)
            params: list[Any] = [now]
            params.extend(itertools.chain.from_iterable(piece))
            execute(sql, params)
