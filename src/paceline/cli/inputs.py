"""Reading the CLI's INPUT: rows of JSON Lines or CSV, lazily, in bounded memory.

``open_rows(path)`` opens a file (or ``-``, standard input) and returns a :class:`RowSource`;
iterating it yields one :class:`Row` per JSON object or CSV record. A line that cannot be a row
(bad JSON, not an object, wrong number of CSV fields, bytes that are not UTF-8, a line longer
than ``max_line_bytes``) becomes a *bad row*: ``data`` is None and ``error`` says where and what,
so the CLI can stop or record a failure and go on. Blank lines are not rows.

>>> import io
>>> rows = open_rows("-", stdin=io.BytesIO(b'{"id": 1}\\n\\n[2]\\n{"id": 3}'))
>>> rows.format, rows.total
('jsonl', None)
>>> [(row.line, row.data) for row in rows]
[(1, {'id': 1}), (3, None), (4, {'id': 3})]
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any

from paceline.errors import InvalidArgument, InvalidState, PacelineError
from paceline.runners.pump import ThreadPump

__all__ = [
    "CSV_COUNT_MAX_BYTES",
    "MAX_LINE_BYTES",
    "InputError",
    "Row",
    "RowSource",
    "open_rows",
]

# A line longer than this is a bad row (its bytes are skipped, never held): memory stays bounded
# even if the input is one endless line.
MAX_LINE_BYTES = 64 * 1024 * 1024

# ``total`` of a CSV file bigger than this is None: counting means parsing it all (about a
# second per 40 MB), which would delay the start. JSON Lines are counted at any size: that is
# a byte scan (about a second per 600 MB).
CSV_COUNT_MAX_BYTES = 64 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.isspace() means; a line of only these is blank
_BLANK_AFTER_NEWLINE = re.compile(rb"\n(?=[ \t\r\x0b\x0c]*\n)")
_CHUNK = 1024 * 1024
_SKIP = "or pass --on-bad-input skip to record it as a failure and go on"
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_STDIN_NAME = "<stdin>"


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the input: its data, or (a *bad row*) why there is none.

    ``line`` is the 1-based line the row starts on; ``error`` is a one-line message naming the
    source, the line, the problem and the fix.
    """

    line: int
    data: dict[str, Any] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True for a good row (``data`` is set), False for a bad one."""
        return self.data is not None


class InputError(PacelineError):
    """The input as a whole is unusable: missing or unreadable file, no CSV header, unknown
    format. The message names the value and the fix."""


def open_rows(
    path: str,
    fmt: str = "auto",
    *,
    stdin: IO[bytes] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> RowSource:
    """Open ``path`` (``-`` for ``stdin``, default ``sys.stdin.buffer``) as rows.

    ``fmt`` is ``auto``, ``jsonl``, ``csv`` or ``tsv``. ``auto`` goes by the extension
    (``.jsonl``/``.ndjson``/``.json``: JSON Lines; ``.csv``; ``.tsv``: tab-separated CSV) and
    otherwise sniffs: a first non-blank line starting with ``{`` means JSON Lines, anything
    else CSV. A CSV file's delimiter is a tab for ``.tsv`` (or ``tsv``), a comma for ``.csv``,
    and otherwise a tab if the header line has tabs and no commas.

    This reads up to the first non-blank line (CSV: the header) before it returns: on a slow
    pipe, it waits for that line (and opening a FIFO waits for its writer). A line longer
    than ``max_line_bytes`` is a bad row, skipped without being held in memory.

    Raises :class:`InputError` if the file cannot be opened, the format is unknown, or a CSV
    input has no usable header.

    >>> import io
    >>> src = open_rows("-", stdin=io.BytesIO(b"id,name\\n1,Ada\\n"))
    >>> src.format, src.columns, [row.data for row in src]
    ('csv', ['id', 'name'], [{'id': '1', 'name': 'Ada'}])
    """
    if fmt not in ("auto", "jsonl", "csv", "tsv"):
        raise InputError(f"--format {fmt!r}: unknown format — use auto, jsonl or csv")
    if max_line_bytes < 16:
        raise InvalidArgument("max_line_bytes must be at least 16")
    owned = path != "-"
    if owned:
        name = path
        try:
            stream: IO[bytes] = open(path, "rb")  # noqa: SIM115 (the RowSource closes it)
        except FileNotFoundError:
            raise InputError(
                f"{path}: no such file — check the path, or pass - to read standard input"
            ) from None
        except IsADirectoryError:
            raise InputError(
                f"{path}: is a directory — pass a JSON Lines or CSV file, or - for standard input"
            ) from None
        except PermissionError:
            raise InputError(
                f"{path}: permission denied — make the file readable (chmod +r), or pipe it in"
            ) from None
        except OSError as exc:
            raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None
    else:
        name = _STDIN_NAME
        if stdin is None and sys.stdin is None:  # started with fd 0 closed (<&-)
            raise InputError(
                "the input - is stdin, which is closed: pipe the rows in "
                "(... | paceline ... -), or give a file instead of -"
            )
        stream = stdin if stdin is not None else sys.stdin.buffer
    try:
        return RowSource(name, path, stream, owned=owned, fmt=fmt, max_line_bytes=max_line_bytes)
    except BaseException:
        if owned:
            stream.close()
        raise


class _LineTooLong(PacelineError):
    """A line longer than the limit; its bytes were read and dropped."""

    def __init__(self, number: int, blank: bool) -> None:
        super().__init__(number)
        self.number = number
        self.blank = blank


class _Lines:
    """The binary lines of a stream (split on b"\\n" only, endings kept), numbered from 1, with
    a leading UTF-8 BOM dropped and one line of push-back for sniffing."""

    __slots__ = ("_limit", "_pending", "_read", "number")

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._read = stream.readline
        self._limit = limit
        self._pending: tuple[int, bytes | _LineTooLong] | None = None
        self.number = 0  # of the line returned last

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> bytes:
        if self._pending is not None:
            number, item = self._pending
            self._pending = None
            self.number = number
            if isinstance(item, _LineTooLong):
                raise item
            return item
        limit = self._limit
        raw = self._read(limit + 1)
        if not raw:
            raise StopIteration
        self.number += 1
        too_long = len(raw) > limit and not raw.endswith(b"\n")
        if self.number == 1 and raw.startswith(_BOM):
            raw = raw[3:]
        if too_long:
            blank = not raw or raw.isspace()
            while True:  # drop the rest of the line, a piece at a time
                piece = self._read(_CHUNK)
                if not piece:
                    break
                blank = blank and piece.isspace()
                if piece.endswith(b"\n"):
                    break
            raise _LineTooLong(self.number, blank)
        return raw

    def first_nonblank(self) -> bytes | _LineTooLong | None:
        """Read past blank lines; return the first other line (and push it back), or None."""
        while True:
            try:
                raw = next(self)
            except StopIteration:
                return None
            except _LineTooLong as exc:
                if exc.blank:
                    continue
                self._pending = (exc.number, exc)
                self.number = exc.number - 1
                return exc
            if raw and not raw.isspace():
                self._pending = (self.number, raw)
                self.number -= 1
                return raw


class _TextLines:
    """The lines as str, for ``csv.reader``: strict UTF-8, and where that fails,
    ``surrogateescape`` with the first bad byte noted in ``bad`` (the CSV reader then reports
    the record as a bad row)."""

    __slots__ = ("_lines", "bad")

    def __init__(self, lines: _Lines) -> None:
        self._lines = lines
        self.bad: str | None = None

    def __iter__(self) -> _TextLines:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if self.bad is None:
                self.bad = _describe_bad_utf8(raw, exc, self._lines.number)
            return raw.decode("utf-8", "surrogateescape")


def _describe_bad_utf8(raw: bytes, exc: UnicodeDecodeError, line: int | None = None) -> str:
    column = len(raw[: exc.start].decode("utf-8")) + 1
    where = f"line {line}, column {column}" if line is not None else f"column {column}"
    return f"byte 0x{raw[exc.start]:02x} at {where}"


def bad_row_message(name: str, line: int, problem: str, fix: str) -> str:
    return f"{name}:{line}: {problem} — {fix}, {_SKIP}"


def _bad(name: str, line: int, problem: str, fix: str) -> Row:
    return Row(line, None, bad_row_message(name, line, problem, fix))


def _column_list(columns: list[str]) -> str:
    shown = ", ".join(columns[:20])
    return shown + (", …" if len(columns) > 20 else "")


def _csv_error(name: str, start: int, end: int, exc: csv.Error) -> str:
    detail = str(exc)
    if detail == "unexpected end of data":
        problem = (
            f"a quoted field that starts on line {start} is not closed by the end of the input"
        )
        fix = 'close the quote (inside quotes, write "" for a literal ")'
    elif detail.startswith("field larger than field limit"):
        problem = f"a field longer than {csv.field_size_limit()} characters (up to line {end})"
        fix = "check for an unclosed quote"
    elif detail.endswith("expected after '\"'"):
        problem = "text after the closing quote of a quoted field"
        fix = 'quote the whole field (inside quotes, write "" for a literal ")'
    else:
        problem = f"not valid CSV ({detail})"
        fix = "fix the line"
    return bad_row_message(name, start, problem, fix)


def _bad_utf8_fix() -> str:
    return "save the input as UTF-8 (e.g. iconv -f latin1 -t utf-8)"


class RowSource:
    """The rows of one input. Make one with :func:`open_rows`; iterate it once (``for`` or
    ``async for row in source.aiter()``); close it (or use it as a context manager).

    ``name`` is the path as given or ``"<stdin>"``; ``format`` is ``"jsonl"`` or ``"csv"``;
    ``columns`` is the CSV header (None for JSON Lines); ``delimiter`` is the CSV delimiter;
    ``total`` is the number of rows (good and bad) when it is cheap to know exactly, else None.
    """

    name: str
    format: str
    columns: list[str] | None
    delimiter: str | None

    def __init__(
        self, name: str, path: str, stream: IO[bytes], *, owned: bool, fmt: str, max_line_bytes: int
    ) -> None:
        """Internal: call :func:`open_rows`, which opens the stream and checks the arguments."""
        self.name = name
        self.columns = None
        self.delimiter = None
        self._path = path
        self._stream = stream
        self._owned = owned
        self._limit = max_line_bytes
        self._regular = _is_regular(stream)
        self._total: int | None = None
        self._total_known = not (owned and self._regular)  # else total stays None
        self._started = False
        self._closed = False
        self._pump: ThreadPump[Row] | None = None
        self._lines = _Lines(stream, max_line_bytes)
        self._reader: Any = None
        self._text: _TextLines | None = None

        suffix = os.path.splitext(path)[1].lower() if owned else ""
        if fmt == "auto":
            if suffix in _JSONL_SUFFIXES:
                fmt = "jsonl"
            elif suffix in (".csv", ".tsv"):
                fmt = "csv"
            else:
                first = self._read_first(self._lines)
                starts_brace = isinstance(first, bytes) and first.lstrip().startswith(b"{")
                fmt = "jsonl" if first is None or starts_brace else "csv"
        if fmt == "tsv":
            fmt, suffix = "csv", ".tsv"
        self.format = fmt
        if fmt == "csv":
            if suffix == ".tsv":
                self.delimiter = "\t"
            elif suffix == ".csv":
                self.delimiter = ","
            else:
                first = self._read_first(self._lines)
                tabs = isinstance(first, bytes) and b"\t" in first and b"," not in first
                self.delimiter = "\t" if tabs else ","
            self._text = _TextLines(self._lines)
            self._reader = csv.reader(self._text, delimiter=self.delimiter, strict=True)
            self.columns = self._read_header(self._lines, self._text, self._reader)

    def _read_first(self, lines: _Lines) -> bytes | _LineTooLong | None:
        try:
            return lines.first_nonblank()
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read ({exc.strerror or exc})") from None

    def _read_header(self, lines: _Lines, text: _TextLines, reader: Any) -> list[str]:
        name = self.name
        while True:
            text.bad = None
            start = lines.number + 1
            try:
                fields: list[str] = next(reader)
            except StopIteration:
                raise InputError(
                    f"{name}: no CSV header (the input is empty) — the first line must name "
                    "the columns, e.g. id,name"
                ) from None
            except _LineTooLong as exc:
                raise InputError(
                    f"{name}:{exc.number}: the CSV header is longer than {self._limit} bytes — "
                    "the first line must name the columns, e.g. id,name"
                ) from None
            except csv.Error as exc:
                raise InputError(
                    f"{name}:{start}: the CSV header is not valid CSV ({exc}) — "
                    "the first line must name the columns, e.g. id,name"
                ) from None
            except OSError as exc:
                raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
            if fields and not (len(fields) == 1 and not fields[0].strip()):
                break
        if text.bad is not None:
            raise InputError(
                f"{name}:{start}: the CSV header is not valid UTF-8 ({text.bad}) — "
                f"{_bad_utf8_fix()}"
            )
        columns = [field.strip() for field in fields]
        seen: set[str] = set()
        for column in columns:
            if column in seen:
                raise InputError(
                    f"{name}:{start}: column {column!r} appears twice in the CSV header — "
                    "rename one so that each column has its own name"
                )
            seen.add(column)
        return columns

    # -- size ------------------------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """How many rows (good and bad) the input has, or None when unknown.

        Known for regular files: JSON Lines are counted with a byte scan (blank lines
        excluded), CSV files up to ``CSV_COUNT_MAX_BYTES`` by parsing them. Always None for
        standard input, pipes and FIFOs. Computed on first use, in bounded memory.
        """
        if not self._total_known:
            self._total_known = True
            try:
                self._total = self._count()
            except (OSError, InputError):  # the file changed under us: say "unknown"
                self._total = None
        return self._total

    def _count(self) -> int | None:
        if self.format == "jsonl":
            with open(self._path, "rb") as f:
                return _count_jsonl(f)
        if os.path.getsize(self._path) > CSV_COUNT_MAX_BYTES:
            return None
        assert self.columns is not None
        assert self.delimiter is not None
        with open(self._path, "rb") as f:
            lines = _Lines(f, self._limit)
            text = _TextLines(lines)
            reader = csv.reader(text, delimiter=self.delimiter, strict=True)
            self._read_header(lines, text, reader)
            return sum(1 for _ in self._csv_records(lines, text, reader, len(self.columns)))

    @property
    def buffered(self) -> int:
        """Rows read ahead by the background reader of :meth:`aiter` and not yet handed over
        (at most its ``max_buffered``); 0 when there is none."""
        return self._pump.buffered if self._pump is not None else 0

    # -- rows ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Row]:
        """The rows, read lazily (blocking: on a pipe, this waits for each line)."""
        self._start()
        return self._rows()

    def _start(self) -> None:
        if self._closed:
            raise InvalidState(f"{self.name}: the input is closed")
        if self._started:
            raise InvalidState(f"{self.name}: the rows can be read only once")
        self._started = True

    def _rows(self) -> Iterator[Row]:
        rows = self._jsonl_rows() if self.format == "jsonl" else self._csv_rows()
        try:
            yield from rows
        except OSError as exc:
            raise InputError(
                f"{self.name}: read failed after line {self._lines.number} ({exc.strerror or exc})"
            ) from None

    def _jsonl_rows(self) -> Iterator[Row]:
        name = self.name
        lines = self._lines
        loads = json.loads
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except _LineTooLong as exc:
                if not exc.blank:
                    yield _bad(
                        name,
                        exc.number,
                        f"line longer than {self._limit} bytes",
                        "shorten it (the limit keeps memory bounded)",
                    )
                continue
            if not raw or raw.isspace():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _bad(
                    name,
                    lines.number,
                    f"not valid UTF-8 ({_describe_bad_utf8(raw, exc)})",
                    _bad_utf8_fix(),
                )
                continue
            try:
                data = loads(text)
            except ValueError as exc:
                detail = (
                    f"{exc.msg}: column {exc.colno}"
                    if isinstance(exc, json.JSONDecodeError)
                    else str(exc)
                )
                yield _bad(name, lines.number, f"not valid JSON ({detail})", "fix the line")
                continue
            if type(data) is not dict:
                yield _bad(
                    name,
                    lines.number,
                    f"{_json_kind(data)}, not a JSON object",
                    'make each line one JSON object, like {"id": 1}',
                )
                continue
            yield Row(lines.number, data)

    def _csv_rows(self) -> Iterator[Row]:
        assert self.columns is not None
        assert self._text is not None
        columns = self.columns
        for line, fields, error in self._csv_records(
            self._lines, self._text, self._reader, len(columns)
        ):
            if error is not None:
                yield Row(line, None, error)
            else:
                assert fields is not None
                yield Row(line, dict(zip(columns, fields, strict=True)))

    def _csv_records(
        self, lines: _Lines, text: _TextLines, reader: Any, width: int
    ) -> Iterator[tuple[int, list[str] | None, str | None]]:
        """(start line, fields, None) per good record; (start line, None, message) per bad
        one; blank lines skipped. Shared by reading and counting, so that they agree."""
        name = self.name
        sep = "a tab" if self.delimiter == "\t" else "a comma"
        while True:
            text.bad = None
            start = lines.number + 1
            try:
                fields: list[str] = next(reader)
            except StopIteration:
                return
            except _LineTooLong as exc:
                problem = f"line {exc.number} is longer than {self._limit} bytes"
                fix = "split it, or check for an unclosed quote"
                yield start, None, bad_row_message(name, start, problem, fix)
                continue
            except csv.Error as exc:
                yield start, None, _csv_error(name, start, lines.number, exc)
                continue
            if not fields or (width > 1 and len(fields) == 1 and not fields[0].strip()):
                continue
            if text.bad is not None:
                problem = f"not valid UTF-8 ({text.bad})"
                yield start, None, bad_row_message(name, start, problem, _bad_utf8_fix())
            elif len(fields) != width:
                end = lines.number
                problem = (
                    f"{len(fields)} field{'s' if len(fields) != 1 else ''}, but the header "
                    f"has {width} ({_column_list(self.columns or [])})"
                )
                if end > start:
                    problem += f"; this record runs from line {start} to {end}: unclosed quote?"
                fix = f"fix the line (put quotes around a field that contains {sep})"
                yield start, None, bad_row_message(name, start, problem, fix)
            else:
                yield start, fields, None

    async def aiter(self, *, max_buffered: int = 256) -> AsyncIterator[Row]:
        """The rows, for ``async for``, without blocking the event loop.

        A regular file is read inline (yielding to the loop now and then). Standard input, a
        pipe or a FIFO is read on a daemon thread, which hands rows over in batches of whatever
        has arrived (a lone row as soon as it is read) and stops reading while
        ``max_buffered`` rows wait: a slow or endless pipe neither blocks the loop nor fills
        memory.
        """
        if max_buffered < 1:
            raise InvalidArgument("max_buffered must be at least 1")
        self._start()
        rows = self._rows()
        if self._regular:
            for count, row in enumerate(rows, 1):
                yield row
                if count % 64 == 0:
                    await asyncio.sleep(0)
            return
        pump = ThreadPump(rows, asyncio.get_running_loop(), max_buffered, self.name)
        self._pump = pump
        pump.start()
        try:
            while True:
                batch = await pump.take()
                if not batch:
                    return
                for row in batch:
                    yield row
        finally:
            pump.stop()

    def close(self) -> None:
        """Stop reading; close the file if ``open_rows`` opened it. Standard input is left open.
        (A FIFO that a background reader is still blocked on is left to that daemon thread.)"""
        if self._closed:
            return
        self._closed = True
        pump = self._pump
        if pump is None:
            if self._owned:
                self._stream.close()
        else:
            pump.stop(then=self._stream.close if self._owned else None)

    def __enter__(self) -> RowSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RowSource {self.name!r} {self.format}>"


def _is_regular(stream: IO[bytes]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return False


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool) or value is None:
        return f"JSON {json.dumps(value)}"
    return "a JSON number"


def _count_jsonl(f: IO[bytes], chunk_size: int = _CHUNK) -> int:
    """The number of non-blank lines in ``f`` (after a leading BOM), reading it in chunks.

    A line is blank when it has only ASCII whitespace, as for the reader. Lines are counted as
    newlines minus blank ones, with the line that straddles chunks tracked by a flag, so memory
    is one chunk whatever the line lengths.
    """
    count = 0
    current_blank = True  # the line in progress has had only whitespace so far
    first = True
    blank_after = _BLANK_AFTER_NEWLINE.findall
    while chunk := f.read(chunk_size):
        if first:
            first = False
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
            elif len(chunk) < 3 and _BOM.startswith(chunk):
                more = f.read(3 - len(chunk))
                chunk += more
                if chunk.startswith(_BOM):
                    chunk = chunk[3:]
            if not chunk:
                continue
        nl = chunk.find(b"\n")
        if nl < 0:
            current_blank = current_blank and chunk.isspace()
            continue
        # The line in progress ends at nl.
        if not (current_blank and (nl == 0 or chunk[:nl].isspace())):
            count += 1
        # Lines that start and end inside this chunk.
        count += chunk.count(b"\n", nl + 1) - len(blank_after(chunk, nl))
        tail = chunk[chunk.rfind(b"\n") + 1 :]
        current_blank = not tail or tail.isspace()
    if not current_blank:
        count += 1
    return count
