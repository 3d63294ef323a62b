"""``--out``: each item's outcome as a JSON line or a CSV row, as it settles.

>>> import io
>>> from paceline import BatchItemResult
>>> buffer = io.StringIO()
>>> writer = ResultWriter(buffer, "jsonl")
>>> writer.write(BatchItemResult("row-1", True, {"status_code": 200, "body": "ok"}))
>>> print(buffer.getvalue(), end="")  # doctest: +ELLIPSIS
{"id": "row-1", "ok": true, "status": 200, "result": {"status_code": 200, "body": "ok"}, ...}
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO, cast

from paceline import BatchItemResult
from paceline.cli.spec import UsageError
from paceline.errors import PacelineError
from paceline.redact import redact_data
from paceline.stores import Journal

CSV_COLUMNS = ["id", "ok", "status", "error", "error_code", "attempts", "duration_s", "result"]


def _plain(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


def status_of(result: BatchItemResult) -> int | None:
    """The HTTP status (or a command's exit code) of an item, when it has one."""
    if result.success:
        value = _plain(result.result)
        if isinstance(value, dict):
            for name in ("status_code", "exit_code"):
                if isinstance(value.get(name), int):
                    return int(value[name])
        return None
    for name in ("status_code", "exit_code"):
        code = getattr(result.exception, name, None)
        if isinstance(code, int):
            return code
    return None


def record_of(result: BatchItemResult) -> dict[str, Any]:
    """One item as JSON-ready data (credentials masked)."""
    data: dict[str, Any] = {"id": result.item_id, "ok": result.success}
    status = status_of(result)
    if status is not None:
        data["status"] = status
    if result.success:
        data["result"] = redact_data(_plain(result.result))
    else:
        data["error"] = result.error
        data["error_code"] = result.error_code.value if result.error_code else None
    data["attempts"] = result.attempts
    if result.duration_s is not None:
        data["duration_s"] = round(result.duration_s, 6)
    if result.restored:
        data["restored"] = True
    return data


# Results and reports hold response bodies: owner-only, like the journal.
PRIVATE_MODE = 0o600


class OutputClosed(PacelineError):
    """The reader of ``--out -`` went away (``| head``): a normal way to stop reading."""


def refuse_same_file(flag: str, target: str, protected: Mapping[str, Path | None]) -> None:
    """Raise :class:`UsageError` if writing ``target`` would overwrite one of ``protected``
    (``{"the input": path, ...}``): the same path, or the same file by another name.

    >>> import tempfile
    >>> data = Path(tempfile.mkdtemp(), "in.jsonl")
    >>> _ = data.write_text("{}")
    >>> refuse_same_file("--out", str(data), {"the input": data})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.cli.spec.UsageError: --out ...in.jsonl is the input ...: writing it would erase it...
    """
    if target == "-":
        return
    mine = Path(target)
    for what, path in protected.items():
        if path is None:
            continue
        if _same_file(mine, path):
            raise UsageError(
                f"{flag} {target} is {what} ({path}): writing it would erase it; "
                f"give {flag} another file name"
            )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def open_private(target: str, *, newline: str | None = None) -> TextIO:
    """Open ``target`` for writing (truncated), owner-only (0600) even if it existed."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    with contextlib.suppress(OSError):  # not ours to change (another owner, FAT): write anyway
        os.fchmod(fd, PRIVATE_MODE)
    return open(fd, "w", encoding="utf-8", newline=newline)


def write_private(target: str, text: str) -> None:
    """Write ``text`` to ``target`` owner-only and atomically: into a temporary file next to it,
    then renamed over it, so a failure midway never leaves it half-written or erased."""
    path = Path(target)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open_private(str(tmp)) as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class ResultWriter:
    """Writes outcomes to a file or stdout (``-``) as JSON Lines or CSV."""

    def __init__(
        self,
        out: TextIO,
        fmt: str,
        *,
        owned: bool = False,
        name: str = "-",
        inputs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.out = out
        self.fmt = fmt
        self.owned = owned
        self.name = name
        self.flush_each = False
        # Input fields to write with each result, by item id (taken once written): an
        # "input" object (JSON Lines) or column (CSV).
        self.inputs = inputs
        columns = [*CSV_COLUMNS, "input"] if inputs is not None else CSV_COLUMNS
        self._csv = csv.DictWriter(out, columns, extrasaction="ignore") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writeheader()

    @classmethod
    def open(cls, target: str, inputs: dict[str, dict[str, Any]] | None = None) -> ResultWriter:
        """``results.jsonl`` / ``results.csv`` / ``-`` (JSON Lines on stdout); ``inputs``: see
        :attr:`inputs`."""
        if target == "-":  # a line per item as it settles, for a pipe that reads as we go
            writer = cls(sys.stdout, "jsonl", inputs=inputs)
            writer.flush_each = True
            return writer
        fmt = "csv" if target.lower().endswith((".csv", ".tsv")) else "jsonl"
        try:
            handle = open_private(target, newline="" if fmt == "csv" else None)
        except OSError as exc:
            raise UsageError(f"--out {target!r}: cannot write it ({exc.strerror})") from None
        return cls(handle, fmt, owned=True, name=target, inputs=inputs)

    def write(self, result: BatchItemResult) -> None:
        """Write one item's outcome. Raises :class:`OutputClosed` when the reader of stdout
        went away, and :class:`UsageError` when the file cannot be written (disk full)."""
        data = record_of(result)
        if self.inputs:
            given = self.inputs.pop(result.item_id, None)
            if given is not None:
                data["input"] = redact_data(given)
        with self._guard():
            if self._csv is None:
                self.out.write(json.dumps(data, default=repr, ensure_ascii=False) + "\n")
                if self.flush_each:
                    self.out.flush()
                return
            row = dict(data)
            for column in ("result", "input"):
                if column in row:
                    row[column] = json.dumps(row[column], default=repr, ensure_ascii=False)
            self._csv.writerow(row)

    def close(self) -> None:
        """Flush, and close a file this writer opened (errors as in :meth:`write`)."""
        try:
            with self._guard():
                self.out.flush()
        finally:
            if self.owned:
                with contextlib.suppress(OSError):
                    self.out.close()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            raise OutputClosed from None
        except OSError as exc:
            raise UsageError(
                f"--out {self.name}: cannot write it ({exc.strerror or exc})"
            ) from None


class CommittedOutput:
    """Writes each result once the journal has committed it (at once without a journal), so
    what the output shows as done never runs again after a crash. Writing happens in a task of
    its own, woken by the journal's commits; :meth:`finish` writes the rest after the batch.

    >>> import asyncio, io
    >>> from paceline import BatchItemResult
    >>> buffer = io.StringIO()
    >>> output = CommittedOutput(ResultWriter(buffer, "jsonl"), None)
    >>> output.add(BatchItemResult("row-1", True, 42))
    >>> output.finish()
    >>> buffer.getvalue().count("row-1")
    1
    """

    def __init__(self, writer: ResultWriter, journal: Journal | None) -> None:
        self.writer = writer
        self.journal = journal
        self.pending: deque[tuple[int, BatchItemResult]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, on_error: Callable[[BaseException], None]) -> None:
        """Start writing as commits happen; ``on_error(exc)`` if writing fails
        (:class:`OutputClosed`, :class:`UsageError`), after which nothing more is written."""
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        if self.journal is not None:

            def committed() -> None:  # on the journal's writer thread
                loop.call_soon_threadsafe(wake.set)

            self.journal.on_commit(committed)
        self._task = loop.create_task(self._run())

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                on_error(cast(BaseException, task.exception()))

        self._task.add_done_callback(done)

    def add(self, result: BatchItemResult) -> None:
        """Queue ``result``; it is written once everything recorded until now is committed."""
        mark = self.journal.commit_mark() if self.journal is not None else 0
        self.pending.append((mark, result))
        if self._wake is not None:
            self._wake.set()

    def release(self) -> None:
        """Write every queued result the journal has committed."""
        committed = self.journal.committed_mark() if self.journal is not None else 0
        pending, write = self.pending, self.writer.write
        while pending and pending[0][0] <= committed:
            write(pending.popleft()[1])

    def stop(self) -> None:
        """Stop the writing task and the journal's notifications (:meth:`finish` still writes)."""
        if self.journal is not None:
            self.journal.on_commit(None)
        if self._task is not None:
            self._task.cancel()

    def finish(self) -> None:
        """After the batch, with the journal flushed: write what is left, and close."""
        self.release()
        self.writer.close()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            self.release()
