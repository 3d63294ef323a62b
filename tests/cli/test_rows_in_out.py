"""Rows in, rows out (issue 13, item 6): a JSON Lines request's own fields go with its result
to --out, --include-input picks input columns to write, and --body-per-line sends each row
as the body (the OpenAI cookbook's format), against the test API's LLM mode."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from paceline.testing.api_server import ApiConfig, ApiServer, LlmConfig
from tests.cli._command import paceline

CHAT = "/v1/chat/completions"
LLM = LlmConfig(requests_per_min=60_000, tokens_per_min=6_000_000)  # never binding


def _body(text: str) -> dict[str, object]:
    return {"model": "t", "messages": [{"role": "user", "content": text}], "max_tokens": 20}


def test_extra_fields_of_a_request_row_are_written_with_its_result(tmp_path: Path) -> None:
    rows = [
        {"id": f"r{n}", "url": CHAT, "method": "POST", "json": _body("hi"), "metadata": {"n": n}}
        for n in range(3)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ApiServer(ApiConfig(base_latency_s=0, llm=LLM)) as server:
        done = paceline("http", "in.jsonl", "--base-url", server.url, "--journal", "none",
                        "--out", "out.jsonl", "-q", cwd=tmp_path)  # fmt: skip
        as_csv = paceline("http", "in.jsonl", "--base-url", server.url, "--journal", "none",
                          "--out", "out.csv", "-q", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {line["id"]: line["input"] for line in lines} == {
        f"r{n}": {"metadata": {"n": n}} for n in range(3)
    }
    assert all(line["ok"] for line in lines)
    assert as_csv.returncode == 0, as_csv.stderr
    with (tmp_path / "out.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert sorted(json.loads(row["input"])["metadata"]["n"] for row in table) == [0, 1, 2]


def test_include_input_writes_the_chosen_columns(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,name,team\n1,ada,a\n2,bob,b\n")
    with ApiServer(ApiConfig(base_latency_s=0)) as server:
        done = paceline("http", "in.csv", "--url", server.url + "/items/{id}",
                        "--include-input", "name,team", "--journal", "none",
                        "--out", "out.jsonl", "-q", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(line["input"]["name"] for line in lines) == ["ada", "bob"]
    assert all(set(line["input"]) == {"name", "team"} for line in lines)


def test_body_per_line_posts_each_row_to_the_url(tmp_path: Path) -> None:
    rows = [{**_body(f"hello {n}"), "metadata": {"row": n}} for n in range(4)]
    rows.append(rows[0] | {"metadata": {"row": 99}})  # the same body, another row: kept apart
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ApiServer(ApiConfig(base_latency_s=0, llm=LLM)) as server:
        done = paceline("http", "in.jsonl", "--body-per-line", "--url", server.url + CHAT,
                        "--journal", "none", "--out", "out.jsonl", "-q", cwd=tmp_path)  # fmt: skip
        answered = server.stats()["llm"]["requests_answered"]
    assert done.returncode == 0, done.stderr
    assert answered == 5
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(line["input"]["metadata"]["row"] for line in lines) == [0, 1, 2, 3, 99]
    assert all(line["result"]["body"]["object"] == "chat.completion" for line in lines)


def test_body_per_line_needs_a_url(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(json.dumps(_body("hi")) + "\n")
    done = paceline("http", "in.jsonl", "--body-per-line", "--journal", "none", cwd=tmp_path)
    assert done.returncode == 2
    assert "--body-per-line" in done.stderr
    assert "--url" in done.stderr
