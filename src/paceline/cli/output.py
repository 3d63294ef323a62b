"""``--out``: each item's outcome as a JSON line or a CSV row, as it settles.

>>> import io
>>> from paceline.results import BatchItemResult
>>> buffer = io.StringIO()
>>> writer = ResultWriter(buffer, "jsonl")
>>> writer.write(BatchItemResult("row-1", True, {"status_code": 200, "body": "ok"}))
>>> print(buffer.getvalue(), end="")  # doctest: +ELLIPSIS
{"id": "row-1", "ok": true, "status": 200, "result": {"status_code": 200, "body": "ok"}, ...}
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Any, TextIO

from paceline.cli.spec import UsageError
from paceline.redact import redact_data
from paceline.results import BatchItemResult

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


class ResultWriter:
    """Writes outcomes to a file or stdout (``-``) as JSON Lines or CSV."""

    def __init__(self, out: TextIO, fmt: str, *, owned: bool = False) -> None:
        self.out = out
        self.fmt = fmt
        self.owned = owned
        self.flush_each = False
        self._csv = (
            csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore") if fmt == "csv" else None
        )
        if self._csv is not None:
            self._csv.writeheader()

    @classmethod
    def open(cls, target: str) -> ResultWriter:
        """``results.jsonl`` / ``results.csv`` / ``-`` (JSON Lines on stdout)."""
        if target == "-":  # a line per item as it settles, for a pipe that reads as we go
            writer = cls(sys.stdout, "jsonl")
            writer.flush_each = True
            return writer
        fmt = "csv" if target.lower().endswith((".csv", ".tsv")) else "jsonl"
        try:
            handle = open(target, "w", encoding="utf-8", newline="" if fmt == "csv" else None)  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"--out {target!r}: cannot write it ({exc.strerror})") from None
        return cls(handle, fmt, owned=True)

    def write(self, result: BatchItemResult) -> None:
        """Write one item's outcome."""
        data = record_of(result)
        if self._csv is None:
            self.out.write(json.dumps(data, default=repr, ensure_ascii=False) + "\n")
            if self.flush_each:
                self.out.flush()
            return
        row = dict(data)
        if "result" in row:
            row["result"] = json.dumps(row["result"], default=repr, ensure_ascii=False)
        self._csv.writerow(row)

    def close(self) -> None:
        """Flush, and close a file this writer opened."""
        self.out.flush()
        if self.owned:
            self.out.close()
