"""The journal: a batch's outcomes in one SQLite file, so an interrupted batch resumes.

Resume skips what is done and returns the stored results in place; ``retry_failed`` reruns only
the failures. Delivery is at-least-once: an item whose outcome was not yet committed when the
process died runs again; nothing committed runs twice or is lost.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from paceline.errors import InvalidArgument, InvalidArgumentType
from paceline.stores import _file, _schema
from paceline.stores._codec import (
    I64_MAX,
    I64_MIN,
    NULL_FLOAT,
    Codec,
    JsonCodec,
    checked_key,
    decode_result,
    general_row,
)
from paceline.stores._errors import JournalCorrupt, JournalError
from paceline.stores._writer import BACKLOG_BATCHES, Writer

__all__ = ["Journal", "StoredOutcome"]

# Flags in the in-memory index, whose values are ``seq << 2 | flags``.
_SUCCESS = 1
_THIS_RUN = 2  # recorded by this Journal object; maybe not committed yet
_OUTCOME_COLUMNS = "key, success, kind, result, error, error_type, error_code, attempts, duration_s"
_PAGE_ROWS = 500


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    """One item's outcome as the journal holds it.

    >>> StoredOutcome("i:1", True, 42, None, None, None, 1, 0.12).result
    42
    """

    key: str
    success: bool
    result: Any  # decoded (through the journal's codec, if any)
    error: str | None  # the exception's message, redacted
    error_type: str | None  # the exception's class name
    error_code: str | None  # an ErrorCode value
    attempts: int
    duration_s: float | None


class Journal:
    """Outcomes of a batch's items, kept in a SQLite file so an interrupted batch can resume.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "batch.journal")
    >>> with Journal.open(path, fingerprint="f00d") as journal:
    ...     journal.record("i:1", success=True, result={"id": 1})
    ...     journal.record("i:2", success=False, error=TimeoutError("slow"))
    >>> with Journal.open(path, fingerprint="f00d") as journal:  # the next run
    ...     journal.is_settled("i:1"), journal.is_settled("i:2", retry_failed=True)
    ...     journal.lookup("i:1").result
    (True, False)
    {'id': 1}

    ``record`` is cheap: it encodes in the caller and queues (~0.6 us for a small int or
    str result); one background thread commits every ``flush_interval_s`` seconds or
    ``flush_rows`` rows, whichever comes first. If that thread falls more than ten batches
    behind, ``record`` waits for it, so memory stays bounded. The journal also keeps every
    key in memory (``is_settled`` answers from there): ~150 bytes a key.

    Threads: call ``record`` from one thread at a time (the one settling items); ``flush``,
    ``close``, ``lookup``, ``counts``, ``failed_keys``, ``outcomes``, the meta methods and the
    timeline's (``add_sample``, ``samples``) may be called from any thread. Outcomes recorded
    while another thread is closing the journal may not be committed; they run again on resume.

    A failure of the writer thread (disk full, the file damaged or made unwritable) is raised
    as :class:`JournalError` by the next ``record``, ``flush`` or ``close``. The -wal and -shm
    files next to the journal belong to it: copy or move the three together, or close the
    journal first.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_codec",
        "_conn",
        "_finalizer",
        "_has_timeline",
        "_index",
        "_lock",
        "_next_seq",
        "_queue",
        "_writer",
        "fingerprint",
        "label",
        "path",
    )
    path: Path
    fingerprint: str
    label: str | None
    _closed: bool
    _codec: Codec | None
    _conn: sqlite3.Connection
    _finalizer: weakref.finalize[..., Journal]
    _has_timeline: bool
    _index: dict[str, int]
    _lock: threading.Lock
    _next_seq: int
    _queue: deque[Any]
    _writer: Writer

    def __init__(self) -> None:
        raise InvalidArgumentType("use Journal.open(path, fingerprint=...)")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        fingerprint: str,
        label: str | None = None,
        reuse: bool = False,
        codec: Codec | None = None,
        flush_interval_s: float = 0.05,
        flush_rows: int = 1000,
        max_uncommitted_rows: int | None = None,
    ) -> Journal:
        """Open the journal at ``path``, creating it (and its directory) if missing.

        ``fingerprint`` identifies the batch (see :func:`fingerprint_of`): a journal written
        with another raises :class:`JournalMismatch`, unless ``reuse=True`` adopts it.
        ``label`` is shown in that error. ``codec`` turns results that are not JSON-ready
        into JSON-ready data and back (see :class:`Codec`). ``flush_interval_s`` (seconds) and
        ``flush_rows`` (rows) bound how long an outcome waits in memory before its commit.
        Recording blocks while ``max_uncommitted_rows`` outcomes wait for their commit (default
        ten batches of ``flush_rows``: a slow disk slows the batch instead of growing memory);
        what a crash can lose beyond the attempts in flight is at most that many.

        Raises :class:`JournalCorrupt` if ``path`` is not an intact journal of a format this
        version reads, and :class:`JournalError` if another open journal holds it.
        """
        if not flush_interval_s > 0:
            raise InvalidArgument(f"flush_interval_s={flush_interval_s!r}: must be > 0 seconds")
        if isinstance(flush_rows, bool) or not isinstance(flush_rows, int) or flush_rows < 1:
            raise InvalidArgument(
                f"flush_rows={flush_rows!r}: must be a whole number of at least 1"
            )
        if max_uncommitted_rows is None:
            max_uncommitted_rows = flush_rows * BACKLOG_BATCHES
        elif max_uncommitted_rows < 1:
            raise InvalidArgument(
                f"max_uncommitted_rows={max_uncommitted_rows!r}: must be at least 1"
            )
        path = Path(os.fspath(path)).absolute()
        opened = _schema.open_database(path, fingerprint, label, reuse)
        try:
            index = {
                key: seq << 2 | (_SUCCESS if success else 0)
                for key, seq, success in opened.reader.execute(
                    "SELECT key, seq, success FROM items ORDER BY seq"
                )
            }
        except sqlite3.DatabaseError as exc:
            _shutdown(None, opened)
            raise JournalCorrupt(
                f"journal {path} is damaged: reading its items failed ({exc}). If it is a "
                f"journal from an interrupted batch, restore it from a backup; otherwise delete "
                f"it to start the batch over, or pass a different --journal path."
            ) from exc
        self = object.__new__(cls)
        self.path = path
        self.fingerprint = fingerprint
        self.label = label
        self._codec = None if codec is None or type(codec) is JsonCodec else codec
        self._conn = opened.reader
        self._lock = threading.Lock()
        self._index = index
        self._next_seq = max((state >> 2 for state in index.values()), default=0) + 1
        self._writer = Writer(
            opened.writer, path, flush_interval_s, flush_rows, max_uncommitted_rows
        )
        self._queue = self._writer.queue
        self._closed = False
        self._has_timeline = False  # not known yet: made by the first add_sample
        # Closes the journal if it is dropped unclosed, and at interpreter exit (Ctrl-C
        # included): the writer commits what was recorded. Holds no reference to self.
        self._finalizer = weakref.finalize(self, _shutdown, self._writer, opened)
        return self

    @staticmethod
    def delete(path: str | os.PathLike[str]) -> None:
        """Delete the journal at ``path`` with its -wal and -shm files (nothing to do if there
        is none). Raises :class:`JournalError` if an open journal, in this or another process,
        holds it: a batch still writing it would go on, and both would run every item.

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "batch.journal")
        >>> journal = Journal.open(path, fingerprint="f00d")
        >>> Journal.delete(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        paceline.stores._errors.JournalError: journal ... is in use by another open Journal ...
        >>> journal.close()
        >>> Journal.delete(path)
        >>> os.path.exists(path)
        False
        """
        _file.remove(Path(os.fspath(path)).absolute())

    # -- the hot path ----------------------------------------------------------------------

    def record(
        self,
        key: str,
        *,
        success: bool,
        result: Any = None,
        error: BaseException | None = None,
        attempts: int = 1,
        duration_s: float | None = None,
    ) -> None:
        """Record an item's outcome, replacing any earlier one for ``key`` (which keeps its
        place in :meth:`outcomes`). Returns once queued; :meth:`flush` waits for the commit.

        Raises :class:`JournalEncodeError` if ``result`` is not JSON-ready and the journal has
        no codec for it, and :class:`JournalError` if an earlier commit failed.
        """
        writer = self._writer
        if writer.error is not None or key.__class__ is not str or not key.isascii():
            key = self._checked_key(key)
        # The fast path: a small native result (most results: ids, counts, status strings).
        if success and error is None and self._codec is None:
            cls = result.__class__
            if (
                (cls is int and I64_MIN <= result <= I64_MAX)
                or (cls is str and result.isascii())
                or (cls is float and result == result)
            ):
                seq = self._next_seq
                state = self._index.setdefault(key, seq << 2 | 3)
                if state >> 2 == seq:  # a new key: it takes the next seq
                    self._next_seq = seq + 1
                else:  # recorded before: keep its seq, so its place in outcomes()
                    seq = state >> 2
                    self._index[key] = state | 3
                queue = self._queue
                queue.append(
                    (seq, key, result, attempts, NULL_FLOAT if duration_s is None else duration_s)
                )
                if len(queue) >= writer.check_at:
                    writer.pressure()
                return
        self._record_other(key, success, result, error, attempts, duration_s)

    def _record_other(
        self,
        key: str,
        success: bool,
        result: Any,
        error: BaseException | None,
        attempts: int,
        duration_s: float | None,
    ) -> None:
        index = self._index
        known = index.get(key)
        seq = self._next_seq if known is None else known >> 2
        row = general_row(seq, key, success, result, error, attempts, duration_s, self._codec)
        if known is None:
            self._next_seq = seq + 1
        index[key] = seq << 2 | (3 if success else 2)
        queue = self._queue
        queue.append(row)
        if len(queue) >= self._writer.check_at:
            self._writer.pressure()

    def _checked_key(self, key: object) -> str:
        if self._writer.error is not None:
            raise self._unusable()
        return checked_key(key)

    # -- reading ---------------------------------------------------------------------------

    def is_settled(self, key: str, *, retry_failed: bool = False) -> bool:
        """True if ``key`` has a stored success, or a stored failure and not ``retry_failed``:
        whether a resumed batch should skip the item."""
        state = self._index.get(key)
        return state is not None and (bool(state & _SUCCESS) or not retry_failed)

    def lookup(self, key: str) -> StoredOutcome | None:
        """The stored outcome of ``key``, or ``None`` if it has none."""
        state = self._index.get(key)
        if state is None:
            return None
        if state & _THIS_RUN:
            self.flush()
        rows = self._query(f"SELECT {_OUTCOME_COLUMNS} FROM items WHERE seq = ?", (state >> 2,))
        return self._outcome(rows[0]) if rows else None

    def counts(self) -> dict[str, int]:
        """``{"succeeded": n, "failed": n}`` over every item in the journal."""
        states = list(self._index.copy().values())
        succeeded = sum(state & _SUCCESS for state in states)
        return {"succeeded": succeeded, "failed": len(states) - succeeded}

    def failed_keys(self) -> list[str]:
        """Keys whose stored outcome is a failure, in first-recorded order."""
        return [key for key, state in self._index.copy().items() if not state & _SUCCESS]

    def outcomes(self) -> Iterator[StoredOutcome]:
        """Every stored outcome in first-recorded order (the latest outcome of each key).
        Flushes first; reads in pages, holding no lock between them."""
        self.flush()
        return paged_outcomes(self._query, self._outcome)

    def set_meta(self, key: str, value: str) -> None:
        """Store a small string for the runner (total, operation name ...), committed now."""
        if key.startswith(_schema.META_PREFIX):
            raise InvalidArgument(f"meta key {key!r}: keys starting with 'journal.' are reserved")
        self._query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def get_meta(self, key: str) -> str | None:
        """A value stored with :meth:`set_meta` (or ``journal.*``: format_version,
        fingerprint, label, created_at), or ``None``."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def add_sample(self, sample: Mapping[str, Any]) -> None:
        """Append one sample (a JSON-ready mapping: the CLI's run timeline) to the journal,
        committed now. Raises ``TypeError`` if it is not JSON-ready."""
        text = _schema.encode_sample(sample)
        if not self._has_timeline:
            self._query(_schema.TIMELINE_SCHEMA, ())
            self._has_timeline = True
        self._query(_schema.INSERT_SAMPLE_SQL, (text,))

    def samples(self) -> list[dict[str, Any]]:
        """Every sample stored with :meth:`add_sample`, in the order they were added.

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "batch.journal")
        >>> with Journal.open(path, fingerprint="f00d") as journal:
        ...     journal.samples()
        ...     journal.add_sample({"kind": "tick", "run": 1, "t": 1.5})
        ...     journal.samples()
        []
        [{'kind': 'tick', 'run': 1, 't': 1.5}]
        """
        if not self._has_timeline and not self._query(_schema.HAS_TIMELINE_SQL, ()):
            return []
        return _schema.decode_samples(self._query(_schema.SELECT_SAMPLES_SQL, ()), self.path)

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            if self._closed:
                raise JournalError(f"journal {self.path} is closed")
            try:
                rows: list[Any] = self._conn.execute(sql, params).fetchall()
                return rows
            except sqlite3.OperationalError as exc:  # locked, I/O error
                raise JournalError(f"journal {self.path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise JournalCorrupt(f"journal {self.path} is damaged ({exc})") from exc

    def _outcome(self, row: tuple[Any, ...]) -> StoredOutcome:
        key, success, kind, value, error, error_type, error_code, attempts, duration_s = row
        try:
            result = decode_result(kind, value, self._codec)
        except JournalCorrupt as exc:
            raise JournalCorrupt(f"journal {self.path}, item {key!r}: {exc}") from exc
        return StoredOutcome(
            key, bool(success), result, error, error_type, error_code, attempts, duration_s
        )

    # -- committing and closing ------------------------------------------------------------

    def flush(self) -> None:
        """Block until everything recorded so far is committed to the file."""
        if self._writer.error is not None:
            raise self._unusable()
        self._writer.flush()
        if self._writer.error is not None:
            raise self._unusable()

    def commit_mark(self) -> int:
        """A mark for everything recorded until now: it is all committed to the file once
        :meth:`committed_mark` reaches this number (never blocks; see :meth:`on_commit`).

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "batch.journal")
        >>> with Journal.open(path, fingerprint="f00d") as journal:
        ...     journal.record("i:1", success=True, result=1)
        ...     mark = journal.commit_mark()
        ...     journal.flush()
        ...     journal.committed_mark() >= mark
        True
        """
        return self._writer.recorded()

    def committed_mark(self) -> int:
        """How far commits have got, in the numbers :meth:`commit_mark` hands out."""
        return self._writer.committed()

    def on_commit(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback()`` after each commit, from the journal's writer thread (so it must
        be quick and thread-safe, e.g. ``loop.call_soon_threadsafe``); ``None`` stops it.
        An output that shows an item only once it is committed never shows an item done
        that a crash then runs again."""
        self._writer.listener = callback

    def close(self) -> None:
        """Commit what was recorded, stop the writer thread and close the file. Idempotent.
        Raises :class:`JournalError` if a commit failed."""
        with self._lock:  # no reader query runs while the connection closes
            if self._closed:
                return
            self._closed = True
            failure = self._writer.error
            self._finalizer()  # stops the writer (committing the queue) and closes everything
            failure = failure or self._writer.error
            self._writer.error = JournalError(f"journal {self.path} is closed")
        if failure is not None:
            raise JournalError(str(failure)) from failure.__cause__

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except JournalError as close_error:
            if exc is None:
                raise
            # Do not replace the exception already on its way out; attach this one to it.
            add_note = getattr(exc, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(f"also, closing the journal failed: {close_error}")
            else:
                warnings.warn(f"closing the journal failed: {close_error}", stacklevel=2)

    def _unusable(self) -> JournalError:
        error = self._writer.error
        assert error is not None
        # A fresh exception per raise: raising one instance again and again grows its traceback.
        fresh = JournalError(str(error))
        fresh.__cause__ = error.__cause__
        return fresh

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Journal {str(self.path)!r} fingerprint={self.fingerprint!r} {state}>"


def paged_outcomes(
    query: Callable[[str, tuple[Any, ...]], list[Any]],
    outcome: Callable[[tuple[Any, ...]], StoredOutcome],
) -> Iterator[StoredOutcome]:
    """Every item's outcome in ``seq`` order, read a page at a time (no lock held between
    pages); shared by :class:`Journal` and the read-only view."""
    after = 0
    while True:
        rows = query(
            f"SELECT seq, {_OUTCOME_COLUMNS} FROM items WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, _PAGE_ROWS),
        )
        for row in rows:
            yield outcome(row[1:])
        if len(rows) < _PAGE_ROWS:
            return
        after = rows[-1][0]


def _shutdown(writer: Writer | None, opened: _schema.Opened) -> None:
    try:
        if writer is not None:
            writer.stop()  # commits the queue, closes opened.writer
        else:
            opened.writer.close()
    finally:
        opened.reader.close()
        os.close(opened.lock_fd)
