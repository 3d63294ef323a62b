"""Stores: where a batch's state outlives the process.

The :class:`Journal` keeps each item's outcome in a SQLite file, so an interrupted batch
resumes where it stopped:

>>> import tempfile, os
>>> from paceline.stores import Journal, fingerprint_of, item_key
>>> path = os.path.join(tempfile.mkdtemp(), "sync.journal")
>>> with Journal.open(path, fingerprint=fingerprint_of("sync-users")) as journal:
...     journal.record(item_key("ann"), success=True, result=1)
>>> with Journal.open(path, fingerprint=fingerprint_of("sync-users")) as journal:
...     journal.is_settled(item_key("ann")), journal.is_settled(item_key("bob"))
(True, False)
"""

from paceline.stores._codec import Codec, JsonCodec, check_json_ready
from paceline.stores._errors import (
    JournalCorrupt,
    JournalEncodeError,
    JournalError,
    JournalMismatch,
)
from paceline.stores._keys import fingerprint_of, item_key
from paceline.stores.journal import Journal, StoredOutcome

__all__ = [
    "Codec",
    "Journal",
    "JournalCorrupt",
    "JournalEncodeError",
    "JournalError",
    "JournalMismatch",
    "JsonCodec",
    "StoredOutcome",
    "check_json_ready",
    "fingerprint_of",
    "item_key",
]
