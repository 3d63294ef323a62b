"""The journal's file: creating it (owner-only, atomically), checking that an existing file is
an intact journal of a format we read, and the per-connection settings.

Layout (format 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)       journal.* keys are ours, the rest the runner's
    items(seq INTEGER PRIMARY KEY, key TEXT, success, kind, result, error, error_type,
          error_code, attempts, duration_s, updated_ns)

``seq`` is the rowid: the order in which keys were first recorded. A key's row is rewritten in
place (``INSERT OR REPLACE`` on its ``seq``) when it is recorded again, so it keeps its place.
There is deliberately no index on ``key``: the journal keeps the key -> seq map in memory (it
needs it anyway to answer ``is_settled``), and an index over random keys (hashes) would dirty a
random page per row: measured 5-8x slower commits once the journal outgrows the page cache,
while appends in ``seq`` order touch only the last page.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import sys
import time
from pathlib import Path

from paceline.stores._errors import JournalCorrupt, JournalError

__all__ = ["FORMAT_VERSION", "connect", "create", "lock", "read_meta", "validate"]

FORMAT_VERSION = 1
META_PREFIX = "journal."

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE items (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    success INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    result,
    error TEXT,
    error_type TEXT,
    error_code TEXT,
    attempts INTEGER NOT NULL,
    duration_s REAL,
    updated_ns INTEGER NOT NULL
);
"""
ITEM_COLUMNS = frozenset(
    [
        "seq",
        "key",
        "success",
        "kind",
        "result",
        "error",
        "error_type",
        "error_code",
        "attempts",
        "duration_s",
        "updated_ns",
    ]
)
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
    """chmod 0o600 the -wal/-shm files. SQLite already creates them with the database file's
    mode; this covers a filesystem or SQLite build that does not."""
    for suffix in _SIDE_FILES:
        side = Path(f"{path}{suffix}")
        with contextlib.suppress(OSError):
            if side.stat().st_mode & 0o077:
                side.chmod(0o600)


def create(path: Path, fingerprint: str, label: str | None) -> None:
    """Create a journal at ``path``, atomically: build it under a temporary name and link it in,
    so a crash mid-creation never leaves an empty or half-made journal behind. If another
    process created ``path`` first, leave theirs."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    (META_PREFIX + "format_version", str(FORMAT_VERSION)),
                    (META_PREFIX + "fingerprint", fingerprint),
                    (META_PREFIX + "label", label or ""),
                    (META_PREFIX + "created_at", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
                ],
            )
            conn.execute("PRAGMA journal_mode=WAL")  # recorded in the file header
        finally:
            conn.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _corrupt(path: Path, problem: str, fix: str | None = None) -> JournalCorrupt:
    fix = fix or (
        "If it is a journal from an interrupted batch, restore it from a backup; otherwise "
        "delete it to start the batch over, or pass a different --journal path"
    )
    return JournalCorrupt(f"journal {path} {problem}. {fix}.")


def check_file(path: Path) -> None:
    """Catch what SQLite would report late or cryptically: empty files, non-SQLite files and
    files cut short (a partial copy, a full disk)."""
    if not path.is_file():
        raise _corrupt(path, "is not a regular file", "Pass the path of a journal file")
    size = path.stat().st_size
    if size == 0:
        raise _corrupt(path, "is empty (0 bytes): it is not a paceline journal")
    with path.open("rb") as file:
        header = file.read(100)
    if not header.startswith(_SQLITE_MAGIC):
        raise _corrupt(
            path,
            f"is not a paceline journal: it is not a SQLite database (it starts with "
            f"{header[:16]!r})",
            "Pass the path of a journal, or a new path to start one",
        )
    if len(header) < 100:
        raise _corrupt(path, f"is truncated ({size} bytes, shorter than a SQLite header)")
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return  # the header may describe pages still in the WAL; SQLite recovers them
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    change_counter, pages = struct.unpack(">II", header[24:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    if pages and change_counter == valid_for and size < pages * page_size:
        raise _corrupt(
            path,
            f"is truncated: it is {size} bytes, and its header says {pages * page_size} "
            f"({pages} pages of {page_size})",
        )


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """Every meta entry (ours under ``journal.``)."""
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def validate(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    """Check the tables and format version of an opened journal; return its meta."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"meta", "items"} <= tables:
        found = ", ".join(sorted(tables)) or "none"
        raise _corrupt(
            path,
            f"is a SQLite database but not a paceline journal (tables: {found})",
            "Pass the path of a journal, or a new path to start one",
        )
    columns = {row[1] for row in conn.execute("PRAGMA table_info(items)")}
    meta = read_meta(conn)
    raw_version = meta.get(META_PREFIX + "format_version", "")
    try:
        version = int(raw_version)
    except ValueError:
        version = 0
    if version > FORMAT_VERSION:
        raise _corrupt(
            path,
            f"was written by a newer paceline (journal format {version}; this version reads "
            f"format {FORMAT_VERSION} and older)",
            "Upgrade paceline to resume it, or pass a different --journal path",
        )
    if version < 1 or not columns >= ITEM_COLUMNS:
        raise _corrupt(
            path,
            f"is not a paceline journal of a known format (format_version {raw_version!r}, "
            f"items columns {sorted(columns)})",
            "Pass the path of a journal, or a new path to start one",
        )
    return meta


if sys.platform != "win32":
    import fcntl

    def lock(path: Path) -> int:
        """An exclusive advisory lock held for as long as the journal is open: two runs writing
        one journal would each run the other's items again. Returns the fd to close."""
        fd = os.open(path, os.O_RDONLY)
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
