"""The journal's errors: one base class, and one subclass per thing a caller can act on."""

from __future__ import annotations

from paceline.errors import PacelineError

__all__ = ["JournalCorrupt", "JournalEncodeError", "JournalError", "JournalMismatch"]


class JournalError(PacelineError):
    """Base class of the journal's errors; also raised as is when writing outcomes failed
    (disk full, file damaged), the journal is open elsewhere, or it is used after ``close``.

    >>> import tempfile, pathlib
    >>> from paceline.stores import Journal
    >>> path = pathlib.Path(tempfile.mkdtemp(), "b.journal")
    >>> journal = Journal.open(path, fingerprint="f")
    >>> journal.close()
    >>> journal.record("k", success=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.stores._errors.JournalError: journal ... is closed
    """


class JournalMismatch(JournalError):
    """The journal at that path was written for another batch (another fingerprint).

    >>> import tempfile, pathlib
    >>> from paceline.stores import Journal
    >>> path = pathlib.Path(tempfile.mkdtemp(), "b.journal")
    >>> Journal.open(path, fingerprint="aaaa").close()
    >>> Journal.open(path, fingerprint="bbbb")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.stores._errors.JournalMismatch: journal ... belongs to another batch: ...
    """


class JournalCorrupt(JournalError):
    """The file is not a paceline journal, is truncated or damaged, or has a newer format.

    >>> import tempfile, pathlib
    >>> from paceline.stores import Journal
    >>> path = pathlib.Path(tempfile.mkdtemp(), "notes.txt")
    >>> _ = path.write_text("not a journal")
    >>> Journal.open(path, fingerprint="f")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.stores._errors.JournalCorrupt: journal ... is not a paceline journal: ...
    """


class JournalEncodeError(JournalError):
    """A result (or key) cannot be stored as JSON without a codec.

    >>> import tempfile, pathlib
    >>> from paceline.stores import Journal
    >>> with Journal.open(pathlib.Path(tempfile.mkdtemp(), "b"), fingerprint="f") as journal:
    ...     journal.record("k", success=True, result={1, 2})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paceline.stores._errors.JournalEncodeError: result of type 'set' is not JSON-ready: ...
    """
