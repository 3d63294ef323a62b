"""Run ONE measurement and print its figures as one JSON line (the harness's child process).

    python measure.py W1 paceline [--quick]

Prints ``{"ok": true, "figures": {...}}`` or ``{"ok": false, "error": "..."}``; a wrong
answer is reported as an error, never as a number.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import find
from workloads.common import Sizes, WrongAnswer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload")
    parser.add_argument("tool")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    args = parser.parse_args(argv)
    _, tool = find(args.workload, args.tool)
    try:
        figures = tool.run(Sizes(quick=args.quick))
    except WrongAnswer as exc:
        out = {"ok": False, "error": f"wrong answer: {exc}"}
    except Exception as exc:
        traceback.print_exc()
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    else:
        out = {"ok": True, "figures": figures}
    sys.stdout.flush()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
