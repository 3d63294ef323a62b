"""Runners: where the waiting happens. They drive the policy objects with real time, threads
and event loops, and never decide anything the policy layer can decide.

The faces and the command line use the names below; the runner modules themselves
(``async_runner``, ``thread_runner``, ``settle``...) are what the faces build on."""

from paceline.runners._common import (
    ProgressCallback,
    Workers,
    auto_workers,
    controller_for,
    resolve_workers,
    sized_length,
)

__all__ = [
    "ProgressCallback",
    "Workers",
    "auto_workers",
    "controller_for",
    "resolve_workers",
    "sized_length",
]
