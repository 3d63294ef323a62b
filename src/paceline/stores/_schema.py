"""The journal's layout: the schema, creating a journal (owner-only, atomically), and opening
an existing one: is it a journal, of a format we read, of this batch?

Layout (format 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)       journal.* keys are ours, the rest the runner's
    items(seq INTEGER PRIMARY KEY, key TEXT, success, kind, result, error, error_type,
          error_code, attempts, duration_s, updated_ns)
    timeline(seq INTEGER PRIMARY KEY, sample TEXT)   optional: made by the first add_sample

``seq`` is the rowid: the order in which keys were first recorded. A key's row is rewritten in
place (``INSERT OR REPLACE`` on its ``seq``) when it is recorded again, so it keeps its place.
There is deliberately no index on ``key``: the journal keeps the key -> seq map in memory (it
needs it anyway to answer ``is_settled``), and an index over random keys (hashes) would dirty a
random page per row: measured 5-8x slower commits once the journal outgrows the page cache,
while appends in ``seq`` order touch only the last page.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from paceline.errors import InvalidArgumentType
from paceline.stores import _file
from paceline.stores._errors import JournalError, JournalMismatch

__all__ = [
    "FORMAT_VERSION",
    "META_PREFIX",
    "Opened",
    "create",
    "decode_samples",
    "encode_sample",
    "open_database",
    "read_meta",
]

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

# The run timeline (what the CLI samples about once a second). Made lazily, so journals from
# before it existed stay valid format-1 journals; a journal without it has no samples.
TIMELINE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS timeline (seq INTEGER PRIMARY KEY, sample TEXT NOT NULL)"
)
HAS_TIMELINE_SQL = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'timeline'"
INSERT_SAMPLE_SQL = "INSERT INTO timeline (sample) VALUES (?)"
SELECT_SAMPLES_SQL = "SELECT seq, sample FROM timeline ORDER BY seq"


def encode_sample(sample: Mapping[str, Any]) -> str:
    """A timeline sample as the JSON text stored for it. Raises ``TypeError`` if it is not a
    mapping with str keys of JSON-ready values.

    >>> encode_sample({"kind": "tick", "run": 1, "t": 1.5})
    '{"kind":"tick","run":1,"t":1.5}'
    """
    if not isinstance(sample, Mapping):
        raise InvalidArgumentType(f"a timeline sample is a mapping, not {type(sample).__name__}")
    try:
        return json.dumps(dict(sample), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentType(f"timeline sample {sample!r} is not JSON-ready ({exc})") from exc


def decode_samples(rows: Iterable[tuple[int, str]], path: Path) -> list[dict[str, Any]]:
    """The samples stored in ``rows`` (``seq, sample`` pairs), or :class:`JournalCorrupt`."""
    samples = []
    for seq, text in rows:
        try:
            sample = json.loads(text)
        except (TypeError, ValueError) as exc:
            problem = f"is damaged: timeline sample {seq} is not JSON ({exc})"
            raise _file.corrupt(path, problem) from exc
        if not isinstance(sample, dict):
            raise _file.corrupt(path, f"is damaged: timeline sample {seq} is not an object")
        samples.append(sample)
    return samples


def create(path: Path, fingerprint: str, label: str | None) -> None:
    """Create a journal at ``path``, atomically: build it under a temporary name and link it in,
    so a crash mid-creation never leaves an empty or half-made journal behind. If another
    process created ``path`` first, leave theirs."""
    for directory in reversed([path.parent, *path.parent.parents]):
        if not directory.is_dir():  # every directory made here is owner-only, not just the last
            directory.mkdir(mode=0o700, exist_ok=True)
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


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """Every meta entry (ours under ``journal.``)."""
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def validate(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    """Check the tables and format version of an opened journal; return its meta."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"meta", "items"} <= tables:
        found = ", ".join(sorted(tables)) or "none"
        raise _file.corrupt(
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
        raise _file.corrupt(
            path,
            f"was written by a newer paceline (journal format {version}; this version reads "
            f"format {FORMAT_VERSION} and older)",
            "Upgrade paceline to resume it, or pass a different --journal path",
        )
    if version < 1 or not columns >= ITEM_COLUMNS:
        raise _file.corrupt(
            path,
            f"is not a paceline journal of a known format (format_version {raw_version!r}, "
            f"items columns {sorted(columns)})",
            "Pass the path of a journal, or a new path to start one",
        )
    return meta


class Opened(NamedTuple):
    """What :func:`open_database` hands the journal."""

    reader: sqlite3.Connection
    writer: sqlite3.Connection
    lock_fd: int


def open_database(path: Path, fingerprint: str, label: str | None, reuse: bool) -> Opened:
    """Create the journal if missing, or check the existing one and adopt it (``reuse``) or
    refuse it (another fingerprint); lock it and return two connections. Every failure is a
    :class:`JournalError` naming the path and what to do, never a bare ``sqlite3`` error."""
    if not path.exists():
        try:
            create(path, fingerprint, label)
        except OSError as exc:
            raise JournalError(
                f"journal {path} cannot be created ({exc.strerror or exc}); pass a --journal "
                f"path in a directory this user can write"
            ) from None
    _file.check_file(path)
    lock_fd = _file.lock(path)
    reader = writer = None
    try:
        _file.check_writable(path)
        _file.tighten_side_files(path)  # before SQLite maps them (we hold the lock)
        reader = _file.connect(path)
        meta = validate(reader, path)
        adopt_or_refuse(reader, path, meta, fingerprint, label, reuse)
        writer = _file.connect(path)
        _file.tighten_side_files(path)
    except BaseException as exc:
        for conn in (reader, writer):
            if conn is not None:
                conn.close()
        os.close(lock_fd)
        if isinstance(exc, sqlite3.OperationalError):  # locked, read-only, I/O error
            raise JournalError(
                f"journal {path} cannot be opened for writing ({exc}); check that this user "
                f"can read and write it and its directory, or pass a different --journal path"
            ) from exc
        if isinstance(exc, sqlite3.DatabaseError):
            raise _file.corrupt(path, f"is damaged or not a paceline journal ({exc})") from exc
        raise
    return Opened(reader, writer, lock_fd)


def adopt_or_refuse(
    conn: sqlite3.Connection,
    path: Path,
    meta: dict[str, str],
    fingerprint: str,
    label: str | None,
    reuse: bool,
) -> None:
    """Raise :class:`JournalMismatch` if the journal belongs to another batch, unless ``reuse``:
    then make it this batch's."""
    stored = meta.get(META_PREFIX + "fingerprint", "")
    if stored == fingerprint:
        return
    if not reuse:

        def identity(fp: str, name: str | None) -> str:
            return f"fingerprint {fp} (label {name!r})" if name else f"fingerprint {fp} (no label)"

        stored_label = meta.get(META_PREFIX + "label")
        raise JournalMismatch(
            f"journal {path} belongs to another batch: it holds outcomes of "
            f"{identity(stored, stored_label)}, and this batch is {identity(fingerprint, label)}. "
            f"Use a different journal path, or adopt it with reuse_journal=True (Journal.open: "
            f"reuse=True) — its stored outcomes then count as this batch's."
        )
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [(META_PREFIX + "fingerprint", fingerprint), (META_PREFIX + "label", label or "")],
    )
    conn.execute("COMMIT")
