"""Opening a face's journal and turning stored outcomes back into results."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from paceline._results import ErrorCode, Failure, Success
from paceline.errors import PacelineError
from paceline.runners.identity import BATCH_ID_META, new_batch_id
from paceline.stores import Codec, Journal, StoredOutcome, fingerprint_of

JournalSpec = str | os.PathLike[str] | Journal | None


class StoredFailure(PacelineError):
    """A failure recorded by an earlier run, restored from the journal (the original exception
    object is gone; its type name and message are kept)."""

    def __init__(self, stored: StoredOutcome) -> None:
        super().__init__(stored.error or "failed in an earlier run")
        self.error_type = stored.error_type
        self.error_code = stored.error_code


def error_code_of(stored: StoredOutcome) -> ErrorCode:
    """The stored error code, or UNKNOWN for one this version does not know."""
    try:
        return ErrorCode(stored.error_code) if stored.error_code else ErrorCode.UNKNOWN
    except ValueError:
        return ErrorCode.UNKNOWN


def restored_result(stored: StoredOutcome) -> Success[Any] | Failure:
    """A ``Result`` for an item an earlier run settled."""
    if stored.success:
        return Success(stored.result)
    return Failure(StoredFailure(stored), error_code_of(stored))


@contextmanager
def opened(
    journal: JournalSpec,
    *,
    operation: Callable[..., Any] | str,
    label: str | None,
    reuse: bool,
    codec: Codec | None,
) -> Iterator[Journal | None]:
    """The journal to use for one batch: a path is opened (and closed — flushed — at the end,
    however the batch ends); a :class:`Journal` the caller opened is flushed but left open."""
    if journal is None:
        yield None
        return
    if isinstance(journal, Journal):
        try:
            yield journal
        finally:
            journal.flush()
        return
    opened_journal = Journal.open(
        journal,
        fingerprint=fingerprint_of(operation, label),
        label=label,
        reuse=reuse,
        codec=codec,
    )
    try:
        yield opened_journal
    finally:
        opened_journal.close()


def journal_options(
    store: Journal | None,
    key_of: Callable[[int, Any], str],
    retry_failed: bool,
    restore: Callable[[int, Any, StoredOutcome], Any],
) -> dict[str, Any]:
    """The journal part of a face's run options (nothing without a journal), the batch's
    identity included: the items' stable keys stay the same when the batch resumes."""
    if store is None:
        return {}
    return {
        "journal": store,
        "key_of": key_of,
        "retry_failed": retry_failed,
        "restore": restore,
        "batch_id": batch_id_of(store),
    }


def batch_id_of(store: Journal) -> str:
    """The batch identity kept in ``store`` (made and committed on its first run), from which
    the items' stable keys are derived (see :mod:`paceline.runners.identity`)."""
    batch_id = store.get_meta(BATCH_ID_META)
    if batch_id is None:
        batch_id = new_batch_id()
        store.set_meta(BATCH_ID_META, batch_id)
    return batch_id
