"""The journal's file on disk: connection settings, owner-only permissions, an advisory lock,
and the checks that catch a file which is not an intact SQLite database before SQLite does
(SQLite would report those late, or as a bare "file is not a database")."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import sys
from pathlib import Path

from paceline.stores._errors import JournalCorrupt, JournalError

__all__ = [
    "check_file",
    "check_writable",
    "connect",
    "corrupt",
    "lock",
    "remove",
    "tighten_side_files",
]

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SIDE_FILES = ("-wal", "-shm")
# A writer waits this long for another connection's lock (our own reader's set_meta) before
# failing; WAL readers never block it.
_BUSY_TIMEOUT_S = 30.0


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the journal's settings. Autocommit: transactions are explicit."""
    conn = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    # WAL: commits append to the -wal file (no rewrite of the database per commit), and readers
    # (lookup, outcomes) never block the writer thread or wait for it.
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode syncs at checkpoints, not at every commit. A committed transaction
    # survives the process dying in any way (exception, Ctrl-C, SIGKILL, OOM kill): it is in
    # the OS's page cache. A power loss or OS crash may lose the last transactions since the
    # previous checkpoint (never corrupt the file); those items simply run again on resume,
    # which at-least-once delivery allows. FULL would fsync every commit (~ms each).
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def tighten_side_files(path: Path) -> None:
    """chmod 0o600 the -wal/-shm files. SQLite creates them with the database file's mode: a
    journal once opened while it was 0400 leaves a 0400 -shm, which breaks every later open
    (SQLite cannot map it for writing) even after the journal is made writable again; this also
    covers a filesystem or SQLite build that uses another mode. Files not ours stay as they are.
    """
    for suffix in _SIDE_FILES:
        side = Path(f"{path}{suffix}")
        with contextlib.suppress(OSError):
            if side.stat().st_mode & 0o777 != 0o600:
                side.chmod(0o600)


def check_writable(path: Path) -> None:
    """Refuse a journal this process cannot write (its mode, a read-only or immutable file or
    filesystem) before SQLite opens it: SQLite would open it read-only, leave -wal/-shm files
    behind, and fail only at the first write."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        raise JournalError(
            f"journal {path} is read-only ({exc.strerror or exc}); its outcomes are intact. "
            f"Make it writable (chmod u+w {path}, or remount its disk read-write) to continue "
            f"the batch, or pass a different --journal path"
        ) from None


def corrupt(path: Path, problem: str, fix: str | None = None) -> JournalCorrupt:
    fix = fix or (
        "If it is a journal from an interrupted batch, restore it from a backup; otherwise "
        "delete it to start the batch over, or pass a different --journal path"
    )
    return JournalCorrupt(f"journal {path} {problem}. {fix}.")


def check_file(path: Path) -> None:
    """Catch what SQLite would report late or cryptically: empty files, non-SQLite files and
    files cut short (a partial copy, a full disk)."""
    if not path.is_file():
        raise corrupt(path, "is not a regular file", "Pass the path of a journal file")
    size = path.stat().st_size
    if size == 0:
        raise corrupt(path, "is empty (0 bytes): it is not a paceline journal")
    with path.open("rb") as file:
        header = file.read(100)
    if not header.startswith(_SQLITE_MAGIC):
        raise corrupt(
            path,
            f"is not a paceline journal: it is not a SQLite database (it starts with "
            f"{header[:16]!r})",
            "Pass the path of a journal, or a new path to start one",
        )
    if len(header) < 100:
        raise corrupt(path, f"is truncated ({size} bytes, shorter than a SQLite header)")
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return  # the header may describe pages still in the WAL; SQLite recovers them
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    change_counter, pages = struct.unpack(">II", header[24:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    if pages and change_counter == valid_for and size < pages * page_size:
        raise corrupt(
            path,
            f"is truncated: it is {size} bytes, and its header says {pages * page_size} "
            f"({pages} pages of {page_size})",
        )


def remove(path: Path) -> None:
    """Delete the journal at ``path`` and its -wal/-shm files, holding its lock meanwhile:
    :class:`JournalError` if an open journal (of any process) holds it."""
    fd = lock(path) if path.exists() else None
    try:
        for suffix in ("", *_SIDE_FILES):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").unlink()
    except OSError as exc:
        raise JournalError(
            f"journal {path} cannot be deleted ({exc.strerror or exc}); delete it yourself, "
            f"or pass a different --journal path"
        ) from None
    finally:
        if fd is not None:
            os.close(fd)


if sys.platform != "win32":
    import fcntl

    def lock(path: Path) -> int:
        """An exclusive advisory lock held for as long as the journal is open: two runs writing
        one journal would each run the other's items again. Returns the fd to close."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise JournalError(
                f"journal {path} cannot be opened ({exc.strerror or exc}); check that this user "
                f"can read it, or pass a different --journal path"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(
                f"journal {path} is in use by another open Journal (this or another process); "
                f"wait for that batch to finish, or pass a different --journal path"
            ) from None
        return fd

else:  # pragma: no cover - no flock on Windows; SQLite still keeps the file consistent

    def lock(path: Path) -> int:
        """Open ``path`` (Windows: no advisory lock). Returns the fd to close."""
        return os.open(path, os.O_RDONLY)
