"""``paceline http`` with a --rate in tokens against the test API's LLM mode: each row's cost
(a JSON Lines "cost", or --cost from CSV columns) is reserved, the answer's usage settles it,
and the server never says 429."""

from __future__ import annotations

import json
from pathlib import Path

from paceline.testing.api_server import ApiConfig, ApiServer, LlmConfig
from tests.cli._command import paceline

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Say hello."}]
ESTIMATE = 9 + 100  # the prompt's 9 tokens and max_tokens: what the server reserves
# 3,000 requests (bucket of 100) and 30,000 tokens (bucket of 1,000) a minute; no limit
# headers, so only --rate keeps the calls inside the buckets (as sliding windows of 2 s).
LLM = LlmConfig(
    requests_per_min=3_000,
    requests_burst=100,
    tokens_per_min=30_000,
    tokens_burst=1_000,
    announce=False,
)
RATES = ("--rate", "100/2s", "--rate", "tokens:1000/2s")  # evenly paced: the default


def _body() -> dict[str, object]:
    return {"model": "test", "messages": HELLO, "max_tokens": 100}


def test_jsonl_rows_carry_their_cost(tmp_path: Path) -> None:
    with (tmp_path / "in.jsonl").open("w") as handle:
        for n in range(40):
            row = {"id": f"chat-{n}", "url": CHAT, "method": "POST", "json": _body()}
            handle.write(json.dumps({**row, "cost": {"tokens": ESTIMATE}}) + "\n")
    with ApiServer(ApiConfig(base_latency_s=0, llm=LLM, seed=13)) as server:
        done = paceline(
            "http", "in.jsonl", "--base-url", server.url, *RATES, "-j", "8",
            "--journal", "none", "--out", "out.jsonl", "-q", cwd=tmp_path,
        )  # fmt: skip
        stats = server.stats()["llm"]
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 40
    assert all(r["ok"] and r["status"] == 200 for r in lines)
    assert stats["throttled_429_tokens"] == 0
    assert stats["throttled_429_requests"] == 0
    assert stats["requests_answered"] == 40


def test_csv_rows_with_a_cost_template(tmp_path: Path) -> None:
    rows = ["id,est"] + [f"{n},{ESTIMATE}" for n in range(30)]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    body = json.dumps({"model": "test", "messages": HELLO, "max_tokens": 100, "user": "{id}"})
    with ApiServer(ApiConfig(base_latency_s=0, llm=LLM, seed=13)) as server:
        done = paceline(
            "http", "in.csv", "--url", server.url + CHAT, "--method", "POST", "--json", body,
            "--cost", "tokens={est}", *RATES, "-j", "8", "--journal", "none", "-q",
            cwd=tmp_path,
        )  # fmt: skip
        stats = server.stats()["llm"]
    assert done.returncode == 0, done.stderr
    assert stats["requests_answered"] == 30
    assert stats["throttled_429_tokens"] == 0


def test_a_jsonl_row_without_a_cost_is_a_bad_row_naming_the_fix(tmp_path: Path) -> None:
    # No "cost", and no max_tokens to estimate one from: the answer's size is unbounded.
    body = {"model": "test", "messages": HELLO}
    row = {"id": "chat-0", "url": CHAT, "method": "POST", "json": body}
    (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
    with ApiServer(ApiConfig(base_latency_s=0, llm=LLM)) as server:
        done = paceline(
            "http", "in.jsonl", "--base-url", server.url, *RATES, "--journal", "none", "-q",
            cwd=tmp_path,
        )  # fmt: skip
        answered = server.stats()["llm"]["requests_answered"]
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert 'no "cost" in this row' in done.stderr
    assert answered == 0


def test_jsonl_costs_without_a_tokens_rate_are_limited_by_the_token_headers(
    tmp_path: Path,
) -> None:
    # The limits only in headers (x-ratelimit-*-tokens): 60,000 tokens a minute in a bucket of
    # 2,000; the rows' costs let the headers hold the batch to it.
    llm = LlmConfig(requests_per_min=6_000, tokens_per_min=60_000, tokens_burst=2_000)
    with (tmp_path / "in.jsonl").open("w") as handle:
        for n in range(100):
            row = {"id": f"chat-{n}", "url": CHAT, "method": "POST", "json": _body()}
            handle.write(json.dumps({**row, "cost": {"tokens": ESTIMATE}}) + "\n")
    with ApiServer(ApiConfig(base_latency_s=0.01, llm=llm, seed=13)) as server:
        done = paceline(
            "http", "in.jsonl", "--base-url", server.url, "--journal", "none", "-q",
            cwd=tmp_path,
        )  # fmt: skip
        stats = server.stats()["llm"]
    assert done.returncode == 0, done.stderr
    assert stats["requests_answered"] == 100
    assert stats["throttled_429_tokens"] + stats["throttled_429_requests"] <= 1, stats


def test_a_budget_cap_stops_with_exit_3_and_raising_it_resumes_the_count(tmp_path: Path) -> None:
    llm = LlmConfig(requests_per_min=60_000, tokens_per_min=6_000_000)  # never binding
    with (tmp_path / "in.jsonl").open("w") as handle:
        for n in range(60):
            row = {"id": f"chat-{n}", "url": CHAT, "method": "POST", "json": _body()}
            handle.write(json.dumps(row) + "\n")  # no cost: the usage alone is counted
    args = ("http", "in.jsonl", "--journal", "j.journal", "-j", "2", "-q")
    with ApiServer(ApiConfig(base_latency_s=0, llm=llm, seed=13)) as server:
        first = paceline(*args, "--base-url", server.url, "--halt", "soon,tokens=1000",
                         "--out", "a.jsonl", cwd=tmp_path)  # fmt: skip
        used_first = server.stats()["llm"]["tokens_used"]
        second = paceline(*args, "--base-url", server.url, "--halt", "soon,tokens=2000",
                          "--out", "b.jsonl", cwd=tmp_path)  # fmt: skip
        used_second = server.stats()["llm"]["tokens_used"]
        last = paceline(*args, "--base-url", server.url, "--out", "c.jsonl", cwd=tmp_path)
        answered = server.stats()["llm"]["requests_answered"]
    assert first.returncode == 3, first.stderr
    assert "soon,tokens=1000" in first.stderr
    # It stops soon after the cap: at most the two in flight (about 40 tokens each) past it.
    assert 1000 <= used_first <= 1000 + 2 * 110
    assert second.returncode == 3, second.stderr
    # The second run counts what the first used: together they stop near 2,000, not 3,000.
    assert 2000 <= used_second <= 2000 + 2 * 110
    assert last.returncode == 0, last.stderr
    assert answered == 60  # every row exactly once over the three runs
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 60


def test_rows_without_a_cost_are_estimated_from_their_openai_style_body(tmp_path: Path) -> None:
    with (tmp_path / "in.jsonl").open("w") as handle:
        for n in range(30):
            row = {"id": f"chat-{n}", "url": CHAT, "method": "POST", "json": _body()}
            handle.write(json.dumps(row) + "\n")  # no "cost": prompt / 4 + max_tokens
    with ApiServer(ApiConfig(base_latency_s=0, llm=LLM, seed=13)) as server:
        done = paceline(
            "http", "in.jsonl", "--base-url", server.url, *RATES, "-j", "8",
            "--journal", "none", "-q", cwd=tmp_path,
        )  # fmt: skip
        stats = server.stats()["llm"]
    assert done.returncode == 0, done.stderr
    assert stats["requests_answered"] == 30
    assert stats["throttled_429_tokens"] == 0
    assert stats["tokens_reserved"] == 30 * ESTIMATE  # the estimate is the server's charge
