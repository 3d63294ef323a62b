"""A function that raises paceline.QuotaExhausted (issue 14): no retry, the batch stops
starting items, and a journal leaves the rest for a resume."""

from __future__ import annotations

import asyncio
from pathlib import Path

import paceline
from paceline import ErrorCode, QuotaExhausted


def test_an_exhausted_quota_stops_the_batch_and_a_resume_runs_the_rest(tmp_path: Path) -> None:
    credit = {"left": 5}
    calls: list[int] = []

    async def spend(n: int) -> int:
        calls.append(n)
        if credit["left"] == 0:
            raise QuotaExhausted("out of credit")
        credit["left"] -= 1
        return n

    journal = str(tmp_path / "j.journal")
    first = asyncio.run(
        paceline.batch_execute(
            list(range(40)), spend, max_concurrent=1, retry=5, journal=journal, key=str
        )
    )
    assert [r.is_success for r in first[:5]] == [True] * 5
    assert calls == list(range(6))  # the refusal, never retried, and nothing after it
    assert first[5].error_code is ErrorCode.QUOTA_EXHAUSTED
    credit["left"] = 100  # the quota is back
    calls.clear()
    second = asyncio.run(
        paceline.batch_execute(
            list(range(40)), spend, max_concurrent=1, retry=5, journal=journal, key=str
        )
    )
    assert all(r.is_success for r in second)
    assert calls == list(range(5, 40))  # the refused item too: it was not journaled
