"""A read-only view of a journal: for reports on a batch, finished or still running.

Unlike :meth:`Journal.open`, :meth:`JournalView.open` needs no fingerprint, adopts nothing and
takes no lock: a batch may hold the journal open in this or another process meanwhile (WAL
lets readers and the writer work side by side). The view opens the file read-only; SQLite may
still create the journal's empty -wal/-shm side files next to it, which belong to the journal.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from paceline.errors import InvalidArgumentType
from paceline.stores import _file, _schema
from paceline.stores._codec import decode_result
from paceline.stores._errors import JournalCorrupt, JournalError
from paceline.stores.journal import StoredOutcome, paged_outcomes

__all__ = ["JournalView"]


class JournalView:
    """An existing journal, opened read-only.

    >>> import tempfile, os
    >>> from paceline.stores import Journal
    >>> path = os.path.join(tempfile.mkdtemp(), "batch.journal")
    >>> with Journal.open(path, fingerprint="f00d", label="users") as journal:
    ...     journal.record("i:1", success=True, result={"id": 1})
    ...     journal.record("i:2", success=False, error=TimeoutError("slow"))
    >>> with JournalView.open(path) as view:
    ...     view.label, view.counts()
    ...     [(o.key, o.success, o.result, o.error) for o in view.outcomes()]
    ('users', {'succeeded': 1, 'failed': 1})
    [('i:1', True, {'id': 1}, None), ('i:2', False, None, 'slow')]
    """

    __slots__ = ("_conn", "meta", "path")
    path: Path
    meta: dict[str, str]  # every meta entry: journal.* (ours) and the runner's (cli.* ...)
    _conn: sqlite3.Connection

    def __init__(self) -> None:
        raise InvalidArgumentType("use JournalView.open(path)")

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> JournalView:
        """Open the journal at ``path`` for reading.

        Raises :class:`JournalError` if there is no file at ``path`` or it cannot be read, and
        :class:`JournalCorrupt` if it is not an intact journal of a format this version reads.
        """
        path = Path(os.fspath(path)).absolute()
        if not path.exists():
            raise JournalError(
                f"journal {path} does not exist; pass the path of an existing journal (the "
                f"--journal of a batch)"
            )
        _file.check_file(path)
        conn = None
        try:
            try:
                conn = _connect(path, immutable=False)
                meta = _schema.validate(conn, path)
            except sqlite3.OperationalError:
                # No -shm/-wal and no right to create them (a read-only directory or file):
                # then no batch is writing it either, and it can be read as a plain file.
                if conn is not None:
                    conn.close()
                    conn = None
                if Path(f"{path}-wal").exists():
                    raise
                conn = _connect(path, immutable=True)
                meta = _schema.validate(conn, path)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.OperationalError):
                raise JournalError(
                    f"journal {path} cannot be opened for reading ({exc}); check that this "
                    f"user can read it and its directory"
                ) from exc
            if isinstance(exc, sqlite3.DatabaseError):
                raise _file.corrupt(path, f"is damaged or not a paceline journal ({exc})") from exc
            raise
        self = object.__new__(cls)
        self.path = path
        self.meta = meta
        self._conn = conn
        return self

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the batch the journal belongs to."""
        return self.meta.get(_schema.META_PREFIX + "fingerprint", "")

    @property
    def label(self) -> str | None:
        """The batch's label, or ``None`` if it has none."""
        return self.meta.get(_schema.META_PREFIX + "label") or None

    def counts(self) -> dict[str, int]:
        """``{"succeeded": n, "failed": n}`` over every item in the journal."""
        rows = self._query("SELECT success, count(*) FROM items GROUP BY success", ())
        by_success = {bool(success): count for success, count in rows}
        return {"succeeded": by_success.get(True, 0), "failed": by_success.get(False, 0)}

    def outcomes(self) -> Iterator[StoredOutcome]:
        """Every stored outcome in first-recorded order, results decoded as JSON (a journal
        written with a custom codec yields the codec's JSON-ready data)."""
        return paged_outcomes(self._query, self._outcome)

    def samples(self) -> list[dict[str, Any]]:
        """The run timeline (see :meth:`Journal.add_sample`) in the order it was written;
        empty if the journal has none."""
        if not self._query(_schema.HAS_TIMELINE_SQL, ()):
            return []
        return _schema.decode_samples(self._query(_schema.SELECT_SAMPLES_SQL, ()), self.path)

    def close(self) -> None:
        """Close the file. Idempotent."""
        self._conn.close()

    def __enter__(self) -> JournalView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<JournalView {str(self.path)!r} fingerprint={self.fingerprint!r}>"

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            rows: list[Any] = self._conn.execute(sql, params).fetchall()
            return rows
        except sqlite3.ProgrammingError as exc:  # closed
            raise JournalError(f"journal view of {self.path} is closed ({exc})") from exc
        except sqlite3.OperationalError as exc:  # I/O error
            raise JournalError(f"journal {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise _file.corrupt(self.path, f"is damaged ({exc})") from exc

    def _outcome(self, row: tuple[Any, ...]) -> StoredOutcome:
        key, success, kind, value, error, error_type, error_code, attempts, duration_s = row
        try:
            result = decode_result(kind, value, None)
        except JournalCorrupt as exc:
            raise JournalCorrupt(f"journal {self.path}, item {key!r}: {exc}") from exc
        return StoredOutcome(
            key, bool(success), result, error, error_type, error_code, attempts, duration_s
        )


def _connect(path: Path, *, immutable: bool) -> sqlite3.Connection:
    uri = path.as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn
