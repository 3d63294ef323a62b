"""``python -m paceline``: for now, the demo batch (``python -m paceline demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``paceline`` command."""
    parser = argparse.ArgumentParser(prog="paceline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run a real batch against an embedded rate-limited API on loopback"
    )
    demo.add_argument("--items", type=int, default=400, help="how many items (default 400)")
    demo.add_argument("--quota", type=int, default=50, help="the server's quota per second")
    demo.add_argument("--workers", type=int, default=8, help="threads (default 8)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from paceline.demo import run_demo

        return run_demo(items=args.items, quota=args.quota, workers=args.workers)
    return 2  # pragma: no cover - argparse refuses unknown commands


if __name__ == "__main__":
    sys.exit(main())
