"""The ``paceline`` command line. Needs the ``cli`` extra: ``pip install 'paceline[cli,http]'``.

``main()`` is the console script's entry point; it returns the exit code.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TextIO

__all__ = ["main"]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/paceline


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print a warning raised by paceline itself as one line for the command line's user
    ("paceline: warning: 12 % of the cluster's slots came back late ..."), not as Python's
    "file:line: RuntimeWarning: ..." with a line of paceline's source under it; warnings of
    other packages keep Python's format.

    >>> import io; out = io.StringIO()
    >>> show_warning(RuntimeWarning("slow"), RuntimeWarning, str(_PACKAGE_DIR / "x.py"), 1, out)
    >>> print(out.getvalue(), end="")
    paceline: warning: slow
    """
    out = file if file is not None else sys.stderr
    if Path(filename).resolve().is_relative_to(_PACKAGE_DIR):
        out.write(f"paceline: warning: {message}\n")
    else:  # as Python's own showwarning writes it
        out.write(warnings.formatwarning(message, category, filename, lineno, line))


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
    shown, warnings.showwarning = warnings.showwarning, show_warning
    try:
        app(args=argv, prog_name="paceline", standalone_mode=True)
    except SystemExit as exc:  # typer ends with one: our exit code, or 2 for bad usage
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:  # before or after a batch (a batch handles its own)
        print("paceline: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return 0
