"""The journal's errors: one base class, and one subclass per thing a caller can act on."""

from __future__ import annotations

from paceline.errors import PacelineError

__all__ = ["JournalCorrupt", "JournalEncodeError", "JournalError", "JournalMismatch"]


class JournalError(PacelineError):
    """Base class of the journal's errors; also raised as is when writing outcomes failed
    (disk full, file deleted) or the journal is used after :meth:`~Journal.close`."""


class JournalMismatch(JournalError):
    """The journal at that path was written for another batch (another fingerprint)."""


class JournalCorrupt(JournalError):
    """The file is not a paceline journal, is truncated or damaged, or has a newer format."""


class JournalEncodeError(JournalError):
    """A result (or key) cannot be stored as JSON without a codec."""
