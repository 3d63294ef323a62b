"""Two servers in one batch: A pauses (429 with ``Retry-After``), B takes 50/s. B's share.

Issue 11, item 4: one input interleaving requests to server A (a quota of 50 per 5 s, about
10/s, each 429 asking for a pause of up to 5 s) with requests to server B (50 per 1 s). With
one pause and one controller per batch, A's pauses and 429s held B back: B's 1,000 requests
were served at 0.26 of its quota. With a lane per server, B's requests run at B's pace while
A's queue up. Target: B >= 0.9 of its quota.

The figure is B's requests over the time from B's first to its last accepted request (B's own
clock), as a fraction of B's quota (50/s); B alone (no A in the input) is measured in the
same run, as the ceiling this client reaches against B (the adaptive controller learns B's
limit from its 429s either way). Both servers run in their own processes on loopback.

Measured (2 cores, shared; 1,000 of B's requests): one pause and one controller per batch
0.19 of B's quota (B alone 0.89); a lane per server 0.91 (B alone 0.88, medians of 3), 0.91
with ordered output.

    .venv/bin/python benchmarks/two_servers.py [--b-items 1000] [--reps 3] [--ordered]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from paceline.http import stream_requests
from paceline.testing.api_server import ApiConfig, ApiServer, SpawnedServer

B_RATE_PER_S = 50.0
A_CONFIG = ApiConfig(quota=50, window_s=5.0, retry_after=True, base_latency_s=0.005)
B_CONFIG = ApiConfig(quota=50, window_s=1.0, retry_after=True, base_latency_s=0.005)


async def b_fraction(a_url: str | None, b: SpawnedServer, b_items: int, ordered: bool) -> float:
    """B's requests per second as B saw them arrive (its first to its last accepted), over
    its quota; the batch is cancelled once B has served them all (with ``ordered`` B's last
    results wait for A's before them, so only B's own clock measures B's pace)."""
    requests: list[str] = []
    for n in range(b_items):
        if a_url is not None:
            requests.append(f"{a_url}/items/a{n}")
        requests.append(f"{b.url}/items/b{n}")
    failed = 0

    async def consume() -> None:
        nonlocal failed
        async for result in stream_requests(requests, ordered=ordered):
            if result.item_id.startswith(f"GET {b.url}"):
                failed += not result.success

    batch = asyncio.ensure_future(consume())
    while not batch.done():
        if (await asyncio.to_thread(b.stats))["accepted"] >= b_items:
            break
        await asyncio.sleep(0.2)
    stats = await asyncio.to_thread(b.stats, True)
    if batch.done():
        batch.result()  # the batch's own error, if it failed
    batch.cancel()
    await asyncio.gather(batch, return_exceptions=True)
    assert failed == 0, f"{failed} of B's requests failed"
    times: list[float] = stats["accepted_times_s"]
    assert len(times) == b_items, f"B served {len(times)} of {b_items}"
    return b_items / (times[-1] - times[0] + 1 / B_RATE_PER_S) / B_RATE_PER_S


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--b-items", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ordered", action="store_true", help="results in input order (-k)")
    args = parser.parse_args()
    alone: list[float] = []
    mixed: list[float] = []
    for _ in range(args.reps):
        with ApiServer.spawn(A_CONFIG) as a, ApiServer.spawn(B_CONFIG) as b:
            alone.append(asyncio.run(b_fraction(None, b, args.b_items, args.ordered)))
        with ApiServer.spawn(A_CONFIG) as a, ApiServer.spawn(B_CONFIG) as b:
            mixed.append(asyncio.run(b_fraction(a.url, b, args.b_items, args.ordered)))
    order = "ordered" if args.ordered else "completion order"
    print(f"two servers, {args.b_items} requests to B interleaved with A's ({order}), medians:")
    print(f"  B alone:           {statistics.median(alone):.2f} of its quota  {alone}")
    print(f"  B interleaved w/ A: {statistics.median(mixed):.2f} of its quota  {mixed}")
    print(f"  ratio:             {statistics.median(mixed) / statistics.median(alone):.2f}")


if __name__ == "__main__":
    main()
