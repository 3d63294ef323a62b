"""The ``paceline`` command line. Needs the ``cli`` extra: ``pip install 'paceline[cli,http]'``.

``main()`` is the console script's entry point; it returns the exit code.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the ``paceline`` command with ``argv`` (default: the process's arguments)."""
    try:
        from paceline.cli.app import app
    except ImportError as exc:  # pragma: no cover - depends on the environment
        print(
            f"paceline: the command line needs its extra ({exc.name} is missing): "
            "pip install 'paceline[cli,http]'",
            file=sys.stderr,
        )
        return 2
    try:
        app(args=argv, prog_name="paceline", standalone_mode=True)
    except SystemExit as exc:  # typer ends with one: our exit code, or 2 for bad usage
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:  # before or after a batch (a batch handles its own)
        print("paceline: interrupted", file=sys.stderr)
        return 130
    return 0
