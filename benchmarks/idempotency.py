"""POSTs whose answers are lost after the server processed them (issue 14): how many objects a
batch creates twice, before and after idempotency keys.

usage: python benchmarks/idempotency.py [--before-src /path/to/old/src] [--n 300] [--drop 0.1]

The test API (this tree's, in its own process) creates an object per ``POST /objects``,
honours ``Idempotency-Key`` and drops the answer of a seeded share of them after creating the
object. Each row runs ``paceline http`` over the same N rows with the given source tree on
``PYTHONPATH``: ``--before-src`` (e.g. a checkout of the commit before this work) with its
defaults, then this tree with its defaults, without keys, and without keys but
``--retry-unsafe``. The server's counts say what happened; the exit code and the failed items
what the client said.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from paceline.testing.api_server import ApiConfig, SpawnedServer

HERE_SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(src: str, url: str, rows: Path, extra: list[str]) -> tuple[int, int]:
    """One CLI run; (exit code, failed items from its --out)."""
    out = rows.with_name("out.jsonl")
    out.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=src)
    argv = [sys.executable, "-m", "paceline", "http", str(rows), "--url", f"{url}/objects"]
    argv += ["--method", "POST", "--json", '{"name": "{name}"}', "-j", "16", "-q"]
    argv += ["--journal", "none", "--out", str(out), *extra]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    failed = 0
    if out.exists():
        for line in out.read_text().splitlines():
            failed += not json.loads(line)["ok"]
    return done.returncode, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", default="/work/main/src", help="the tree to compare")
    parser.add_argument("--n", type=int, default=300, help="POSTs (rows)")
    parser.add_argument("--drop", type=float, default=0.1, help="share dropped after processing")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    config = ApiConfig(post_drop_rate=args.drop, base_latency_s=0.001, seed=args.seed)
    runs = [
        ("before (defaults)", args.before_src, []),
        ("after (defaults)", HERE_SRC, []),
        ("after --no-idempotency-key", HERE_SRC, ["--no-idempotency-key"]),
        (
            "after --no-idempotency-key --retry-unsafe",
            HERE_SRC,
            ["--no-idempotency-key", "--retry-unsafe"],
        ),
    ]
    print(f"{args.n} POSTs, {args.drop:.0%} of answers dropped after processing (seed {args.seed})")
    head = ("run", "exit", "failed", "sent", "created", "twice", "replayed")
    print("{:44} {:>4} {:>6} {:>5} {:>7} {:>5} {:>8}".format(*head))
    with tempfile.TemporaryDirectory() as tmp, SpawnedServer(config) as server:
        rows = Path(tmp) / "tenants.jsonl"
        rows.write_text("".join(json.dumps({"name": f"t{i}"}) + "\n" for i in range(args.n)))
        for label, src, extra in runs:
            server.reset()
            code, failed = run(src, server.url, rows, extra)
            s = server.stats().get("objects", {})
            print(
                f"{label:44} {code:>4} {failed:>6} {s.get('requests', 0):>5} "
                f"{s.get('created', 0):>7} {s.get('duplicates', 0):>5} {s.get('replays', 0):>8}"
            )


if __name__ == "__main__":
    main()
