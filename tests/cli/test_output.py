"""``--out``: JSON Lines and CSV records of item outcomes, credentials masked."""

from __future__ import annotations

import csv
import io
import json

from paceline._results import BatchItemResult, ErrorCode
from paceline.cli.output import ResultWriter, record_of


class Failed(Exception):
    status_code = 503


def test_csv_rows_have_the_columns_and_json_results() -> None:
    buffer = io.StringIO()
    writer = ResultWriter(buffer, "csv")
    writer.write(BatchItemResult("a", True, {"exit_code": 0, "stdout": "hi\n"}, duration_s=0.5))
    writer.write(
        BatchItemResult(
            "b", False, None, "HTTP 503", Failed("HTTP 503"), ErrorCode.SERVER_ERROR, attempts=3
        )
    )
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["ok"] == "True"
    assert rows[0]["status"] == "0"
    assert json.loads(rows[0]["result"]) == {"exit_code": 0, "stdout": "hi\n"}
    assert rows[1]["status"] == "503"
    assert rows[1]["error_code"] == "server_error"
    assert rows[1]["attempts"] == "3"


def test_credentials_in_results_are_masked() -> None:
    result = BatchItemResult("a", True, {"headers": {"Set-Cookie": "sid=1"}, "status_code": 200})
    record = record_of(result)
    assert record["result"]["headers"]["Set-Cookie"] == "[REDACTED]"
    assert record["status"] == 200
    assert "restored" not in record
